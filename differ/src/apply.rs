//! Writing a layer's tar stream into a directory.
//!
//! Every entry path is normalised to plain components and its parent directory opened with
//! `openat2(RESOLVE_IN_ROOT)`, so nothing (`..`, absolute names, symlinks in the layer or
//! already on disk, hard-link targets, whiteouts) reaches outside the target. The final
//! component is created with `*at` calls that never follow symlinks. Per regular file the
//! syscalls are: openat, write(s), futimens, close, plus fchown/fchmod only when the owner
//! or mode would otherwise be wrong — no more than GNU tar.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use mountutil::at::{self, Dir, Kind, Root};
use mountutil::fs::NodeKind;
use mountutil::overlay::OPAQUE_XATTRS;
pub use mountutil::overlay::WhiteoutMode;

use crate::pipeline::{self, Decoded};
use crate::tarstream::{EntryKind, Header, Meta, SparseMap, TarStream};
use crate::{Compression, Digest, Error, Result};

/// What was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// sha256 of the uncompressed tar: the layer's diffID.
    pub diff_id: Digest,
    /// Uncompressed size.
    pub size: u64,
    /// sha256 of the blob as read.
    pub blob_digest: Digest,
    /// Size of the blob as read.
    pub blob_size: u64,
}

const WHITEOUT_PREFIX: &str = ".wh.";
/// Linux's errno for too many symlinks (`io::ErrorKind::FilesystemLoop` is unstable).
const ELOOP: i32 = 40;
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Applies the layer in `source` (compressed as `compression`, sniffed when `None`) to the
/// directory `target`. Decompression runs on its own thread; this thread writes files.
///
/// `lowers` (overlay mode) are the directories of the layers below `target`, nearest first.
/// A directory the layer writes into without declaring it, missing from `target`, is
/// created with the owner, mode, times and non-`trusted.` xattrs of the same path in the
/// nearest lower layer that has it as a directory, as containerd's overlay applier does,
/// so the merged view keeps them.
pub fn apply_layer(
    source: Box<dyn Read + Send>,
    compression: Option<Compression>,
    target: &Path,
    mode: WhiteoutMode,
    lowers: &[PathBuf],
) -> Result<Applied> {
    let root = Root::open(target).map_err(|e| Error::io("open", target, e))?;
    let lowers = lowers
        .iter()
        .map(|p| Root::open(p).map_err(|e| Error::io("open lower layer", p, e)))
        .collect::<Result<Vec<_>>>()?;
    let mut stream = pipeline::decode(source, compression);
    let written = LayerWriter::new(&root, mode, lowers).write_all(stream.reader());
    let decoded: Decoded = match written {
        Ok(()) => stream.finish()?,
        // A corrupt stream shows up to the writer as a short read; say what it really was.
        Err(e) => return Err(stream.abort().unwrap_or(e)),
    };
    Ok(Applied {
        diff_id: decoded.uncompressed.0,
        size: decoded.uncompressed.1,
        blob_digest: decoded.compressed.0,
        blob_size: decoded.compressed.1,
    })
}

/// Normalises a tar path to components inside the root: `/`, `.` and empty parts dropped,
/// `..` taken lexically and never above the root (as RESOLVE_IN_ROOT does).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn layer_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidLayer(format!("{what} {}: {e}", path.display()))
}

struct CachedDir {
    dir: Dir,
    /// The directory has the setgid bit: new entries inherit its group, so their owner
    /// must be set even when it is ours.
    setgid: bool,
}

struct LayerWriter<'r> {
    root: &'r Root,
    mode: WhiteoutMode,
    /// The layers below `root`, nearest first (overlay mode).
    lowers: Vec<Root>,
    /// Open directories by normalised relative path (hashed as bytes: a `Path` hashes
    /// component by component, which showed in profiles).
    dirs: HashMap<OsString, CachedDir>,
    dir_times: Vec<(PathBuf, (i64, i64))>,
    /// Paths this layer created (native mode: what an opaque whiteout must keep).
    created: HashSet<OsString>,
    ids: (u32, u32),
    umask: u32,
}

impl<'r> LayerWriter<'r> {
    fn new(root: &'r Root, mode: WhiteoutMode, lowers: Vec<Root>) -> Self {
        LayerWriter {
            root,
            mode,
            lowers,
            dirs: HashMap::new(),
            dir_times: Vec::new(),
            created: HashSet::new(),
            ids: at::effective_ids(),
            umask: at::current_umask(),
        }
    }

