//! The tar format as Go's archive/tar reads it: entries split as it splits them, PAX records
//! (values holding newlines, a size overriding the header, metadata), capped extension
//! headers, GNU sparse files.

use std::fs;
use std::os::unix::fs::MetadataExt;

use differ::WhiteoutMode;

use crate::common::*;

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
