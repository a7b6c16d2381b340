//! Building and comparing file trees, like containerd's `fstest` appliers: what a layer
//! changes, and a snapshot of everything a process sees in a tree.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// One change to a tree.
pub enum Op<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a str, u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Chown(&'a str, u32, u32),
    Chmod(&'a str, u32),
    Remove(&'a str),
    Rename(&'a str, &'a str),
}

/// Applies `ops` under `root`.
pub fn apply(root: &Path, ops: &[Op]) {
    for op in ops {
        let p = |rel: &str| root.join(rel.trim_start_matches('/'));
        match *op {
            Op::Dir(d, mode) => {
                fs::create_dir(p(d)).unwrap();
                fs::set_permissions(p(d), fs::Permissions::from_mode(mode)).unwrap();
            }
            Op::File(f, content, mode) => {
                fs::write(p(f), content).unwrap();
                fs::set_permissions(p(f), fs::Permissions::from_mode(mode)).unwrap();
            }
            Op::Symlink(target, link) => std::os::unix::fs::symlink(target, p(link)).unwrap(),
            Op::Link(existing, new) => fs::hard_link(p(existing), p(new)).unwrap(),
            Op::Chown(f, uid, gid) => {
                std::os::unix::fs::lchown(p(f), Some(uid), Some(gid)).unwrap()
            }
            Op::Chmod(f, mode) => {
                fs::set_permissions(p(f), fs::Permissions::from_mode(mode)).unwrap()
            }
            Op::Remove(f) => {
                let path = p(f);
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    fs::remove_dir_all(path).unwrap()
                } else {
                    fs::remove_file(path).unwrap()
                }
            }
            Op::Rename(from, to) => fs::rename(p(from), p(to)).unwrap(),
        }
    }
}

/// What a process sees at one path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content or symlink target.
    pub data: Vec<u8>,
}

/// Every path under `root` (relative, root itself as "/") with what it is.
pub fn capture(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        // A whiteout in a directory that exists only in the overlay's upper layer (a layer
        // can whiteout a path no layer below has, and containerd writes it all the same) is
        // listed by readdir yet cannot be looked up: nothing a process can open.
        let md = match e.path().symlink_metadata() {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            md => md.unwrap_or_else(|err| panic!("{}: {err}", e.path().display())),
        };
        let rel = format!("/{}", e.path().strip_prefix(root).unwrap().display());
        let ft = md.file_type();
        let (kind, data) = if ft.is_dir() {
            ('d', Vec::new())
        } else if ft.is_symlink() {
            (
                'l',
                fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else if ft.is_file() {
            ('f', fs::read(e.path()).unwrap())
        } else {
            ('o', md.rdev().to_le_bytes().to_vec())
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                data,
            },
        );
    }
    out
}
