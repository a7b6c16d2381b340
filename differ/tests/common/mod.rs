//! Helpers shared by the differ's integration tests: root gating, digests and compression,
//! applying a blob, a raw tar writer for hand-made (also hostile) layers, capturing and
//! comparing trees, copying trees and overlay mounts.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use differ::{Applied, WhiteoutMode, apply_layer};
use mountutil::{Mount, TempMount};
use sha2::{Digest as _, Sha256};

/// Asserts that this process is root. Every test that needs root is marked
/// `#[ignore = "needs root"]`: a plain `cargo test` lists it as ignored, and it runs only when
/// asked for (`cargo test -- --include-ignored`, as `.ci/run` does as root), so not being
/// root here is an error, never a silent pass.
pub fn assert_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root: run it as root, or leave out --include-ignored to skip it"
    );
}

/// Whether this process is root.
pub fn is_root() -> bool {
    mountutil::at::effective_ids().0 == 0
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("differ-test-")
        .tempdir()
        .expect("create temporary directory")
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let sum = Sha256::digest(data);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `data` as one gzip member.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `data` as one zstd frame with a content checksum, as the `zstd` tool writes by default.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `len` reproducible pseudo-random bytes (incompressible, unlike a repeated pattern).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Applies `blob` (compression sniffed) to `target`.
pub fn apply(blob: &[u8], target: &Path, mode: WhiteoutMode) -> differ::Result<Applied> {
    apply_layer(
        Box::new(Cursor::new(blob.to_vec())),
        None,
        target,
        mode,
        differ::Lowers::Present(&[]),
        &differ::LayerLimits::default(),
    )
}

/// Modification time given to the entries [`RawTar`] writes.
const MTIME: u64 = 1_600_000_000;

/// One ustar header, written byte by byte so that any name (`..`, absolute) can be stored.
#[derive(Debug, Clone)]
pub struct Header {
    pub kind: u8,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
}

impl Header {
    /// A header of type `kind` for `path`, owned by this process, mode 0644 (0755 for a
    /// directory), at [`MTIME`].
    pub fn new(kind: u8, path: &str) -> Self {
        let (uid, gid) = mountutil::at::effective_ids();
        Header {
            kind,
            path: path.as_bytes().to_vec(),
            link: Vec::new(),
            mode: if kind == b'5' { 0o755 } else { 0o644 },
            uid,
            gid,
            size: 0,
            mtime: MTIME,
        }
    }

    /// The 512-byte block with a correct checksum.
    pub fn block(&self) -> [u8; 512] {
        assert!(self.path.len() <= 100, "name too long for a ustar header");
        assert!(self.link.len() <= 100, "link too long for a ustar header");
        let mut b = [0u8; 512];
        let octal = |b: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}", w = width - 1);
            assert_eq!(s.len(), width - 1, "{v} does not fit in {width} bytes");
            b[at..at + width - 1].copy_from_slice(s.as_bytes());
        };
        b[..self.path.len()].copy_from_slice(&self.path);
        octal(&mut b, 100, 8, u64::from(self.mode));
        octal(&mut b, 108, 8, u64::from(self.uid));
        octal(&mut b, 116, 8, u64::from(self.gid));
        octal(&mut b, 124, 12, self.size);
        octal(&mut b, 136, 12, self.mtime);
        b[156] = self.kind;
        b[157..157 + self.link.len()].copy_from_slice(&self.link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        let s = format!("{sum:06o}\0");
        b[148..155].copy_from_slice(s.as_bytes());
        b
    }
}

/// A tar stream built entry by entry.
#[derive(Debug, Default, Clone)]
pub struct RawTar {
    buf: Vec<u8>,
}

impl RawTar {
    /// Appends `h` (its size set to `data`'s) and `data` padded to a block.
    pub fn entry(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.size = data.len() as u64;
        self.buf.extend_from_slice(&h.block());
        self.raw(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.resize(self.buf.len() + pad, 0);
        self
    }

    /// Appends bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(Header::new(b'0', path), data)
    }

