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

mod common;

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

#[test]
fn dotdot_traversal() {
    hostile(
        "dotdot_traversal",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .file(&format!("../../../../../../../etc/{ESCAPED}"), b"pwned")
                .file(&format!("../../{ESCAPED}"), b"pwned")
                .file("../sentinel/file", b"pwned")
                .file("a/../../../sentinel/new", b"pwned")
                .finish()
        },
        &|root, _| {
            assert_eq!(read(&root.join("etc").join(ESCAPED)), "pwned");
            assert_eq!(read(&root.join(ESCAPED)), "pwned");
            assert_eq!(read(&root.join("sentinel/file")), "pwned");
            assert_eq!(read(&root.join("sentinel/new")), "pwned");
        },
    );
}

#[test]
fn absolute_paths() {
    hostile(
        "absolute_paths",
        Expect::Applied,
        &no_setup,
        &|tmp| {
            RawTar::default()
                .file(&format!("/etc/{ESCAPED}"), b"pwned")
                .file(&format!("{}/sentinel/file", tmp.display()), b"pwned")
                .finish()
        },
        &|root, _| {
            assert_eq!(read(&root.join("etc").join(ESCAPED)), "pwned");
            let tmp = root.parent().unwrap();
            assert_eq!(read(&inside(root, tmp).join("sentinel/file")), "pwned");
        },
    );
}

#[test]
fn symlink_to_slash_then_file_through_it() {
    hostile(
        "symlink_to_slash_then_file_through_it",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("evil", "/")
                .file("evil/x", b"pwned")
                .file(&format!("evil/etc/{ESCAPED}"), b"pwned")
                .finish()
        },
        &|root, _| {
            assert!(is_symlink(&root.join("evil")));
            assert_eq!(read(&root.join("x")), "pwned");
            assert_eq!(read(&root.join("etc").join(ESCAPED)), "pwned");
        },
    );
}

#[test]
fn symlink_up_then_file_through_it() {
    hostile(
        "symlink_up_then_file_through_it",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("evil", "../../..")
                .file("evil/x", b"pwned")
                .finish()
        },
        &|root, _| assert_eq!(read(&root.join("x")), "pwned"),
    );
}

