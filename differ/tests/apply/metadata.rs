//! What entries do to the tree: parent directories a layer does not declare (metadata from
//! the lower layers), hard links, entries through dangling symlinks (kept inside the root),
//! setgid groups, modes, owners and times.

use std::fs::{self, Permissions};
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};

use differ::{WhiteoutMode, apply_layer};

use crate::common::*;

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
        differ::Lowers::Present(&[near.clone(), far.clone()]),
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

#[test]
#[ignore = "needs root"]
fn a_layer_applied_before_its_lower_layers_ends_as_one_applied_on_them() {
    // An image's layers applied at once: each into an empty upper directory, the directories
    // it did not declare given their lower layers' metadata once those are there. The result
    // must be what an apply on the lower layers gives (but for directory modification times,
    // which are the apply's in both).
    assert_root("a_layer_applied_before_its_lower_layers_ends_as_one_applied_on_them");
    let tmp = tempdir();
    let [lower, present, later] = mkdirs(tmp.path(), ["lower", "present", "later"]);
    let dir = |rel: &str, mode: u32, owner: u32| {
        let p = lower.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
        chown(&p, Some(owner), Some(owner + 1)).unwrap();
        p
    };
    let home = dir("home/user", 0o700, 1000);
    mountutil::fs::set_xattr(&home, "user.note".as_ref(), b"kept").unwrap();
    mountutil::fs::set_times_nofollow(&home, (1_500_000_000, 0), (1_500_000_000, 7)).unwrap();
    let shared = dir("srv/shared", 0o2775, 50);
    mountutil::fs::set_xattr(&shared, "user.from-lower".as_ref(), b"1").unwrap();
    dir("usr/lib", 0o750, 0);
    std::os::unix::fs::symlink("usr/lib", lower.join("lib")).unwrap();
    dir("var/local", 0o2775, 49);
    // A whiteout ends the search: gone/ takes the defaults.
    mountutil::fs::mknod(&lower.join("gone"), mountutil::fs::NodeKind::Char, 0, 0, 0).unwrap();

    let mut declared_late = Header::new(b'5', "srv/shared");
    (declared_late.mode, declared_late.uid, declared_late.gid) = (0o755, 7, 7);
    // Made before it was declared setgid (no lower layer has it).
    let mut solo = Header::new(b'5', "solo");
    (solo.mode, solo.gid) = (0o2775, 60);
    // Declared without its lower copy's setgid between two directories made in it.
    let mut local = Header::new(b'5', "var/local");
    (local.mode, local.gid) = (0o755, 0);
    let blob = RawTar::default()
        .file("home/user/.profile", b"x")
        .file("lib/tool", b"y")
        .file("srv/shared/deep/er/file", b"z")
        .pax(&[("SCHILY.xattr.user.own", b"2")])
        .entry(declared_late, b"")
        .file("new/dir/file", b"w")
        .file("gone/again", b"q")
        .file("solo/x/f", b"s")
        .entry(solo, b"")
        .file("var/local/a/f", b"a")
        .entry(local, b"")
        .file("var/local/b/g", b"b")
        .finish();
    let overlay = WhiteoutMode::Overlay { userxattr: false };
    let limits = differ::LayerLimits::default();
    let lowers = [lower.clone()];
    let apply = |target: &std::path::Path, lowers| {
        apply_layer(
            Box::new(Cursor::new(blob.clone())),
            None,
            target,
            overlay,
            lowers,
            &limits,
        )
        .unwrap()
    };
    let on_lowers = apply(&present, differ::Lowers::Present(&lowers));
    assert!(on_lowers.implicit_dirs.is_empty());
    let before = apply(&later, differ::Lowers::Later);
    assert!(!before.implicit_dirs.is_empty());
    assert_eq!(
        differ::inherit_implicit_dirs(&later, &lowers, &before.implicit_dirs).unwrap(),
        differ::Inherited::Done
    );

    let tree = |root: &std::path::Path| {
        let mut t = capture(root);
        for node in t.values_mut() {
            if node.kind == Kind::Dir {
                node.mtime = 0;
            }
        }
        t
    };
    // Before the walks below, which read the directories (relatime moves an old atime).
    let atime = |root: &std::path::Path| fs::metadata(root.join("home/user")).unwrap().atime();
    assert_eq!(atime(&later), 1_500_000_000);
    assert_eq!(atime(&later), atime(&present));
    assert_eq!(tree(&later), tree(&present));
    // What the comparison covers: the inherited owner and xattr, the setgid group under
    // srv/shared, the declared directory's own owner with the lower's xattr added.
    let md = |p: &str| fs::symlink_metadata(later.join(p)).unwrap();
    assert_eq!(
        (md("home/user").uid(), md("home/user").mode() & 0o7777),
        (1000, 0o700)
    );
    // deep/ was made in srv/shared while it had the lower's setgid mode, er/ in deep/.
    assert_eq!(md("srv/shared/deep").gid(), 51);
    assert_eq!(
        (md("srv/shared").uid(), md("srv/shared").mode() & 0o7777),
        (7, 0o755)
    );
    assert_eq!(
        xattr(&later.join("srv/shared"), "user.from-lower").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        xattr(&later.join("srv/shared"), "user.own").as_deref(),
        Some(&b"2"[..])
    );
    let egid = mountutil::at::effective_ids().1;
    assert_eq!(md("solo/x").gid(), egid);
    assert_eq!(
        (md("var/local/a").gid(), md("var/local/b").gid()),
        (50, egid)
    );
}

