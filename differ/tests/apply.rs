//! `apply_layer` on hand-made layers: every whiteout form in both whiteout modes (checked
//! against the tree and against a real overlay mount), also an opaque marker that follows
//! entries of its own layer; the digests and sizes `Applied` reports for plain, gzip and
//! zstd blobs (also multi-member, multi-frame and record-padded); PAX records (values holding
//! newlines, a size overriding the header), capped extension headers, GNU sparse files; modes,
//! owners, times and setgid groups.

mod common;

use std::fs::{self, Permissions};
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::Path;

use common::*;
use differ::{Compression, WhiteoutMode, apply_layer};

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

/// A layer big enough to span several of the pipeline's chunks.
fn digest_layer() -> Vec<u8> {
    RawTar::default()
        .dir("d")
        .file("d/big", &noise((1 << 20) + 12345, 3))
        .file("d/small", b"small")
        .symlink("d/link", "big")
        .finish()
}

fn check_digests(blob: &[u8], tar: &[u8], hint: Option<Compression>, what: &str) {
    let tmp = tempdir();
    let applied = apply_layer(
        Box::new(Cursor::new(blob.to_vec())),
        hint,
        tmp.path(),
        WhiteoutMode::Native,
        &[],
        &differ::LayerLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(applied.diff_id.as_str(), sha256(tar), "{what}: diff_id");
    assert_eq!(applied.size, tar.len() as u64, "{what}: size");
    assert_eq!(
        applied.blob_digest.as_str(),
        sha256(blob),
        "{what}: blob digest"
    );
    assert_eq!(applied.blob_size, blob.len() as u64, "{what}: blob size");
    assert_eq!(
        fs::read(tmp.path().join("d/small")).unwrap(),
        b"small",
        "{what}: content"
    );
    assert_eq!(
        fs::metadata(tmp.path().join("d/big")).unwrap().len(),
        (1 << 20) + 12345,
        "{what}: big file"
    );
}

#[test]
fn digests_and_sizes_of_plain_gzip_and_zstd_layers() {
    let tar = digest_layer();
    for (compression, blob) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        check_digests(&blob, &tar, None, &format!("{compression:?} sniffed"));
        check_digests(&blob, &tar, Some(compression), &format!("{compression:?}"));
    }
}

#[test]
fn compression_is_sniffed_from_a_source_that_trickles() {
    // A network source may hand over a byte at a time; sniffing must still see the magic.
    struct Trickle(Cursor<Vec<u8>>);
    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }
    let tar = digest_layer();
    for blob in [gzip(&tar), zstd(&tar)] {
        let tmp = tempdir();
        let applied = apply_layer(
            Box::new(Trickle(Cursor::new(blob.clone()))),
            None,
            tmp.path(),
            WhiteoutMode::Native,
            &[],
            &differ::LayerLimits::default(),
        )
        .unwrap();
        assert_eq!(applied.diff_id.as_str(), sha256(&tar));
        assert_eq!(applied.blob_digest.as_str(), sha256(&blob));
    }
}

#[test]
fn digests_of_multi_member_gzip_and_multi_frame_zstd() {
    let tar = digest_layer();
    let (a, b) = tar.split_at(tar.len() / 2 + 17);
    let gz = [gzip(a), gzip(b)].concat();
    let zst = [zstd(a), zstd(b)].concat();
    check_digests(&gz, &tar, None, "two gzip members");
    check_digests(&zst, &tar, None, "two zstd frames");
}

#[test]
fn diff_id_covers_record_padding_after_the_end_of_archive() {
    // GNU tar pads archives to 10 KiB records: the padding is part of the diffID.
    let mut tar = digest_layer();
    tar.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
    check_digests(&tar, &tar, None, "padded tar");
    check_digests(&gzip(&tar), &tar, None, "padded tar, gzip");
}

#[test]
fn pax_xattr_values_are_read_by_length() {
    // A PAX record is "<len> key=value\n"; the value may itself hold newlines (binary
    // values such as security.capability do).
    let tmp = tempdir();
    let value: &[u8] = b"line one\nline=two\0\x0a\xff";
    let blob = RawTar::default()
        .pax(&[("SCHILY.xattr.user.bin", value)])
        .file("f", b"data")
        .finish();
    apply(&blob, tmp.path(), WhiteoutMode::Native).unwrap();
    assert_eq!(
        xattr(&tmp.path().join("f"), "user.bin").as_deref(),
        Some(value)
    );
}

