//! Finding and creating an entry's parent directory inside the root: a cache of open
//! directory handles, symlinks resolved as containerd's `RootPath` does (dangling ones
//! included), and directories the layer does not declare taking their metadata from the
//! lower layers.

use std::ffi::{OsStr, OsString};
use std::io::{self};
use std::path::{Path, PathBuf};

use mountutil::at::{self, Dir, Kind};

use super::lowers::{self, Take};
use super::*;
use crate::{Error, Result};

impl LayerWriter<'_> {
    /// The open parent directory `rel`, created (0755) with its ancestors if `create`.
    pub(super) fn dir_at(&mut self, rel: &Path, create: bool) -> Result<Option<&Arc<CachedDir>>> {
        if !self.dirs.contains_key(rel.as_os_str()) {
            let dir = match self.root.open_dir(rel) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    // A file in flight may stand where a directory is to be made.
                    self.workers.settle()?;
                    // Through the symlinks that exist (dangling ones too, as containerd's
                    // RootPath), then create what is missing.
                    let resolved = self.resolve(rel)?;
                    self.mkdir_all(&resolved)?;
                    self.root
                        .open_dir(rel)
                        .map_err(|e| Error::io("open", rel, e))?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                    return Err(layer_err("parent is not a directory:", rel, e));
                }
                Err(e) if at::is_symlink_loop(&e) => {
                    return Err(layer_err("symlink loop in the parent path", rel, e));
                }
                Err(e) => return Err(Error::io("open", rel, e)),
            };
            let setgid = at::attrs(&dir).map_err(|e| Error::io("stat", rel, e))?.mode & 0o2000 != 0;
            if self.dirs.len() >= 512 {
                // Files in flight hold their directories open: let them finish, so at most
                // the cache's 512 directories are open.
                self.workers.settle()?;
                self.dirs.clear();
            }
            self.dirs.insert(
                rel.as_os_str().to_os_string(),
                Arc::new(CachedDir { dir, setgid }),
            );
        }
        Ok(self.dirs.get(rel.as_os_str()))
    }

    pub(super) fn parent(&mut self, rel: &Path) -> Result<&Arc<CachedDir>> {
        Ok(self.dir_at(rel, true)?.expect("created on demand"))
    }

    /// `rel` with every symlink on it that exists resolved inside the root (a target that
    /// does not exist yet is followed lexically, `..` never above the root); what does not
    /// exist is kept as it is.
    pub(super) fn resolve(&self, rel: &Path) -> Result<PathBuf> {
        const MAX_LINKS: usize = 40;
        let mut todo: Vec<OsString> = rel
            .components()
            .rev()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut done = PathBuf::new();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                done.pop();
                continue;
            }
            let kind = match self.root.open_dir(&done) {
                Ok(dir) => dir
                    .kind(&name)
                    .map_err(|e| Error::io("stat", done.join(&name), e))?
                    .map(|k| (k, dir)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io("open", &done, e)),
            };
            let Some((Kind::Symlink, dir)) = kind else {
                done.push(&name);
                continue;
            };
            links += 1;
            if links > MAX_LINKS {
                return Err(layer_err("too many symlinks resolving", rel, "refused"));
            }
            let target = dir
                .read_link(&name)
                .map_err(|e| Error::io("readlink", done.join(&name), e))?;
            if target.is_absolute() {
                done = PathBuf::new();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push(n.to_os_string()),
                    Component::ParentDir => todo.push("..".into()),
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                }
            }
        }
        Ok(done)
    }

    pub(super) fn mkdir_all(&mut self, rel: &Path) -> Result<()> {
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            let parent = self
                .root
                .open_dir(&prefix)
                .map_err(|e| Error::io("open", &prefix, e))?;
            prefix.push(c);
            match parent.mkdir(c.as_os_str(), 0o755) {
                Ok(()) => {
                    // `prefix` is resolved: the directory's own path.
                    self.fresh.insert(prefix.as_os_str().to_os_string());
                    self.dirlike.insert(prefix.as_os_str().to_os_string());
                    let inherited = self.inherit_from_lowers(&parent, c.as_os_str(), &prefix)?;
                    // 0755 whatever the daemon's umask: it must not leak into images.
                    if !inherited && self.own.umask & 0o755 != 0 {
                        parent
                            .chmod(c.as_os_str(), 0o755)
                            .map_err(|e| Error::io("chmod", &prefix, e))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("mkdir", prefix, e)),
            }
        }
        Ok(())
    }

    /// Gives directory `name` (at `rel`, just created to hold an entry) the owner, mode,
    /// non-`trusted.` xattrs and times of `rel` in the nearest lower layer that has it (see
    /// [`lowers`](super::lowers)); with the lower layers not there yet, notes it for later.
    /// Whether a lower layer had it.
    pub(super) fn inherit_from_lowers(
        &mut self,
        parent: &Dir,
        name: &OsStr,
        rel: &Path,
    ) -> Result<bool> {
        if let Some(implicit) = &mut self.implicit {
            let created = parent
                .open_subdir(name)
                .map_err(|e| Error::io("open", rel, e))?;
            implicit
                .created(rel.to_path_buf(), &created)
                .map_err(|e| Error::io("stat", rel, e))?;
            return Ok(false);
        }
        let Some(lower) = lowers::nearest_lower_dir(&self.lowers, rel)? else {
            return Ok(false);
        };
        let created = parent
            .open_subdir(name)
            .map_err(|e| Error::io("open", rel, e))?;
        lowers::take_from_lower(&created, &lower, rel, Take::Everything { mtime: true })?;
        Ok(true)
    }
}
