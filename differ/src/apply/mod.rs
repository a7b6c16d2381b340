//! Writing a layer's tar stream into a directory.
//!
//! Every entry path is normalised to plain components and its parent directory opened with
//! `openat2(RESOLVE_IN_ROOT)`, so nothing (`..`, absolute names, symlinks in the layer or
//! already on disk, hard-link targets, whiteouts) reaches outside the target. The final
//! component is created with `*at` calls that never follow symlinks. Per regular file the
//! syscalls are: openat, write(s), futimens, close, plus fchown/fchmod only when the owner
//! or mode would otherwise be wrong — no more than GNU tar. Small regular files in
//! directories the apply made are created on worker threads (module `workers`), everything else
//! on the thread reading the tar, in its order.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use mountutil::at::{self, Dir, Kind, Root};
use mountutil::fs::NodeKind;
pub use mountutil::overlay::WhiteoutMode;

pub use self::lowers::{ImplicitDirs, Inherited, Lowers, inherit_implicit_dirs};
use crate::pipeline::{self, Decoded, LayerSource};
use crate::tarstream::{EntryKind, Header, TarStream};
use crate::{Compression, Digest, Error, Result};

mod entries;
mod lowers;
mod resolve;
mod whiteout;
mod workers;

use self::entries::Ownership;
use self::workers::{FileJob, FileWorkers};

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
    /// With [`Lowers::Later`], the directories created without being declared.
    pub implicit_dirs: ImplicitDirs,
}

/// Bounds on one layer, so a hostile layer cannot make Apply work without end: exceeding
/// one fails the Apply with an [`Error::InvalidLayer`] naming the limit. The defaults are
/// far above any real image's layers (a full distribution root has ~10^5 entries, depth
/// under 30) and never below what the kernel itself allows for names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayerLimits {
    /// Tar entries per layer, whiteouts included.
    pub max_entries: u64,
    /// Components of an entry's path (`a/b/c` is 3).
    pub max_path_depth: usize,
    /// Bytes of one path component (Linux refuses more than 255 anyway).
    pub max_name_bytes: usize,
}

impl Default for LayerLimits {
    fn default() -> Self {
        LayerLimits {
            max_entries: 4_000_000,
            max_path_depth: 256,
            max_name_bytes: 255,
        }
    }
}

