//! File-level syscalls used when copying or writing trees: xattrs, device nodes, timestamps
//! without following symlinks, and sparse-aware file copies.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, SeekFrom, Timespec, Timestamps};

use crate::{Error, Result};

/// Names of the extended attributes of `path` (not following a final symlink).
pub fn list_xattrs(path: &Path) -> Result<Vec<OsString>> {
    match grow_until_it_fits(|buf| rustix::fs::llistxattr(path, buf)) {
        Ok(names) => Ok(names
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsStr::from_bytes(s).to_os_string())
            .collect()),
        Err(rustix::io::Errno::NOTSUP) => Ok(Vec::new()),
        Err(e) => Err(Error::io("listxattr", path, e.into())),
    }
}

/// The value of extended attribute `name` of `path` (not following a final symlink).
pub fn get_xattr(path: &Path, name: &OsStr) -> Result<Vec<u8>> {
    grow_until_it_fits(|buf| rustix::fs::lgetxattr(path, name, buf))
        .map_err(|e| Error::io("getxattr", path, e.into()))
}

/// Sets extended attribute `name` of `path` (not following a final symlink).
pub fn set_xattr(path: &Path, name: &OsStr, value: &[u8]) -> Result<()> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .map_err(|e| Error::io("setxattr", path, e.into()))
}

/// Removes extended attribute `name` of `path` (not following a final symlink); a missing
/// attribute is not an error.
pub fn remove_xattr(path: &Path, name: &OsStr) -> Result<()> {
    match rustix::fs::lremovexattr(path, name) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(Error::io("removexattr", path, e.into())),
    }
}

/// What kind of special file [`mknod`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

impl NodeKind {
    /// The file type mknod(2) is given for it.
    pub(crate) fn file_type(self) -> FileType {
        match self {
            NodeKind::Char => FileType::CharacterDevice,
            NodeKind::Block => FileType::BlockDevice,
            NodeKind::Fifo => FileType::Fifo,
        }
    }
}

/// Calls `get` with ever larger buffers until the answer fits (ERANGE means it did not).
pub(crate) fn grow_until_it_fits(
    mut get: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match get(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 24 => {
                let len = buf.len() * 4;
                buf.resize(len, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates a device node or fifo at `path` with permission bits `perm`.
pub fn mknod(path: &Path, kind: NodeKind, perm: u32, major: u32, minor: u32) -> Result<()> {
    let dev = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(
        CWD,
        path,
        kind.file_type(),
        Mode::from_raw_mode(perm & 0o7777),
        dev,
    )
    .map_err(|e| Error::io("mknod", path, e.into()))
}

/// Splits a `st_rdev` into (major, minor).
pub fn split_dev(rdev: u64) -> (u32, u32) {
    (rustix::fs::major(rdev), rustix::fs::minor(rdev))
}

/// Sets access and modification times of `path` without following a final symlink.
pub fn set_times_nofollow(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
    let ts = |(s, ns): (i64, i64)| Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    let times = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("utimensat", path, e.into()))
}

/// Copies `len` bytes of `src` into the empty file `dst`, keeping holes: only the data
/// extents are copied (with copy_file_range, which reflinks where the filesystem can), and
/// the length is set at the end.
pub fn copy_sparse(src: &File, dst: &File, len: u64, dst_path: &Path) -> Result<()> {
    let io_err = |e: io::Error| Error::io("copy", dst_path, e);
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io_err(e.into())),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data)).map_err(|e| io_err(e.into()))?;
        copy_range(src, dst, data, hole.min(len)).map_err(io_err)?;
        pos = hole;
    }
    dst.set_len(len).map_err(io_err)
}

fn copy_range(src: &File, dst: &File, start: u64, end: u64) -> io::Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let want = (end - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => return copy_range_buffered(src, dst, off_in, end),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_buffered(src: &File, dst: &File, mut off: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// The size and the space available to unprivileged users of the filesystem holding
/// `path`, in bytes (statvfs).
pub fn filesystem_space(path: &Path) -> Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path).map_err(|e| Error::io("statvfs", path, e.into()))?;
    Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

/// Flushes the filesystem holding `path` to disk (syncfs).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(|e| Error::io("open", path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io("syncfs", path, e.into()))
}
