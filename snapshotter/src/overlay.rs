//! The `overlayfs` driver: each snapshot's `fs` is an overlay layer. Active snapshots mount
//! an overlay with their `fs` as upper directory over their parents (nearest first); views
//! mount the parents read-only; parentless snapshots and single-parent views are bind
//! mounts, exactly as containerd's overlayfs snapshotter returns them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mountutil::probe;

use crate::dirs::create_dir_mode;
use crate::{DirSnapshotter, Driver, Error, Kind, Mount, Result, SnapshotDir, WhiteoutMode};

/// The overlayfs snapshotter.
pub type OverlaySnapshotter = DirSnapshotter<Overlay>;

/// Label carrying a snapshot's upper directory, with `upperdir_label`.
pub const UPPERDIR_LABEL: &str = "containerd.io/snapshot/overlay.upperdir";

/// Configurable behaviour of the overlay driver.
#[derive(Debug, Clone, Default)]
pub struct OverlayOptions {
    /// Report [`UPPERDIR_LABEL`] in Stat and List.
    pub upperdir_label: bool,
    /// Extra options on every overlay mount (e.g. `volatile`).
    pub mount_options: Vec<String>,
}

/// Driver of the overlayfs snapshotter.
#[derive(Debug, Clone)]
pub struct Overlay {
    options: OverlayOptions,
    userxattr: bool,
    index_off: bool,
}

impl Overlay {
    /// Probes the kernel and the filesystem of `root` (which must support d_type).
    pub fn probe(root: &Path, options: OverlayOptions) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
        if !probe::supports_d_type(root)? {
            return Err(Error::FailedPrecondition(format!(
                "the filesystem of {} does not support d_type, which overlayfs needs",
                root.display()
            )));
        }
        let index_off = probe::overlay_index_param()
            && !options
                .mount_options
                .iter()
                .any(|o| o == "index" || o.starts_with("index="));
        Ok(Overlay {
            userxattr: probe::in_user_namespace(),
            index_off,
            options,
        })
    }

    /// Whether overlay mounts carry `userxattr` (whiteouts and opaque markers then use the
    /// `user.overlay.*` xattrs).
    pub fn userxattr(&self) -> bool {
        self.userxattr
    }

    fn overlay(&self, mut options: Vec<String>, parents: &[PathBuf]) -> Mount {
        let lowers: Vec<String> = parents
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        options.extend(self.options.mount_options.iter().cloned());
        if self.userxattr {
            options.push("userxattr".into());
        }
        if self.index_off {
            options.push("index=off".into());
        }
        Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
        }
    }
}

impl Driver for Overlay {
    fn populate(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Result<()> {
        let fs = dir.fs();
        create_dir_mode(&fs, 0o755)?;
        if let Some(parent) = parents.first() {
            let md = std::fs::metadata(parent).map_err(|e| Error::io("stat", parent, e))?;
            std::os::unix::fs::lchown(&fs, Some(md.uid()), Some(md.gid()))
                .map_err(|e| Error::io("chown", &fs, e))?;
        }
        if kind == Kind::Active {
            create_dir_mode(&dir.work(), 0o711)?;
        }
        Ok(())
    }

    fn mounts(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        match (kind, parents) {
            (Kind::Active, []) => vec![Mount::bind(&dir.fs(), false)],
            (_, []) => vec![Mount::bind(&dir.fs(), true)],
            (Kind::View, [only]) => vec![Mount::bind(only, true)],
            (Kind::View, _) => vec![self.overlay(Vec::new(), parents)],
            (_, _) => {
                let options = vec![
                    format!("workdir={}", dir.work().display()),
                    format!("upperdir={}", dir.fs().display()),
                ];
                vec![self.overlay(options, parents)]
            }
        }
    }

    fn rebase_is_free(&self) -> bool {
        true
    }

    /// Nothing to do: the upper directory already holds the layer (with overlay whiteouts),
    /// and the new parent chain is read from the index when mounting.
    fn rebase(&self, _dir: &SnapshotDir, _parents: &[PathBuf]) -> Result<()> {
        Ok(())
    }

    fn whiteouts(&self) -> WhiteoutMode {
        WhiteoutMode::Overlay {
            userxattr: self.userxattr,
        }
    }

    fn info_labels(&self, dir: &SnapshotDir) -> Vec<(String, String)> {
        if self.options.upperdir_label {
            vec![(
                UPPERDIR_LABEL.to_string(),
                dir.fs().to_string_lossy().into_owned(),
            )]
        } else {
            Vec::new()
        }
    }
}