#[test]
fn symlink_to_sentinel_then_file_through_it() {
    hostile(
        "symlink_to_sentinel_then_file_through_it",
        Expect::Either,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("evil", "../sentinel")
                .file("evil/file", b"pwned")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn absolute_symlink_to_sentinel_then_file_through_it() {
    hostile(
        "absolute_symlink_to_sentinel_then_file_through_it",
        Expect::Either,
        &no_setup,
        &|tmp| {
            RawTar::default()
                .symlink("evil", &format!("{}/sentinel", tmp.display()))
                .file("evil/file", b"pwned")
                .file("evil/sub/inner", b"pwned")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn existing_symlink_to_outside_then_file_through_it() {
    hostile(
        "existing_symlink_to_outside_then_file_through_it",
        Expect::Either,
        &|root, _| symlink("../sentinel", root.join("pre")).unwrap(),
        &|_| RawTar::default().file("pre/file", b"pwned").finish(),
        &no_check,
    );
}

#[test]
fn existing_absolute_symlink_to_outside_then_file_through_it() {
    hostile(
        "existing_absolute_symlink_to_outside_then_file_through_it",
        Expect::Either,
        &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
        &|_| {
            RawTar::default()
                .file("pre/file", b"pwned")
                .dir("pre/sub")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn existing_symlink_as_final_component_is_replaced() {
    hostile(
        "existing_symlink_as_final_component_is_replaced",
        Expect::Applied,
        &|root, tmp| {
            symlink("../sentinel/file", root.join("f")).unwrap();
            symlink(tmp.join("sentinel/file"), root.join("g")).unwrap();
        },
        &|_| {
            RawTar::default()
                .file("f", b"pwned")
                .file("g", b"pwned")
                .finish()
        },
        &|root, _| {
            for name in ["f", "g"] {
                assert!(!is_symlink(&root.join(name)), "{name} replaced");
                assert_eq!(read(&root.join(name)), "pwned");
            }
        },
    );
}

#[test]
fn existing_hard_link_to_outside_is_replaced_not_written_through() {
    hostile(
        "existing_hard_link_to_outside_is_replaced_not_written_through",
        Expect::Applied,
        &|root, tmp| fs::hard_link(tmp.join("sentinel/file"), root.join("h")).unwrap(),
        &|_| RawTar::default().file("h", b"pwned").finish(),
        &|root, _| {
            assert_eq!(read(&root.join("h")), "pwned");
            assert_eq!(fs::metadata(root.join("h")).unwrap().nlink(), 1);
        },
    );
}

#[test]
fn existing_symlink_replaced_by_fifo() {
    hostile(
        "existing_symlink_replaced_by_fifo",
        Expect::Applied,
        &|root, _| symlink("../sentinel/file", root.join("n")).unwrap(),
        &|_| {
            let mut h = Header::new(b'6', "n");
            h.mode = 0o600;
            RawTar::default().entry(h, b"").finish()
        },
        &|root, _| {
            let md = fs::symlink_metadata(root.join("n")).unwrap();
            assert_eq!(md.mode() & 0o170000, 0o010000, "n is a fifo");
        },
    );
}

#[test]
fn hard_link_out_of_root() {
    hostile(
        "hard_link_out_of_root",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .hard_link("l", "../../sentinel/file")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn hard_link_to_etc_passwd() {
    hostile(
        "hard_link_to_etc_passwd",
        Expect::Refused,
        &no_setup,
        &|_| RawTar::default().hard_link("l", "/etc/passwd").finish(),
        &|root, _| assert!(!root.join("l").exists()),
    );
}

#[test]
fn hard_link_to_absolute_sentinel() {
    hostile(
        "hard_link_to_absolute_sentinel",
        Expect::Refused,
        &no_setup,
        &|tmp| {
            RawTar::default()
                .hard_link("l", &format!("{}/sentinel/file", tmp.display()))
                .finish()
        },
        &no_check,
    );
}

#[test]
fn hard_link_through_layer_symlink() {
    hostile(
        "hard_link_through_layer_symlink",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("s", "../sentinel")
                .hard_link("l", "s/file")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn hard_link_through_absolute_layer_symlink() {
    hostile(
        "hard_link_through_absolute_layer_symlink",
        Expect::Refused,
        &no_setup,
        &|tmp| {
            RawTar::default()
                .symlink("s", &format!("{}/sentinel", tmp.display()))
                .hard_link("l", "s/file")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn hard_link_through_existing_symlink() {
    hostile(
        "hard_link_through_existing_symlink",
        Expect::Refused,
        &|root, tmp| symlink(tmp.join("sentinel"), root.join("s")).unwrap(),
        &|_| RawTar::default().hard_link("l", "s/file").finish(),
        &no_check,
    );
}

#[test]
fn hard_link_to_symlink_links_the_symlink_itself() {
    hostile(
        "hard_link_to_symlink_links_the_symlink_itself",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("s", "../sentinel/file")
                .hard_link("l", "s")
                .finish()
        },
        &|root, _| {
            let s = fs::symlink_metadata(root.join("s")).unwrap();
            let l = fs::symlink_metadata(root.join("l")).unwrap();
            assert!(l.file_type().is_symlink());
            assert_eq!(s.ino(), l.ino());
        },
    );
}

#[test]
fn whiteout_of_dotdot() {
    hostile(
        "whiteout_of_dotdot",
        Expect::Refused,
        &no_setup,
        &|_| RawTar::default().file("sub/.wh..", b"").finish(),
        &no_check,
    );
}

#[test]
fn whiteout_of_empty_name() {
    hostile(
        "whiteout_of_empty_name",
        Expect::Refused,
        &no_setup,
        &|_| RawTar::default().file(".wh.", b"").finish(),
        &no_check,
    );
}

#[test]
fn aufs_metadata_whiteouts_are_skipped() {
    // `.wh..wh.*` other than the opaque marker is aufs bookkeeping: containerd applies
    // nothing for it, and it must not fail the layer.
    hostile(
        "aufs_metadata_whiteouts_are_skipped",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .file("d/.wh..wh.plnk", b"")
                .file("d/kept", b"k")
                .finish()
        },
        &|root, _| {
            let names: Vec<_> = fs::read_dir(root.join("d"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["kept"]);
        },
    );
}

#[test]
fn whiteouts_above_the_root() {
    hostile(
        "whiteouts_above_the_root",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .file("../.wh.sentinel", b"")
                .file("../../.wh.tmp", b"")
                .finish()
        },
        &|root, mode| {
            for name in ["sentinel", "tmp"] {
                let wh = root.join(name);
                match mode {
                    WhiteoutMode::Native => assert!(!wh.exists(), "{name}"),
                    WhiteoutMode::Overlay { .. } => assert!(is_whiteout(&wh), "{name}"),
                }
            }
        },
    );
}

#[test]
fn whiteout_through_layer_symlink() {
    hostile(
        "whiteout_through_layer_symlink",
        Expect::Either,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("evil", "../sentinel")
                .file("evil/.wh.file", b"")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn whiteout_through_absolute_layer_symlink() {
    hostile(
        "whiteout_through_absolute_layer_symlink",
        Expect::Either,
        &no_setup,
        &|tmp| {
            RawTar::default()
                .symlink("evil", &format!("{}/sentinel", tmp.display()))
                .file("evil/.wh.sub", b"")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn whiteout_through_existing_symlink() {
    hostile(
        "whiteout_through_existing_symlink",
        Expect::Either,
        &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
        &|_| RawTar::default().file("pre/.wh.file", b"").finish(),
        &no_check,
    );
}

#[test]
fn opaque_whiteout_through_layer_symlink() {
    hostile(
        "opaque_whiteout_through_layer_symlink",
        Expect::Either,
        &no_setup,
        &|_| {
            RawTar::default()
                .symlink("evil", "../sentinel")
                .file("evil/.wh..wh..opq", b"")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn opaque_whiteout_through_existing_symlink() {
    hostile(
        "opaque_whiteout_through_existing_symlink",
        Expect::Either,
        &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
        &|_| RawTar::default().file("pre/.wh..wh..opq", b"").finish(),
        &no_check,
    );
}

/// Asserts no entry under `root` carries an overlay xattr.
fn no_overlay_xattrs(root: &Path, _: WhiteoutMode) {
    for entry in walkdir::WalkDir::new(root) {
        let path = entry.unwrap().into_path();
        for name in mountutil::fs::list_xattrs(&path).unwrap() {
            let n = name.to_string_lossy();
            assert!(
                !n.starts_with("trusted.overlay.") && !n.starts_with("user.overlay."),
                "{} has {n}",
                path.display()
            );
        }
    }
}

#[test]
fn pax_trusted_overlay_opaque_injection() {
    hostile(
        "pax_trusted_overlay_opaque_injection",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
                .dir("d")
                .finish()
        },
        &no_overlay_xattrs,
    );
}

#[test]
fn pax_trusted_overlay_redirect_injection() {
    hostile(
        "pax_trusted_overlay_redirect_injection",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
                .dir("d")
                .finish()
        },
        &no_overlay_xattrs,
    );
}

#[test]
fn pax_user_overlay_xattr_injection() {
    hostile(
        "pax_user_overlay_xattr_injection",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .pax(&[
                    ("SCHILY.xattr.user.fine", b"1"),
                    ("SCHILY.xattr.user.overlay.x", b"y"),
                ])
                .file("f", b"data")
                .finish()
        },
        &no_overlay_xattrs,
    );
}

#[test]
fn file_then_directory_of_the_same_name() {
    hostile(
        "file_then_directory_of_the_same_name",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .file("x", b"data")
                .dir("x")
                .file("x/child", b"child")
                .finish()
        },
        &|root, _| {
            assert!(root.join("x").is_dir());
            assert_eq!(read(&root.join("x/child")), "child");
        },
    );
}

#[test]
fn directory_with_children_then_file_of_the_same_name() {
    hostile(
        "directory_with_children_then_file_of_the_same_name",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .dir("y")
                .file("y/a", b"a")
                .dir("y/sub")
                .file("y/sub/b", b"b")
                .file("y", b"file")
                .finish()
        },
        &|root, _| assert_eq!(read(&root.join("y")), "file"),
    );
}

#[test]
fn directory_then_file_of_the_same_name_keeps_the_files_mtime() {
    hostile(
        "directory_then_file_of_the_same_name_keeps_the_files_mtime",
        Expect::Applied,
        &no_setup,
        &|_| {
            let mut dir = Header::new(b'5', "y");
            dir.mtime = 1_000_000_000;
            let mut file = Header::new(b'0', "y");
            file.mtime = 1_500_000_000;
            RawTar::default()
                .entry(dir, b"")
                .file("y/a", b"a")
                .entry(file, b"file")
                .finish()
        },
        &|root, _| {
            let md = fs::symlink_metadata(root.join("y")).unwrap();
            assert!(md.is_file());
            assert_eq!(md.mtime(), 1_500_000_000, "the file's own mtime");
        },
    );
}

#[test]
fn directory_over_symlinks_replaces_them() {
    hostile(
        "directory_over_symlinks_replaces_them",
        Expect::Applied,
        &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
        &|_| {
            let mut evil = Header::new(b'5', "evil");
            evil.mode = 0o777;
            let mut pre = evil.clone();
            pre.path = b"pre".to_vec();
            RawTar::default()
                .symlink("evil", "../sentinel")
                .entry(evil, b"")
                .entry(pre, b"")
                .file("pre/file", b"inside")
                .finish()
        },
        &|root, _| {
            for name in ["evil", "pre"] {
                let md = fs::symlink_metadata(root.join(name)).unwrap();
                assert!(md.is_dir(), "{name} is a directory");
                assert_eq!(md.mode() & 0o7777, 0o777, "{name}");
            }
            assert_eq!(read(&root.join("pre/file")), "inside");
        },
    );
}

#[test]
fn duplicate_entries_second_wins() {
    hostile(
        "duplicate_entries_second_wins",
        Expect::Applied,
        &no_setup,
        &|_| {
            let mut first = Header::new(b'5', "dd");
            first.mode = 0o700;
            let mut second = first.clone();
            second.mode = 0o750;
            RawTar::default()
                .file("dup", b"first")
                .file("dup", b"second")
                .entry(first, b"")
                .entry(second, b"")
                .symlink("s", "a")
                .symlink("s", "b")
                .finish()
        },
        &|root, _| {
            assert_eq!(read(&root.join("dup")), "second");
            let dd = fs::metadata(root.join("dd")).unwrap();
            assert_eq!(dd.mode() & 0o7777, 0o750);
            assert_eq!(fs::read_link(root.join("s")).unwrap(), Path::new("b"));
        },
    );
}

#[test]
fn duplicate_symlink_then_file() {
    hostile(
        "duplicate_symlink_then_file",
        Expect::Applied,
        &no_setup,
        &|tmp| {
            RawTar::default()
                .symlink("s", "../sentinel/file")
                .file("s", b"pwned")
                .symlink("t", &format!("{}/sentinel/file", tmp.display()))
                .file("t", b"pwned")
                .finish()
        },
        &|root, _| {
            for name in ["s", "t"] {
                assert!(!is_symlink(&root.join(name)), "{name}");
                assert_eq!(read(&root.join(name)), "pwned");
            }
        },
    );
}

#[test]
fn duplicate_symlink_then_directory_gets_later_children() {
    // `a` is a symlink to `b` while a/f1 is written, then replaced by a real directory:
    // a/f2 belongs in that directory, not in `b`.
    hostile(
        "duplicate_symlink_then_directory_gets_later_children",
        Expect::Applied,
        &no_setup,
        &|_| {
            RawTar::default()
                .dir("b")
                .symlink("a", "b")
                .file("a/f1", b"1")
                .dir("a")
                .file("a/f2", b"2")
                .finish()
        },
        &|root, _| {
            assert!(!is_symlink(&root.join("a")) && root.join("a").is_dir());
            assert_eq!(read(&root.join("a/f2")), "2");
            assert!(!root.join("b/f2").exists(), "a/f2 was written into b");
        },
    );
}

#[test]
#[ignore = "needs root"]
fn symlink_owner_and_times_are_not_followed() {
    assert_root("symlink_owner_and_times_are_not_followed");
    hostile(
        "symlink_owner_and_times_are_not_followed",
        Expect::Applied,
        &no_setup,
        &|tmp| {
            let mut rel = Header::new(b'2', "rel");
            (rel.uid, rel.gid, rel.mtime) = (1000, 1000, 12345);
            rel.link = b"../sentinel/file".to_vec();
            let mut abs = rel.clone();
            abs.path = b"abs".to_vec();
            abs.link = format!("{}/sentinel/file", tmp.display()).into_bytes();
            RawTar::default().entry(rel, b"").entry(abs, b"").finish()
        },
        &|root, _| {
            for name in ["rel", "abs"] {
                let md = fs::symlink_metadata(root.join(name)).unwrap();
                assert!(md.file_type().is_symlink());
                assert_eq!((md.uid(), md.gid(), md.mtime()), (1000, 1000, 12345));
            }
        },
    );
}

#[test]
fn entries_naming_the_root_are_ignored() {
    // As containerd ("resolved to root"): a layer cannot change the snapshot root's owner,
    // mode or times, nor replace it with a file.
    for (what, layer) in [
        ("directory", {
            let mut h = Header::new(b'5', "../");
            h.mode = 0o777;
            RawTar::default().entry(h, b"").finish()
        }),
        ("file", RawTar::default().file("..", b"pwned").finish()),
    ] {
        hostile(
            &format!("{what} entry naming the root"),
            Expect::Applied,
            &no_setup,
            &|_| layer.clone(),
            &|root, _| {
                let md = fs::symlink_metadata(root).unwrap();
                assert!(md.is_dir());
                assert_ne!(md.mode() & 0o7777, 0o777, "{what}");
            },
        );
    }
}

#[test]
fn gnu_long_name_traversal() {
    hostile(
        "gnu_long_name_traversal",
        Expect::Applied,
        &no_setup,
        &|_| {
            let name = format!("{}../../sentinel/file", "./".repeat(60));
            RawTar::default()
                .long_name(&name)
                .file("placeholder", b"pwned")
                .finish()
        },
        &|root, _| {
            assert_eq!(read(&root.join("sentinel/file")), "pwned");
            assert!(!root.join("placeholder").exists());
        },
    );
}

#[test]
fn gnu_long_link_traversal() {
    hostile(
        "gnu_long_link_traversal",
        Expect::Refused,
        &no_setup,
        &|_| {
            let target = format!("{}../../sentinel/file", "./".repeat(60));
            RawTar::default()
                .long_link(&target)
                .hard_link("l", "placeholder")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn pax_path_traversal_and_absolute_path() {
    hostile(
        "pax_path_traversal_and_absolute_path",
        Expect::Applied,
        &no_setup,
        &|tmp| {
            let abs = format!("{}/sentinel/sub/inner", tmp.display());
            RawTar::default()
                .pax(&[("path", b"../../sentinel/file")])
                .file("placeholder", b"pwned")
                .pax(&[("path", abs.as_bytes())])
                .file("placeholder", b"pwned")
                .finish()
        },
        &|root, _| {
            assert_eq!(read(&root.join("sentinel/file")), "pwned");
            let tmp = root.parent().unwrap();
            assert_eq!(read(&inside(root, tmp).join("sentinel/sub/inner")), "pwned");
        },
    );
}

#[test]
fn pax_linkpath_traversal() {
    hostile(
        "pax_linkpath_traversal",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .pax(&[("linkpath", b"../sentinel/file")])
                .hard_link("l", "placeholder")
                .finish()
        },
        &no_check,
    );
}

/// A layer whose compressed form is long enough to cut and corrupt in the middle.
fn payload() -> Vec<u8> {
    RawTar::default()
        .file("a", b"first")
        .file("noise", &noise(200 << 10, 11))
        .file("z", b"last")
        .finish()
}

/// For streams that may be accepted: if the file before the damage is there, it is whole.
fn first_entry_whole(root: &Path, _: WhiteoutMode) {
    if root.join("a").exists() {
        assert_eq!(read(&root.join("a")), "first");
    }
}

#[test]
fn truncated_tar_mid_file() {
    hostile(
        "truncated_tar_mid_file",
        Expect::Refused,
        &no_setup,
        &|_| payload()[..512 * 3 + 1000].to_vec(),
        &no_check,
    );
}

#[test]
fn truncated_tar_mid_header() {
    hostile(
        "truncated_tar_mid_header",
        Expect::Refused,
        &no_setup,
        &|_| payload()[..512 * 2 + 200].to_vec(),
        &no_check,
    );
}

#[test]
fn bad_header_checksum() {
    hostile(
        "bad_header_checksum",
        Expect::Refused,
        &no_setup,
        &|_| {
            let mut block = Header::new(b'0', "aaaa").block();
            block[0] = b'b';
            let mut t = RawTar::default();
            t.file("first", b"ok").raw(&block);
            t.finish()
        },
        &no_check,
    );
}

#[test]
fn size_field_larger_than_data() {
    hostile(
        "size_field_larger_than_data",
        Expect::Refused,
        &no_setup,
        &|_| {
            let mut h = Header::new(b'0', "big");
            h.size = 100_000;
            let mut t = RawTar::default();
            t.raw(&h.block()).raw(&[b'x'; 512]);
            t.finish()
        },
        &no_check,
    );
}

#[test]
fn pax_size_larger_than_data() {
    hostile(
        "pax_size_larger_than_data",
        Expect::Refused,
        &no_setup,
        &|_| {
            RawTar::default()
                .pax(&[("size", b"100000")])
                .file("big", b"small")
                .finish()
        },
        &no_check,
    );
}

#[test]
fn truncated_gzip() {
    hostile(
        "truncated_gzip",
        Expect::Refused,
        &no_setup,
        &|_| {
            let gz = gzip(&payload());
            gz[..gz.len() / 2].to_vec()
        },
        &first_entry_whole,
    );
}

#[test]
fn gzip_without_its_trailer() {
    hostile(
        "gzip_without_its_trailer",
        Expect::Refused,
        &no_setup,
        &|_| {
            let gz = gzip(&payload());
            gz[..gz.len() - 4].to_vec()
        },
        &first_entry_whole,
    );
}

#[test]
fn corrupt_gzip() {
    hostile(
        "corrupt_gzip",
        Expect::Refused,
        &no_setup,
        &|_| {
            let mut gz = gzip(&payload());
            let mid = gz.len() / 2;
            for b in &mut gz[mid..mid + 16] {
                *b = !*b;
            }
            gz
        },
        &first_entry_whole,
    );
}

#[test]
fn truncated_zstd() {
    hostile(
        "truncated_zstd",
        Expect::Refused,
        &no_setup,
        &|_| {
            let z = zstd(&payload());
            z[..z.len() / 2].to_vec()
        },
        &first_entry_whole,
    );
}

/// The frame carries a content checksum (see [`zstd`]); without one, flipped bytes in a
/// stored block are undetectable by any decoder.
#[test]
fn corrupt_zstd() {
    hostile(
        "corrupt_zstd",
        Expect::Refused,
        &no_setup,
        &|_| {
            let mut z = zstd(&payload());
            let mid = z.len() / 2;
            for b in &mut z[mid..mid + 16] {
                *b = !*b;
            }
            z
        },
        &first_entry_whole,
    );
}

#[test]
fn garbage_after_tar() {
    hostile(
        "garbage_after_tar",
        Expect::Either,
        &no_setup,
        &|_| [payload(), b"garbage after the end of the archive".to_vec()].concat(),
        &|root, _| {
            // The end-of-archive marker came first: everything before it is applied.
            assert_eq!(read(&root.join("a")), "first");
            assert_eq!(read(&root.join("z")), "last");
        },
    );
}

#[test]
fn garbage_after_gzip() {
    hostile(
        "garbage_after_gzip",
        Expect::Either,
        &no_setup,
        &|_| [gzip(&payload()), b"garbage".to_vec()].concat(),
        &first_entry_whole,
    );
}

/// Offsets of the header blocks of a well-formed tar.
fn header_offsets(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|b| *b != 0) {
        out.push(at);
        let field = String::from_utf8_lossy(&tar[at + 124..at + 135]).into_owned();
        let size = usize::from_str_radix(field.trim_matches(char::from(0)), 8).unwrap();
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

/// Rewrites the checksum of the header block at `at`.
fn fix_checksum(tar: &mut [u8], at: usize) {
    let block = &mut tar[at..at + 512];
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

#[test]
fn random_corruptions_never_escape_or_panic() {
    // Random bytes written into the headers (checksums then fixed, so the damage reaches
    // the parser's every field) and now and then into the data, of a layer that uses every
    // header form the reader knows: PAX records, GNU long names, links through and out of
    // the root, a whiteout. Whatever comes of it, the applier applies inside the root or
    // refuses, and never panics (debug builds also trap arithmetic overflow).
    let base = |t: &Path| {
        let long = format!("{}deep", "long/".repeat(25));
        let t_rel = t.strip_prefix("/").unwrap().to_str().unwrap().to_string();
        RawTar::default()
            .dir("sentinel")
            .dir(&t_rel)
            .dir("d")
            .file("d/f", &noise(700, 7))
            .symlink("d/up", "../../sentinel")
            .symlink("d/abs", t.to_str().unwrap())
            .hard_link("d/h", "d/f")
            .pax(&[
                ("SCHILY.xattr.user.x", b"v\n=w"),
                ("path", long.as_bytes()),
                ("mtime", b"1700000000.25"),
            ])
            .file("short", b"pax data")
            .long_name(&format!("{}gnu", "g/".repeat(60)))
            .file("gnu-short", b"gnu data")
            .file("d/up/through", b"x")
            .file("d/abs/through", b"y")
            .file("d/.wh.h", b"")
            .finish()
    };
    let clean = tempdir();
    let root = clean.path().join("root");
    fs::create_dir(&root).unwrap();
    apply(&base(clean.path()), &root, WhiteoutMode::Native).expect("the unharmed layer applies");
    for seed in 1..=300u64 {
        // `noise` sets the low bit of its seed.
        let r = noise(24, seed << 1);
        hostile(
            &format!("random_corruptions seed {seed}"),
            Expect::Either,
            &no_setup,
            &|t| {
                let mut blob = base(t);
                let headers = header_offsets(&blob);
                for pick in r.chunks(4).take(1 + (r[0] % 5) as usize) {
                    let n = u32::from_le_bytes([pick[0], pick[1], pick[2], 0]) as usize;
                    let at = if pick[3] % 8 == 0 {
                        n % blob.len()
                    } else {
                        headers[n % headers.len()] + (n >> 8) % 512
                    };
                    blob[at] = pick[3];
                }
                for h in headers {
                    fix_checksum(&mut blob, h);
                }
                blob
            },
            &no_check,
        );
    }
}
