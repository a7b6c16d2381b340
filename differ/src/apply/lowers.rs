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
/// creation order (parents first), and what else the fix-up needs to know.
#[derive(Debug, Clone, Default)]
pub struct ImplicitDirs {
    dirs: Vec<ImplicitDir>,
    /// Directory entries of the layer that declared an existing directory.
    declarations: Vec<Declaration>,
    /// Orders creations and declarations.
    events: u64,
    /// The layer did what cannot be given after the fact (see [`Inherited::ApplyAgain`]).
    apply_again: bool,
}

#[derive(Debug, Clone)]
struct ImplicitDir {
    /// Inside the layer's directory, symlinks resolved.
    rel: PathBuf,
    /// Which directory it is (a removed directory's inode makes the layer apply again, so
    /// a number is not reused for another directory that counts).
    ino: u64,
    event: u64,
}

/// A directory entry over a directory that existed: its mode and group from then on.
#[derive(Debug, Clone)]
struct Declaration {
    ino: u64,
    event: u64,
    mode: u32,
    gid: u32,
}

impl ImplicitDirs {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    fn next_event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    pub(super) fn created(&mut self, rel: PathBuf, dir: &Dir) -> io::Result<()> {
        let ino = at::attrs(dir)?.ino;
        let event = self.next_event();
        self.dirs.push(ImplicitDir { rel, ino, event });
        Ok(())
    }

    /// Directory `dir` was declared by an entry of the layer (its owner and mode set).
    pub(super) fn declared(&mut self, dir: &Dir) -> io::Result<()> {
        let attrs = at::attrs(dir)?;
        let event = self.next_event();
        self.declarations.push(Declaration {
            ino: attrs.ino,
            event,
            mode: attrs.mode,
            gid: attrs.gid,
        });
        Ok(())
    }

    /// The layer removed a directory: one it made may be gone, and its inode number reused.
    pub(super) fn dir_removed(&mut self) {
        self.apply_again |= !self.dirs.is_empty();
    }

    /// The layer marked `dir` opaque: if it made it, an apply on the lower layers would
    /// have left it the lower layer's modification time, which nothing gives afterwards
    /// (entries made in it since may have moved it, or not).
    pub(super) fn marked_opaque(&mut self, dir: &Dir) -> io::Result<()> {
        if !self.dirs.is_empty() {
            let ino = at::attrs(dir)?.ino;
            self.apply_again |= self.dirs.iter().any(|d| d.ino == ino);
        }
        Ok(())
    }

    fn declared_before(&self, ino: u64, event: u64) -> Option<&Declaration> {
        self.declarations
            .iter()
            .filter(|d| d.ino == ino && d.event < event)
            .max_by_key(|d| d.event)
    }
}

/// What [`inherit_implicit_dirs`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inherited {
    /// Every directory has what an apply on the lower layers would have given it.
    Done,
    /// The layer must be applied again on its lower layers: what it did cannot be given
    /// after the fact (a lower directory's default ACL, which entries made in it inherit;
    /// an opaque marker in a directory it made; a directory removed).
    ApplyAgain,
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
    let inheritable = |key: &OsString| {
        let k = key.as_encoded_bytes();
        !k.starts_with(b"trusted.") && !k.starts_with(b"user.overlay.")
    };
    match take {
        Take::Everything { mtime } => {
            let from = at::attrs(lower).map_err(io("stat in lower layer"))?;
            at::fchown(created, from.uid, from.gid).map_err(io("chown"))?;
            at::fchmod(created, from.mode).map_err(io("chmod"))?;
            for (key, value) in xattrs.iter().filter(|(k, _)| inheritable(k)) {
                at::fsetxattr(created, key, value).map_err(io("setxattr"))?;
            }
            let mtime = if mtime {
                from.mtime
            } else {
                at::attrs(created).map_err(io("stat"))?.mtime
            };
            at::futimens(created, from.atime, mtime).map_err(io("utimens"))
        }
        Take::MissingXattrs => {
            let own = at::attrs(created).map_err(io("stat"))?;
            let has: HashSet<OsString> = at::fxattrs(created)
                .map_err(io("read xattrs"))?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let mut acl_added = false;
            for (key, value) in xattrs
                .iter()
                .filter(|(k, _)| inheritable(k) && !has.contains(k))
            {
                at::fsetxattr(created, key, value).map_err(io("setxattr"))?;
                acl_added |= key == ACCESS_ACL;
            }
            // An apply on the lower layers would have given the ACL before the entry set
            // the declared mode: that mode keeps the group bits.
            if acl_added {
                at::fchmod(created, own.mode).map_err(io("chmod"))?;
            }
            Ok(())
        }
    }
}

