//! Entries that replace one another: files and directories of the same name, duplicates,
//! symlinks, and entries naming the root itself.

use super::*;

hostile_case!(
    file_then_directory_of_the_same_name,
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

hostile_case!(
    directory_with_children_then_file_of_the_same_name,
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

hostile_case!(
    directory_then_file_of_the_same_name_keeps_the_files_mtime,
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

hostile_case!(
    directory_over_symlinks_replaces_them,
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

hostile_case!(
    duplicate_entries_second_wins,
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

hostile_case!(
    duplicate_symlink_then_file,
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

// `a` is a symlink to `b` while a/f1 is written, then replaced by a real directory:
// a/f2 belongs in that directory, not in `b`.
hostile_case!(
    duplicate_symlink_then_directory_gets_later_children,
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
