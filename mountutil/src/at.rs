//! Directory-relative file operations confined to a root directory, for writing untrusted
//! layers: every path is resolved with `openat2(RESOLVE_IN_ROOT)`, so `..`, absolute names
//! and symlinks (in the layer or already on disk) resolve inside the root, as if chrooted;
//! final components are single names acted on without following symlinks.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid};

use crate::fs::{NodeKind, grow_until_it_fits};

/// What a name in a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device with its device number.
    CharDevice(u64),
    /// Anything else (block device, fifo, socket).
    Other,
}

/// The root every path is resolved in.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

impl Root {
    /// Opens `path` as a root.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty())?;
        Ok(Root { fd })
    }

    /// Opens directory `rel` (relative, resolved inside the root, symlinks included).
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            DIR_FLAGS | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(Dir { fd })
    }
}

/// An open directory inside a root; names given to its methods are single components.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn check_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_encoded_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad name {name:?}"),
        ));
    }
    Ok(name)
}

fn ts((sec, nsec): (i64, i64)) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Creates regular file `name` (it must not exist) for writing.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = rustix::fs::openat(
            &self.fd,
            check_name(name)?,
            flags,
            Mode::from_raw_mode(mode & 0o7777),
        )?;
        Ok(File::from(fd))
    }

    /// Creates directory `name`.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.fd,
            check_name(name)?,
            Mode::from_raw_mode(mode & 0o7777),
        )?)
    }

    /// Opens subdirectory `name`, refusing to follow a symlink.
    pub fn open_subdir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = rustix::fs::openat(
            &self.fd,
            check_name(name)?,
            DIR_FLAGS | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        Ok(Dir { fd })
    }

    /// Creates symlink `name` pointing at `target` (stored verbatim).
    pub fn symlink(&self, name: &OsStr, target: &Path) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &self.fd, check_name(name)?)?)
    }

    /// Creates a device node or fifo.
    pub fn mknod(
        &self,
        name: &OsStr,
        kind: NodeKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let dev = rustix::fs::makedev(major, minor);
        Ok(rustix::fs::mknodat(
            &self.fd,
            check_name(name)?,
            kind.file_type(),
            Mode::from_raw_mode(mode & 0o7777),
            dev,
        )?)
    }

    /// Creates `name` as a hard link to `from_name` in `from` (a symlink is linked itself).
    pub fn hard_link(&self, name: &OsStr, from: &Dir, from_name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &from.fd,
            check_name(from_name)?,
            &self.fd,
            check_name(name)?,
            AtFlags::empty(),
        )?)
    }

    /// What `name` is, without following a symlink; `None` if it does not exist.
    pub fn kind(&self, name: &OsStr) -> io::Result<Option<Kind>> {
        match rustix::fs::statat(&self.fd, check_name(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink,
                FileType::CharacterDevice => Kind::CharDevice(st.st_rdev),
                _ => Kind::Other,
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The target of symlink `name`, as stored.
    pub fn read_link(&self, name: &OsStr) -> io::Result<std::path::PathBuf> {
        let target = rustix::fs::readlinkat(&self.fd, check_name(name)?, Vec::new())?;
        Ok(std::path::PathBuf::from(OsString::from_vec(
            target.into_bytes(),
        )))
    }

    /// Removes non-directory `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &self.fd,
            check_name(name)?,
            AtFlags::empty(),
        )?)
    }

    /// Removes `name` whatever it is, directories recursively; absent is fine. Depth first
    /// with a stack on the heap, not recursion: a layer can nest directories deeper than a
    /// thread's stack would allow (one descriptor per level is held; too deep a tree runs
    /// out of descriptors and fails cleanly).
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        match self.kind(name)? {
            None => return Ok(()),
            Some(Kind::Dir) => {}
            Some(_) => return self.unlink(name),
        }
        let mut stack = vec![Emptying::open(self, name)?];
        while let Some(top) = stack.last_mut() {
            if let Some(child) = top.left.pop() {
                match top.dir.kind(&child)? {
                    Some(Kind::Dir) => {
                        let sub = Emptying::open(&top.dir, &child)?;
                        stack.push(sub);
                    }
                    Some(_) => top.dir.unlink(&child)?,
                    None => {}
                }
                continue;
            }
            let done = stack.pop().expect("the loop saw a top frame");
            let parent = stack.last().map_or(self, |f| &f.dir);
            drop(done.dir);
            rustix::fs::unlinkat(&parent.fd, &done.name, AtFlags::REMOVEDIR)?;
        }
        Ok(())
    }

    /// Names in this directory (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(n).to_os_string());
            }
        }
        Ok(out)
    }

    /// Sets extended attribute `key` of `name` without following a symlink or opening it
    /// (devices and fifos included): through this directory's `/proc/self/fd` entry, so only
    /// the final, single-component name is looked up.
    pub fn set_xattr(&self, name: &OsStr, key: &OsStr, value: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let path = Path::new("/proc/self/fd")
            .join(self.fd.as_raw_fd().to_string())
            .join(check_name(name)?);
        Ok(rustix::fs::lsetxattr(
            path,
            key,
            value,
            rustix::fs::XattrFlags::empty(),
        )?)
    }

    /// Sets the owner of `name` without following a symlink.
    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let (u, g) = owner(uid, gid);
        Ok(rustix::fs::chownat(
            &self.fd,
            check_name(name)?,
            Some(u),
            Some(g),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the mode of `name`, which must not be a symlink.
    pub fn chmod(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::chmodat(
            &self.fd,
            check_name(name)?,
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )?)
    }

    /// Sets access and modification times of `name` without following a symlink.
    pub fn set_times(&self, name: &OsStr, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
        let t = Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        };
        Ok(rustix::fs::utimensat(
            &self.fd,
            check_name(name)?,
            &t,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

fn owner(uid: u32, gid: u32) -> (Uid, Gid) {
    (Uid::from_raw(uid), Gid::from_raw(gid))
}

/// Sets the owner of an open file or directory.
pub fn fchown(fd: impl AsFd, uid: u32, gid: u32) -> io::Result<()> {
    let (u, g) = owner(uid, gid);
    Ok(rustix::fs::fchown(fd, Some(u), Some(g))?)
}

/// Sets the mode of an open file or directory.
pub fn fchmod(fd: impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?)
}

/// Sets the times of an open file or directory.
pub fn futimens(fd: impl AsFd, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let t = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    Ok(rustix::fs::futimens(fd, &t)?)
}

/// Sets an extended attribute of an open file or directory.
pub fn fsetxattr(fd: impl AsFd, name: &OsStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(
        fd,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// A directory being emptied by [`Dir::remove_all`]: its name in its parent and the names
/// in it still to remove.
struct Emptying {
    dir: Dir,
    name: OsString,
    left: Vec<OsString>,
}

impl Emptying {
    fn open(parent: &Dir, name: &OsStr) -> io::Result<Self> {
        let dir = parent.open_subdir(name)?;
        let left = dir.names()?;
        Ok(Emptying {
            dir,
            name: name.to_os_string(),
            left,
        })
    }
}

/// Inode number, owner, permission bits and times of a file, as `stat` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    /// Which file it is on its filesystem.
    pub ino: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

/// Inode number, owner, mode and times of an open file or directory.
pub fn attrs(fd: impl AsFd) -> io::Result<Attrs> {
    let st = rustix::fs::fstat(fd)?;
    Ok(Attrs {
        ino: st.st_ino,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        atime: (st.st_atime, st.st_atime_nsec as i64),
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
    })
}

/// Every extended attribute of an open file or directory, names and values.
pub fn fxattrs(fd: impl AsFd) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let fd = fd.as_fd();
    let names = match grow_until_it_fits(|buf| rustix::fs::flistxattr(fd, buf)) {
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        r => r?,
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        match grow_until_it_fits(|buf| rustix::fs::fgetxattr(fd, name, buf)) {
            // Removed since it was listed.
            Err(rustix::io::Errno::NODATA) => {}
            r => out.push((name.to_os_string(), r?)),
        }
    }
    Ok(out)
}

/// Whether `e` says a path had too many levels of symlinks (ELOOP; `io::ErrorKind`'s
/// `FilesystemLoop` is not stable).
pub fn is_symlink_loop(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// The effective user and group ids of this process.
pub fn effective_ids() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// The process umask, read without changing it (`Umask:` of /proc/self/status); 0o022 if
/// it cannot be read.
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_all_empties_deep_and_wide_trees() {
        let base = std::env::temp_dir().join(format!("mountutil-rm-{}", std::process::id()));
        std::fs::create_dir(&base).unwrap();
        let root = Root::open(&base).unwrap();
        let top = root.open_dir(Path::new("")).unwrap();
        top.mkdir("t".as_ref(), 0o755).unwrap();
        // 3,000 levels (deeper than any path can name), files and a symlink on the way.
        let mut dir = top.open_subdir("t".as_ref()).unwrap();
        for i in 0..3000 {
            if i % 500 == 0 {
                dir.create_file("f".as_ref(), 0o644).unwrap();
                dir.symlink("l".as_ref(), Path::new("/")).unwrap();
            }
            dir.mkdir("d".as_ref(), 0o700).unwrap();
            dir = dir.open_subdir("d".as_ref()).unwrap();
        }
        drop(dir);
        top.remove_all("t".as_ref()).unwrap();
        assert_eq!(top.kind("t".as_ref()).unwrap(), None);
        top.remove_all("absent".as_ref()).unwrap();
        std::fs::remove_dir(&base).unwrap();
    }
}