#[test]
#[ignore = "needs root"]
fn a_layer_applied_before_its_lower_layers_is_applied_again_where_nothing_can_mend_it() {
    // What the layers below would have given at creation, and nothing can give afterwards:
    // a default ACL (inherited by what is made in the directory), an opaque marker in a
    // directory the layer made (an apply on the lower layers leaves it the lower's mtime),
    // a directory the layer made and then removed (its inode may be reused).
    assert_root(
        "a_layer_applied_before_its_lower_layers_is_applied_again_where_nothing_can_mend_it",
    );
    let tmp = tempdir();
    let [lower] = mkdirs(tmp.path(), ["lower"]);
    for d in ["acl", "opaque", "removed/dir"] {
        fs::create_dir_all(lower.join(d)).unwrap();
    }
    // version 2; user::rwx, group::r-x, other::r-x.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 5)] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(u32::MAX.to_le_bytes());
    }
    mountutil::fs::set_xattr(
        &lower.join("acl"),
        "system.posix_acl_default".as_ref(),
        &acl,
    )
    .unwrap();
    let cases = [
        (
            "a default ACL",
            RawTar::default().file("acl/f", b"x").finish(),
        ),
        (
            "an opaque marker",
            RawTar::default()
                .file("opaque/f", b"x")
                .file("opaque/.wh..wh..opq", b"")
                .finish(),
        ),
        (
            "a removed directory",
            RawTar::default()
                .file("removed/dir/f", b"x")
                .file("removed/.wh.dir", b"")
                .finish(),
        ),
        (
            "nothing of the sort",
            RawTar::default().file("opaque/f", b"x").finish(),
        ),
    ];
    for (i, (what, blob)) in cases.into_iter().enumerate() {
        let upper = tmp.path().join(format!("upper-{i}"));
        fs::create_dir(&upper).unwrap();
        let applied = apply_layer(
            Box::new(Cursor::new(blob)),
            None,
            &upper,
            WhiteoutMode::Overlay { userxattr: false },
            differ::Lowers::Later,
            &differ::LayerLimits::default(),
        )
        .unwrap();
        let inherited = differ::inherit_implicit_dirs(
            &upper,
            std::slice::from_ref(&lower),
            &applied.implicit_dirs,
        )
        .unwrap();
        let want = if what == "nothing of the sort" {
            differ::Inherited::Done
        } else {
            differ::Inherited::ApplyAgain
        };
        assert_eq!(inherited, want, "{what}");
    }
}
