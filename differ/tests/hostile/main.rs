//! A corpus of hostile and malformed layers, built from raw tar headers: path traversal,
//! absolute names, symlinks (in the layer or already in the target) leading out of the
//! root, hard links out of the root or through symlinks, whiteouts aimed outside, overlay
//! xattr injection, file/directory replacement, duplicate entries, and broken tar, gzip and
//! zstd streams.
//!
//! Each case runs in a fresh temporary directory holding the target `root` next to a
//! `sentinel` directory, in both whiteout modes (overlay mode needs root). Whatever the
//! layer, the applier must not panic, must leave the sentinel exactly as it was, and must
//! create nothing outside the root; per case it must succeed (with the entries inside the
//! root), refuse the layer with `Error::InvalidLayer`, or may do either.

#[path = "../common/mod.rs"]
mod common;

/// One hostile case as two tests: `NAME::native`, and `NAME::overlay`, which writes
/// `trusted.*` xattrs and so needs root (ignored otherwise, like every root test).
macro_rules! hostile_case {
    ($name:ident, $expect:expr, $setup:expr, $layer:expr, $check:expr $(,)?) => {
        mod $name {
            use super::*;

            #[test]
            fn native() {
                let mode = WhiteoutMode::Native;
                run(stringify!($name), mode, $expect, $setup, $layer, $check);
            }

            #[test]
            #[ignore = "needs root"]
            fn overlay() {
                assert_root(concat!(stringify!($name), " in overlay mode"));
                let mode = WhiteoutMode::Overlay { userxattr: false };
                run(stringify!($name), mode, $expect, $setup, $layer, $check);
            }
        }
    };
}

mod extensions;
mod links;
mod paths;
mod replacement;
mod streams;
mod whiteouts;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::*;
use differ::{Error, WhiteoutMode};

/// The name escapes aim at, outside the temporary directory.
const ESCAPED: &str = "strata-differ-hostile";

/// What a case must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Succeed.
    Applied,
    /// Fail with `Error::InvalidLayer`.
    Refused,
    /// Succeed, or fail with `Error::InvalidLayer` or `Error::Io`.
    Either,
}

/// Prepares the target: `(root, tmp)`.
type Setup<'a> = &'a dyn Fn(&Path, &Path);
/// Builds the layer, given the temporary directory (for absolute names).
type Layer<'a> = &'a dyn Fn(&Path) -> Vec<u8>;
/// Checks the root after applying (whatever the result) in a mode.
type Check<'a> = &'a dyn Fn(&Path, WhiteoutMode);

fn no_setup(_: &Path, _: &Path) {}

fn no_check(_: &Path, _: WhiteoutMode) {}

/// Paths an escape would create, outside the temporary directory.
fn probes(tmp: &Path) -> [PathBuf; 2] {
    [
        Path::new("/etc").join(ESCAPED),
        tmp.parent().unwrap().join(ESCAPED),
    ]
}

/// Everything that must not change outside the root: the temporary directory's listing
/// and metadata, every detail of the sentinel tree, and the escape probes.
fn outside(tmp: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut top: Vec<String> = fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    out.push(format!("top level {top:?}"));
    let md = fs::symlink_metadata(tmp).unwrap();
    out.push(format!(
        "tmp mode {:o} owner {}:{}",
        md.mode(),
        md.uid(),
        md.gid()
    ));
    for entry in walkdir::WalkDir::new(tmp.join("sentinel")).sort_by_file_name() {
        let path = entry.unwrap().into_path();
        let md = fs::symlink_metadata(&path).unwrap();
        let content = if md.is_file() {
            fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        let all_xattrs: Vec<(String, Vec<u8>)> = mountutil::fs::list_xattrs(&path)
            .unwrap()
            .into_iter()
            .map(|n| {
                let v = mountutil::fs::get_xattr(&path, &n).unwrap();
                (n.to_string_lossy().into_owned(), v)
            })
            .collect();
        out.push(format!(
            "{} mode {:o} owner {}:{} size {} nlink {} ino {} mtime {}.{} content {:?} \
             link {:?} xattrs {all_xattrs:?}",
            path.strip_prefix(tmp).unwrap().display(),
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.nlink(),
            md.ino(),
            md.mtime(),
            md.mtime_nsec(),
            String::from_utf8_lossy(&content),
            fs::read_link(&path).ok(),
        ));
    }
    for p in probes(tmp) {
        out.push(format!("{} exists: {}", p.display(), p.exists()));
    }
    out
}

/// Runs one case in both whiteout modes; overlay mode (trusted.* xattrs) only as root, and
/// says so when it is left out.
fn hostile(name: &str, expect: Expect, setup: Setup, layer: Layer, check: Check) {
    let mut modes = vec![WhiteoutMode::Native];
    if is_root() {
        modes.push(WhiteoutMode::Overlay { userxattr: false });
    } else {
        eprintln!("{name}: overlay mode needs root, native mode only");
    }
    for mode in modes {
        run(name, mode, expect, setup, layer, check);
    }
}

fn run(name: &str, mode: WhiteoutMode, expect: Expect, setup: Setup, layer: Layer, check: Check) {
    let what = format!("{name} ({mode:?})");
    let tmp = tempdir();
    let t = tmp.path();
    let [root, sentinel] = mkdirs(t, ["root", "sentinel"]);
    fs::create_dir(sentinel.join("sub")).unwrap();
    fs::write(sentinel.join("file"), "sentinel data").unwrap();
    fs::write(sentinel.join("sub/inner"), "inner").unwrap();
    let before = outside(t);
    setup(&root, t);
    let blob = layer(t);

    let result = catch_unwind(AssertUnwindSafe(|| apply(&blob, &root, mode)))
        .unwrap_or_else(|_| panic!("{what}: apply_layer panicked"));
    eprintln!("{what}: {result:?}");
    match (&result, expect) {
        (Ok(_), Expect::Applied | Expect::Either) => {}
        (Err(Error::InvalidLayer(_)), Expect::Refused | Expect::Either) => {}
        (Err(Error::Io(_)), Expect::Either) => {}
        (r, e) => panic!("{what}: expected {e:?}, got {r:?}"),
    }
    let after = outside(t);
    let changed: Vec<String> = before
        .iter()
        .filter(|l| !after.contains(l))
        .map(|l| format!("before: {l}"))
        .chain(
            after
                .iter()
                .filter(|l| !before.contains(l))
                .map(|l| format!("after:  {l}")),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "{what}: something outside the root changed:\n{}",
        changed.join("\n")
    );
    for p in probes(t) {
        assert!(!p.exists(), "{what}: {} was created", p.display());
    }
    check(&root, mode);
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// `tmp` as a relative path: where an absolute name under it lands inside the root.
fn inside(root: &Path, tmp: &Path) -> PathBuf {
    root.join(tmp.strip_prefix("/").unwrap())
}
