//! The conformance cases about layer contents: what each snapshot shows after changes in
//! its parents (updates, deletions, renames, ownership and permissions), read-only views,
//! deep chains (128 and 500 layers) and rebased commits.

use super::*;

pub(super) async fn layer_file_update(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let reference = f.reference("ref");
    let steps: [&[Op]; 4] = [
        &[Op::File("/file", "1", 0o644)],
        &[Op::File("/file", "22", 0o644)],
        &[Op::Chmod("/file", 0o600)],
        &[Op::File("/file", "333", 0o755)],
    ];
    let mut parent = String::new();
    for (i, ops) in steps.iter().enumerate() {
        let name = format!("l{i}");
        f.layer(&name, &format!("p{i}"), &parent, ops).await;
        apply(&reference, ops);
        assert_eq!(
            f.view_tree(&format!("v{i}"), &name).await,
            without_root(capture(&reference))
        );
        parent = name;
        // Cross a second boundary now and then, as containerd's case does.
        if i == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
    }
}

pub(super) async fn check_layers(f: &mut Fixture, layers: &[&[Op<'_>]]) {
    let reference = f.reference("ref");
    let mut parent = String::new();
    for (i, ops) in layers.iter().enumerate() {
        let name = format!("layer{i}");
        f.layer(&name, &format!("prep{i}"), &parent, ops).await;
        apply(&reference, ops);
        parent = name;
    }
    assert_eq!(
        f.view_tree("check", &parent).await,
        without_root(capture(&reference))
    );
    // And through an active snapshot on top, which is what a container sees.
    let mounts = f.s.prepare("top", &parent).await.unwrap();
    let tree = with_mounted(&mounts, &f.mnt, |root| without_root(capture(root)));
    assert_eq!(tree, without_root(capture(&reference)));
}

pub(super) async fn remove_directory_in_lower_layer(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    check_layers(
        &mut f,
        &[
            &[
                Op::Dir("/lib", 0o700),
                Op::File("/lib/hidden", "", 0o644),
                Op::Dir("/lib/sub", 0o755),
                Op::File("/lib/sub/x", "x", 0o644),
            ],
            &[
                Op::Remove("/lib"),
                Op::Dir("/lib", 0o755),
                Op::File("/lib/not-hidden", "", 0o644),
            ],
            &[Op::File("/lib/newfile", "", 0o644)],
        ],
    )
    .await;
}

pub(super) async fn chown(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    check_layers(
        &mut f,
        &[
            &[
                Op::Dir("/opt", 0o711),
                Op::Dir("/opt/a", 0o700),
                Op::Dir("/opt/a/b", 0o700),
                Op::File("/opt/a/b/file.txt", "hello", 0o644),
            ],
            &[
                Op::Chown("/opt", 1, 1),
                Op::Chown("/opt/a", 1, 1),
                Op::Chown("/opt/a/b", 1, 1),
                Op::Chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    )
    .await;
}

pub(super) async fn directory_permission_on_commit(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    check_layers(
        &mut f,
        &[
            &[
                Op::Dir("/dir1", 0o700),
                Op::Dir("/dir2", 0o700),
                Op::Dir("/dir3", 0o700),
                Op::Chown("/dir1", 1, 1),
                Op::Chown("/dir3", 1, 1),
            ],
            &[
                Op::Dir("/dir4", 0o700),
                Op::Chown("/dir4", 1, 1),
                Op::Remove("/dir2"),
                Op::Dir("/dir2", 0o700),
                Op::Chown("/dir2", 1, 1),
            ],
            &[
                Op::Remove("/dir3"),
                Op::Dir("/dir3", 0o755),
                Op::Chown("/dir3", 2, 2),
                Op::File("/dir1/x", "x", 0o600),
                Op::Chown("/dir1/x", 3, 3),
            ],
        ],
    )
    .await;
}

pub(super) async fn remove_intermediate_snapshot(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.layer("base", "base-p", "", &[Op::File("/foo", "foo", 0o644)])
        .await;
    f.layer("inter", "inter-p", "base", &[]).await;
    f.s.prepare("top", "inter").await.unwrap();
    assert_code(f.s.remove("inter").await, Code::FailedPrecondition);
    assert_code(f.s.remove("base").await, Code::FailedPrecondition);
    f.s.remove("top").await.unwrap();
    f.s.remove("inter").await.unwrap();
    f.s.remove("base").await.unwrap();
    assert!(f.s.list(&[]).await.unwrap().is_empty());
}

pub(super) async fn deleted_files_in_child_snapshot(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    check_layers(
        &mut f,
        &[
            &[
                Op::File("/foo", "foo\n", 0o777),
                Op::File("/bar", "bar\n", 0o644),
            ],
            &[Op::Remove("/foo")],
            &[Op::File("/baz", "baz", 0o644)],
        ],
    )
    .await;
}

pub(super) async fn move_file_from_lower_layer(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    check_layers(
        &mut f,
        &[
            &[
                Op::Dir("/dir1", 0o700),
                Op::File("/dir1/f1", "Hello", 0o644),
                Op::Dir("/dir2", 0o700),
                Op::File("/dir2/f2", "world", 0o644),
            ],
            &[
                Op::Link("/dir1/f1", "/dir2/f1"),
                Op::Remove("/dir1/f1"),
                Op::Remove("/dir1"),
            ],
        ],
    )
    .await;
}

pub(super) async fn view_readonly(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.layer("base", "base-p", "", &[Op::File("/foo", "foo", 0o644)])
        .await;
    f.layer("l2", "l2-p", "base", &[Op::File("/bar", "bar", 0o644)])
        .await;
    for parent in ["base", "l2"] {
        let key = format!("view-{parent}");
        let mounts = f.s.view(&key, parent).await.unwrap();
        with_mounted(&mounts, &f.mnt, |root| {
            let err = std::fs::write(root.join("testfile"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(30), "EROFS expected, got {err}");
            assert_eq!(std::fs::read_to_string(root.join("foo")).unwrap(), "foo");
        });
    }
}

pub(super) async fn stat_in_walk(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let l = labels(&[("containerd.io/gc.root", "stat-in-walk"), ("x", "y")]);
    f.s.prepare_labels("a", "", l.clone()).await.unwrap();
    f.s.commit_full("b", "a", l.clone(), "").await.unwrap();
    f.s.view_labels("v", "b", l.clone()).await.unwrap();
    f.s.prepare_labels("c", "b", l).await.unwrap();
    let walked = f.s.list(&[]).await.unwrap();
    assert_eq!(walked.len(), 3);
    for info in walked {
        assert_eq!(info, f.s.stat(&info.name).await.unwrap());
    }
}

pub(super) async fn root_permission(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    // The daemon runs with umask 077 (see `Daemon`): the mode must not come from it.
    let mounts = f.s.prepare("prep", "").await.unwrap();
    with_mounted(&mounts, &f.mnt, |root| {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    });
}

pub(super) async fn rename(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let mut layers: Vec<&[Op]> = vec![
        &[
            Op::Dir("/dir1", 0o755),
            Op::File("/somefile", "", 0o644),
            Op::Dir("/dir1/subdir", 0o755),
            Op::File("/dir1/subdir/f1", "f1", 0o644),
        ],
        &[
            Op::Rename("/somefile", "/renamed"),
            Op::File("/dir1/f2", "f2", 0o644),
            Op::Rename("/dir1/f2", "/dir1/f3"),
        ],
    ];
    // Renaming a lower directory needs overlayfs's redirect_dir; containerd skips it there.
    if kind != "overlayfs" {
        layers.push(&[Op::Rename("/dir1/subdir", "/dir2")]);
    }
    check_layers(&mut f, &layers).await;
}

pub(super) async fn layers_128_mount(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let reference = f.reference("ref");
    let mut parent = String::new();
    for i in 0..128 {
        let name = format!("layer-{i}");
        let file = format!("/bottom/{i}");
        let content = format!("layer {i}");
        let mut ops = vec![Op::File(&file, &content, 0o644)];
        if i == 0 {
            ops.insert(0, Op::Dir("/bottom", 0o755));
        }
        let mounts = f.s.prepare(&format!("prep-{i}"), &parent).await.unwrap();
        with_mounted(&mounts, &f.mnt, |root| {
            assert_eq!(
                without_root(capture(root)),
                without_root(capture(&reference)),
                "layer {i}"
            );
            apply(root, &ops);
        });
        apply(&reference, &ops);
        f.s.commit(&name, &format!("prep-{i}")).await.unwrap();
        parent = name;
    }
    assert_eq!(
        f.view_tree("view", &parent).await,
        without_root(capture(&reference))
    );
}

/// Commit with a parent for a snapshot prepared without one (containerd 2.2's rebase): the
/// layer's own overlay whiteouts and opaque markers must take effect over the new parent.
pub(super) async fn rebase_commit(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let base = [
        Op::Dir("/keep", 0o755),
        Op::File("/keep/a", "a", 0o644),
        Op::File("/gone", "gone", 0o644),
        Op::Dir("/opaque", 0o755),
        Op::File("/opaque/old", "old", 0o644),
    ];
    f.layer("base", "base-p", "", &base).await;
    let mounts = f.s.prepare("layer", "").await.unwrap();
    with_mounted(&mounts, &f.mnt, |root| {
        apply(
            root,
            &[
                Op::File("/new", "new", 0o644),
                Op::Dir("/opaque", 0o755),
                Op::File("/opaque/fresh", "fresh", 0o644),
            ],
        );
        // What an overlay-mode apply writes for `.wh.gone` and `opaque/.wh..wh..opq`.
        mountutil::fs::mknod(
            &root.join("gone"),
            mountutil::fs::NodeKind::Char,
            0o600,
            0,
            0,
        )
        .unwrap();
        mountutil::fs::set_xattr(
            &root.join("opaque"),
            "trusted.overlay.opaque".as_ref(),
            b"y",
        )
        .unwrap();
    });
    f.s.commit_full("layer-c", "layer", Default::default(), "base")
        .await
        .unwrap();
    assert_eq!(f.s.stat("layer-c").await.unwrap().parent, "base");
    assert_code(f.s.remove("base").await, Code::FailedPrecondition);

    let reference = f.reference("ref");
    apply(&reference, &base);
    apply(
        &reference,
        &[
            Op::File("/new", "new", 0o644),
            Op::Remove("/gone"),
            Op::Remove("/opaque"),
            Op::Dir("/opaque", 0o755),
            Op::File("/opaque/fresh", "fresh", 0o644),
        ],
    );
    assert_eq!(
        f.view_tree("v", "layer-c").await,
        without_root(capture(&reference))
    );
}

/// A 500-layer chain mounts (through the new mount API: the classic option string cannot
/// hold it) and shows every layer's file; 501 layers fail with a clear error.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
pub(super) async fn overlay_500_layers() {
    let mut f = Fixture::new("overlay-500", "overlayfs").await;
    let mut parent = String::new();
    for i in 0..501 {
        let mounts = f.s.prepare(&format!("p{i}"), &parent).await.unwrap();
        let m = crate::util::mount(&mounts[..], &f.mnt);
        std::fs::write(m.path().join(format!("f{i}")), i.to_string()).unwrap();
        m.release().unwrap();
        f.s.commit(&format!("l{i}"), &format!("p{i}"))
            .await
            .unwrap();
        parent = format!("l{i}");
    }
    let mounts = f.s.view("v500", "l499").await.unwrap();
    let lowers = strata::convert::mount_from_pb(mounts[0].clone());
    assert_eq!(lowers.lowerdirs().len(), 500);
    assert!(mounts[0].options.iter().map(String::len).sum::<usize>() > 4096);
    with_mounted(&mounts, &f.mnt, |root| {
        for i in 0..500 {
            assert_eq!(
                std::fs::read_to_string(root.join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
        assert!(!root.join("f500").exists());
    });
    let mounts = f.s.view("v501", "l500").await.unwrap();
    let m: Vec<_> = mounts
        .into_iter()
        .map(strata::convert::mount_from_pb)
        .collect();
    let err = mountutil::TempMount::new(&m, &f.mnt).unwrap_err();
    assert!(err.to_string().contains("at most 500"), "{err}");
}
