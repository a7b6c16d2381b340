//! containerd's snapshotter conformance cases (`core/snapshots/testsuite`), ported to run
//! against the daemon over its socket, for every snapshotter kind. Mounting is done by this
//! process with real mount(2) calls, as the Go suite does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use strata::api::services::snapshots::v1 as pb;
use tonic::Code;

use crate::tree::{Entry, Op, apply, capture};
use crate::util::{Daemon, Snap, TempDir, assert_root, labels, with_mounted};

/// A daemon of one kind on a private root, a client, and a place for mount points.
pub struct Fixture {
    pub s: Snap,
    pub daemon: Daemon,
    pub mnt: PathBuf,
    pub tmp: TempDir,
}

impl Fixture {
    pub async fn new(test: &str, kind: &'static str) -> Self {
        assert_root(test);
        let tmp = TempDir::new(test);
        let daemon = Daemon::start(tmp.path(), kind);
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let s = Snap::new(&daemon).await;
        Fixture {
            s,
            daemon,
            mnt,
            tmp,
        }
    }

    /// A scratch directory for a flat reference tree.
    pub fn reference(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir(&p).unwrap();
        p
    }

    /// Prepare `key` on `parent`, apply `ops` through the mounts, commit as `name`.
    pub async fn layer(&mut self, name: &str, key: &str, parent: &str, ops: &[Op<'_>]) {
        let mounts = self.s.prepare(key, parent).await.unwrap();
        with_mounted(&mounts, &self.mnt, |root| apply(root, ops));
        self.s.commit(name, key).await.unwrap();
    }

    /// What a fresh view of `parent` shows.
    pub async fn view_tree(&mut self, key: &str, parent: &str) -> BTreeMap<String, Entry> {
        let mounts = self.s.view(key, parent).await.unwrap();
        let tree = with_mounted(&mounts, &self.mnt, |root| without_root(capture(root)));
        self.s.remove(key).await.unwrap();
        tree
    }
}

/// A captured tree without its root directory's own entry.
pub fn without_root(mut t: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    t.remove("/");
    t
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            s
        }
    }
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("timestamp")).unwrap()
}

macro_rules! for_each_kind {
    ($($case:ident),* $(,)?) => {
        mod native {
            $(
                #[tokio::test(flavor = "multi_thread")]
                #[ignore = "needs root"]
                async fn $case() {
                    super::$case(concat!("native-", stringify!($case)), "native").await
                }
            )*
        }
        mod overlayfs {
            $(
                #[tokio::test(flavor = "multi_thread")]
                #[ignore = "needs root"]
                async fn $case() {
                    super::$case(concat!("overlayfs-", stringify!($case)), "overlayfs").await
                }
            )*
        }
    };
}

for_each_kind!(
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_view_failing,
    update,
    remove_and_reuse,
    walk,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown,
    directory_permission_on_commit,
    remove_intermediate_snapshot,
    deleted_files_in_child_snapshot,
    move_file_from_lower_layer,
    view_readonly,
    stat_in_walk,
    root_permission,
    rename,
    layers_128_mount,
    rebase_commit,
);

async fn basic(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let gc = labels(&[("containerd.io/gc.root", "basic")]);
    let initial = [
        Op::Dir("/a", 0o755),
        Op::Dir("/a/b", 0o755),
        Op::Dir("/a/b/c", 0o755),
        Op::File("/a/b/c/d", "hello", 0o644),
        Op::File("/f", "top", 0o600),
        Op::Symlink("a/b/c/d", "/link"),
    ];
    let reference = f.reference("ref");
    apply(&reference, &initial);

    let mounts =
        f.s.prepare_labels("preparing", "", gc.clone())
            .await
            .unwrap();
    with_mounted(&mounts, &f.mnt, |root| apply(root, &initial));
    f.s.commit_full("committed", "preparing", gc.clone(), "")
        .await
        .unwrap();
    let si = f.s.stat("committed").await.unwrap();
    assert_eq!(
        (si.name.as_str(), si.parent.as_str(), si.kind),
        ("committed", "", pb::Kind::Committed as i32)
    );
    assert_code(f.s.stat("preparing").await, Code::NotFound);

    let mounts =
        f.s.prepare_labels("nextlayer", "committed", gc.clone())
            .await
            .unwrap();
    let diff = [
        Op::File("/bar", "bar", 0o644),
        Op::Remove("/a/b"),
        Op::File("/f", "changed", 0o600),
    ];
    with_mounted(&mounts, &f.mnt, |root| {
        assert_eq!(
            without_root(capture(root)),
            without_root(capture(&reference))
        );
        apply(root, &diff);
    });
    // The child's writes landed in its own layer only: the parent still shows the original.
    let original = f.reference("original");
    apply(&original, &initial);
    assert_eq!(
        f.view_tree("parent-view", "committed").await,
        without_root(capture(&original))
    );
    apply(&reference, &diff);
    f.s.commit_full("nextcommitted", "nextlayer", gc.clone(), "")
        .await
        .unwrap();
    let ni = f.s.stat("nextcommitted").await.unwrap();
    assert_eq!(
        (ni.parent.as_str(), ni.kind),
        ("committed", pb::Kind::Committed as i32)
    );

    let walked = f.s.list(&[]).await.unwrap();
    for name in ["committed", "nextcommitted"] {
        let w = walked.iter().find(|i| i.name == name).expect("walk has it");
        assert_eq!(*w, f.s.stat(name).await.unwrap());
    }

    assert_eq!(
        f.view_tree("nextview", "nextcommitted").await,
        without_root(capture(&reference))
    );

    let err = assert_code(f.s.remove("committed").await, Code::FailedPrecondition);
    assert!(err.message().contains("remove"), "{}", err.message());
    f.s.remove("nextcommitted").await.unwrap();
    f.s.remove("committed").await.unwrap();
    assert!(f.s.list(&[]).await.unwrap().is_empty());
}

