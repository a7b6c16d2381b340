//! Disk usage of a directory tree, counted like containerd's `fs.DiskUsage`: allocated
//! blocks of every distinct inode, hard links counted once, the root included.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::{Error, Result, Usage};

/// Measures the tree at `root` without following symlinks or crossing into other mounts'
/// semantics (it walks what the directory holds).
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::io("walk", path, e.into())
        })?;
        let md = entry
            .metadata()
            .map_err(|e| Error::io("stat", entry.path(), e.into()))?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
    }
    Ok(usage)
}