#[test]
#[ignore = "needs root"]
fn undeclared_parent_directories_take_their_metadata_from_the_lower_layers() {
    assert_root("undeclared_parent_directories_take_their_metadata_from_the_lower_layers");
    // As containerd's overlay applier (archive.Apply WithParents): a directory missing from
    // the upper directory is created with the nearest lower layer's owner, mode, times and
    // non-trusted xattrs, following symlinks inside that layer; a whiteout stops the search.
    let tmp = tempdir();
    let [near, far, upper] = mkdirs(tmp.path(), ["near", "far", "upper"]);
    let [home, lib, gone_far] = [far.join("home/user"), far.join("usr/lib"), far.join("gone")];
    for d in [&home, &lib, &gone_far] {
        fs::create_dir_all(d).unwrap();
    }
    fs::set_permissions(&home, Permissions::from_mode(0o700)).unwrap();
    chown(&home, Some(1000), Some(1001)).unwrap();
    mountutil::fs::set_xattr(&home, "user.note".as_ref(), b"kept").unwrap();
    mountutil::fs::set_xattr(&home, "trusted.private".as_ref(), b"not copied").unwrap();
    mountutil::fs::set_times_nofollow(&home, (1_500_000_000, 0), (1_500_000_000, 7)).unwrap();
    fs::set_permissions(&lib, Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(&gone_far, Permissions::from_mode(0o700)).unwrap();
    // A usrmerge base: /lib -> usr/lib in the same layer (each layer resolves its own
    // symlinks, as containerd's RootPath in each parent does).
    std::os::unix::fs::symlink("usr/lib", far.join("lib")).unwrap();
    // The nearer layer whites out /gone.
    mountutil::fs::mknod(&near.join("gone"), mountutil::fs::NodeKind::Char, 0, 0, 0).unwrap();

    let blob = RawTar::default()
        .file("home/user/.profile", b"x")
        .file("lib/tool", b"y")
        .file("gone/again", b"z")
        .file("new/dir/file", b"w")
        .finish();
    apply_layer(
        Box::new(Cursor::new(blob)),
        None,
        &upper,
        WhiteoutMode::Overlay { userxattr: false },
        &[near.clone(), far.clone()],
        &differ::LayerLimits::default(),
    )
    .unwrap();

    let md = |p: &str| fs::symlink_metadata(upper.join(p)).unwrap();
    let home_md = md("home/user");
    assert_eq!(
        (home_md.mode() & 0o7777, home_md.uid(), home_md.gid()),
        (0o700, 1000, 1001),
        "home/user"
    );
    assert_eq!(
        xattr(&upper.join("home/user"), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(xattr(&upper.join("home/user"), "trusted.private"), None);
    // Its own time was copied, then creating .profile in it moved the mtime on (containerd
    // does the same); the parent `home` kept the lower's time untouched by children other
    // than `user`, so check the access time, which creating entries does not change.
    assert_eq!((home_md.atime(), home_md.atime_nsec()), (1_500_000_000, 0));
    assert!(
        md("lib").is_dir(),
        "lib is created as a directory in the upper layer"
    );
    assert_eq!(
        md("lib").mode() & 0o7777,
        0o750,
        "lib takes usr/lib's mode via the symlink"
    );
    assert_eq!(
        md("gone").mode() & 0o7777,
        0o755,
        "a whiteout stops the search"
    );
    assert_eq!(
        md("new/dir").mode() & 0o7777,
        0o755,
        "defaults where no layer has it"
    );
    assert_eq!(fs::read(upper.join("lib/tool")).unwrap(), b"y");
}

#[test]
#[ignore = "needs root"]
fn a_hard_link_header_applies_to_the_shared_inode() {
    // As containerd's applier: after linking, the link entry's owner, mode and times go
    // to the inode both names share; a link to a symlink changes no mode (and follows
    // nothing).
    assert_root("a_hard_link_header_applies_to_the_shared_inode");
    let tmp = tempdir();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    std::fs::write(tmp.path().join("outside"), b"o").unwrap();
    let mut link = Header::new(b'1', "l");
    link.link = b"f".to_vec();
    (link.mode, link.uid, link.gid, link.mtime) = (0o600, 7, 8, 1_000_000);
    let mut to_symlink = Header::new(b'1', "s2");
    to_symlink.link = b"s".to_vec();
    (to_symlink.mode, to_symlink.uid, to_symlink.gid) = (0o600, 9, 9);
    let blob = RawTar::default()
        .file("f", b"data")
        .entry(link, b"")
        .symlink("s", "../outside")
        .entry(to_symlink, b"")
        .finish();
    apply(&blob, &root, WhiteoutMode::Native).unwrap();
    let (f, l) = (
        fs::metadata(root.join("f")).unwrap(),
        fs::metadata(root.join("l")).unwrap(),
    );
    assert_eq!(f.ino(), l.ino());
    assert_eq!(
        (f.mode() & 0o7777, f.uid(), f.gid(), f.mtime()),
        (0o600, 7, 8, 1_000_000)
    );
    let s2 = fs::symlink_metadata(root.join("s2")).unwrap();
    assert!(s2.is_symlink());
    assert_eq!((s2.uid(), s2.gid()), (9, 9));
    let outside = fs::metadata(tmp.path().join("outside")).unwrap();
    assert_eq!(
        outside.mode() & 0o777,
        0o644,
        "the symlink's target was not touched"
    );
}

#[test]
fn entries_through_dangling_symlinks_create_the_targets_inside_the_root() {
    // As containerd (RootPath, then mkparent): the parent path is resolved through the
    // symlinks that exist, even when their targets do not yet, and the targets are created,
    // absolute and `..` targets staying inside the root.
    let tmp = tempdir();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink("b/c", root.join("rel")).unwrap();
    std::os::unix::fs::symlink("/x/d", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../y", root.join("up")).unwrap();
    let blob = RawTar::default()
        .file("rel/f", b"1")
        .file("abs/f", b"2")
        .file("up/f", b"3")
        .finish();
    apply(&blob, &root, WhiteoutMode::Native).unwrap();
    assert_eq!(fs::read(root.join("b/c/f")).unwrap(), b"1");
    assert_eq!(fs::read(root.join("x/d/f")).unwrap(), b"2");
    assert_eq!(fs::read(root.join("y/f")).unwrap(), b"3");
    assert!(!tmp.path().join("y").exists(), "nothing outside the root");
    for link in ["rel", "abs", "up"] {
        assert!(fs::symlink_metadata(root.join(link)).unwrap().is_symlink());
    }

    // A loop is refused.
    std::os::unix::fs::symlink("l2", root.join("l1")).unwrap();
    std::os::unix::fs::symlink("l1", root.join("l2")).unwrap();
    let blob = RawTar::default().file("l1/f", b"x").finish();
    assert!(matches!(
        apply(&blob, &root, WhiteoutMode::Native),
        Err(differ::Error::InvalidLayer(_))
    ));
}

#[test]
fn entries_are_split_as_go_archive_tar_splits_them() {
    // The applier must see the same entries as containerd's (Go) reader, or a layer could
    // show one thing to scanners and unpack as another.
    let tmp = tempdir();
    let go = |name: &str, blob: Vec<u8>| {
        let root = tmp.path().join(name);
        fs::create_dir(&root).unwrap();
        apply(&blob, &root, WhiteoutMode::Native).map(|_| root)
    };
    // A directory's size is ignored: what follows its header is the next header.
    let mut smuggled = Header::new(b'0', "smuggled").block().to_vec();
    smuggled.resize(1024, 0);
    let mut dir = Header::new(b'5', "d");
    dir.size = 1024;
    let root = go(
        "header-only",
        RawTar::default()
            .raw(&dir.block())
            .file("innocent", &smuggled)
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::read(root.join("innocent")).unwrap(), smuggled);
    assert!(root.join("d").is_dir() && !root.join("smuggled").exists());

    // A later PAX header replaces an earlier one; a global header drops what was pending;
    // GNU long names win over PAX paths.
    let root = go(
        "pax-replaced",
        RawTar::default()
            .pax(&[("path", b"evil")])
            .pax(&[("mtime", b"1")])
            .file("good", b"1")
            .pax(&[("path", b"evil2")])
            .entry(Header::new(b'g', "global"), b"11 comment=x\n")
            .file("good2", b"2")
            .long_name("gnu-wins")
            .pax(&[("path", b"pax-loses")])
            .file("short", b"3")
            .finish(),
    )
    .unwrap();
    let mut names: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["gnu-wins", "good", "good2"]);
    assert_eq!(fs::metadata(root.join("good")).unwrap().mtime(), 1);

    // Times before 1970 become 1970, as containerd's boundTime makes them.
    let root = go(
        "old-times",
        RawTar::default()
            .pax(&[("mtime", b"-86400.5")])
            .file("old", b"o")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::metadata(root.join("old")).unwrap().mtime(), 0);

    // Refused, as by Go or containerd: a zero block followed by more entries, and an
    // entry type containerd cannot create.
    let mut zero_then_more = vec![0u8; 512];
    zero_then_more.extend_from_slice(&RawTar::default().file("late", b"x").finish());
    let volume = RawTar::default()
        .entry(Header::new(b'V', "label"), b"")
        .finish();
    for (name, blob) in [("zero-block", zero_then_more), ("volume", volume)] {
        assert!(
            matches!(go(name, blob), Err(differ::Error::InvalidLayer(_))),
            "{name}"
        );
    }
}

#[test]
fn pax_size_overrides_the_header_size() {
    // Go's archive/tar (and so containerd) writes sizes over 8 GiB only as a PAX record; the
    // header's own field then says something else, here 0.
    let tmp = tempdir();
    let mut h = Header::new(b'0', "big");
    h.size = 0;
    let blob = RawTar::default()
        .pax(&[("size", b"700")])
        .raw(&h.block())
        .raw(&[b'x'; 700])
        .raw(&[0; 1024 - 700])
        .file("next", b"after")
        .finish();
    apply(&blob, tmp.path(), WhiteoutMode::Native).unwrap();
    assert_eq!(fs::read(tmp.path().join("big")).unwrap(), vec![b'x'; 700]);
    assert_eq!(fs::read(tmp.path().join("next")).unwrap(), b"after");
}

#[test]
fn oversized_extension_headers_are_refused() {
    // Extension data is held in memory until the entry it describes: capped at 1 MiB.
    let tmp = tempdir();
    for kind in [b'x', b'L'] {
        let blob = RawTar::default()
            .entry(Header::new(kind, "ext"), &vec![b'a'; (1 << 20) + 1])
            .file("f", b"data")
            .finish();
        let err = apply(&blob, tmp.path(), WhiteoutMode::Native).unwrap_err();
        assert!(
            matches!(&err, differ::Error::InvalidLayer(m) if m.contains("at most")),
            "{}: {err}",
            kind as char
        );
        assert!(!tmp.path().join("f").exists());
    }
}

#[test]
fn gnu_sparse_files_are_expanded_with_their_holes() {
    // GNU tar's --sparse (old GNU format, type 'S', with extension blocks for > 4 extents).
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let path = src.join("sparse");
    let f = fs::File::create(&path).unwrap();
    let mut expected = vec![0u8; 12 << 20];
    for (i, at) in (0..expected.len()).step_by(1 << 20).enumerate() {
        let data = noise(4096 + i, i as u64);
        std::os::unix::fs::FileExt::write_all_at(&f, &data, at as u64).unwrap();
        expected[at..at + data.len()].copy_from_slice(&data);
    }
    f.set_len(expected.len() as u64).unwrap();
    drop(f);
    let layer = tmp.path().join("layer.tar");
    let status = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&layer)
        .arg("sparse")
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    let blob = fs::read(&layer).unwrap();
    assert!(
        blob.len() < 1 << 20,
        "tar stored the holes ({} bytes)",
        blob.len()
    );
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    apply(&blob, &out, WhiteoutMode::Native).unwrap();
    let got = out.join("sparse");
    assert!(fs::read(&got).unwrap() == expected, "content differs");
    let allocated = fs::metadata(&got).unwrap().blocks() * 512;
    assert!(
        allocated < 2 << 20,
        "holes were filled: {allocated} bytes allocated"
    );
}

#[test]
fn pax_metadata_is_applied() {
    let tmp = tempdir();
    let long = format!("{}file", "long/".repeat(30));
    let blob = RawTar::default()
        .pax(&[
            ("mtime", b"1234567890.5"),
            ("SCHILY.xattr.user.a", b"1"),
            ("path", long.as_bytes()),
        ])
        .file("short", b"data")
        .finish();
    apply(&blob, tmp.path(), WhiteoutMode::Native).unwrap();
    let path = tmp.path().join(&long);
    let md = fs::symlink_metadata(&path).unwrap();
    assert!(md.is_file());
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 500_000_000));
    assert_eq!(xattr(&path, "user.a").as_deref(), Some(&b"1"[..]));
    assert!(!tmp.path().join("short").exists());
}

