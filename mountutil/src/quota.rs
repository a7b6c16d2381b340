//! Project quotas: a directory tagged with a project id that everything created under it
//! inherits (`FS_IOC_FSSETXATTR`), and a block limit on that id (`quotactl_fd`), which is
//! how a writable layer gets a size limit on ext4 or xfs mounted with project quota.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use crate::sys::{ioctl, open_dir, zero_or_errno};
use crate::{Error, Result};

/// `struct fsxattr` of `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New files and directories take the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// `struct fs_quota_statv` of `Q_XGETQSTATV`, version 1.
#[repr(C)]
#[derive(Default)]
struct QuotaStatV {
    version: i8,
    pad1: u8,
    flags: u16,
    incoredqs: u32,
    files: [[u64; 3]; 3],
    btimelimit: i32,
    itimelimit: i32,
    rtbtimelimit: i32,
    warnlimits: [u16; 4],
    pad4: u32,
    pad2: [u64; 7],
}

const PRJQUOTA: u32 = 2;
const Q_XGETQSTATV: u32 = (b'X' as u32) << 8 | 8;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;

/// `QCMD(cmd, PRJQUOTA)`.
fn project_cmd(cmd: u32) -> u32 {
    cmd << 8 | PRJQUOTA
}

/// Tags directory `dir` with project `id`, inherited by everything created under it. On a
/// filesystem without project ids this fails with EOPNOTSUPP.
pub fn set_project(dir: &Path, id: u32) -> Result<()> {
    let file = open_dir(dir)?;
    let mut attr = FsXattr::default();
    ioctl(file.as_fd(), FS_IOC_FSGETXATTR, &mut attr)
        .map_err(|e| Error::io("get project of", dir, e))?;
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    ioctl(file.as_fd(), FS_IOC_FSSETXATTR, &mut attr)
        .map_err(|e| Error::io("set project of", dir, e))
}

/// The project id of `path` (0 when it has none).
pub fn project_of(path: &Path) -> Result<u32> {
    let file = open_dir(path)?;
    let mut attr = FsXattr::default();
    ioctl(file.as_fd(), FS_IOC_FSGETXATTR, &mut attr)
        .map_err(|e| Error::io("get project of", path, e))?;
    Ok(attr.projid)
}

/// quotactl_fd `cmd` for `id` on the filesystem of `on`, with `arg`, the one structure
/// that command reads or fills.
#[allow(unsafe_code)]
fn quotactl<T>(on: BorrowedFd<'_>, cmd: u32, id: u32, arg: &mut T) -> std::io::Result<()> {
    let addr = std::ptr::from_mut(arg);
    // SAFETY: quotactl_fd reads or writes the one structure its command takes; every caller
    // pairs `cmd` with that structure's type, and `arg` is borrowed mutably for the call.
    let rc = unsafe { libc::syscall(libc::SYS_quotactl_fd, on.as_raw_fd(), cmd, id, addr) };
    zero_or_errno(rc)
}

/// Whether the filesystem holding `path` enforces project quota limits (ext4 or xfs
/// mounted with `prjquota`).
pub fn project_quota_enforced(path: &Path) -> Result<bool> {
    let file = open_dir(path)?;
    let mut stat = QuotaStatV {
        version: 1,
        ..QuotaStatV::default()
    };
    match quotactl(file.as_fd(), project_cmd(Q_XGETQSTATV), 0, &mut stat) {
        Ok(()) => Ok(stat.flags & FS_QUOTA_PDQ_ENFD != 0),
        // No quota support at all, or none switched on for this filesystem.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::ENOTSUP | libc::ESRCH | libc::EINVAL | libc::ENOENT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::io("query quota state of", path, e)),
    }
}

/// Sets the hard block limit of project `id` on the filesystem holding `on` to `bytes`
/// (rounded up to whole KiB; 0 removes the limit).
pub fn set_project_limit(on: &Path, id: u32, bytes: u64) -> Result<()> {
    let file = open_dir(on)?;
    let mut quota = libc::dqblk {
        dqb_bhardlimit: bytes.div_ceil(1024),
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: libc::QIF_BLIMITS,
    };
    quotactl(
        file.as_fd(),
        project_cmd(libc::Q_SETQUOTA as u32),
        id,
        &mut quota,
    )
    .map_err(|e| Error::io("set project quota on", on, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernel_sizes() {
        assert_eq!(size_of::<FsXattr>(), 28);
        assert_eq!(size_of::<QuotaStatV>(), 160);
        assert_eq!(project_cmd(0x80_0008), 0x8000_0802);
    }
}