impl LayerLimits {
    /// Refuses the `count`-th entry (1-based) at `path` if it exceeds a limit.
    fn check(&self, count: u64, path: &Path) -> Result<()> {
        if count > self.max_entries {
            return Err(Error::InvalidLayer(format!(
                "more than {} entries (limit max_entries)",
                self.max_entries
            )));
        }
        let mut depth = 0;
        for c in path.components() {
            depth += 1;
            if c.as_os_str().len() > self.max_name_bytes {
                return Err(layer_err(
                    "name too long in",
                    path,
                    format_args!("over {} bytes (limit max_name_bytes)", self.max_name_bytes),
                ));
            }
        }
        if depth > self.max_path_depth {
            return Err(layer_err(
                "path too deep:",
                path,
                format_args!(
                    "{depth} components, over {} (limit max_path_depth)",
                    self.max_path_depth
                ),
            ));
        }
        Ok(())
    }
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Applies the layer in `source` (compressed as `compression`, sniffed when `None`) to the
/// directory `target`. Decompression runs on its own thread, hashing on another; this
/// thread reads the tar and creates entries, regular files also on worker threads
/// (module `workers`).
///
/// `lowers` (overlay mode) are the layers below `target`. A directory the layer writes into
/// without declaring it, missing from `target`, is created with the owner, mode, times and
/// non-`trusted.` xattrs of the same path in the nearest lower layer that has it as a
/// directory, as containerd's overlay applier does, so the merged view keeps them; with
/// [`Lowers::Later`], it is listed in the result for [`inherit_implicit_dirs`]. A layer
/// beyond `limits` is refused.
pub fn apply_layer(
    source: impl Into<LayerSource>,
    compression: Option<Compression>,
    target: &Path,
    mode: WhiteoutMode,
    lowers: Lowers,
    limits: &LayerLimits,
) -> Result<Applied> {
    let root = Root::open(target).map_err(|e| Error::io("open", target, e))?;
    let (lowers, implicit) = match lowers {
        Lowers::Present(dirs) => (dirs, None),
        Lowers::Later => (&[][..], Some(ImplicitDirs::default())),
    };
    let lowers = lowers
        .iter()
        .map(|p| Root::open(p).map_err(|e| Error::io("open lower layer", p, e)))
        .collect::<Result<Vec<_>>>()?;
    let mut stream = pipeline::decode(source.into(), compression)?;
    let written =
        LayerWriter::new(&root, mode, lowers, implicit, limits).write_all(stream.reader());
    let (decoded, implicit_dirs): (Decoded, _) = match written {
        Ok(implicit) => (stream.finish()?, implicit.unwrap_or_default()),
        // A corrupt stream shows up to the writer as a short read; say what it really was.
        Err(e) => return Err(stream.abort().unwrap_or(e)),
    };
    Ok(Applied {
        diff_id: decoded.uncompressed.0,
        size: decoded.uncompressed.1,
        blob_digest: decoded.compressed.0,
        blob_size: decoded.compressed.1,
        implicit_dirs,
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
    /// With the lower layers not there yet, the directories created without being declared.
    implicit: Option<ImplicitDirs>,
    /// Open directories by normalised relative path (hashed as bytes: a `Path` hashes
    /// component by component, which showed in profiles); shared with file workers.
    dirs: HashMap<OsString, Arc<CachedDir>>,
    dir_times: Vec<(PathBuf, (i64, i64))>,
    /// Paths this layer created (native mode: what an opaque whiteout must keep).
    created: HashSet<OsString>,
    /// Directories this apply created, at their own path (no symlink on the way): only its
    /// own entries stand in them. Cleared whenever a directory or symlink is removed.
    fresh: HashSet<OsString>,
    /// Paths where this apply made a directory or something that may be a symlink; with
    /// `fresh`, where a file can go to a worker (see [`workers`]).
    dirlike: HashSet<OsString>,
    own: Ownership,
    workers: FileWorkers,
    limits: &'r LayerLimits,
    entries: u64,
}

impl<'r> LayerWriter<'r> {
    fn new(
        root: &'r Root,
        mode: WhiteoutMode,
        lowers: Vec<Root>,
        implicit: Option<ImplicitDirs>,
        limits: &'r LayerLimits,
    ) -> Self {
        // Read once (the umask from /proc/self/status): the writer and its workers share it.
        let own = Ownership::current();
        LayerWriter {
            root,
            mode,
            lowers,
            implicit,
            dirs: HashMap::new(),
            dir_times: Vec::new(),
            created: HashSet::new(),
            fresh: HashSet::new(),
            dirlike: HashSet::new(),
            own,
            workers: FileWorkers::new(own),
            limits,
            entries: 0,
        }
    }

    /// Writes every entry; the directories created without being declared, with the lower
    /// layers not there yet.
    fn write_all(mut self, input: impl BufRead) -> Result<Option<ImplicitDirs>> {
        let top = self
            .root
            .open_dir(Path::new(""))
            .and_then(|d| d.names())
            .map_err(|e| Error::io("read", "/", e))?;
        if top.is_empty() {
            self.fresh.insert(OsString::new());
        }
        let mut tar = TarStream::new(input);
        while let Some(header) = tar.next_entry()? {
            self.entry(header, &mut tar)?;
        }
        self.workers.settle()?;
        self.finish()
    }

    fn entry(&mut self, h: Header, tar: &mut TarStream<impl BufRead>) -> Result<()> {
        let raw = PathBuf::from(OsString::from_vec(h.path));
        self.entries += 1;
        // The path as written: a hostile name is refused before `..` could shorten it.
        self.limits.check(self.entries, &raw)?;
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
            self.workers.settle()?;
            return self.whiteout(&parent, n, OsStr::from_bytes(hidden), &meta);
        }
        if h.kind == EntryKind::HardLink || self.workers.is_busy(&rel) {
            self.workers.settle()?;
        }
        let Some(name) = name else {
            // The root itself ("./"): containerd ignores it ("resolved to root"), so the
            // snapshot's root keeps its own owner, mode and times.
            return Ok(());
        };
        let link = || PathBuf::from(OsString::from_vec(h.link.clone()));
        match h.kind {
            EntryKind::Regular if h.sparse.is_none() && self.to_worker(&parent, &rel, tar) => {
                self.file_to_worker(&parent, rel, tar, meta)
            }
            EntryKind::Regular => self.file(&parent, &name, &rel, tar, &meta, h.sparse.as_ref()),
            EntryKind::Dir => self.dir(&parent, &name, &rel, &meta),
            EntryKind::Symlink if h.link.is_empty() => {
                Err(layer_err("symlink without target", &rel, "refused"))
            }
            EntryKind::Symlink => self.symlink(&parent, &name, &rel, &link(), &meta),
            EntryKind::HardLink if h.link.is_empty() => {
                Err(layer_err("hard link without target", &rel, "refused"))
            }
            EntryKind::HardLink => self.hard_link(&parent, &name, &rel, &normalize(&link()), &meta),
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

    /// Whether the regular file at `rel` (its data next in `tar`) goes to a worker: small,
    /// in a directory this apply made, where it made no directory or symlink.
    fn to_worker(&self, parent: &Path, rel: &Path, tar: &TarStream<impl BufRead>) -> bool {
        tar.data_len() <= workers::MAX_FILE
            && self.fresh.contains(parent.as_os_str())
            && !self.dirlike.contains(rel.as_os_str())
    }

    fn file_to_worker(
        &mut self,
        parent: &Path,
        rel: PathBuf,
        tar: &mut TarStream<impl BufRead>,
        meta: crate::tarstream::Meta,
    ) -> Result<()> {
        let dir = Arc::clone(self.parent(parent)?);
        let mut data = self.workers.buffer(tar.data_len() as usize);
        while let Some(piece) = tar.data()? {
            data.extend_from_slice(piece);
        }
        self.note_created(&rel);
        self.workers.dispatch(FileJob {
            dir,
            rel,
            meta,
            data,
        })
    }

    /// Directory times last, deepest first, so creating children does not change them. A
    /// path the layer later replaced by something else keeps that thing's own time.
    fn finish(mut self) -> Result<Option<ImplicitDirs>> {
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
        Ok(self.implicit)
    }
}

impl LayerWriter<'_> {
    /// A directory (or a symlink to one) was removed: cached handles may lead into it, and
    /// a directory made implicitly may be gone.
    /// Waits for the file workers first, so no directory handle outlives the cache (the
    /// open descriptors stay bounded by it).
    fn dir_removed(&mut self) -> Result<()> {
        self.workers.settle()?;
        self.dirs.clear();
        self.fresh.clear();
        self.dirlike.clear();
        if let Some(implicit) = &mut self.implicit {
            implicit.dir_removed();
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
