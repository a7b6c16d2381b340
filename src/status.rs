//! The one place where errors and gRPC statuses meet, both ways.
//!
//! Outgoing: every error type of the workspace says which containerd errdefs class it is
//! ([`Classify`]); wrapping variants ask the error they wrap, so no code here looks inside
//! another crate's nested variants. containerd branches on these codes (AlreadyExists after
//! Prepare, NotFound, ...). Incoming: statuses from containerd's Content and Leases services
//! become differ errors of the matching class (`layers::content::remote_error`), with Unavailable and
//! DeadlineExceeded kept apart from Internal.

use tonic::{Code, Status};

use crate::layers::LayerError;
#[cfg(test)]
use crate::layers::content::remote_error;

/// An error that knows its containerd error class, as a gRPC code.
pub trait Classify: std::error::Error {
    /// The gRPC code of this error's class.
    fn code(&self) -> Code;
}

/// The class of an OS error: a full filesystem or quota is ResourceExhausted (the caller
/// may free space and retry), anything else Internal.
fn os_code(e: &std::io::Error) -> Code {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Code::ResourceExhausted
        }
        _ => Code::Internal,
    }
}

impl Classify for mountutil::IoError {
    fn code(&self) -> Code {
        os_code(&self.source)
    }
}

impl Classify for mountutil::Error {
    fn code(&self) -> Code {
        use mountutil::Error as M;
        match self {
            M::InvalidMount(_) => Code::InvalidArgument,
            M::Locked { .. } => Code::Unavailable,
            M::Io(e) => e.code(),
            M::Mount { source, .. } | M::Unmount { source, .. } => os_code(source),
        }
    }
}

impl Classify for snapshotter::Error {
    fn code(&self) -> Code {
        use snapshotter::Error as S;
        match self {
            S::NotFound(_) => Code::NotFound,
            S::AlreadyExists(_) | S::LayerCommitted { .. } => Code::AlreadyExists,
            S::InvalidArgument(_) => Code::InvalidArgument,
            S::FailedPrecondition(_) => Code::FailedPrecondition,
            S::NotImplemented(_) => Code::Unimplemented,
            S::Sys(e) => e.code(),
            S::Io(e) => e.code(),
            S::Index(_) | S::CorruptRecord { .. } | S::Panicked(_) => Code::Internal,
        }
    }
}

impl Classify for differ::Error {
    fn code(&self) -> Code {
        use differ::Error as D;
        match self {
            D::InvalidLayer(_) | D::InvalidArgument(_) => Code::InvalidArgument,
            D::Mismatch { .. } => Code::FailedPrecondition,
            D::NotImplemented(_) => Code::Unimplemented,
            D::NotFound(_) => Code::NotFound,
            D::Unavailable(_) => Code::Unavailable,
            D::TimedOut(_) => Code::DeadlineExceeded,
            D::Sys(e) => e.code(),
            D::Io(e) => e.code(),
            D::Store(_) => Code::Internal,
        }
    }
}

impl Classify for imagestore::StoreError {
    fn code(&self) -> Code {
        use imagestore::StoreError as S;
        match self {
            S::NotFound(_) => Code::NotFound,
            S::AlreadyExists(_) | S::BlobExists(_) => Code::AlreadyExists,
            S::InvalidArgument(_) => Code::InvalidArgument,
            S::FailedPrecondition(_) => Code::FailedPrecondition,
            S::Unavailable(_) => Code::Unavailable,
            S::Unimplemented(_) => Code::Unimplemented,
            S::OutOfRange(_) => Code::OutOfRange,
            S::Io { source, .. } => os_code(source),
            S::Snapshot(e) => e.code(),
            S::Lock(e) => e.code(),
            S::Index(_) | S::Corrupt(_) => Code::Internal,
            // The daemon's applier: a layer error, whose class it keeps.
            S::Applier(e) => e
                .downcast_ref::<LayerError>()
                .map_or(Code::Internal, Classify::code),
        }
    }
}

impl Classify for LayerError {
    fn code(&self) -> Code {
        match self {
            LayerError::Snapshot(e) => e.code(),
            LayerError::Layer(e) => e.code(),
            LayerError::Mount(e) => e.code(),
            LayerError::NotActive { .. } => Code::FailedPrecondition,
            LayerError::NoMounts => Code::InvalidArgument,
            LayerError::Unsupported(_) => Code::Unimplemented,
        }
    }
}

impl Classify for imagestore::transfer::TransferError {
    fn code(&self) -> Code {
        use imagestore::transfer::TransferError as T;
        match self {
            T::Store(e) => e.code(),
            T::Registry(_) => Code::Unavailable,
            T::NotFound(_) => Code::NotFound,
            T::Unauthenticated(_) => Code::Unauthenticated,
            T::Invalid(_) => Code::FailedPrecondition,
            T::Io { .. } => Code::Internal,
        }
    }
}

/// The full error chain on one line, `outer: inner: ...`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The status of an error: its class's code, its whole chain as the message. Internal
/// errors are logged here, once.
pub fn to_status(e: impl Classify) -> Status {
    let code = e.code();
    if code == Code::Internal {
        tracing::error!(error = %chain(&e), "internal error");
    }
    Status::new(code, chain(&e))
}

/// Status for a request that is malformed before it reaches a snapshotter.
pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// Maps a blocking task that panicked or was cancelled.
pub fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_containerd_codes() {
        use snapshotter::Error;
        assert_eq!(Error::NotFound("x".into()).code(), Code::NotFound);
        assert_eq!(Error::AlreadyExists("x".into()).code(), Code::AlreadyExists);
        assert_eq!(
            Error::InvalidArgument("x".into()).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Error::FailedPrecondition("x".into()).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            Error::NotImplemented("x".into()).code(),
            Code::Unimplemented
        );
        let io = Error::Io(mountutil::IoError::new(
            "stat",
            "/x",
            std::io::Error::other("boom"),
        ));
        assert_eq!(io.code(), Code::Internal);
        assert_eq!(chain(&io), "stat /x: boom");
        let locked = Error::Sys(mountutil::Error::Locked {
            path: "/r/lock".into(),
        });
        assert_eq!(locked.code(), Code::Unavailable);
        let bad_mount = LayerError::Mount(mountutil::Error::InvalidMount("x".into()));
        assert_eq!(bad_mount.code(), Code::InvalidArgument);
        let full = |kind| std::io::Error::from(kind);
        let no_space = differ::Error::io("write", "/f", full(std::io::ErrorKind::StorageFull));
        assert_eq!(no_space.code(), Code::ResourceExhausted);
        let quota = Error::Io(mountutil::IoError::new(
            "copy",
            "/f",
            full(std::io::ErrorKind::QuotaExceeded),
        ));
        assert_eq!(quota.code(), Code::ResourceExhausted);
    }

    #[test]
    fn messages_end_with_the_class_text() {
        let s = to_status(snapshotter::Error::FailedPrecondition(
            "cannot remove snapshot a with child".into(),
        ));
        assert_eq!(
            s.message(),
            "cannot remove snapshot a with child: failed precondition"
        );
    }

    #[test]
    fn remote_statuses_keep_their_class() {
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::Unavailable,
            Code::DeadlineExceeded,
        ] {
            let back = to_status(remote_error("blob", &Status::new(code, "x")));
            assert_eq!(back.code(), code);
        }
        for code in [Code::Internal, Code::PermissionDenied, Code::Unknown] {
            let back = to_status(remote_error("blob", &Status::new(code, "x")));
            assert_eq!(back.code(), Code::Internal, "{code:?}");
        }
    }
}