#[test]
#[ignore = "needs root"]
fn file_replacing_a_directory_in_a_setgid_directory_keeps_its_group() {
    assert_root("file_replacing_a_directory_in_a_setgid_directory_keeps_its_group");
    // The file's group (0, the applier's own) differs from the setgid parent's (1000), so
    // it must be set explicitly, also when the file replaced a directory.
    let tmp = tempdir();
    let sg = tmp.path().join("sg");
    fs::create_dir_all(sg.join("was-dir/child")).unwrap();
    chown(&sg, Some(0), Some(1000)).unwrap();
    fs::set_permissions(&sg, Permissions::from_mode(0o2775)).unwrap();
    let mut h = Header::new(b'0', "sg/was-dir");
    (h.uid, h.gid) = (0, 0);
    let mut fresh = h.clone();
    fresh.path = b"sg/fresh".to_vec();
    let blob = RawTar::default()
        .entry(fresh, b"f")
        .entry(h, b"file")
        .finish();
    apply(&blob, tmp.path(), WhiteoutMode::Native).unwrap();
    let gid = |p: &str| fs::symlink_metadata(tmp.path().join(p)).unwrap().gid();
    assert_eq!(gid("sg/fresh"), 0, "new file");
    assert!(tmp.path().join("sg/was-dir").is_file());
    assert_eq!(gid("sg/was-dir"), 0, "file that replaced a directory");
}

