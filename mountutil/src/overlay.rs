//! overlayfs's on-disk markers, shared by the snapshotter (flattening on rebase) and the
//! differ (applying and creating layers): whiteout devices, opaque-directory xattrs, and
//! the one type saying how a layer's deletions are written into a directory.

use std::path::Path;

use crate::fs::get_xattr;

/// How a layer's deletions (`.wh.NAME`, `.wh..wh..opq`) are written into a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Into an overlayfs upper directory: character device 0/0 for a deleted name, the
    /// `overlay.opaque` xattr for an opaque directory (`user.` namespace with `userxattr`).
    Overlay {
        /// The overlay is mounted with `userxattr`.
        userxattr: bool,
    },
    /// Into a plain tree: delete the name; empty the directory of everything the layer did
    /// not create.
    Native,
}

/// The xattrs overlayfs reads as "this directory is opaque" (`trusted.` as real root, `user.`
/// with `userxattr`), set to `y`.
pub const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Whether `md` is an overlayfs whiteout: a character device with device number 0/0.
pub fn is_whiteout(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Whether directory `dir` carries an overlayfs opaque marker.
pub fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|name| get_xattr(dir, name.as_ref()).is_ok_and(|v| v == b"y"))
}
