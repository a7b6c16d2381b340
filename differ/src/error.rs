//! Errors of the differ crate, classified so the daemon can give each its gRPC code.

use std::io;
use std::path::PathBuf;

/// Result of a differ call.
pub type Result<T> = std::result::Result<T, Error>;

/// Why applying or creating a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer is malformed or hostile: bad tar, corrupt or truncated stream, a forbidden
    /// entry. Nothing outside the target was touched.
    #[error("invalid layer: {0}")]
    InvalidLayer(String),
    /// The blob's digest or size is not the one the descriptor names.
    #[error("{what} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// `digest`, `size`, `uncompressed digest`.
        what: &'static str,
        /// What the request said.
        expected: String,
        /// What the data had.
        actual: String,
    },
    /// A request argument is malformed (bad digest syntax, unusable mounts).
    #[error("{0}")]
    InvalidArgument(String),
    /// A media type or feature this differ does not handle.
    #[error("{0}: not implemented")]
    NotImplemented(String),
    /// A blob is not in the content store.
    #[error("blob {0}: not found")]
    NotFound(String),
    /// The content store cannot be reached now; the call may succeed later.
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// The content store did not answer in time.
    #[error("{0}: timed out")]
    TimedOut(String),
    /// The content store failed otherwise.
    #[error("content store: {0}")]
    Store(String),
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] mountutil::IoError),
    /// A mount or syscall wrapper failed.
    #[error(transparent)]
    Sys(#[from] mountutil::Error),
}

impl Error {
    /// An I/O error while doing `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io(mountutil::IoError::new(op, path, source))
    }
}