    fn write_all(mut self, input: impl BufRead) -> Result<()> {
        let mut tar = TarStream::new(input);
        while let Some(header) = tar.next_entry()? {
            self.entry(header, &mut tar)?;
        }
        self.finish()
    }

    fn entry(&mut self, h: Header, tar: &mut TarStream<impl BufRead>) -> Result<()> {
        let raw = PathBuf::from(OsString::from_vec(h.path));
        let rel = normalize(&raw);
        let meta = h.meta;
        if let Some((name, _)) = meta.xattrs.iter().find(|(n, _)| {
            let n = n.as_bytes();
            n.starts_with(b"trusted.overlay.") || n.starts_with(b"user.overlay.")
        }) {
            return Err(layer_err("overlay xattr on", &rel, name.to_string_lossy()));
        }
        let name = rel.file_name().map(OsStr::to_os_string);
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();

        if let Some(n) = &name
            && let Some(hidden) = n.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            return self.whiteout(&parent, n, OsStr::from_bytes(hidden), &meta);
        }
        let Some(name) = name else {
            // The root itself ("./"): containerd ignores it ("resolved to root"), so the
            // snapshot's root keeps its own owner, mode and times.
            return Ok(());
        };
        let link = || PathBuf::from(OsString::from_vec(h.link.clone()));
        match h.kind {
            EntryKind::Regular => self.file(&parent, &name, &rel, tar, &meta, h.sparse.as_ref()),
            EntryKind::Dir => self.dir(&parent, &name, &rel, &meta),
            EntryKind::Symlink if h.link.is_empty() => {
                Err(layer_err("symlink without target", &rel, "refused"))
            }
            EntryKind::Symlink => self.symlink(&parent, &name, &rel, &link(), &meta),
            EntryKind::HardLink if h.link.is_empty() => {
                Err(layer_err("hard link without target", &rel, "refused"))
            }
            EntryKind::HardLink => self.hard_link(&parent, &name, &rel, &normalize(&link())),
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let node = match h.kind {
                    EntryKind::Char => NodeKind::Char,
                    EntryKind::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let (major, minor) = h.dev;
                self.node(&parent, &name, &rel, node, major, minor, &meta)
            }
        }
    }

    /// The open parent directory `rel`, created (0755) with its ancestors if `create`.
    fn dir_at(&mut self, rel: &Path, create: bool) -> Result<Option<&CachedDir>> {
        if !self.dirs.contains_key(rel.as_os_str()) {
            let dir = match self.root.open_dir(rel) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
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
                Err(e) if e.raw_os_error() == Some(ELOOP) => {
                    return Err(layer_err("symlink loop in the parent path", rel, e));
                }
                Err(e) => return Err(Error::io("open", rel, e)),
            };
            let setgid = at::attrs(&dir).map_err(|e| Error::io("stat", rel, e))?.mode & 0o2000 != 0;
            if self.dirs.len() >= 512 {
                self.dirs.clear();
            }
            self.dirs
                .insert(rel.as_os_str().to_os_string(), CachedDir { dir, setgid });
        }
        Ok(self.dirs.get(rel.as_os_str()))
    }

    fn parent(&mut self, rel: &Path) -> Result<&CachedDir> {
        Ok(self.dir_at(rel, true)?.expect("created on demand"))
    }

    /// `rel` with every symlink on it that exists resolved inside the root (a target that
    /// does not exist yet is followed lexically, `..` never above the root); what does not
    /// exist is kept as it is.
    fn resolve(&self, rel: &Path) -> Result<PathBuf> {
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

    fn mkdir_all(&mut self, rel: &Path) -> Result<()> {
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            let parent = self
                .root
                .open_dir(&prefix)
                .map_err(|e| Error::io("open", &prefix, e))?;
            prefix.push(c);
            match parent.mkdir(c.as_os_str(), 0o755) {
                Ok(()) => {
                    let inherited = self.inherit_from_lowers(&parent, c.as_os_str(), &prefix)?;
                    // 0755 whatever the daemon's umask: it must not leak into images.
                    if !inherited && self.umask & 0o755 != 0 {
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
    /// non-`trusted.` xattrs and times of `rel` in the nearest lower layer that has it,
    /// resolving symlinks inside that layer; a non-directory there (a whiteout, say) ends
    /// the search and the defaults stay. Whether a lower layer had it.
    fn inherit_from_lowers(&self, parent: &Dir, name: &OsStr, rel: &Path) -> Result<bool> {
        for lower in &self.lowers {
            let found = match lower.open_dir(rel) {
                Ok(dir) => dir,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(false),
                Err(e) => return Err(Error::io("open in lower layer", rel, e)),
            };
            let io = |op| move |e| Error::io(op, rel, e);
            let from = at::attrs(&found).map_err(io("stat in lower layer"))?;
            let xattrs = at::fxattrs(&found).map_err(io("read xattrs in lower layer"))?;
            let created = parent.open_subdir(name).map_err(io("open"))?;
            at::fchown(&created, from.uid, from.gid).map_err(io("chown"))?;
            at::fchmod(&created, from.mode).map_err(io("chmod"))?;
            for (key, value) in xattrs {
                // Not trusted.* (as containerd), nor user.overlay.*: an inherited
                // opaque or redirect marker would hide the lower layers.
                let k = key.as_bytes();
                if !k.starts_with(b"trusted.") && !k.starts_with(b"user.overlay.") {
                    at::fsetxattr(&created, &key, &value).map_err(io("setxattr"))?;
                }
            }
            at::futimens(&created, from.atime, from.mtime).map_err(io("utimens"))?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs `create`; if the name is taken, removes what is there and tries again.
    fn replace<T>(
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
                    self.dirs.clear();
                }
                out
            }
            r => r.map_err(|e| Error::io("create", rel, e)),
        }
    }

    fn note_created(&mut self, rel: &Path) {
        if self.mode == WhiteoutMode::Native {
            self.created.insert(rel.as_os_str().to_os_string());
        }
    }

    fn needs_chown(&self, meta: &Meta, setgid_parent: bool) -> bool {
        (meta.uid, meta.gid) != self.ids || setgid_parent
    }

    fn needs_chmod(&self, meta: &Meta) -> bool {
        meta.mode & 0o7000 != 0 || meta.mode & self.umask != 0
    }

    fn file(
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
        self.finish_fd(&file, rel, meta, setgid)?;
        self.note_created(rel);
        Ok(())
    }

    /// Owner, mode, xattrs and times of a just-created file, through its descriptor.
    fn finish_fd(&self, file: &File, rel: &Path, meta: &Meta, setgid_parent: bool) -> Result<()> {
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

    fn dir(&mut self, parent: &Path, name: &OsStr, rel: &Path, meta: &Meta) -> Result<()> {
        let dir = &self.parent(parent)?.dir;
        match dir.mkdir(name, meta.mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = dir.kind(name).map_err(|e| Error::io("stat", rel, e))?;
                if existing != Some(Kind::Dir) {
                    dir.remove_all(name)
                        .map_err(|e| Error::io("remove", rel, e))?;
                    dir.mkdir(name, meta.mode)
                        .map_err(|e| Error::io("mkdir", rel, e))?;
                    if resolves_as_dir(existing) {
                        self.dirs.clear();
                    }
                }
            }
            Err(e) => return Err(Error::io("mkdir", rel, e)),
        }
        let dir = &self.parent(parent)?.dir;
        dir.chown(name, meta.uid, meta.gid)
            .map_err(|e| Error::io("chown", rel, e))?;
        dir.chmod(name, meta.mode)
            .map_err(|e| Error::io("chmod", rel, e))?;
        if !meta.xattrs.is_empty() {
            let sub = dir
                .open_subdir(name)
                .map_err(|e| Error::io("open", rel, e))?;
            for (k, v) in &meta.xattrs {
                at::fsetxattr(&sub, k, v).map_err(|e| Error::io("setxattr", rel, e))?;
            }
        }
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        self.note_created(rel);
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        target: &Path,
        meta: &Meta,
    ) -> Result<()> {
        self.replace(parent, name, rel, |d| d.symlink(name, target))?;
        self.finish_name(parent, name, rel, meta, false)
    }

    /// Owner, mode (unless a symlink), xattrs and times of a just-created non-regular
    /// entry, by name.
    fn finish_name(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let ids = self.ids;
        let cached = self.parent(parent)?;
        let dir = &cached.dir;
        if (meta.uid, meta.gid) != ids || cached.setgid {
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

    fn hard_link(&mut self, parent: &Path, name: &OsStr, rel: &Path, target: &Path) -> Result<()> {
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
        self.note_created(rel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
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
        self.finish_name(parent, name, rel, meta, true)
    }

    fn whiteout(
        &mut self,
        parent: &Path,
        entry: &OsStr,
        hidden: &OsStr,
        meta: &Meta,
    ) -> Result<()> {
        let rel = parent.join(entry);
        if entry == OPAQUE_WHITEOUT {
            return match self.mode {
                WhiteoutMode::Overlay { userxattr } => {
                    let [trusted, user] = OPAQUE_XATTRS;
                    let name = if userxattr { user } else { trusted };
                    let dir = &self.parent(parent)?.dir;
                    at::fsetxattr(dir, name.as_ref(), b"y")
                        .map_err(|e| Error::io("setxattr", &rel, e))
                }
                WhiteoutMode::Native => self.empty_dir(parent),
            };
        }
        let hidden_bytes = hidden.as_bytes();
        if hidden_bytes.starts_with(b".wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            tracing::debug!(path = %rel.display(), "skipping aufs metadata entry");
            return Ok(());
        }
        if hidden_bytes.is_empty() || hidden_bytes == b"." || hidden_bytes == b".." {
            return Err(layer_err("bad whiteout", &rel, "refused"));
        }
        match self.mode {
            WhiteoutMode::Overlay { .. } => {
                let dir = &self.parent(parent)?.dir;
                let was_dir =
                    resolves_as_dir(dir.kind(hidden).map_err(|e| Error::io("stat", &rel, e))?);
                dir.remove_all(hidden)
                    .map_err(|e| Error::io("remove", &rel, e))?;
                dir.mknod(hidden, NodeKind::Char, 0, 0, 0)
                    .map_err(|e| Error::io("mknod", &rel, e))?;
                dir.chown(hidden, meta.uid, meta.gid)
                    .map_err(|e| Error::io("chown", &rel, e))?;
                if was_dir {
                    self.dirs.clear();
                }
            }
            WhiteoutMode::Native => {
                let Some(cached) = self.dir_at(parent, false)? else {
                    return Ok(());
                };
                let dir = &cached.dir;
                let was_dir =
                    resolves_as_dir(dir.kind(hidden).map_err(|e| Error::io("stat", &rel, e))?);
                dir.remove_all(hidden)
                    .map_err(|e| Error::io("remove", &rel, e))?;
                if was_dir {
                    self.dirs.clear();
                }
            }
        }
        Ok(())
    }

    /// Native opaque whiteout: remove what the lower layers put in `parent`, keeping what
    /// this layer created (and looking inside directories it re-declared).
    fn empty_dir(&mut self, parent: &Path) -> Result<()> {
        let Ok(dir) = self.root.open_dir(parent) else {
            return Ok(());
        };
        let mut removed_dir = false;
        let mut keep_dirs = Vec::new();
        for child in dir.names().map_err(|e| Error::io("read", parent, e))? {
            let child_rel = parent.join(&child);
            let kind = dir
                .kind(&child)
                .map_err(|e| Error::io("stat", &child_rel, e))?;
            if self.created.contains(child_rel.as_os_str()) {
                if kind == Some(Kind::Dir) {
                    keep_dirs.push(child_rel);
                }
                continue;
            }
            removed_dir |= resolves_as_dir(kind);
            dir.remove_all(&child)
                .map_err(|e| Error::io("remove", &child_rel, e))?;
        }
        if removed_dir {
            self.dirs.clear();
        }
        for sub in keep_dirs {
            self.empty_dir(&sub)?;
        }
        Ok(())
    }

    /// Directory times last, deepest first, so creating children does not change them. A
    /// path the layer later replaced by something else keeps that thing's own time.
    fn finish(mut self) -> Result<()> {
        let times = std::mem::take(&mut self.dir_times);
        for (rel, t) in times.iter().rev() {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                let root = self
                    .root
                    .open_dir(Path::new(""))
                    .map_err(|e| Error::io("open", "/", e))?;
                at::futimens(&root, *t, *t).map_err(|e| Error::io("utimens", "/", e))?;
                continue;
            };
            let Ok(Some(cached)) = self.dir_at(parent, false) else {
                continue;
            };
            let dir = &cached.dir;
            if dir.kind(name).map_err(|e| Error::io("stat", rel, e))? != Some(Kind::Dir) {
                continue;
            }
            dir.set_times(name, *t, *t)
                .map_err(|e| Error::io("utimens", rel, e))?;
        }
        Ok(())
    }
}

/// Whether removing an entry of this kind can invalidate cached directory handles (a
/// directory, or a symlink through which a directory was opened).
fn resolves_as_dir(kind: Option<Kind>) -> bool {
    matches!(kind, Some(Kind::Dir | Kind::Symlink))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_stays_inside() {
        assert_eq!(
            normalize(Path::new("/etc/passwd")),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(normalize(Path::new("../../x")), PathBuf::from("x"));
        assert_eq!(normalize(Path::new("a/../../b/./c")), PathBuf::from("b/c"));
        assert_eq!(normalize(Path::new("./")), PathBuf::new());
    }
}