#[test]
#[ignore = "needs root"]
fn modes_owners_and_times_are_applied() {
    assert_root("modes_owners_and_times_are_applied");
    let tmp = tempdir();
    let mut t = RawTar::default();
    for (path, kind, mode, uid) in [
        ("d", b'5', 0o1777, 1000),
        ("d/suid", b'0', 0o4755, 0),
        ("d/private", b'0', 0o600, 1000),
        ("d/link", b'2', 0o777, 1000),
    ] {
        let mut h = Header::new(kind, path);
        (h.mode, h.uid, h.gid, h.mtime) = (mode, uid, uid + 1, 1_000_000_000 + u64::from(uid));
        if kind == b'2' {
            h.link = b"suid".to_vec();
        }
        t.entry(h, b"");
    }
    apply(&t.finish(), tmp.path(), WhiteoutMode::Native).unwrap();
    for (path, mode, uid) in [
        ("d", 0o1777, 1000),
        ("d/suid", 0o4755, 0),
        ("d/private", 0o600, 1000),
        ("d/link", 0o777, 1000),
    ] {
        let md = fs::symlink_metadata(tmp.path().join(path)).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "{path} mode");
        assert_eq!((md.uid(), md.gid()), (uid, uid + 1), "{path} owner");
        assert_eq!(md.mtime(), 1_000_000_000 + i64::from(uid), "{path} mtime");
    }
}

