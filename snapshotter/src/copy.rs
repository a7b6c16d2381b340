//! Copying directory trees with everything a root filesystem needs kept: modes, owners,
//! xattrs, times, symlinks, hard links, device nodes, fifos and holes in sparse files.
//! The native snapshotter uses it to give each snapshot a full copy of its parent, and to
//! flatten a rebased snapshot onto its new parent.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mountutil::fs::{
    NodeKind, copy_sparse, get_xattr, list_xattrs, mknod, remove_xattr, set_times_nofollow,
    set_xattr, split_dev,
};
use mountutil::overlay::{OPAQUE_XATTRS, is_opaque, is_whiteout};
use walkdir::WalkDir;

use crate::{Error, Result};

/// Copies the contents of directory `src` into existing directory `dst`, and `src`'s own
/// metadata onto `dst`.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut copier = Copier::default();
    for entry in WalkDir::new(src).min_depth(1) {
        let entry = walk_entry(entry, src)?;
        let rel = entry
            .path()
            .strip_prefix(src)
            .expect("walk stays under its root");
        copier.copy_entry(entry.path(), &dst.join(rel))?;
    }
    copier.finish_dirs()?;
    copy_metadata(src, dst, &entry_metadata(src)?)
}

/// Fills `upper` with whatever of `lower` it does not hide, giving `upper` the flattened
/// contents of `lower` overlaid by `upper`. Overlay whiteouts (character device 0/0) in
/// `upper` hide the lower entry and are removed; an opaque directory
/// (`trusted.overlay.opaque=y`) hides the lower directory's contents.
pub(crate) fn merge_lower(lower: &Path, upper: &Path) -> Result<()> {
    let mut copier = Copier::default();
    let mut walk = WalkDir::new(lower).min_depth(1).into_iter();
    while let Some(entry) = walk.next() {
        let entry = walk_entry(entry, lower)?;
        let rel = entry
            .path()
            .strip_prefix(lower)
            .expect("walk stays under its root");
        let target = upper.join(rel);
        match fs::symlink_metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                copier.copy_entry(entry.path(), &target)?;
            }
            Err(e) => return Err(Error::io("stat", &target, e)),
            Ok(md) => {
                let merge_into = md.is_dir() && entry.file_type().is_dir() && !is_opaque(&target);
                if !merge_into && entry.file_type().is_dir() {
                    walk.skip_current_dir();
                }
            }
        }
    }
    copier.finish_dirs()?;
    remove_overlay_markers(upper)
}

/// Deletes whiteouts and opaque markers once they have done their job.
fn remove_overlay_markers(root: &Path) -> Result<()> {
    for entry in WalkDir::new(root) {
        let entry = walk_entry(entry, root)?;
        let md = entry_metadata(entry.path())?;
        if is_whiteout(&md) {
            fs::remove_file(entry.path()).map_err(|e| Error::io("remove", entry.path(), e))?;
        } else if md.is_dir() && is_opaque(entry.path()) {
            for name in OPAQUE_XATTRS {
                remove_xattr(entry.path(), name.as_ref())?;
            }
        }
    }
    Ok(())
}

pub(crate) fn walk_entry(
    entry: walkdir::Result<walkdir::DirEntry>,
    root: &Path,
) -> Result<walkdir::DirEntry> {
    entry.map_err(|e| {
        let path = e.path().unwrap_or(root).to_path_buf();
        Error::io("walk", path, e.into())
    })
}

pub(crate) fn entry_metadata(path: &Path) -> Result<fs::Metadata> {
    fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))
}

/// Per-copy state: hard links already copied, and directories whose metadata is set last
/// (so their times survive the creation of their children).
#[derive(Default)]
struct Copier {
    links: HashMap<(u64, u64), PathBuf>,
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
}

impl Copier {
    fn copy_entry(&mut self, src: &Path, dst: &Path) -> Result<()> {
        use std::os::unix::fs::FileTypeExt;
        let md = entry_metadata(src)?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                return fs::hard_link(first, dst).map_err(|e| Error::io("link", dst, e));
            }
            self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
        }
        if ft.is_dir() {
            fs::create_dir(dst).map_err(|e| Error::io("mkdir", dst, e))?;
            self.dirs.push((src.to_path_buf(), dst.to_path_buf(), md));
            return Ok(());
        } else if ft.is_file() {
            copy_file(src, dst, &md)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(|e| Error::io("readlink", src, e))?;
            std::os::unix::fs::symlink(&target, dst).map_err(|e| Error::io("symlink", dst, e))?;
        } else {
            let kind = if ft.is_char_device() {
                NodeKind::Char
            } else if ft.is_block_device() {
                NodeKind::Block
            } else if ft.is_fifo() {
                NodeKind::Fifo
            } else {
                tracing::debug!(path = %src.display(), "skipping socket");
                return Ok(());
            };
            let (major, minor) = split_dev(md.rdev());
            mknod(dst, kind, md.mode(), major, minor)?;
        }
        copy_metadata(src, dst, &md)
    }

    fn finish_dirs(&mut self) -> Result<()> {
        for (src, dst, md) in self.dirs.drain(..).rev() {
            copy_metadata(&src, &dst, &md)?;
        }
        Ok(())
    }
}

fn copy_file(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    let from = File::open(src).map_err(|e| Error::io("open", src, e))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| Error::io("create", dst, e))?;
    copy_sparse(&from, &to, md.len(), dst)?;
    Ok(())
}

/// Owner, mode, xattrs and times of `src` onto `dst` (symlinks: owner, xattrs and times).
fn copy_metadata(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
        .map_err(|e| Error::io("chown", dst, e))?;
    if !md.file_type().is_symlink() {
        // After chown, which clears setuid/setgid bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", dst, e))?;
    }
    for name in list_xattrs(src)? {
        match get_xattr(src, &name).and_then(|v| set_xattr(dst, &name, &v)) {
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "xattr not copied"),
        }
    }
    set_times_nofollow(
        dst,
        (md.atime(), md.atime_nsec()),
        (md.mtime(), md.mtime_nsec()),
    )?;
    Ok(())
}
