//! Idmapped mounts: a user namespace made for a container's uid/gid mapping, and a detached,
//! read-only clone of a directory tree through which files are seen with their owners
//! mapped (`mount_setattr(MOUNT_ATTR_IDMAP)`), attached where legacy mounts can name it.
//! A user-namespaced container then sees image layers with its own ids, and no layer is
//! copied or chowned.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, WaitOptions};

use crate::{Error, Result};

/// One range of a mapping: `size` ids from `container` inside map to `host` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdRange {
    /// First id inside the user namespace.
    pub container: u32,
    /// First id it maps to on the host.
    pub host: u32,
    /// How many ids.
    pub size: u32,
}

impl IdRange {
    /// The host id of container id `id`, if this range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container)?;
        (offset < self.size).then(|| self.host + offset)
    }
}

/// A container's uid and gid mappings, as containerd's `containerd.io/snapshot/uidmapping`
/// and `gidmapping` labels carry them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdMapping {
    /// uid ranges.
    pub uids: Vec<IdRange>,
    /// gid ranges.
    pub gids: Vec<IdRange>,
}

impl IdMapping {
    /// The host uid and gid of a container id, or `None` where the mapping leaves it out.
    pub fn to_host(&self, uid: u32, gid: u32) -> (Option<u32>, Option<u32>) {
        let map = |ranges: &[IdRange], id| ranges.iter().find_map(|r| r.to_host(id));
        (map(&self.uids, uid), map(&self.gids, gid))
    }

    /// The mapping's ranges in `/proc/<pid>/uid_map` form.
    fn proc_map(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
            .collect()
    }
}

impl fmt::Display for IdMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ranges: &[IdRange]| {
            ranges
                .iter()
                .map(|r| format!("{}:{}:{}", r.container, r.host, r.size))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "uids {} gids {}", list(&self.uids), list(&self.gids))
    }
}

/// Serialises namespace creation: each forks a child, and one at a time keeps the pipes a
/// concurrent fork would inherit out of each other's children.
static FORKING: Mutex<()> = Mutex::new(());

/// A user namespace with `mapping`, as a file descriptor of `/proc/<pid>/ns/user` (which
/// keeps it alive after its one process has gone).
pub fn user_namespace(mapping: &IdMapping) -> Result<OwnedFd> {
    let _one = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let pipe = || rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| fork_err("pipe", e));
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let pid = fork_into_user_namespace(
        [ready_w.as_fd(), done_r.as_fd()],
        [ready_r.as_fd(), done_w.as_fd()],
    )?;
    drop((ready_w, done_r));
    let result = (|| {
        let mut byte = [0u8];
        let n = rustix::io::read(&ready_r, &mut byte).map_err(|e| fork_err("read", e))?;
        if n != 1 {
            return Err(fork_err("unshare(CLONE_NEWUSER)", Errno::PERM));
        }
        let proc = Path::new("/proc").join(pid.as_raw_nonzero().to_string());
        for (file, ranges) in [("uid_map", &mapping.uids), ("gid_map", &mapping.gids)] {
            let path = proc.join(file);
            std::fs::write(&path, IdMapping::proc_map(ranges))
                .map_err(|e| Error::io("write", &path, e))?;
        }
        let ns = proc.join("ns/user");
        let fd = File::open(&ns).map_err(|e| Error::io("open", &ns, e))?;
        Ok(OwnedFd::from(fd))
    })();
    drop(done_w);
    rustix::process::waitpid(Some(pid), WaitOptions::empty())
        .map_err(|e| fork_err("waitpid", e))?;
    result
}

fn fork_err(step: &'static str, e: Errno) -> Error {
    Error::io(step, "user namespace", e.into())
}

/// Forks a child that enters a new user namespace, writes a byte to `ready`, and exits when
/// `done` reaches end of file (or at once, without the byte, if it cannot unshare). The
/// child closes its copies of the parent's ends (`theirs`: the read end of `ready`, the
/// write end of `done`), or its own copy of `done`'s write end would keep it waiting.
#[allow(unsafe_code)]
fn fork_into_user_namespace(
    [ready, done]: [BorrowedFd<'_>; 2],
    theirs: [BorrowedFd<'_>; 2],
) -> Result<Pid> {
    let (ready, done) = (ready.as_raw_fd(), done.as_raw_fd());
    let theirs = theirs.map(|fd| fd.as_raw_fd());
    // SAFETY: fork copies only this thread. The child runs no Rust code that could touch
    // state other threads held (locks, the allocator): only the raw syscalls close, unshare,
    // write, read and _exit, all async-signal-safe, on descriptors it inherited and a stack
    // buffer, and it never returns from this block.
    let pid = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            for fd in theirs {
                libc::close(fd);
            }
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(1);
            }
            let mut byte = 1u8;
            libc::write(ready, (&raw const byte).cast(), 1);
            libc::read(done, (&raw mut byte).cast(), 1);
            libc::_exit(0);
        }
        pid
    };
    Pid::from_raw(pid).ok_or_else(|| fork_err("fork", Errno::from_raw_os_error(errno())))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Makes detached mount `tree` read-only and idmapped through user namespace `userns`.
#[allow(unsafe_code)]
fn set_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is a NUL-terminated empty string, `attr` a live `struct mount_attr`
    // whose exact size is passed; the kernel only reads both during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            size_of::<MountAttr>(),
        )
    };
    crate::sys::zero_or_errno(rc)
}

/// Attaches at `target` (an existing directory) a read-only clone of the mount of `source`,
/// idmapped through `userns`: files under `target` show `source`'s files with their owners
/// mapped. Fails where the filesystem or kernel cannot idmap (EINVAL, EPERM, ENOSYS).
pub fn attach_idmapped(source: &Path, target: &Path, userns: BorrowedFd<'_>) -> Result<()> {
    let fail = |step: &str, e: std::io::Error| Error::Mount {
        fstype: format!("idmapped clone of {}", source.display()),
        target: target.to_path_buf(),
        source: std::io::Error::new(e.kind(), format!("{step}: {e}")),
    };
    let tree = rustix::mount::open_tree(
        CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| fail("open_tree", e.into()))?;
    set_idmap(tree.as_fd(), userns).map_err(|e| fail("mount_setattr", e))?;
    rustix::mount::move_mount(
        &tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| fail("move_mount", e.into()))
}

/// Whether `path` is the root of a mount.
pub fn is_mount_root(path: &Path) -> Result<bool> {
    let st = rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .map_err(|e| Error::io("statx", path, e.into()))?;
    Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_ids_inside_them_only() {
        let mapping = IdMapping {
            uids: vec![
                IdRange {
                    container: 0,
                    host: 100000,
                    size: 1000,
                },
                IdRange {
                    container: 1000,
                    host: 200000,
                    size: 1,
                },
            ],
            gids: vec![IdRange {
                container: 0,
                host: 300000,
                size: 65536,
            }],
        };
        assert_eq!(mapping.to_host(0, 0), (Some(100000), Some(300000)));
        assert_eq!(mapping.to_host(999, 65535), (Some(100999), Some(365535)));
        assert_eq!(mapping.to_host(1000, 65536), (Some(200000), None));
        assert_eq!(mapping.to_host(1001, 7), (None, Some(300007)));
        assert_eq!(
            IdMapping::proc_map(&mapping.uids),
            "0 100000 1000\n1000 200000 1\n"
        );
        assert_eq!(
            mapping.to_string(),
            "uids 0:100000:1000,1000:200000:1 gids 0:300000:65536"
        );
    }
}