async fn stat_active(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let mounts = f.s.prepare("prepare", "").await.unwrap();
    with_mounted(&mounts, &f.mnt, |root| {
        apply(root, &[Op::File("/foo", "x", 0o644)])
    });
    let si = f.s.stat("prepare").await.unwrap();
    assert_eq!(
        (si.name.as_str(), si.parent.as_str(), si.kind),
        ("prepare", "", pb::Kind::Active as i32)
    );
}

async fn stat_committed(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.layer("committed", "prepare", "", &[Op::File("/foo", "x", 0o644)])
        .await;
    let si = f.s.stat("committed").await.unwrap();
    assert_eq!(
        (si.name.as_str(), si.parent.as_str(), si.kind),
        ("committed", "", pb::Kind::Committed as i32)
    );
}

async fn transitivity(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.layer("a", "pa", "", &[Op::File("/a", "a", 0o644)]).await;
    f.layer("b", "pb", "a", &[Op::File("/b", "b", 0o644)]).await;
    assert_eq!(f.s.stat("b").await.unwrap().parent, "a");
    assert_eq!(f.s.stat("a").await.unwrap().parent, "");
}

async fn prepare_view_failing(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.layer("base", "base-p", "", &[Op::File("/x", "x", 0o644)])
        .await;
    f.s.prepare("test-prepare", "base").await.unwrap();
    assert_code(f.s.view("test-prepare", "base").await, Code::AlreadyExists);
    assert_code(
        f.s.prepare("test-prepare", "base").await,
        Code::AlreadyExists,
    );
    f.s.view("test-view", "base").await.unwrap();
    assert_code(f.s.view("test-view", "base").await, Code::AlreadyExists);
    assert_code(f.s.prepare("test-view", "base").await, Code::AlreadyExists);
    assert_code(f.s.prepare("base", "").await, Code::AlreadyExists);
}

async fn update(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let mut names = Vec::new();
    for i in 0..2 {
        let before = SystemTime::now();
        f.s.prepare(&format!("p{i}"), "").await.unwrap();
        f.s.commit(&format!("c{i}"), &format!("p{i}"))
            .await
            .unwrap();
        let after = SystemTime::now();
        names.push((format!("c{i}"), before, after));
    }
    for (i, parent) in ["c0", "c1"].iter().enumerate() {
        let before = SystemTime::now();
        f.s.prepare(&format!("a{i}"), parent).await.unwrap();
        names.push((format!("a{i}"), before, SystemTime::now()));
        let before = SystemTime::now();
        f.s.view(&format!("v{i}"), parent).await.unwrap();
        names.push((format!("v{i}"), before, SystemTime::now()));
    }
    for (name, before, after) in names {
        let info = f.s.stat(&name).await.unwrap();
        let created = time(info.created_at);
        assert!(
            before <= created && created <= after,
            "{name}: created outside the call"
        );
        assert_eq!(
            info.created_at, info.updated_at,
            "{name}: created == updated"
        );

        let mut req = info.clone();
        req.labels = [
            ("l1".to_string(), "v1".to_string()),
            ("l2".to_string(), "v2".to_string()),
        ]
        .into();
        req.parent = "doesnotexist".into();
        let before = SystemTime::now();
        let out = f.s.update(req, &[]).await.unwrap();
        let after = SystemTime::now();
        assert_eq!(out.labels, labels(&[("l1", "v1"), ("l2", "v2")]));
        assert_eq!(out.parent, info.parent, "parent is not updatable");
        assert_eq!(out.created_at, info.created_at);
        let updated = time(out.updated_at);
        assert!(before <= updated && updated <= after);

        let mut req = out.clone();
        req.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let out = f.s.update(req, &["labels.l1", "labels.l2"]).await.unwrap();
        assert_eq!(out.labels, labels(&[("l1", "updated")]));

        let mut req = out.clone();
        req.labels = labels(&[("l3", "v3")]);
        let out = f.s.update(req, &["labels"]).await.unwrap();
        assert_eq!(out.labels, labels(&[("l3", "v3")]));
        assert_eq!(f.s.stat(&name).await.unwrap(), out);

        let mut req = out.clone();
        req.parent = "doesnotexist".into();
        assert_code(f.s.update(req, &["parent"]).await, Code::InvalidArgument);
    }
}

