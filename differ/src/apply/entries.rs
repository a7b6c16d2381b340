//! Creating each kind of entry: regular files (sparse ones included), directories,
//! symlinks, hard links and device nodes, replacing what stands in their way, with owner,
//! mode and times applied in as few syscalls as GNU tar uses.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use mountutil::at::{self, Dir, Kind};
use mountutil::fs::NodeKind;

use super::*;
use crate::tarstream::{Meta, SparseMap, TarStream};
use crate::{Error, Result};

/// Who creates entries: what a new inode gets without being told, so owner and mode are
/// set only when the entry wants something else.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ownership {
    /// Effective uid and gid.
    pub ids: (u32, u32),
    pub umask: u32,
}

impl Ownership {
    pub(super) fn current() -> Self {
        Ownership {
            ids: at::effective_ids(),
            umask: at::current_umask(),
        }
    }

    fn needs_chown(&self, meta: &Meta, setgid_parent: bool) -> bool {
        (meta.uid, meta.gid) != self.ids || setgid_parent
    }

    fn needs_chmod(&self, meta: &Meta) -> bool {
        meta.mode & 0o7000 != 0 || meta.mode & self.umask != 0
    }

    /// Owner, mode, xattrs and times of a just-created file, through its descriptor.
    pub(super) fn finish_fd(
        self,
        file: &File,
        rel: &Path,
        meta: &Meta,
        setgid_parent: bool,
    ) -> Result<()> {
        if self.needs_chown(meta, setgid_parent) {
            at::fchown(file, meta.uid, meta.gid).map_err(|e| Error::io("chown", rel, e))?;
        }
        if self.needs_chmod(meta) {
            at::fchmod(file, meta.mode).map_err(|e| Error::io("chmod", rel, e))?;
        }
        for (k, v) in &meta.xattrs {
            at::fsetxattr(file, k, v).map_err(|e| Error::io("setxattr", rel, e))?;
        }
        at::futimens(file, meta.mtime, meta.mtime).map_err(|e| Error::io("utimens", rel, e))
    }
}

