//! The one place where domain errors become gRPC statuses, with the codes containerd's
//! errdefs expects (containerd branches on them: AlreadyExists, NotFound, ...).

use snapshotter::Error;
use tonic::{Code, Status};

/// The gRPC code of a snapshotter error.
pub fn code(e: &Error) -> Code {
    match e {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::NotImplemented(_) => Code::Unimplemented,
        Error::Sys(mountutil::Error::Locked { .. }) => Code::Unavailable,
        Error::Sys(mountutil::Error::InvalidMount(_)) => Code::InvalidArgument,
        Error::Index(_) | Error::CorruptRecord { .. } | Error::Io { .. } | Error::Sys(_) => {
            Code::Internal
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

/// Converts a snapshotter error into a status carrying its whole chain as the message.
pub fn to_status(e: Error) -> Status {
    let code = code(&e);
    if code == Code::Internal {
        tracing::error!(error = %chain(&e), "internal error");
    }
    Status::new(code, chain(&e))
}

/// The gRPC code of a differ error.
pub fn differ_code(e: &differ::Error) -> Code {
    use differ::Error as D;
    match e {
        D::InvalidLayer(_) | D::InvalidArgument(_) => Code::InvalidArgument,
        D::Mismatch { .. } => Code::FailedPrecondition,
        D::NotImplemented(_) => Code::Unimplemented,
        D::NotFound(_) => Code::NotFound,
        D::Sys(mountutil::Error::InvalidMount(_)) => Code::InvalidArgument,
        D::Io { .. } | D::Sys(_) => Code::Internal,
    }
}

/// Converts a differ error into a status carrying its whole chain as the message.
pub fn differ_status(e: differ::Error) -> Status {
    let code = differ_code(&e);
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
        assert_eq!(code(&Error::NotFound("x".into())), Code::NotFound);
        assert_eq!(code(&Error::AlreadyExists("x".into())), Code::AlreadyExists);
        assert_eq!(
            code(&Error::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&Error::FailedPrecondition("x".into())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(&Error::NotImplemented("x".into())),
            Code::Unimplemented
        );
        let io = Error::Io {
            op: "stat",
            path: "/x".into(),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(code(&io), Code::Internal);
        assert_eq!(chain(&io), "stat /x: boom");
    }

    #[test]
    fn messages_end_with_the_class_text() {
        let s = to_status(Error::FailedPrecondition(
            "cannot remove snapshot a with child".into(),
        ));
        assert_eq!(
            s.message(),
            "cannot remove snapshot a with child: failed precondition"
        );
    }
}
