//! Disk usage of a directory tree, counted like containerd's `fs.DiskUsage`: allocated
//! blocks of every distinct inode, hard links counted once, the root included.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::{Error, Result, Usage};

/// Measures the tree at `root` without following symlinks or crossing into other mounts'
/// semantics (it walks what the directory holds). An entry deleted while the walk passes
/// (a running container's temporary file) is not counted rather than failing the
/// measurement; a missing `root` is an error.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    for entry in walkdir::WalkDir::new(root) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.depth() > 0 && is_not_found(e.io_error()) => continue,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                return Err(Error::io("walk", path, e.into()));
            }
        };
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if entry.depth() > 0 && is_not_found(e.io_error()) => continue,
            Err(e) => return Err(Error::io("stat", entry.path(), e.into())),
        };
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
    }
    Ok(usage)
}

fn is_not_found(e: Option<&std::io::Error>) -> bool {
    e.is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn entries_deleted_during_the_walk_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        // A container writing and deleting temporary files while its usage is measured.
        let churn = std::thread::spawn({
            let (root, stop) = (root.clone(), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..200 {
                        std::fs::create_dir_all(root.join(format!("d{i}"))).unwrap();
                        std::fs::write(root.join(format!("d{i}/f")), b"x").unwrap();
                    }
                    for i in 0..200 {
                        std::fs::remove_dir_all(root.join(format!("d{i}"))).unwrap();
                    }
                }
            }
        });
        let measured: Vec<Result<Usage>> = (0..300).map(|_| disk_usage(&root)).collect();
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        for result in measured {
            let usage = result.unwrap();
            assert!(usage.inodes >= 1, "{usage:?}");
        }
        assert!(
            disk_usage(&root.join("gone")).is_err(),
            "a missing root is an error"
        );
    }
}
