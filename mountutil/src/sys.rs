//! The raw pieces the libc-based modules share: a directory opened for ioctls, one
//! `ioctl(2)` taking a structure, and a syscall's 0-or-errno answer as a Result.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{Error, Result};

/// `path`, a directory, opened read-only for ioctls.
pub(crate) fn open_dir(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// ioctl `request` on `fd` with `arg`, the one structure that request reads or fills.
#[allow(unsafe_code)]
pub(crate) fn ioctl<T>(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: &mut T,
) -> std::io::Result<()> {
    // SAFETY: every caller pairs `request` with the structure type it takes (the request
    // number encodes that structure's size, checked against it in each module's tests);
    // `arg` is borrowed mutably for the call and the kernel touches nothing else.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    zero_or_errno(rc.into())
}

/// A syscall's answer `rc`: 0 is success, anything else a failure told by errno.
pub(crate) fn zero_or_errno(rc: libc::c_long) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
