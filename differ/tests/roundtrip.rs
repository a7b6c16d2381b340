//! Apply∘Diff round trips: a layer created by `diff::write_layer` and applied by
//! `apply_layer` reproduces the tree it was made from.
//!
//! - One layer from an empty lower to a tree with every kind of entry and metadata, for
//!   each compression and both whiteout modes, with the digests the two sides report.
//! - Xattrs of symlinks, device nodes and fifos.
//! - Two layers from two plain trees (deletions, replacements, rewrites that keep the size
//!   and the second); the layer of a directory replaced by a file holds just the file.
//! - A real overlay: changes made through the mount, the upper directory diffed, and the
//!   layer applied natively onto the lower and as an overlay upper under the same lower.
//! - Layer output is deterministic.

mod common;

use std::fs::{self, Permissions};
use std::io::Cursor;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

use common::*;
use differ::diff::{Changes, DiffOptions, write_layer};
use differ::{Compression, WhiteoutMode, apply_layer};
use mountutil::fs::{NodeKind, mknod, set_times_nofollow, set_xattr};

const COMPRESSIONS: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];
const MODES: [WhiteoutMode; 2] = [
    WhiteoutMode::Native,
    WhiteoutMode::Overlay { userxattr: false },
];

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir(&p).unwrap();
    fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
}

fn chown(root: &Path, rel: &str, uid: u32, gid: u32) {
    lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), Permissions::from_mode(mode)).unwrap();
}

fn touch(root: &Path, rel: &str, secs: i64) {
    set_times_nofollow(&root.join(rel), (secs, 0), (secs, 0)).unwrap();
}

fn xattr_on(root: &Path, rel: &str, name: &str, value: &[u8]) {
    set_xattr(&root.join(rel), name.as_ref(), value).unwrap();
}

/// A 200-character file name (over ustar's 100) and a path of over 255 characters.
fn long_name() -> String {
    format!("a{}", "x".repeat(199))
}

fn deep_dir() -> String {
    (0..5)
        .map(|i| format!("{i}{}", "d".repeat(59)))
        .collect::<Vec<_>>()
        .join("/")
}

/// Builds the tree with every kind of entry and metadata a layer carries.
fn build_source(root: &Path) {
    fs::create_dir(root).unwrap();
    write(root, "empty", b"", 0o644);
    write(root, "small.txt", b"hello\n", 0o644);
    xattr_on(root, "small.txt", "user.foo", b"bar");
    touch(root, "small.txt", 1_000_000_000);
    write(root, "big.bin", &noise((3 << 20) + 4097, 7), 0o640);
    xattr_on(root, "big.bin", "user.x", b"\0bin=ary\xff");
    write(root, "exec", b"#!/bin/sh\n", 0o755);
    xattr_on(root, "exec", "trusted.strata", b"t");
    write(root, "setuid", b"suid", 0o644);
    chmod(root, "setuid", 0o4755);
    write(root, "setgid", b"sgid", 0o644);
    chmod(root, "setgid", 0o2711);
    write(root, "noperm", b"locked", 0o000);
    write(root, ".whatever", b"not a whiteout", 0o644);
    write(root, "spaces and ünïcödé", b"u", 0o644);
    write(root, &long_name(), b"long", 0o644);

    mkdir(root, "private", 0o700);
    write(root, "private/secret", b"s", 0o600);
    xattr_on(root, "private", "user.x", b"dir-value");
    mkdir(root, "tmp", 0o755);
    write(root, "tmp/f", b"t", 0o666);
    mkdir(root, "sgid", 0o755);
    chown(root, "sgid", 0, 1000);
    chmod(root, "sgid", 0o2775);
    write(root, "sgid/inherits", b"g", 0o644);
    write(root, "sgid/own-group", b"o", 0o644);
    chown(root, "sgid/own-group", 0, 0);
    mkdir(root, "owned", 0o750);
    write(root, "owned/file", b"mine", 0o640);
    symlink("file", root.join("owned/link")).unwrap();
    for rel in ["owned", "owned/file", "owned/link"] {
        chown(root, rel, 1000, 1000);
    }
    mkdir(root, "emptydir", 0o711);

    mkdir(root, "links", 0o755);
    symlink("../small.txt", root.join("links/rel")).unwrap();
    touch(root, "links/rel", 1_100_000_000);
    symlink("/etc/passwd", root.join("links/abs")).unwrap();
    symlink("nowhere/at/all", root.join("links/dangling")).unwrap();
    symlink("../private", root.join("links/dir")).unwrap();
    symlink(format!("../{}", long_name()), root.join("links/long")).unwrap();

    mkdir(root, "hard", 0o755);
    fs::hard_link(root.join("big.bin"), root.join("hard/big")).unwrap();
    write(root, "hard/one", b"shared", 0o644);
    fs::create_dir(root.join("hard/sub")).unwrap();
    fs::hard_link(root.join("hard/one"), root.join("hard/two")).unwrap();
    fs::hard_link(root.join("hard/one"), root.join("hard/sub/three")).unwrap();
    fs::hard_link(root.join(long_name()), root.join("hard/long")).unwrap();

    mkdir(root, "dev", 0o755);
    mknod(&root.join("dev/null"), NodeKind::Char, 0o666, 1, 3).unwrap();
    mknod(&root.join("dev/loop"), NodeKind::Block, 0o660, 7, 200).unwrap();
    mknod(&root.join("dev/fifo"), NodeKind::Fifo, 0o600, 0, 0).unwrap();
    chown(root, "dev/loop", 0, 6);
    touch(root, "dev/fifo", 1_300_000_000);

    let deep = deep_dir();
    fs::create_dir_all(root.join(&deep)).unwrap();
    write(root, &format!("{deep}/file"), b"deep", 0o644);
    assert!(format!("{deep}/file").len() > 255);

    // Directory modes and times last: creating children changes both.
    mkdir(root, "readonly", 0o755);
    write(root, "readonly/f", b"r", 0o444);
    chmod(root, "readonly", 0o555);
    chmod(root, "tmp", 0o1777);
    touch(root, "private", 1_200_000_000);
    touch(root, "emptydir", 1_250_000_000);
}

