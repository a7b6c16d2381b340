//! The image side of the daemon: containerd's content store, images, containers, leases and
//! namespaces, kept apart by containerd namespace as containerd keeps them. Blobs live under
//! `<root>/content` (shared by every namespace; a namespace sees a blob once it wrote or
//! committed it there), everything else in an LMDB index under `<root>/images`. Records are
//! containerd's own API messages.
//!
//! Synchronous, like the snapshotters: the gRPC services call it from blocking threads.

mod blobs;
mod containers;
mod content;
mod gc;
mod images;
mod ingests;
mod labels;
mod leases;
mod live;
mod meta;
mod namespaces;
pub mod oci;
mod snapshots;
#[cfg(test)]
mod testing;
pub mod transfer;
mod write;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use blobs::{Blobs, Ingest, IngestStatus};
pub use gc::Report;
pub use ingests::ContentWriter;
pub use labels::validate_identifier;
pub use live::LiveReader;
pub use snapshots::{Caller, Snapshotters, StoreSnapshots};
pub use write::{WriteAction, WriteAnswer, WriteRequest, WriteSession};

use meta::Meta;

/// Result of an image store call.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Why an image store call failed. Messages end with containerd's class text so they
/// round-trip through containerd's clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A committed write whose blob was already there: the data was dropped.
    #[error("content {0}: already exists")]
    BlobExists(differ::Digest),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// A kind of thing this store does not handle.
    #[error("{0}: not implemented")]
    Unimplemented(String),
    /// A ref already being written by someone else.
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// A read past the end of a blob.
    #[error("{0}: out of range")]
    OutOfRange(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image store index")]
    Index(#[from] heed::Error),
    /// A snapshotter's error (its class kept), or the index's own on opening it.
    #[error(transparent)]
    Snapshot(#[from] snapshotter::Error),
    #[error("image store lock")]
    Lock(#[source] mountutil::Error),
    #[error("corrupt image store record: {0}")]
    Corrupt(String),
    /// The daemon's applier failed a transfer's layer (its error, for the daemon to
    /// classify).
    #[error(transparent)]
    Applier(Box<dyn std::error::Error + Send + Sync>),
}

/// The image store of a daemon root.
pub struct ImageStore {
    meta: Meta,
    blobs: Blobs,
    /// Snapshotters a snapshot was removed from through the store since the last
    /// collection: their directories are reclaimed (Cleanup) by the next one, as
    /// containerd's collector cleans up the snapshotters it marked dirty.
    dirty: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Held shared while a client takes hold of a snapshot that exists (an unpack's layer
    /// already there, a Prepare reusing a committed layer), and exclusively while the
    /// collector checks once more that no lease holds a snapshot it planned to remove and
    /// removes it: a snapshot is never removed from under a client that has just found it.
    snapshot_holds: std::sync::RwLock<()>,
}

impl ImageStore {
    /// Opens (creating) the store under daemon root `root`.
    pub fn open(root: &Path) -> Result<Self> {
        Ok(ImageStore {
            meta: Meta::open(&root.join("images"))?,
            blobs: Blobs::open(&root.join("content"))?,
            dirty: Default::default(),
            snapshot_holds: Default::default(),
        })
    }

    /// The blob files.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }
}

/// A suffix that no other id of this process has: the time in nanoseconds and a counter.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The digest a request names, or InvalidArgument.
pub(crate) fn parse_digest(digest: &str) -> Result<differ::Digest> {
    differ::Digest::parse(digest).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Fails with containerd's error when the call names no namespace.
pub fn require_namespace(namespace: Option<&str>) -> Result<&str> {
    match namespace {
        Some(ns) if !ns.is_empty() => Ok(ns),
        _ => Err(StoreError::FailedPrecondition(
            "namespace is required".into(),
        )),
    }
}