impl LayerWriter<'_> {
    /// Runs `create`; if the name is taken, removes what is there and tries again.
    pub(super) fn replace<T>(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        create: impl Fn(&Dir) -> io::Result<T>,
    ) -> Result<T> {
        let dir = &self.parent(parent)?.dir;
        match create(dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let was_dir =
                    resolves_as_dir(dir.kind(name).map_err(|e| Error::io("stat", rel, e))?);
                dir.remove_all(name)
                    .map_err(|e| Error::io("remove", rel, e))?;
                let out = create(dir).map_err(|e| Error::io("create", rel, e));
                if was_dir {
                    self.dir_removed()?;
                }
                out
            }
            r => r.map_err(|e| Error::io("create", rel, e)),
        }
    }

    /// This apply made a directory at `rel` (empty: what goes into it is only its own).
    pub(super) fn made_dir(&mut self, rel: &Path) {
        if self.made_dirlike(rel) {
            self.fresh.insert(rel.as_os_str().to_os_string());
        }
    }

    /// This apply made a directory or (perhaps) a symlink at `rel`. In a fresh directory,
    /// `rel` is its own path; elsewhere a symlink on the way may have put it into a fresh
    /// directory under another name, so none is taken as fresh any more. Whether `rel` is
    /// its own path.
    pub(super) fn made_dirlike(&mut self, rel: &Path) -> bool {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !self.fresh.contains(parent.as_os_str()) {
            self.fresh.clear();
            return false;
        }
        self.dirlike.insert(rel.as_os_str().to_os_string());
        true
    }

    pub(super) fn note_created(&mut self, rel: &Path) {
        if self.mode == WhiteoutMode::Native {
            self.created.insert(rel.as_os_str().to_os_string());
        }
    }

    pub(super) fn file(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        tar: &mut TarStream<impl BufRead>,
        meta: &Meta,
        sparse: Option<&SparseMap>,
    ) -> Result<()> {
        let setgid = self.parent(parent)?.setgid;
        let file = self.replace(parent, name, rel, |d| d.create_file(name, meta.mode))?;
        let io = |e| Error::io("write", rel, e);
        match sparse {
            // Written straight from the decoder's buffers.
            None => {
                let mut out = &file;
                while let Some(piece) = tar.data()? {
                    out.write_all(piece).map_err(io)?;
                }
            }
            Some(map) => {
                for &(offset, len) in &map.extents {
                    let mut at = offset;
                    tar.data_exact(len, |piece| {
                        file.write_all_at(piece, at).map_err(io)?;
                        at += piece.len() as u64;
                        Ok(())
                    })?;
                }
                file.set_len(map.real_size).map_err(io)?;
            }
        }
        self.own.finish_fd(&file, rel, meta, setgid)?;
        self.note_created(rel);
        Ok(())
    }

    pub(super) fn dir(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let dir = &self.parent(parent)?.dir;
        match dir.mkdir(name, meta.mode) {
            Ok(()) => self.made_dir(rel),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = dir.kind(name).map_err(|e| Error::io("stat", rel, e))?;
                if existing != Some(Kind::Dir) {
                    dir.remove_all(name)
                        .map_err(|e| Error::io("remove", rel, e))?;
                    dir.mkdir(name, meta.mode)
                        .map_err(|e| Error::io("mkdir", rel, e))?;
                    if resolves_as_dir(existing) {
                        self.dir_removed()?;
                    }
                    self.made_dir(rel);
                }
            }
            Err(e) => return Err(Error::io("mkdir", rel, e)),
        }
        // A directory made implicitly before (the lower layers not there yet) is declared
        // now: it keeps what the entry gives it.
        let implicit = self.implicit.as_ref().is_some_and(|i| !i.is_empty());
        let dir = &self.parent(parent)?.dir;
        dir.chown(name, meta.uid, meta.gid)
            .map_err(|e| Error::io("chown", rel, e))?;
        dir.chmod(name, meta.mode)
            .map_err(|e| Error::io("chmod", rel, e))?;
        if !meta.xattrs.is_empty() || implicit {
            let sub = dir
                .open_subdir(name)
                .map_err(|e| Error::io("open", rel, e))?;
            for (k, v) in &meta.xattrs {
                at::fsetxattr(&sub, k, v).map_err(|e| Error::io("setxattr", rel, e))?;
            }
            if let Some(implicit) = self.implicit.as_mut().filter(|_| implicit) {
                implicit
                    .declared(&sub)
                    .map_err(|e| Error::io("stat", rel, e))?;
            }
        }
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        self.note_created(rel);
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        target: &Path,
        meta: &Meta,
    ) -> Result<()> {
        self.replace(parent, name, rel, |d| d.symlink(name, target))?;
        self.made_dirlike(rel);
        self.finish_name(parent, name, rel, meta, false, true)
    }

    /// Owner, mode (when `chmod`: not for a symlink), xattrs and times of a just-made
    /// non-regular entry, by name. A `new_inode` is ours until chowned, so its owner is set
    /// only when it differs (or a setgid parent gave it another group); a hard link shares
    /// its target's inode, whose owner is set always.
    pub(super) fn finish_name(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        chmod: bool,
        new_inode: bool,
    ) -> Result<()> {
        let ids = self.own.ids;
        let cached = self.parent(parent)?;
        let dir = &cached.dir;
        if !new_inode || (meta.uid, meta.gid) != ids || cached.setgid {
            dir.chown(name, meta.uid, meta.gid)
                .map_err(|e| Error::io("chown", rel, e))?;
        }
        if chmod {
            dir.chmod(name, meta.mode)
                .map_err(|e| Error::io("chmod", rel, e))?;
        }
        for (k, v) in &meta.xattrs {
            dir.set_xattr(name, k, v)
                .map_err(|e| Error::io("setxattr", rel, e))?;
        }
        dir.set_times(name, meta.mtime, meta.mtime)
            .map_err(|e| Error::io("utimens", rel, e))?;
        self.note_created(rel);
        Ok(())
    }

    /// A hard link to `target`; the entry's own header is then applied to the inode the
    /// two names share (owner, xattrs, mode unless it is a symlink, times), as containerd's
    /// applier does. Writers put the file's attributes there, so this changes nothing for
    /// them; a layer that says otherwise gets what containerd would make of it.
    pub(super) fn hard_link(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        target: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let (Some(tname), tparent) = (target.file_name(), target.parent().unwrap_or(Path::new("")))
        else {
            return Err(layer_err("hard link to the root from", rel, "refused"));
        };
        let tdir = self
            .root
            .open_dir(tparent)
            .map_err(|e| layer_err("hard link target of", rel, e))?;
        let tname = tname.to_os_string();
        self.replace(parent, name, rel, |d| d.hard_link(name, &tdir, &tname))
            .map_err(|e| match e {
                Error::Io(e) if e.source.kind() == io::ErrorKind::NotFound => {
                    layer_err("hard link target missing for", rel, target.display())
                }
                other => other,
            })?;
        // It may be a symlink (a link to one), through which a directory resolves.
        self.made_dirlike(rel);
        let symlink = matches!(
            self.parent(parent)?
                .dir
                .kind(name)
                .map_err(|e| Error::io("stat", rel, e))?,
            Some(Kind::Symlink)
        );
        self.finish_name(parent, name, rel, meta, !symlink, false)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn node(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        kind: NodeKind,
        major: u32,
        minor: u32,
        meta: &Meta,
    ) -> Result<()> {
        self.replace(parent, name, rel, |d| {
            d.mknod(name, kind, meta.mode, major, minor)
        })?;
        // mknod's mode went through the umask; set it exactly.
        self.finish_name(parent, name, rel, meta, true, true)
    }
}
