//! Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`): written as overlayfs
//! expects them into an upper directory, or carried out (deleting) in a plain tree.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use mountutil::at::{self, Kind};
use mountutil::fs::NodeKind;
use mountutil::overlay::OPAQUE_XATTRS;

use super::*;
use crate::tarstream::Meta;
use crate::{Error, Result};

impl LayerWriter<'_> {
    pub(super) fn whiteout(
        &mut self,
        parent: &Path,
        entry: &OsStr,
        hidden: &OsStr,
        meta: &Meta,
    ) -> Result<()> {
        let rel = parent.join(entry);
        if entry == OPAQUE_WHITEOUT {
            return match self.mode {
                WhiteoutMode::Overlay { userxattr } => {
                    let [trusted, user] = OPAQUE_XATTRS;
                    let name = if userxattr { user } else { trusted };
                    let dir = &self.parent(parent)?.dir;
                    at::fsetxattr(dir, name.as_ref(), b"y")
                        .map_err(|e| Error::io("setxattr", &rel, e))?;
                    if let Some(implicit) = &mut self.implicit {
                        let dir = &self.dirs[parent.as_os_str()].dir;
                        implicit
                            .marked_opaque(dir)
                            .map_err(|e| Error::io("stat", &rel, e))?;
                    }
                    Ok(())
                }
                WhiteoutMode::Native => self.empty_dir(parent),
            };
        }
        let hidden_bytes = hidden.as_bytes();
        if hidden_bytes.starts_with(b".wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            tracing::debug!(path = %rel.display(), "skipping aufs metadata entry");
            return Ok(());
        }
        if hidden_bytes.is_empty() || hidden_bytes == b"." || hidden_bytes == b".." {
            return Err(layer_err("bad whiteout", &rel, "refused"));
        }
        match self.mode {
            WhiteoutMode::Overlay { .. } => {
                let dir = &self.parent(parent)?.dir;
                let was_dir =
                    resolves_as_dir(dir.kind(hidden).map_err(|e| Error::io("stat", &rel, e))?);
                dir.remove_all(hidden)
                    .map_err(|e| Error::io("remove", &rel, e))?;
                dir.mknod(hidden, NodeKind::Char, 0, 0, 0)
                    .map_err(|e| Error::io("mknod", &rel, e))?;
                dir.chown(hidden, meta.uid, meta.gid)
                    .map_err(|e| Error::io("chown", &rel, e))?;
                if was_dir {
                    self.dir_removed()?;
                }
            }
            WhiteoutMode::Native => {
                let Some(cached) = self.dir_at(parent, false)? else {
                    return Ok(());
                };
                let dir = &cached.dir;
                let was_dir =
                    resolves_as_dir(dir.kind(hidden).map_err(|e| Error::io("stat", &rel, e))?);
                dir.remove_all(hidden)
                    .map_err(|e| Error::io("remove", &rel, e))?;
                if was_dir {
                    self.dir_removed()?;
                }
            }
        }
        Ok(())
    }

    /// Native opaque whiteout: remove what the lower layers put in `parent`, keeping what
    /// this layer created (and looking inside directories it re-declared).
    pub(super) fn empty_dir(&mut self, parent: &Path) -> Result<()> {
        // Nothing to empty where there is no directory; any other failure is the layer's.
        let dir = match self.root.open_dir(parent) {
            Ok(dir) => dir,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(Error::io("open", parent, e)),
        };
        let mut removed_dir = false;
        let mut keep_dirs = Vec::new();
        for child in dir.names().map_err(|e| Error::io("read", parent, e))? {
            let child_rel = parent.join(&child);
            let kind = dir
                .kind(&child)
                .map_err(|e| Error::io("stat", &child_rel, e))?;
            if self.created.contains(child_rel.as_os_str()) {
                if kind == Some(Kind::Dir) {
                    keep_dirs.push(child_rel);
                }
                continue;
            }
            removed_dir |= resolves_as_dir(kind);
            dir.remove_all(&child)
                .map_err(|e| Error::io("remove", &child_rel, e))?;
        }
        if removed_dir {
            self.dir_removed()?;
        }
        for sub in keep_dirs {
            self.empty_dir(&sub)?;
        }
        Ok(())
    }
}
