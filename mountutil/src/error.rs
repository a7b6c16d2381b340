//! Errors of this crate: one variant per failing syscall, each naming its path.

use std::io;
use std::path::PathBuf;

/// Result of a mountutil call.
pub type Result<T> = std::result::Result<T, Error>;

/// A syscall failed; each variant names the step and the path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mount(2) or the new mount API failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// Filesystem type being mounted.
        fstype: String,
        /// Mount point.
        target: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// umount2(2) failed.
    #[error("unmount {target}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A mount description cannot be expressed as a mount.
    #[error("invalid mount: {0}")]
    InvalidMount(String),
    /// The root is locked by another process.
    #[error("{path} is in use by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Any other file operation.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A file operation failed: what was being done, on which path, and the OS error. Every
/// crate of the workspace wraps this one type for its I/O failures.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct IoError {
    /// What was being done.
    pub op: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// `op` on `path` failed with `source`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io(IoError::new(op, path, source))
    }

    /// The OS error number behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Mount { source, .. } | Error::Unmount { source, .. } => source.raw_os_error(),
            Error::Io(e) => e.source.raw_os_error(),
            _ => None,
        }
    }
}
