//! Size limits of writable snapshots, enforced with project quotas. A limited active
//! snapshot's directory gets its own project id (its snapshot id) before anything is
//! created in it, so its upper directory and overlay work directory (copy-up renames from
//! one to the other, which ext4 refuses across projects) are both charged to it, and a
//! write past the limit fails with EDQUOT. The limit comes from containerd's
//! [`MAX_SIZE`] label, or the instance's default for snapshots that are not layer
//! extractions (those carry containerd's `containerd.io/snapshot.ref` label).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mountutil::quota;

use crate::{Error, Kind, Labels, Result, SNAPSHOT_REF};

/// containerd's label asking for a snapshot's size limit, in decimal bytes.
pub const MAX_SIZE: &str = "containerd.io/snapshot/max-size";

/// The project quota side of a snapshotter root.
pub(crate) struct Quotas {
    /// `<root>/snapshots`: the filesystem quotas are set on.
    snapshots: PathBuf,
    /// The limit of active snapshots that ask for none.
    default: Option<u64>,
    /// Whether that filesystem enforces project quotas, probed on first need.
    enforced: OnceLock<bool>,
}

impl Quotas {
    /// Quotas of the root holding `snapshots`; with a `default` limit, that filesystem must
    /// enforce project quotas.
    pub(crate) fn new(snapshots: &Path, default: Option<u64>) -> Result<Self> {
        let quotas = Quotas {
            snapshots: snapshots.to_path_buf(),
            default: default.filter(|&d| d > 0),
            enforced: OnceLock::new(),
        };
        if let Some(limit) = quotas.default {
            quotas.require_enforced(&format!("the default size limit ({limit} bytes)"))?;
        }
        Ok(quotas)
    }

    fn enforced(&self) -> Result<bool> {
        if let Some(&known) = self.enforced.get() {
            return Ok(known);
        }
        let enforced = quota::project_quota_enforced(&self.snapshots)?;
        Ok(*self.enforced.get_or_init(|| enforced))
    }

    fn require_enforced(&self, what: &str) -> Result<()> {
        if self.enforced()? {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "{what} needs project quotas, and the filesystem of {} does not enforce them \
             (ext4 or xfs mounted with prjquota)",
            self.snapshots.display()
        )))
    }

    /// The limit a new snapshot of `kind` with `labels` gets, checked to be enforceable.
    pub(crate) fn limit_for(&self, key: &str, kind: Kind, labels: &Labels) -> Result<Option<u64>> {
        if kind != Kind::Active {
            return Ok(None);
        }
        let limit = match labels.get(MAX_SIZE) {
            Some(value) => Some(value.trim().parse::<u64>().map_err(|_| {
                Error::InvalidArgument(format!("label {MAX_SIZE}={value:?} is not a size in bytes"))
            })?),
            None if labels.contains_key(SNAPSHOT_REF) => None,
            None => self.default,
        };
        match limit.filter(|&l| l > 0) {
            Some(limit) => {
                self.require_enforced(&format!("snapshot {key}'s size limit ({limit} bytes)"))?;
                Ok(Some(limit))
            }
            None => Ok(None),
        }
    }

    /// Gives `dir` (a new, still empty snapshot directory) project `id` limited to `limit`.
    pub(crate) fn apply(&self, dir: &Path, id: u64, limit: u64) -> Result<()> {
        let project = project_id(id)?;
        quota::set_project_limit(&self.snapshots, project, limit)?;
        quota::set_project(dir, project)?;
        Ok(())
    }

    /// Lifts the limit of removed snapshot `id` whose directory is `dir`, if it had one.
    pub(crate) fn release(&self, dir: &Path, id: u64) -> Result<()> {
        let Ok(project) = project_id(id) else {
            return Ok(());
        };
        if !self.enforced()? || !matches!(quota::project_of(dir), Ok(p) if p == project) {
            return Ok(());
        }
        quota::set_project_limit(&self.snapshots, project, 0)?;
        Ok(())
    }
}

/// The project id of snapshot `id`: the id itself (project ids are 32 bits, 0 is none).
fn project_id(id: u64) -> Result<u32> {
    u32::try_from(id).map_err(|_| {
        Error::FailedPrecondition(format!(
            "snapshot id {id} is beyond the 32-bit project ids a size limit needs"
        ))
    })
}
