//! Creating a layer: the changes from a lower tree to an upper one as an OCI tar
//! (`.wh.` whiteouts for deletions, `.wh..wh..opq` for opaque directories), compressed as
//! asked, with both digests. For an overlay snapshot only its upper directory is walked, so
//! the cost follows the size of the change, not of the image. Output is deterministic:
//! entries in path order, times in whole seconds (clamped to `source_date_epoch` when set),
//! whiteouts at the epoch, no user or group names.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mountutil::fs::{get_xattr, list_xattrs, split_dev};
use mountutil::overlay::{is_opaque, is_whiteout};
use tar::{EntryType, Header};
use walkdir::WalkDir;

use crate::digest::HashingWriter;
use crate::{Compression, Digest, Error, Result};

/// What to compare.
#[derive(Debug, Clone, Copy)]
pub enum Changes<'a> {
    /// An overlayfs upper directory: everything in it is a change; character devices 0/0
    /// are deletions and opaque directories hide their lower contents.
    OverlayUpper(&'a Path),
    /// Two plain trees.
    Trees {
        /// The base.
        lower: &'a Path,
        /// The changed tree.
        upper: &'a Path,
    },
}

/// How to write the layer.
#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    /// Compression of the output.
    pub compression: Compression,
    /// Clamp newer modification times to this (seconds since the epoch).
    pub source_date_epoch: Option<i64>,
}

/// The layer written.
#[derive(Debug, Clone)]
pub struct Created {
    /// Digest of the blob (compressed).
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Digest of the uncompressed tar (the diffID).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// OCI media type.
    pub media_type: &'static str,
}

enum Change {
    /// Add or replace with what the upper tree has at this path.
    Upsert(Metadata),
    /// Delete this path.
    Whiteout,
    /// Add the directory, then hide what lower layers have in it.
    Opaque(Metadata),
}

fn walk_err(root: &Path, e: walkdir::Error) -> Error {
    let path = e.path().unwrap_or(root).to_path_buf();
    Error::io("walk", path, e.into())
}

/// A walk of everything under `root` (not `root` itself), in path order.
fn sorted(root: &Path) -> walkdir::IntoIter {
    WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
}

/// `entry`'s path relative to `root`, the directory it was walked from.
fn relative(root: &Path, entry: &walkdir::DirEntry) -> PathBuf {
    entry
        .path()
        .strip_prefix(root)
        .expect("walked from root")
        .to_path_buf()
}

/// Every entry under `root` in path order, with its path relative to `root` and its
/// metadata (symlinks not followed).
fn walk_sorted(
    root: &Path,
) -> impl Iterator<Item = Result<(PathBuf, walkdir::DirEntry, Metadata)>> + '_ {
    sorted(root).map(move |entry| {
        let entry = entry.map_err(|e| walk_err(root, e))?;
        let rel = relative(root, &entry);
        let md = entry.metadata().map_err(|e| walk_err(root, e))?;
        Ok((rel, entry, md))
    })
}

/// Writes the layer of `changes` to `out`.
pub fn write_layer(changes: Changes<'_>, out: impl Write, options: DiffOptions) -> Result<Created> {
    let (upper, list) = match changes {
        Changes::OverlayUpper(upper) => (upper, overlay_changes(upper)?),
        Changes::Trees { lower, upper } => (upper, tree_changes(lower, upper)?),
    };
    let compressed = HashingWriter::new(out);
    let encoder = options.compression.encoder(compressed)?;
    let mut w = TarWriter {
        tar: tar::Builder::new(HashingWriter::new(encoder)),
        upper,
        epoch: options.source_date_epoch,
        emitted_dirs: std::collections::HashSet::new(),
        links: HashMap::new(),
    };
    for (rel, change) in &list {
        w.change(rel, change)?;
    }
    let out_err = |e| Error::io("write layer", "", e);
    let hashed = w.tar.into_inner().map_err(out_err)?;
    let (encoder, diff_id, uncompressed_size) = hashed.finish();
    let compressed = encoder.finish().map_err(out_err)?;
    let (_, digest, size) = compressed.finish();
    Ok(Created {
        digest,
        size,
        diff_id,
        uncompressed_size,
        media_type: options.compression.media_type(),
    })
}

fn overlay_changes(upper: &Path) -> Result<Vec<(PathBuf, Change)>> {
    let mut out = Vec::new();
    for item in walk_sorted(upper) {
        let (rel, entry, md) = item?;
        let change = if is_whiteout(&md) {
            Change::Whiteout
        } else if md.is_dir() && is_opaque(entry.path()) {
            Change::Opaque(md)
        } else {
            Change::Upsert(md)
        };
        out.push((rel, change));
    }
    Ok(out)
}

