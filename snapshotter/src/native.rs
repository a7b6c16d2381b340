//! The `native` driver: every active snapshot is a full copy of its parent, mounted with a
//! bind mount; views bind the parent itself read-only. Works on any filesystem.

use std::path::PathBuf;

use crate::copy::{copy_tree, merge_lower};
use crate::dirs::create_dir_mode;
use crate::{DirSnapshotter, Driver, Kind, Mount, Result, SnapshotDir, WhiteoutMode};

/// The native snapshotter.
pub type NativeSnapshotter = DirSnapshotter<Native>;

/// Driver of the native snapshotter.
#[derive(Debug, Default)]
pub struct Native;

impl Driver for Native {
    fn populate(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Result<()> {
        create_dir_mode(&dir.fs(), 0o755)?;
        match (kind, parents.first()) {
            (Kind::Active, Some(parent)) => copy_tree(parent, &dir.fs()),
            _ => Ok(()),
        }
    }

    fn mounts(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        match (kind, parents.first()) {
            (Kind::View, Some(parent)) => vec![Mount::bind(parent, true)],
            (kind, _) => vec![Mount::bind(&dir.fs(), kind == Kind::View)],
        }
    }

    fn whiteouts(&self) -> WhiteoutMode {
        WhiteoutMode::Native
    }

    fn rebase_is_free(&self) -> bool {
        false
    }

    /// A rebased native snapshot holds only its own layer: flatten the parent under it,
    /// honouring overlay-style whiteouts and opaque directories the layer was written with.
    fn rebase(&self, dir: &SnapshotDir, parents: &[PathBuf]) -> Result<()> {
        match parents.first() {
            Some(parent) => merge_lower(parent, &dir.fs()),
            None => Ok(()),
        }
    }
}