    /// A directory.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(Header::new(b'5', path), b"")
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Header::new(b'2', path);
        h.mode = 0o777;
        h.link = target.as_bytes().to_vec();
        self.entry(h, b"")
    }

    /// A hard link.
    pub fn hard_link(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Header::new(b'1', path);
        h.link = target.as_bytes().to_vec();
        self.entry(h, b"")
    }

    /// A GNU long name (`L`) for the next entry.
    pub fn long_name(&mut self, path: &str) -> &mut Self {
        self.gnu_long(b'L', path)
    }

    /// A GNU long link name (`K`) for the next entry.
    pub fn long_link(&mut self, target: &str) -> &mut Self {
        self.gnu_long(b'K', target)
    }

    fn gnu_long(&mut self, kind: u8, name: &str) -> &mut Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.entry(Header::new(kind, "././@LongLink"), &data)
    }

    /// A PAX extended header (`x`) for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "<len> <key>=<value>\n", where len counts its own digits too.
            let body = key.len() + value.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.entry(Header::new(b'x', "PaxHeaders/entry"), &data)
    }

    /// The stream with its two zero end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// What a path is, with the data that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, sha256: String },
    Dir,
    Symlink(PathBuf),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Socket,
}

/// Everything compared about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Whole seconds.
    pub mtime: i64,
    /// Without `trusted.overlay.*` and `user.overlay.*`.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The other paths of the tree sharing this inode (hard links), sorted.
    pub links: Vec<PathBuf>,
}

/// Every path under a root (relative; the root itself left out) with what it is.
pub type Tree = BTreeMap<PathBuf, Node>;

/// The extended attributes of `path` that are not overlayfs's own.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    mountutil::fs::list_xattrs(path)
        .unwrap()
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("trusted.overlay.") && !n.starts_with("user.overlay."))
        .map(|n| {
            let v = mountutil::fs::get_xattr(path, n.as_ref()).unwrap();
            (n, v)
        })
        .collect()
}

/// Captures the tree under `root`.
pub fn capture(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let md = fs::symlink_metadata(path).unwrap();
        let ft = md.file_type();
        let dev = || mountutil::fs::split_dev(md.rdev());
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            let mut data = Vec::new();
            fs::File::open(path)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            Kind::File {
                size: md.size(),
                sha256: sha256(&data),
            }
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(path).unwrap())
        } else if ft.is_char_device() {
            let (ma, mi) = dev();
            Kind::Char(ma, mi)
        } else if ft.is_block_device() {
            let (ma, mi) = dev();
            Kind::Block(ma, mi)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        if !ft.is_dir() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            xattrs: xattrs(path),
            links: Vec::new(),
        };
        tree.insert(rel, node);
    }
    for group in inodes.values() {
        for p in group {
            let others = group.iter().filter(|o| *o != p).cloned().collect();
            tree.get_mut(p).unwrap().links = others;
        }
    }
    tree
}

/// Asserts `actual` equals `expected`, listing every missing, extra and differing path.
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let mut problems = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => problems.push(format!("missing {}: {want:?}", path.display())),
            Some(got) if got != want => problems.push(format!(
                "differs {}:\n    expected {want:?}\n    actual   {got:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            problems.push(format!("extra {}: {got:?}", path.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} difference(s)\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The paths of `tree`, as strings, for short assertions.
pub fn paths(tree: &Tree) -> Vec<String> {
    tree.keys().map(|p| p.display().to_string()).collect()
}

/// Copies the tree `src` to the new path `dst`, keeping owners, modes, times, xattrs and
/// hard links (`cp -a`).
pub fn copy_tree(src: &Path, dst: &Path) {
    let status = Command::new("cp").arg("-a").arg(src).arg(dst).status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "cp -a {} {}: {status:?}",
        src.display(),
        dst.display()
    );
}

/// Mounts an overlay of `lower` with `upper` and `work` (plus `extra` options) on a new
/// directory under `parent`; unmounted on drop.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    extra: &[&str],
    parent: &Path,
) -> TempMount {
    let mut options = vec![
        format!("lowerdir={}", lower.display()),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    let mount = Mount {
        fstype: "overlay".into(),
        source: "overlay".into(),
        options,
    };
    TempMount::new(&[mount], parent).expect("mount overlay")
}

/// Creates the directories `names` under `parent` and returns their paths.
pub fn mkdirs<const N: usize>(parent: &Path, names: [&str; N]) -> [PathBuf; N] {
    names.map(|n| {
        let p = parent.join(n);
        fs::create_dir_all(&p).unwrap();
        p
    })
}

/// Whether `path` is the overlay whiteout: a character device 0/0.
pub fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|md| md.file_type().is_char_device() && md.rdev() == 0)
}

/// The value of xattr `name` of `path`, if set.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    mountutil::fs::get_xattr(path, name.as_ref()).ok()
}
