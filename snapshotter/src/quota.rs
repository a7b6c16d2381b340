//! Size limits of writable snapshots. On ext4 or xfs they are project quotas: a limited
//! active snapshot's directory gets its own project id (its snapshot id) before anything is
//! created in it, so its upper directory and overlay work directory (copy-up renames from
//! one to the other, which ext4 refuses across projects) are both charged to it. On btrfs
//! the directory is made a subvolume with a qgroup limit. Either way a write past the
//! limit fails with EDQUOT. The limit comes from containerd's [`MAX_SIZE`] label, or the
//! instance's default for snapshots that are not layer extractions (those carry
//! containerd's `containerd.io/snapshot.ref` label). A deleted subvolume's qgroup is seen
//! to go too ([`reap_qgroup`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use mountutil::btrfs::{self, QgroupRemoval};
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
    /// The root is on btrfs: subvolumes and qgroups rather than project quotas.
    btrfs: bool,
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
            btrfs: btrfs::is_btrfs(snapshots)?,
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
        let enforced = if self.btrfs {
            btrfs::quotas_enabled(&self.snapshots)?
        } else {
            quota::project_quota_enforced(&self.snapshots)?
        };
        Ok(*self.enforced.get_or_init(|| enforced))
    }

    fn require_enforced(&self, what: &str) -> Result<()> {
        if self.enforced()? {
            return Ok(());
        }
        let root = self.snapshots.display();
        Err(Error::FailedPrecondition(if self.btrfs {
            format!(
                "{what} needs btrfs quotas, not enabled on the btrfs of {root} (btrfs quota enable)"
            )
        } else {
            format!(
                "{what} needs project quotas, and the filesystem of {root} does not enforce \
                 them (ext4 or xfs mounted with prjquota, or btrfs with quotas enabled)"
            )
        }))
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

    /// Gives `dir` (a new, still empty snapshot directory) project `id` limited to `limit`,
    /// or on btrfs remakes it as a subvolume limited to `limit`.
    pub(crate) fn apply(&self, dir: &Path, id: u64, limit: u64) -> Result<()> {
        if self.btrfs {
            std::fs::remove_dir(dir).map_err(|e| Error::io("remove", dir, e))?;
            btrfs::create_subvolume(dir)?;
            btrfs::set_subvolume_limit(dir, Some(limit))?;
            return Ok(());
        }
        let project = project_id(id)?;
        quota::set_project_limit(&self.snapshots, project, limit)?;
        quota::set_project(dir, project)?;
        Ok(())
    }

    /// Lifts the limit of removed snapshot `id` whose directory is `dir`, if it had one. (A
    /// btrfs qgroup goes with its subvolume when the directory is deleted: [`reap_qgroup`].)
    pub(crate) fn release(&self, dir: &Path, id: u64) -> Result<()> {
        if self.btrfs {
            if btrfs::is_subvolume(dir).unwrap_or(false) {
                btrfs::set_subvolume_limit(dir, None)?;
            }
            return Ok(());
        }
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

/// The subvolume `dir` is the root of, as (a directory on its filesystem, subvolume id):
/// on btrfs, a limited snapshot's directory. `None` for any other directory.
pub(crate) fn subvolume_of(dir: &Path) -> Option<(PathBuf, u64)> {
    if !btrfs::is_subvolume(dir).unwrap_or(false) {
        return None;
    }
    let id = btrfs::subvolume_id(dir).ok()?;
    Some((dir.parent()?.to_path_buf(), id))
}

/// How long a deleted subvolume's qgroup is waited for before it is left (with a warning).
const REAP_FOR: Duration = Duration::from_secs(600);
/// How often the qgroups still waited for are tried.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Qgroups of deleted subvolumes not yet seen gone, and whether a thread is trying them.
struct Reaping {
    pending: Vec<(PathBuf, u64, Instant)>,
    running: bool,
}

static REAPING: Mutex<Reaping> = Mutex::new(Reaping {
    pending: Vec::new(),
    running: false,
});

/// Sees to it that qgroup `0/<subvolume>` of a subvolume just deleted (on the btrfs holding
/// `on`) goes. Kernels since mid-2024 remove it themselves once they have dropped the
/// subvolume, but skip it when they cannot at that moment; older ones never do. Each left
/// would be one stale qgroup per deleted size-limited container. A thread tries the removal
/// every second until the qgroup is removed or found gone; the kernel refuses while the
/// subvolume is still being dropped. (A daemon stopped meanwhile leaves the qgroup: `btrfs
/// qgroup clear-stale` removes such.)
pub(crate) fn reap_qgroup(on: PathBuf, subvolume: u64) {
    let mut reaping = REAPING.lock().unwrap_or_else(PoisonError::into_inner);
    reaping.pending.push((on, subvolume, Instant::now()));
    if reaping.running {
        return;
    }
    let started = std::thread::Builder::new()
        .name("qgroup-reaper".into())
        .spawn(reap_pending);
    match started {
        Ok(_) => reaping.running = true,
        Err(e) => tracing::warn!(error = %e, "could not start the qgroup reaper"),
    }
}

/// The reaper thread: tries every pending qgroup each [`REAP_EVERY`] until none is left.
fn reap_pending() {
    loop {
        std::thread::sleep(REAP_EVERY);
        let mut reaping = REAPING.lock().unwrap_or_else(PoisonError::into_inner);
        reaping
            .pending
            .retain(|(on, subvolume, since)| try_reap(on, *subvolume, *since));
        if reaping.pending.is_empty() {
            reaping.running = false;
            return;
        }
    }
}

/// Tries to remove the qgroup of `subvolume`, deleted at `since`; whether to try again.
fn try_reap(on: &Path, subvolume: u64, since: Instant) -> bool {
    match btrfs::remove_qgroup(on, subvolume) {
        Ok(QgroupRemoval::Removed) => {
            tracing::info!(
                subvolume,
                "removed the qgroup the kernel left of a deleted subvolume"
            );
            false
        }
        Ok(QgroupRemoval::Gone) => false,
        Ok(QgroupRemoval::NotYet) if since.elapsed() < REAP_FOR => true,
        Ok(QgroupRemoval::NotYet) => {
            tracing::warn!(
                subvolume,
                "the qgroup of a deleted subvolume is still busy; left"
            );
            false
        }
        Err(e) => {
            tracing::warn!(subvolume, error = %e, "could not remove the qgroup of a deleted subvolume");
            false
        }
    }
}
