//! btrfs subvolumes with a qgroup limit: the other way a writable layer gets a size limit,
//! on a btrfs with quotas enabled (`btrfs quota enable`). A limited snapshot's directory is
//! a subvolume whose qgroup (`0/<subvolume id>`) caps what it references; deleting the
//! directory (rmdir of an empty subvolume deletes it) lets the kernel drop the qgroup too,
//! mostly: [`remove_qgroup`] is for the ones it leaves.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::{ioctl, open_dir};
use crate::{Error, Result};

const BTRFS_SUPER_MAGIC: u32 = 0x9123_683e;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 992],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `_IOW(0x94, 14, vol_args)`, `_IOR(0x94, 43, qgroup_limit_args)`, `_IOR(0x94, 31, fs_info)`,
/// `_IOWR(0x94, 18, ino_lookup_args)`, `_IOW(0x94, 42, qgroup_create_args)`.
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
const BTRFS_IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942b;
const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
const BTRFS_IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
const BTRFS_IOC_QGROUP_CREATE: libc::c_ulong = 0x4010_942a;
/// The limit is on referenced bytes; this value for it lifts the limit.
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;
const CLEAR_LIMIT: u64 = u64::MAX;
/// The inode number of every subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

/// Whether `path` is on btrfs.
pub fn is_btrfs(path: &Path) -> Result<bool> {
    let st = rustix::fs::statfs(path).map_err(|e| Error::io("statfs", path, e.into()))?;
    // f_type's width differs between architectures; the magic fits in 32 bits.
    Ok(st.f_type as u32 == BTRFS_SUPER_MAGIC)
}

/// Whether the btrfs holding `path` has quotas enabled (its sysfs directory then lists
/// qgroups).
pub fn quotas_enabled(path: &Path) -> Result<bool> {
    let dir = open_dir(path)?;
    let mut info = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 992],
    };
    ioctl(dir.as_fd(), BTRFS_IOC_FS_INFO, &mut info)
        .map_err(|e| Error::io("btrfs fs info of", path, e))?;
    let hex: String = info.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    Ok(Path::new("/sys/fs/btrfs")
        .join(uuid)
        .join("qgroups")
        .is_dir())
}

/// Creates `path` (which must not exist) as a new, empty subvolume.
pub fn create_subvolume(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::InvalidMount(format!(
            "no subvolume name in {}",
            path.display()
        )));
    };
    let name = CString::new(name.as_bytes())
        .map_err(|_| Error::InvalidMount(format!("NUL in {}", path.display())))?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > args.name.len() {
        return Err(Error::InvalidMount(format!(
            "name too long: {}",
            path.display()
        )));
    }
    args.name[..bytes.len()].copy_from_slice(bytes);
    let dir = open_dir(parent)?;
    ioctl(dir.as_fd(), BTRFS_IOC_SUBVOL_CREATE, &mut args)
        .map_err(|e| Error::io("create subvolume", path, e))
}

/// Whether `path` is the root directory of a subvolume.
pub fn is_subvolume(path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(is_btrfs(path)? && md.is_dir() && md.ino() == SUBVOLUME_ROOT_INO)
}

/// Caps what subvolume `path` references at `bytes`; `None` lifts the cap.
pub fn set_subvolume_limit(path: &Path, bytes: Option<u64>) -> Result<()> {
    let dir = open_dir(path)?;
    // qgroupid 0: the qgroup of the subvolume `dir` is in.
    let mut args = QgroupLimitArgs {
        flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes.unwrap_or(CLEAR_LIMIT),
        ..QgroupLimitArgs::default()
    };
    ioctl(dir.as_fd(), BTRFS_IOC_QGROUP_LIMIT, &mut args)
        .map_err(|e| Error::io("set the qgroup limit of", path, e))
}

/// The id of the subvolume whose root directory is `path` (its level-0 qgroup is
/// `0/<id>`).
pub fn subvolume_id(path: &Path) -> Result<u64> {
    let dir = open_dir(path)?;
    // treeid 0: the tree `dir` is in; the answer's treeid is that tree's (subvolume's) id.
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: SUBVOLUME_ROOT_INO,
        name: [0; 4080],
    };
    ioctl(dir.as_fd(), BTRFS_IOC_INO_LOOKUP, &mut args)
        .map_err(|e| Error::io("look up the subvolume of", path, e))?;
    Ok(args.treeid)
}

/// What became of the qgroup of a deleted subvolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QgroupRemoval {
    /// Removed now.
    Removed,
    /// There was none (the kernel removed it when it dropped the subvolume).
    Gone,
    /// The kernel refuses for now: the subvolume is not dropped yet, or its qgroup still
    /// counts bytes its accounting has not caught up with.
    NotYet,
}

/// Removes qgroup `0/<subvolume>` of the btrfs holding `on`, if the kernel lets it: never
/// while the subvolume exists.
pub fn remove_qgroup(on: &Path, subvolume: u64) -> Result<QgroupRemoval> {
    let dir = open_dir(on)?;
    let mut args = QgroupCreateArgs {
        create: 0,
        qgroupid: subvolume,
    };
    match ioctl(dir.as_fd(), BTRFS_IOC_QGROUP_CREATE, &mut args) {
        Ok(()) => Ok(QgroupRemoval::Removed),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(QgroupRemoval::Gone),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(QgroupRemoval::NotYet),
        Err(e) => Err(Error::io("remove a deleted subvolume's qgroup on", on, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernel_sizes() {
        assert_eq!(size_of::<VolArgs>(), 4096);
        assert_eq!(size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(size_of::<FsInfoArgs>(), 1024);
        assert_eq!(size_of::<InoLookupArgs>(), 4096);
        assert_eq!(size_of::<QgroupCreateArgs>(), 16);
    }
}
