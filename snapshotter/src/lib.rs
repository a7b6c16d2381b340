//! Snapshotters for container root filesystems, with containerd's semantics.
//!
//! A snapshot is either *active* (writable, created by [`Snapshotter::prepare`]), a *view*
//! (read-only, created by [`Snapshotter::view`]) or *committed* (immutable, created by
//! [`Snapshotter::commit`] from an active one, and the only kind that can be a parent).
//! Keys and names share one flat namespace and are opaque strings.
//!
//! [`DirSnapshotter`] keeps one directory per snapshot (`<root>/snapshots/<id>/fs`) and
//! indexes everything in LMDB (the `metastore` module); a [`Driver`] decides what a snapshot's
//! directory holds and which mounts it is used through: [`native::Native`] copies its parent,
//! [`overlay::Overlay`] stacks overlayfs layers. Everything here is synchronous and has no
//! gRPC types: the daemon calls it from blocking threads.

mod copy;
mod dirs;
mod error;
pub mod filter;
pub mod lmdb;
mod metastore;
pub mod native;
pub mod overlay;
mod quota;
mod reuse;
mod usage;
mod userns;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

pub use dirs::{DirSnapshotter, Driver, Options, SnapshotDir};
pub use error::{Error, Result};
pub use filter::Filters;
pub use mountutil::Mount;
pub use mountutil::idmap::IdMapping;
pub use quota::MAX_SIZE;
pub use reuse::{DIFF_ID, PARENT_CHAIN_ID, SNAPSHOT_REF, chain_id};
pub use usage::disk_usage;
pub use userns::{GID_MAPPING, UID_MAPPING};

/// Labels of a snapshot. Empty values are never stored: an empty value means "delete".
pub type Labels = BTreeMap<String, String>;

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Read-only, created by View; can never be committed.
    #[serde(rename = "View")]
    View,
    /// Writable, created by Prepare; can be committed.
    #[serde(rename = "Active")]
    Active,
    /// Immutable, created by Commit; the only kind that can be a parent.
    #[serde(rename = "Committed")]
    Committed,
}

impl Kind {
    /// The lower-case name containerd's filters compare against.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What Stat and List report about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key (active, view) or name (committed).
    pub name: String,
    /// Name of the committed parent, empty for none.
    pub parent: String,
    /// Kind of snapshot.
    pub kind: Kind,
    /// Creation time, nanosecond precision.
    pub created: SystemTime,
    /// Last update time, nanosecond precision.
    pub updated: SystemTime,
    /// Labels; never with empty values.
    pub labels: Labels,
}

/// Disk usage of a snapshot: allocated bytes and distinct inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Allocated bytes (`st_blocks * 512`, each inode once).
    #[serde(rename = "size")]
    pub size: i64,
    /// Distinct inodes, the root directory included.
    #[serde(rename = "inodes")]
    pub inodes: i64,
}

/// How layers must be written into a snapshot's directory for its mounts to show them.
pub use mountutil::overlay::WhiteoutMode;

/// A snapshot recognised from mounts this snapshotter returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSnapshot {
    /// Its key or name.
    pub key: String,
    /// Its kind.
    pub kind: Kind,
    /// Its own directory (the overlay upper directory, or the native tree).
    pub fs: PathBuf,
    /// The `fs` directories of its parent chain, nearest first.
    pub parents: Vec<PathBuf>,
    /// How layers are written into `fs`.
    pub whiteouts: WhiteoutMode,
}

/// The operations of containerd's snapshotter interface.
///
/// Every method is one atomic step: a crash at any point leaves at worst an orphan directory
/// (reclaimed by [`cleanup`](Snapshotter::cleanup) and at open), never an index entry without
/// its directory.
pub trait Snapshotter: Send + Sync {
    /// Info of any snapshot by key or name.
    fn stat(&self, key: &str) -> Result<Info>;

    /// Updates labels. `fieldpaths` empty or `labels` replaces all labels; `labels.<k>` sets
    /// or (with an empty or missing value) deletes one; anything else is InvalidArgument.
    /// Returns the full updated Info.
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;

    /// Disk usage: measured now for active snapshots, measured once and stored for committed
    /// ones, zero for views.
    fn usage(&self, key: &str) -> Result<Usage>;

    /// The mounts of an active snapshot or view, as Prepare/View returned them.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Creates an active snapshot on top of committed `parent` (empty for none). A Prepare
    /// for a layer already committed on `parent` (by its [`SNAPSHOT_REF`] chain ID) creates
    /// nothing and answers AlreadyExists, containerd's cue to adopt that snapshot.
    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;

    /// Creates a read-only view of committed `parent` (empty for an empty view).
    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;

    /// Turns active `key` into committed `name` with exactly `labels`. A non-empty `parent`
    /// rebases a snapshot prepared without one onto that committed parent.
    fn commit(&self, name: &str, key: &str, labels: Labels, parent: &str) -> Result<()>;

    /// Removes a snapshot without children. The index entry goes first; the directory is
    /// reclaimed at once or by the next cleanup.
    fn remove(&self, key: &str) -> Result<()>;

    /// Info of every snapshot that matches `filters`.
    fn list(&self, filters: &Filters) -> Result<Vec<Info>>;

    /// Reclaims directories that have no index entry.
    fn cleanup(&self) -> Result<()>;

    /// The snapshot whose directory `mounts` (as returned by Prepare, View or Mounts) write
    /// to or show, if it belongs to this snapshotter: lets a differ write straight into it.
    fn recognize(&self, mounts: &[Mount]) -> Result<Option<OwnedSnapshot>>;

    /// Whether the layers of one image may be applied at once: each into a snapshot
    /// prepared without its parent, committed onto it in order (a [`commit`] with a
    /// parent), where that rebase costs nothing and leaves what a snapshot prepared on the
    /// parent would hold (an overlay upper directory; a native snapshot copies its parent
    /// in at the rebase).
    ///
    /// [`commit`]: Snapshotter::commit
    fn parallel_unpack(&self) -> bool;

    /// The `fs` directories of committed snapshot `name`'s layers, its own first: the lower
    /// layers of a snapshot prepared on it.
    fn layer_dirs(&self, name: &str) -> Result<Vec<PathBuf>>;
}