async fn remove_and_reuse(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.layer("base", "base-p", "", &[]).await;
    f.s.prepare("reuse", "base").await.unwrap();
    f.s.remove("reuse").await.unwrap();
    f.s.view("reuse", "base").await.unwrap();
    f.s.remove("reuse").await.unwrap();
    f.s.prepare("reuse", "").await.unwrap();
    f.s.remove("reuse").await.unwrap();
    f.s.prepare("c", "").await.unwrap();
    f.s.commit("committed", "c").await.unwrap();
    f.s.remove("committed").await.unwrap();
    f.s.prepare("c2", "").await.unwrap();
    f.s.commit("committed", "c2").await.unwrap();
    assert_eq!(
        f.s.stat("committed").await.unwrap().kind,
        pb::Kind::Committed as i32
    );
}

async fn walk(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    let gc = |extra: &[(&str, &str)]| {
        let mut l = labels(&[("containerd.io/gc.root", "check-walk")]);
        l.extend(labels(extra));
        l
    };
    f.s.prepare_labels("p-tmp", "", gc(&[])).await.unwrap();
    f.s.commit_full("p", "p-tmp", gc(&[]), "").await.unwrap();
    f.s.prepare_labels("a-np-wl", "", gc(&[("l", "1")]))
        .await
        .unwrap();
    f.s.prepare_labels("a-wl", "p", gc(&[("l", "2")]))
        .await
        .unwrap();
    f.s.prepare_labels("a-nl", "p", Default::default())
        .await
        .unwrap();
    f.s.view_labels("v-wl", "p", gc(&[("l", "3")]))
        .await
        .unwrap();
    f.s.prepare_labels("c-tmp", "p", Default::default())
        .await
        .unwrap();
    f.s.commit_full("c-wl", "c-tmp", gc(&[]), "").await.unwrap();

    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["a-nl", "a-np-wl", "a-wl", "c-wl", "p", "v-wl"]),
        (
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
            &["a-np-wl", "a-wl", "c-wl", "p", "v-wl"],
        ),
        (
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
            &["a-np-wl", "a-wl"],
        ),
        (
            &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
            &["v-wl"],
        ),
        (
            &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
            &["c-wl", "p"],
        ),
        (&["name==p", "name==a-np-wl"], &["a-np-wl", "p"]),
        (&["name==a-wl,labels.l"], &["a-wl"]),
        (&["parent==p"], &["a-nl", "a-wl", "c-wl", "v-wl"]),
        (
            &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
            &["a-wl", "c-wl", "v-wl"],
        ),
        (&["labels.l"], &["a-np-wl", "a-wl", "v-wl"]),
        (&["labels.l==2"], &["a-wl"]),
        (&["name~=^a-"], &["a-nl", "a-np-wl", "a-wl"]),
    ];
    for (filters, want) in cases {
        let mut got: Vec<String> =
            f.s.list(filters)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
        got.sort();
        assert_eq!(got, *want, "filters {filters:?}");
    }
}

async fn layer_file_update(test: &str, kind: &'static str) {
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

async fn check_layers(f: &mut Fixture, layers: &[&[Op<'_>]]) {
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

async fn remove_directory_in_lower_layer(test: &str, kind: &'static str) {
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

async fn chown(test: &str, kind: &'static str) {
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

async fn directory_permission_on_commit(test: &str, kind: &'static str) {
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

async fn remove_intermediate_snapshot(test: &str, kind: &'static str) {
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

async fn deleted_files_in_child_snapshot(test: &str, kind: &'static str) {
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

async fn move_file_from_lower_layer(test: &str, kind: &'static str) {
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

async fn view_readonly(test: &str, kind: &'static str) {
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

async fn stat_in_walk(test: &str, kind: &'static str) {
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

async fn root_permission(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    // The daemon runs with umask 077 (see `Daemon`): the mode must not come from it.
    let mounts = f.s.prepare("prep", "").await.unwrap();
    with_mounted(&mounts, &f.mnt, |root| {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    });
}

async fn rename(test: &str, kind: &'static str) {
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

async fn layers_128_mount(test: &str, kind: &'static str) {
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
async fn rebase_commit(test: &str, kind: &'static str) {
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
async fn overlay_500_layers() {
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
