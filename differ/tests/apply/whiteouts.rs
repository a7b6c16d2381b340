//! Whiteouts: every form in both whiteout modes, checked against the tree and against a
//! real overlay mount of the lower tree and the applied upper; an opaque marker that follows
//! entries of its own layer; an opaque root; a whiteout of a name nothing has.

use std::fs;
use std::path::Path;

use differ::WhiteoutMode;

use crate::common::*;

/// The lower tree whiteouts act on.
fn build_lower(root: &Path) {
    fs::create_dir(root).unwrap();
    for dir in ["dir/sub", "opq/lower-dir"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (rel, data) in [
        ("file", "f"),
        ("keep", "k"),
        ("dir/a", "a"),
        ("dir/sub/b", "b"),
        ("opq/lower-file", "l"),
        ("opq/lower-dir/x", "x"),
        ("opq/replaced", "lower"),
    ] {
        fs::write(root.join(rel), data).unwrap();
    }
}

/// A file whiteout, a whiteout of a directory with content, and an opaque directory with
/// files of the same layer before and after its marker.
fn whiteout_layer() -> Vec<u8> {
    RawTar::default()
        .file(".wh.file", b"")
        .file(".wh.dir", b"")
        .dir("opq")
        .file("opq/before", b"b")
        .file("opq/replaced", b"layer")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/after", b"a")
        .finish()
}

/// The lower tree with [`whiteout_layer`] applied natively.
fn applied_natively(tmp: &Path, lower: &Path, blob: &[u8]) -> Tree {
    let native = tmp.join("native");
    copy_tree(lower, &native);
    apply(blob, &native, WhiteoutMode::Native).unwrap();
    capture(&native)
}

#[test]
fn whiteouts_native() {
    let tmp = tempdir();
    let lower = tmp.path().join("lower");
    build_lower(&lower);
    let tree = applied_natively(tmp.path(), &lower, &whiteout_layer());
    assert_eq!(
        paths(&tree),
        ["keep", "opq", "opq/after", "opq/before", "opq/replaced"]
    );
    let sum = |p: &str| match &tree[Path::new(p)].kind {
        Kind::File { sha256, .. } => sha256.clone(),
        other => panic!("{p} is {other:?}"),
    };
    assert_eq!(sum("opq/replaced"), sha256(b"layer"));
    assert_eq!(sum("opq/before"), sha256(b"b"));
}

/// Applies [`whiteout_layer`] as an overlay upper in `mode`, checks the upper holds
/// whiteouts and the opaque xattr `opaque_xattr`, and that the overlay of the lower and that
/// upper shows what the native application gives.
fn check_overlay_whiteouts(mode: WhiteoutMode, opaque_xattr: &str, mount_options: &[&str]) {
    let tmp = tempdir();
    let t = tmp.path();
    let lower = t.join("lower");
    build_lower(&lower);
    let [upper, work] = mkdirs(t, ["upper", "work"]);
    let blob = whiteout_layer();
    apply(&blob, &upper, mode).unwrap();

    assert_eq!(
        paths(&capture(&upper)),
        [
            "dir",
            "file",
            "opq",
            "opq/after",
            "opq/before",
            "opq/replaced"
        ]
    );
    assert!(is_whiteout(&upper.join("file")), "file is a 0/0 device");
    assert!(is_whiteout(&upper.join("dir")), "dir is a 0/0 device");
    let other = if opaque_xattr.starts_with("user.") {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    };
    assert_eq!(
        xattr(&upper.join("opq"), opaque_xattr).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&upper.join("opq"), other), None);
    for name in ["opq/before", "opq/after", "opq/replaced"] {
        assert!(upper.join(name).is_file(), "{name} kept");
    }

    let expected = applied_natively(t, &lower, &blob);
    let mnt = mount_overlay(&lower, &upper, &work, mount_options, t);
    let merged = capture(mnt.path());
    mnt.release().unwrap();
    assert_same_tree(
        &expected,
        &merged,
        "overlay mount of lower and applied upper",
    );
}

#[test]
#[ignore = "needs root"]
fn whiteouts_overlay_trusted_xattr() {
    assert_root("whiteouts_overlay_trusted_xattr");
    check_overlay_whiteouts(
        WhiteoutMode::Overlay { userxattr: false },
        "trusted.overlay.opaque",
        &[],
    );
}

#[test]
#[ignore = "needs root"]
fn whiteouts_overlay_user_xattr() {
    assert_root("whiteouts_overlay_user_xattr");
    check_overlay_whiteouts(
        WhiteoutMode::Overlay { userxattr: true },
        "user.overlay.opaque",
        &["userxattr"],
    );
}

#[test]
fn opaque_marker_after_a_recreated_subdirectory_hides_its_lower_content() {
    // The layer re-creates opq/lower-dir (a directory the lower has, with x in it) before
    // the marker: the directory is the layer's, but x is lower content and is hidden.
    let tmp = tempdir();
    let lower = tmp.path().join("lower");
    build_lower(&lower);
    let blob = RawTar::default()
        .dir("opq")
        .dir("opq/lower-dir")
        .file("opq/lower-dir/new", b"n")
        .file("opq/.wh..wh..opq", b"")
        .finish();
    let tree = applied_natively(tmp.path(), &lower, &blob);
    let opq: Vec<String> = paths(&tree)
        .into_iter()
        .filter(|p| p.starts_with("opq"))
        .collect();
    assert_eq!(opq, ["opq", "opq/lower-dir", "opq/lower-dir/new"]);
}

#[test]
fn opaque_root_native() {
    let tmp = tempdir();
    let lower = tmp.path().join("lower");
    build_lower(&lower);
    let blob = RawTar::default()
        .file("new", b"n")
        .file(".wh..wh..opq", b"")
        .finish();
    let tree = applied_natively(tmp.path(), &lower, &blob);
    assert_eq!(paths(&tree), ["new"]);
}

#[test]
fn whiteout_of_a_missing_name_is_a_no_op() {
    let tmp = tempdir();
    let lower = tmp.path().join("lower");
    build_lower(&lower);
    let blob = RawTar::default()
        .file(".wh.absent", b"")
        .file("dir/.wh.absent", b"")
        .finish();
    let tree = applied_natively(tmp.path(), &lower, &blob);
    assert_same_tree(&capture(&lower), &tree, "nothing whited out");
}