/// Applies `blob` natively into a fresh directory under `limits`.
fn apply_limited(blob: &[u8], limits: differ::LayerLimits) -> differ::Result<differ::Applied> {
    let tmp = tempdir();
    apply_layer(
        Box::new(Cursor::new(blob.to_vec())),
        None,
        tmp.path(),
        WhiteoutMode::Native,
        &[],
        &limits,
    )
}

#[test]
fn layers_beyond_the_configured_limits_are_refused() {
    let limits = differ::LayerLimits {
        max_entries: 3,
        max_path_depth: 3,
        max_name_bytes: 8,
    };
    let at_limits = RawTar::default()
        .dir("a")
        .dir("a/b")
        .file("a/b/12345678", b"x")
        .finish();
    apply_limited(&at_limits, limits).expect("a layer at every limit applies");

    let refused = |blob: Vec<u8>, limit: &str| {
        let err = apply_limited(&blob, limits).expect_err(limit);
        assert!(
            matches!(&err, differ::Error::InvalidLayer(m) if m.contains(limit)),
            "{limit}: {err}"
        );
    };
    refused(
        RawTar::default()
            .file("1", b"")
            .file("2", b"")
            .file("3", b"")
            .file(".wh.4", b"")
            .finish(),
        "max_entries",
    );
    refused(
        RawTar::default().file("a/b/c/d", b"").finish(),
        "max_path_depth",
    );
    // `..` does not hide depth: the path is measured as written.
    refused(
        RawTar::default().file("a/../b/../c/d", b"").finish(),
        "max_path_depth",
    );
    refused(
        RawTar::default().file("a/123456789", b"").finish(),
        "max_name_bytes",
    );
    // The defaults take a layer no real image comes near.
    let deep = (0..100)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    apply_limited(
        &RawTar::default()
            .long_name(&deep)
            .file("ignored", b"deep")
            .finish(),
        differ::LayerLimits::default(),
    )
    .expect("100 levels under the default limits");
}