/// Gives the directories a layer created in `target` without declaring them
/// ([`ImplicitDirs`], from an apply with [`Lowers::Later`]) what they would have had if the
/// layer had been applied with `lowers` present: the owner, mode, xattrs and access time
/// of the nearest lower layer's copy (their modification time is the apply's either way:
/// entries were created in them); a declared one only the xattrs it lacks; one no lower
/// layer has, made in a setgid directory (as that directory was then), that directory's
/// group and, when the umask leaves 0755 alone, the setgid bit, as `mkdir` gives them.
/// [`Inherited::ApplyAgain`] when that cannot be done (nothing changed then).
pub fn inherit_implicit_dirs(
    target: &Path,
    lowers: &[PathBuf],
    dirs: &ImplicitDirs,
) -> Result<Inherited> {
    if dirs.apply_again {
        return Ok(Inherited::ApplyAgain);
    }
    if dirs.is_empty() {
        return Ok(Inherited::Done);
    }
    let root = Root::open(target).map_err(|e| Error::io("open", target, e))?;
    let lowers = lowers
        .iter()
        .map(|p| Root::open(p).map_err(|e| Error::io("open lower layer", p, e)))
        .collect::<Result<Vec<_>>>()?;
    // Each directory with its lower layer's copy, all found before anything changes.
    let mut found = Vec::new();
    for d in &dirs.dirs {
        let (Some(parent_rel), Some(name)) = (d.rel.parent(), d.rel.file_name()) else {
            continue;
        };
        let parent = root
            .open_dir(parent_rel)
            .map_err(|e| Error::io("open", parent_rel, e))?;
        let dir = parent
            .open_subdir(name)
            .map_err(|e| Error::io("open", &d.rel, e))?;
        let lower = nearest_lower_dir(&lowers, &d.rel)?;
        if let Some(lower) = &lower {
            let acl = at::fxattrs(lower)
                .map_err(|e| Error::io("read xattrs in lower layer", &d.rel, e))?
                .iter()
                .any(|(k, _)| k == DEFAULT_ACL);
            if acl {
                return Ok(Inherited::ApplyAgain);
            }
        }
        found.push((d, parent, dir, lower));
    }
    let umask = at::current_umask();
    let egid = at::effective_ids().1;
    // (mode, gid) each had when made: what those made in it took from it.
    let mut made: HashMap<&Path, (u64, (u32, u32))> = HashMap::new();
    for (d, parent, dir, lower) in found {
        let io = |op| move |e| Error::io(op, &d.rel, e);
        let declared = dirs.declarations.iter().any(|x| x.ino == d.ino);
        if let Some(lower) = lower {
            let from = at::attrs(&lower).map_err(io("stat in lower layer"))?;
            made.insert(&d.rel, (d.ino, (from.mode, from.gid)));
            let take = if declared {
                Take::MissingXattrs
            } else {
                Take::Everything { mtime: false }
            };
            take_from_lower(&dir, &lower, &d.rel, take)?;
            continue;
        }
        // The parent as it was when this one was made: as made, or as declared since.
        let parent_rel = d.rel.parent().unwrap_or(Path::new(""));
        let (parent_mode, parent_gid) = match made.get(parent_rel) {
            Some(&(ino, as_made)) => dirs
                .declared_before(ino, d.event)
                .map_or(as_made, |x| (x.mode, x.gid)),
            None => {
                let a = at::attrs(&parent).map_err(io("stat parent"))?;
                (a.mode, a.gid)
            }
        };
        if parent_mode & 0o2000 == 0 {
            made.insert(&d.rel, (d.ino, (0o755, egid)));
            continue;
        }
        let setgid = if umask & 0o755 == 0 { 0o2000 } else { 0 };
        made.insert(&d.rel, (d.ino, (0o755 | setgid, parent_gid)));
        if !declared {
            let own = at::attrs(&dir).map_err(io("stat"))?;
            at::fchown(&dir, own.uid, parent_gid).map_err(io("chown"))?;
            at::fchmod(&dir, own.mode | setgid).map_err(io("chmod"))?;
        }
    }
    Ok(Inherited::Done)
}

/// The xattr a directory's default ACL is kept in.
const DEFAULT_ACL: &str = "system.posix_acl_default";
/// The xattr a file's access ACL is kept in: setting it sets the group bits of the mode.
const ACCESS_ACL: &str = "system.posix_acl_access";
