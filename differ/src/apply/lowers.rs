//! What a directory takes from the layers below. A directory an overlay layer writes into
//! without declaring it is created in the upper directory, where it hides the lower
//! layers' copy's owner, mode and xattrs: it takes them from the nearest lower layer that
//! has it, at creation when the lower layers are there ([`Lowers::Present`]), or, for a
//! layer applied before them (an image's layers applied at once), once they are:
//! [`inherit_implicit_dirs`] gives each such directory what it would have taken.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use mountutil::at::{self, Dir, Root};

use crate::{Error, Result};

/// The layers below the directory a layer is applied to.
#[derive(Debug, Clone, Copy)]
pub enum Lowers<'a> {
    /// Their directories, nearest first (none for a first layer or a native snapshot).
    Present(&'a [PathBuf]),
    /// Not there yet (being applied meanwhile): the directories the layer creates without
    /// declaring them are listed in [`Applied::implicit_dirs`](super::Applied) for
    /// [`inherit_implicit_dirs`].
    Later,
}

/// Directories a layer applied with [`Lowers::Later`] created without declaring them, in
/// creation order (parents first).
#[derive(Debug, Clone, Default)]
pub struct ImplicitDirs {
    dirs: Vec<ImplicitDir>,
    /// Inodes of those the layer declared afterwards.
    declared: HashSet<u64>,
}

#[derive(Debug, Clone)]
struct ImplicitDir {
    /// Inside the layer's directory, symlinks resolved.
    rel: PathBuf,
    /// Which directory it is: a later entry may have replaced it.
    ino: u64,
}

impl ImplicitDirs {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub(super) fn created(&mut self, rel: PathBuf, dir: &Dir) -> io::Result<()> {
        let ino = at::inode(dir)?;
        self.dirs.push(ImplicitDir { rel, ino });
        Ok(())
    }

    /// Directory `dir` was declared by an entry of the layer.
    pub(super) fn declared(&mut self, dir: &Dir) -> io::Result<()> {
        self.declared.insert(at::inode(dir)?);
        Ok(())
    }
}

/// What a directory takes from its nearest lower layer's copy.
#[derive(Clone, Copy)]
pub(super) enum Take {
    /// Owner, mode, xattrs and access time, and the modification time too if `mtime`.
    Everything { mtime: bool },
    /// The xattrs it does not have (it was declared, with its own owner, mode and times).
    MissingXattrs,
}

/// The nearest lower layer's directory `rel` (symlinks resolved inside that layer); `None`
/// if none has it, or the nearest that has something there has a non-directory (a whiteout,
/// say).
pub(super) fn nearest_lower_dir(lowers: &[Root], rel: &Path) -> Result<Option<Dir>> {
    for lower in lowers {
        match lower.open_dir(rel) {
            Ok(dir) => return Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(Error::io("open in lower layer", rel, e)),
        }
    }
    Ok(None)
}

/// Gives `created` (at `rel`) what `take` says of `lower`. Not `trusted.*` xattrs (as
/// containerd), nor `user.overlay.*`: an inherited opaque or redirect marker would hide the
/// lower layers.
pub(super) fn take_from_lower(created: &Dir, lower: &Dir, rel: &Path, take: Take) -> Result<()> {
    let io = |op| move |e| Error::io(op, rel, e);
    let xattrs = at::fxattrs(lower).map_err(io("read xattrs in lower layer"))?;
    let has: HashSet<OsString> = match take {
        Take::MissingXattrs => at::fxattrs(created)
            .map_err(io("read xattrs"))?
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
        Take::Everything { .. } => HashSet::new(),
    };
    if let Take::Everything { .. } = take {
        let from = at::attrs(lower).map_err(io("stat in lower layer"))?;
        at::fchown(created, from.uid, from.gid).map_err(io("chown"))?;
        at::fchmod(created, from.mode).map_err(io("chmod"))?;
    }
    for (key, value) in xattrs {
        let k = key.as_encoded_bytes();
        if !k.starts_with(b"trusted.") && !k.starts_with(b"user.overlay.") && !has.contains(&key) {
            at::fsetxattr(created, &key, &value).map_err(io("setxattr"))?;
        }
    }
    if let Take::Everything { mtime } = take {
        let from = at::attrs(lower).map_err(io("stat in lower layer"))?;
        let own = at::attrs(created).map_err(io("stat"))?;
        let mtime = if mtime { from.mtime } else { own.mtime };
        at::futimens(created, from.atime, mtime).map_err(io("utimens"))?;
    }
    Ok(())
}

/// Gives the directories a layer created in `target` without declaring them
/// ([`ImplicitDirs`], from an apply with [`Lowers::Later`]) what they would have had if the
/// layer had been applied with `lowers` present: the owner, mode, xattrs and access time
/// of the nearest lower layer's copy (their modification time is the apply's either way:
/// entries were created in them); a declared one only the xattrs it lacks; one no lower
/// layer has, made in a setgid directory (as that directory was then), that directory's
/// group and, when the umask leaves 0755 alone, the setgid bit, as `mkdir` gives them. A
/// directory a later entry replaced is left alone.
pub fn inherit_implicit_dirs(target: &Path, lowers: &[PathBuf], dirs: &ImplicitDirs) -> Result<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let root = Root::open(target).map_err(|e| Error::io("open", target, e))?;
    let lowers = lowers
        .iter()
        .map(|p| Root::open(p).map_err(|e| Error::io("open lower layer", p, e)))
        .collect::<Result<Vec<_>>>()?;
    let umask = at::current_umask();
    // (mode, gid) each had when made, for the setgid of those made in it.
    let mut made: HashMap<&Path, (u32, u32)> = HashMap::new();
    for d in &dirs.dirs {
        let (Some(parent_rel), Some(name)) = (d.rel.parent(), d.rel.file_name()) else {
            continue;
        };
        let gone = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) || at::is_symlink_loop(e)
        };
        let parent = match root.open_dir(parent_rel) {
            Ok(p) => p,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(Error::io("open", parent_rel, e)),
        };
        let dir = match parent.open_subdir(name) {
            Ok(dir) => dir,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(Error::io("open", &d.rel, e)),
        };
        let io = |op| move |e| Error::io(op, &d.rel, e);
        if at::inode(&dir).map_err(io("stat"))? != d.ino {
            continue;
        }
        let declared = dirs.declared.contains(&d.ino);
        if let Some(lower) = nearest_lower_dir(&lowers, &d.rel)? {
            let from = at::attrs(&lower).map_err(io("stat in lower layer"))?;
            made.insert(&d.rel, (from.mode, from.gid));
            let take = if declared {
                Take::MissingXattrs
            } else {
                Take::Everything { mtime: false }
            };
            take_from_lower(&dir, &lower, &d.rel, take)?;
            continue;
        }
        let (parent_mode, parent_gid) = match made.get(parent_rel) {
            Some(m) => *m,
            None => {
                let a = at::attrs(&parent).map_err(io("stat parent"))?;
                (a.mode, a.gid)
            }
        };
        let own = at::attrs(&dir).map_err(io("stat"))?;
        if parent_mode & 0o2000 == 0 {
            made.insert(&d.rel, (own.mode, own.gid));
            continue;
        }
        let mode = if umask & 0o755 == 0 {
            own.mode | 0o2000
        } else {
            own.mode
        };
        made.insert(&d.rel, (mode, parent_gid));
        if !declared {
            at::fchown(&dir, own.uid, parent_gid).map_err(io("chown"))?;
            at::fchmod(&dir, mode).map_err(io("chmod"))?;
        }
    }
    Ok(())
}
