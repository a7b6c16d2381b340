//! systemd integration: the listening socket handed over by socket activation
//! (`LISTEN_FDS`, as `strata.socket` or `systemd-socket-activate` pass it), and readiness and
//! shutdown notifications (`NOTIFY_SOCKET`, for `Type=notify`). Both are no-ops outside
//! systemd.

use std::io;
use std::os::unix::net::UnixListener;

/// The unix socket systemd passed as the first activated descriptor, if any. Call before
/// starting any thread: it clears `LISTEN_FDS`/`LISTEN_PID` from the environment so that
/// children do not take the socket for theirs.
pub fn take_activated_listener() -> io::Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let listener = fds.take_unix_listener(0)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the first activated descriptor is not a listening unix socket",
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Tells systemd the daemon serves (`READY=1`).
pub fn notify_ready() {
    send(sd_notify::NotifyState::Ready);
}

/// Tells systemd the daemon is shutting down (`STOPPING=1`).
pub fn notify_stopping() {
    send(sd_notify::NotifyState::Stopping);
}

fn send(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
