//! Errors of the snapshotter crate, classified as containerd's errdefs classes so the daemon
//! can map each to its gRPC code in one place.

use std::io;
use std::path::PathBuf;

/// Result of a snapshotter call.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a snapshotter call failed. Messages end with the containerd class text
/// (`: not found`, ...) so they round-trip through containerd's error conversion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named snapshot (or parent) does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// A snapshot with that key or name exists.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A Prepare for layer `chain` found it already committed on its parent as `name`:
    /// containerd's cue to adopt that snapshot rather than unpack the layer.
    #[error("layer {chain} already committed on {parent:?} as {name}: already exists")]
    LayerCommitted {
        /// The chain ID the Prepare was labelled with.
        chain: String,
        /// The parent asked for.
        parent: String,
        /// The committed snapshot holding the layer.
        name: String,
    },
    /// The request itself is malformed (empty key, bad filter, bad field mask, ...).
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// The request is well-formed but the snapshot is in the wrong state for it.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// This snapshotter does not support the operation.
    #[error("{0}: not implemented")]
    NotImplemented(String),
    /// The LMDB index failed (its I/O failures, a full disk or map included, are [`Io`]).
    ///
    /// [`Io`]: Error::Io
    #[error("metadata index")]
    Index(#[source] heed::Error),
    /// A stored record could not be decoded.
    #[error("corrupt index record for {key}")]
    CorruptRecord {
        /// The snapshot key.
        key: String,
        /// Decoder error.
        #[source]
        source: serde_json::Error,
    },
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] mountutil::IoError),
    /// A syscall wrapper from mountutil failed.
    #[error(transparent)]
    Sys(#[from] mountutil::Error),
    /// An index update panicked (a bug); the other updates of its batch went on.
    #[error("index update panicked: {0}")]
    Panicked(String),
}

impl From<heed::Error> for Error {
    /// The index's I/O failures, and a full map, are I/O errors like any other, so a full
    /// disk is classified the same wherever it strikes.
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Io(e) => Error::io("write index", "", e),
            heed::Error::Mdb(heed::MdbError::MapFull) => Error::io(
                "write index",
                "",
                io::Error::new(io::ErrorKind::StorageFull, "the LMDB map is full"),
            ),
            e => Error::Index(e),
        }
    }
}

impl Error {
    /// The same failure again, for each mutation of a batch that failed as a whole: I/O
    /// errors keep their kind (a full disk stays ResourceExhausted), others their message.
    pub(crate) fn replica(&self) -> Error {
        match self {
            Error::Io(e) => Error::io(
                e.op,
                e.path.clone(),
                io::Error::new(e.source.kind(), e.source.to_string()),
            ),
            other => Error::io("commit index", "", io::Error::other(other.to_string())),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io(mountutil::IoError::new(op, path, source))
    }
}