fn diff_trees(
    lower: &Path,
    upper: &Path,
    compression: Compression,
) -> (Vec<u8>, differ::diff::Created) {
    let mut blob = Vec::new();
    let options = DiffOptions {
        compression,
        source_date_epoch: None,
    };
    let created = write_layer(Changes::Trees { lower, upper }, &mut blob, options).unwrap();
    (blob, created)
}

#[test]
#[ignore = "needs root"]
fn single_layer_round_trips_for_each_compression_and_whiteout_mode() {
    assert_root("single_layer_round_trips_for_each_compression_and_whiteout_mode");
    let tmp = tempdir();
    let src = tmp.path().join("src");
    build_source(&src);
    let [empty] = mkdirs(tmp.path(), ["empty"]);
    let expected = capture(&src);
    assert_eq!(
        expected[Path::new("hard/one")].links.len(),
        2,
        "the source has a three-way hard link"
    );

    for compression in COMPRESSIONS {
        let (blob, created) = diff_trees(&empty, &src, compression);
        assert_eq!(created.digest.as_str(), sha256(&blob), "{compression:?}");
        assert_eq!(created.size, blob.len() as u64, "{compression:?}");
        assert_eq!(created.media_type, compression.media_type());
        for (i, mode) in MODES.into_iter().enumerate() {
            let what = format!("{compression:?} layer applied in {mode:?}");
            let dst = tmp.path().join(format!("{compression:?}-{i}"));
            fs::create_dir(&dst).unwrap();
            // Once with the compression named, once sniffed.
            let hint = (i == 0).then_some(compression);
            let applied = apply_layer(
                Box::new(Cursor::new(blob.clone())),
                hint,
                &dst,
                mode,
                differ::Lowers::Present(&[]),
                &differ::LayerLimits::default(),
            )
            .unwrap();
            assert_eq!(applied.diff_id, created.diff_id, "{what}");
            assert_eq!(applied.size, created.uncompressed_size, "{what}");
            assert_eq!(applied.blob_digest, created.digest, "{what}");
            assert_eq!(applied.blob_size, created.size, "{what}");
            assert_same_tree(&expected, &capture(&dst), &what);
        }
    }
}