fn same_xattrs(a: &Path, b: &Path) -> Result<bool> {
    let mut xa = list_xattrs(a)?;
    let mut xb = list_xattrs(b)?;
    xa.sort();
    xb.sort();
    if xa != xb {
        return Ok(false);
    }
    for name in &xa {
        if get_xattr(a, name)? != get_xattr(b, name)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| File::open(p).map_err(|e| Error::io("open", p, e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| Error::io("read", a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| Error::io("read", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether the upper entry is unchanged from the lower one.
fn unchanged(lower: &Path, lmd: &Metadata, upper: &Path, umd: &Metadata) -> Result<bool> {
    let same_kind = lmd.file_type() == umd.file_type();
    let same_meta = same_kind
        && lmd.mode() == umd.mode()
        && lmd.uid() == umd.uid()
        && lmd.gid() == umd.gid()
        && lmd.rdev() == umd.rdev()
        && (umd.is_dir()
            || (lmd.size() == umd.size()
                && lmd.mtime() == umd.mtime()
                && lmd.mtime_nsec() == umd.mtime_nsec()));
    if !same_meta || !same_xattrs(lower, upper)? {
        return Ok(false);
    }
    if umd.file_type().is_symlink() {
        return Ok(fs::read_link(lower).ok() == fs::read_link(upper).ok());
    }
    // Whole-second times can hide a rewrite: compare the bytes then, as containerd does.
    if umd.is_file() && umd.mtime_nsec() == 0 {
        return same_content(lower, upper);
    }
    Ok(true)
}

fn tree_changes(lower: &Path, upper: &Path) -> Result<Vec<(PathBuf, Change)>> {
    let mut out = Vec::new();
    for item in walk_sorted(upper) {
        let (rel, entry, umd) = item?;
        let lpath = lower.join(&rel);
        match fs::symlink_metadata(&lpath) {
            Ok(lmd) if unchanged(&lpath, &lmd, entry.path(), &umd)? => {}
            Ok(_) | Err(_) => out.push((rel, Change::Upsert(umd))),
        }
    }
    let mut walk = sorted(lower);
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| walk_err(lower, e))?;
        let rel = relative(lower, &entry);
        match fs::symlink_metadata(upper.join(&rel)) {
            Err(_) => {
                out.push((rel, Change::Whiteout));
                if entry.file_type().is_dir() {
                    walk.skip_current_dir();
                }
            }
            // Replaced by a non-directory: the new entry hides everything below it.
            Ok(umd) if entry.file_type().is_dir() && !umd.is_dir() => walk.skip_current_dir(),
            Ok(_) => {}
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

struct TarWriter<'a, W: Write> {
    tar: tar::Builder<W>,
    upper: &'a Path,
    epoch: Option<i64>,
    emitted_dirs: std::collections::HashSet<PathBuf>,
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> TarWriter<'_, W> {
    fn err(&self, rel: &Path, e: io::Error) -> Error {
        Error::io("write layer entry", rel, e)
    }

    fn change(&mut self, rel: &Path, change: &Change) -> Result<()> {
        self.ancestors(rel)?;
        match change {
            Change::Upsert(md) => self.entry(rel, md),
            Change::Opaque(md) => {
                self.entry(rel, md)?;
                self.empty_file(&rel.join(".wh..wh..opq"))
            }
            Change::Whiteout => {
                let name = rel.file_name().expect("not the root").to_string_lossy();
                let wh = rel.with_file_name(format!(".wh.{name}"));
                self.empty_file(&wh)
            }
        }
    }

    /// Emits the parent directories of `rel` not emitted yet, as the upper tree has them.
    fn ancestors(&mut self, rel: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut p = rel.parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            if self.emitted_dirs.contains(dir) {
                break;
            }
            missing.push(dir.to_path_buf());
            p = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            let md = fs::symlink_metadata(self.upper.join(&dir))
                .map_err(|e| Error::io("stat", &dir, e))?;
            self.entry(&dir, &md)?;
        }
        Ok(())
    }

    fn mtime(&self, md: &Metadata) -> u64 {
        let t = md.mtime();
        let t = self.epoch.map_or(t, |e| t.min(e));
        t.max(0) as u64
    }

    fn empty_file(&mut self, rel: &Path) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| self.err(rel, e))
    }

    fn xattrs(&mut self, rel: &Path, abs: &Path) -> Result<()> {
        let mut records = Vec::new();
        let mut names = list_xattrs(abs)?;
        names.sort();
        for name in names {
            let n = name.to_string_lossy();
            if n.starts_with("trusted.overlay.") || n.starts_with("user.overlay.") {
                continue;
            }
            let value = get_xattr(abs, &name)?;
            records.push((format!("SCHILY.xattr.{n}"), value));
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n", where len counts itself.
            let body = k.len() + v.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(&v);
            data.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        let name = format!(
            "PaxHeaders/{}",
            rel.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let name: String = name.chars().take(99).collect();
        h.set_path(&name).map_err(|e| self.err(rel, e))?;
        h.set_cksum();
        self.tar.append(&h, &data[..]).map_err(|e| self.err(rel, e))
    }

    fn entry(&mut self, rel: &Path, md: &Metadata) -> Result<()> {
        let abs = self.upper.join(rel);
        let ft = md.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        if md.is_dir() && !self.emitted_dirs.insert(rel.to_path_buf()) {
            return Ok(());
        }
        self.xattrs(rel, &abs)?;
        let mut h = Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        h.set_mtime(self.mtime(md));
        h.set_size(0);
        if ft.is_file() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                h.set_entry_type(EntryType::Link);
                return self
                    .tar
                    .append_link(&mut h, rel, &first)
                    .map_err(|e| self.err(rel, e));
            }
            self.links.insert(key, rel.to_path_buf());
        }
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            self.tar
                .append_data(&mut h, rel, io::empty())
                .map_err(|e| self.err(rel, e))
        } else if ft.is_file() {
            h.set_entry_type(EntryType::Regular);
            h.set_size(md.size());
            let f = File::open(&abs).map_err(|e| Error::io("open", &abs, e))?;
            self.tar
                .append_data(&mut h, rel, f.take(md.size()))
                .map_err(|e| self.err(rel, e))
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(&abs).map_err(|e| Error::io("readlink", &abs, e))?;
            self.tar
                .append_link(&mut h, rel, &target)
                .map_err(|e| self.err(rel, e))
        } else {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            };
            h.set_entry_type(kind);
            let (major, minor) = split_dev(md.rdev());
            h.set_device_major(major).map_err(|e| self.err(rel, e))?;
            h.set_device_minor(minor).map_err(|e| self.err(rel, e))?;
            self.tar
                .append_data(&mut h, rel, io::empty())
                .map_err(|e| self.err(rel, e))
        }
    }
}