#[test]
#[ignore = "needs root"]
fn xattrs_of_symlinks_devices_and_fifos_round_trip() {
    assert_root("xattrs_of_symlinks_devices_and_fifos_round_trip");
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    symlink("target", src.join("link")).unwrap();
    mknod(&src.join("fifo"), NodeKind::Fifo, 0o644, 0, 0).unwrap();
    mknod(&src.join("null"), NodeKind::Char, 0o666, 1, 3).unwrap();
    for rel in ["link", "fifo", "null"] {
        xattr_on(&src, rel, "trusted.strata", rel.as_bytes());
    }
    let [empty, dst] = mkdirs(tmp.path(), ["empty", "dst"]);
    let (blob, _) = diff_trees(&empty, &src, Compression::None);
    apply(&blob, &dst, WhiteoutMode::Native).unwrap();
    assert_same_tree(&capture(&src), &capture(&dst), "special files with xattrs");
}

/// The lower tree of the two-layer round trip.
fn build_lower(root: &Path) {
    fs::create_dir(root).unwrap();
    write(root, "keep.txt", b"keep", 0o644);
    write(root, "change.txt", b"old", 0o644);
    write(root, "same-size.txt", b"aaaa", 0o644);
    touch(root, "same-size.txt", 1_000_000_000);
    write(root, "gone.txt", b"gone", 0o644);
    write(root, "meta.txt", b"meta", 0o644);
    symlink("keep.txt", root.join("link")).unwrap();
    for dir in ["gone-dir/sub", "dir-to-file/sub", "same-dir"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    write(root, "gone-dir/a", b"a", 0o644);
    write(root, "gone-dir/sub/b", b"b", 0o644);
    write(root, "dir-to-file/x", b"x", 0o644);
    write(root, "dir-to-file/sub/y", b"y", 0o644);
    write(root, "file-to-dir", b"file", 0o644);
    write(root, "same-dir/untouched", b"u", 0o644);
    write(root, "same-dir/removed", b"r", 0o644);
}

/// Changes `upper` (a copy of the lower tree) in every way a layer records.
fn change_upper(root: &Path) {
    fs::remove_file(root.join("gone.txt")).unwrap();
    fs::remove_dir_all(root.join("gone-dir")).unwrap();
    fs::write(root.join("change.txt"), b"new and longer").unwrap();
    // Same size, same whole second: only the bytes tell.
    fs::write(root.join("same-size.txt"), b"bbbb").unwrap();
    touch(root, "same-size.txt", 1_000_000_000);
    chmod(root, "meta.txt", 0o600);
    fs::remove_file(root.join("link")).unwrap();
    symlink("change.txt", root.join("link")).unwrap();
    fs::remove_dir_all(root.join("dir-to-file")).unwrap();
    write(root, "dir-to-file", b"now a file", 0o644);
    fs::remove_file(root.join("file-to-dir")).unwrap();
    fs::create_dir(root.join("file-to-dir")).unwrap();
    write(root, "file-to-dir/inner", b"inner", 0o644);
    fs::remove_file(root.join("same-dir/removed")).unwrap();
    fs::create_dir(root.join("new-dir")).unwrap();
    write(root, "new-dir/new", b"new", 0o644);
}

#[test]
fn two_tree_layer_applied_onto_lower_gives_upper() {
    let tmp = tempdir();
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    let target = tmp.path().join("target");
    build_lower(&lower);
    copy_tree(&lower, &upper);
    change_upper(&upper);
    copy_tree(&lower, &target);

    let (blob, created) = diff_trees(&lower, &upper, Compression::Gzip);
    let applied = apply(&blob, &target, WhiteoutMode::Native).unwrap();
    assert_eq!(applied.diff_id, created.diff_id);
    assert_same_tree(&capture(&upper), &capture(&target), "lower + layer");
}

#[test]
fn tree_diff_of_a_directory_replaced_by_a_file_has_nothing_below_it() {
    let tmp = tempdir();
    let [lower, upper] = mkdirs(tmp.path(), ["lower", "upper"]);
    fs::create_dir_all(lower.join("d/sub")).unwrap();
    write(&lower, "d/x", b"x", 0o644);
    write(&lower, "d/sub/y", b"y", 0o644);
    write(&upper, "d", b"file", 0o644);
    let (blob, _) = diff_trees(&lower, &upper, Compression::None);
    let mut archive = tar::Archive::new(&blob[..]);
    let entries: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(entries, ["d"]);
}

/// The lower tree of the overlay round trip.
fn build_overlay_lower(root: &Path) {
    fs::create_dir(root).unwrap();
    for dir in ["dir/sub", "redo/old-dir", "rmdir", "dir-to-file/sub"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (rel, data) in [
        ("keep.txt", "keep"),
        ("gone.txt", "gone"),
        ("moved.txt", "moved"),
        ("mod.txt", "mod"),
        ("xattr.txt", "x"),
        ("dir/a", "a"),
        ("dir/sub/b", "b"),
        ("redo/old", "old"),
        ("redo/old-dir/x", "x"),
        ("rmdir/f", "f"),
        ("hl-a", "linked"),
        ("dir-to-file/sub/f", "f"),
        ("file-to-dir", "file"),
    ] {
        write(root, rel, data.as_bytes(), 0o644);
    }
    fs::hard_link(root.join("hl-a"), root.join("hl-b")).unwrap();
}

/// Changes made through the merged view of the overlay.
fn change_merged(m: &Path) {
    fs::remove_file(m.join("gone.txt")).unwrap();
    fs::remove_dir_all(m.join("rmdir")).unwrap();
    fs::remove_dir_all(m.join("redo")).unwrap();
    fs::create_dir(m.join("redo")).unwrap();
    write(m, "redo/new", b"new", 0o644);
    fs::write(m.join("mod.txt"), b"modified").unwrap();
    fs::rename(m.join("moved.txt"), m.join("renamed.txt")).unwrap();
    write(m, "dir/c", b"c", 0o644);
    chmod(m, "dir/a", 0o600);
    xattr_on(m, "xattr.txt", "user.foo", b"bar");
    fs::create_dir(m.join("new-dir")).unwrap();
    symlink("../keep.txt", m.join("new-dir/link")).unwrap();
    fs::remove_dir_all(m.join("dir-to-file")).unwrap();
    write(m, "dir-to-file", b"now a file", 0o644);
    fs::remove_file(m.join("file-to-dir")).unwrap();
    fs::create_dir(m.join("file-to-dir")).unwrap();
    write(m, "file-to-dir/inner", b"inner", 0o644);
}

#[test]
#[ignore = "needs root"]
fn overlay_upper_layer_reproduces_the_merged_view_natively_and_as_an_upper() {
    assert_root("overlay_upper_layer_reproduces_the_merged_view_natively_and_as_an_upper");
    let tmp = tempdir();
    let t = tmp.path();
    let lower = t.join("lower");
    build_overlay_lower(&lower);
    let [upper, work, upper2, work2] = mkdirs(t, ["upper", "work", "upper2", "work2"]);

    let mnt = mount_overlay(&lower, &upper, &work, &[], t);
    change_merged(mnt.path());
    let merged = capture(mnt.path());
    mnt.release().unwrap();
    assert!(
        is_whiteout(&upper.join("gone.txt")),
        "a deleted lower file is a whiteout"
    );
    assert_eq!(
        xattr(&upper.join("redo"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..]),
        "a recreated lower directory is opaque"
    );

    let mut blob = Vec::new();
    let options = DiffOptions {
        compression: Compression::Gzip,
        source_date_epoch: None,
    };
    write_layer(Changes::OverlayUpper(&upper), &mut blob, options).unwrap();

    let native = t.join("native");
    copy_tree(&lower, &native);
    apply(&blob, &native, WhiteoutMode::Native).unwrap();
    assert_same_tree(&merged, &capture(&native), "lower + layer applied natively");

    apply(&blob, &upper2, WhiteoutMode::Overlay { userxattr: false }).unwrap();
    assert!(is_whiteout(&upper2.join("gone.txt")));
    assert!(is_whiteout(&upper2.join("rmdir")));
    assert_eq!(
        xattr(&upper2.join("redo"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let mnt2 = mount_overlay(&lower, &upper2, &work2, &[], t);
    let merged2 = capture(mnt2.path());
    mnt2.release().unwrap();
    assert_same_tree(&merged, &merged2, "overlay of lower and the applied upper");
}

#[test]
fn layers_are_deterministic() {
    let tmp = tempdir();
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    build_lower(&lower);
    copy_tree(&lower, &upper);
    change_upper(&upper);
    for compression in COMPRESSIONS {
        let (first, a) = diff_trees(&lower, &upper, compression);
        let (second, b) = diff_trees(&lower, &upper, compression);
        assert!(first == second, "{compression:?}: two runs differ");
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
    }
}
