//! containerd's snapshotter conformance cases (`core/snapshots/testsuite`), ported to run
//! against the daemon over its socket, for every snapshotter kind. Mounting is done by this
//! process with real mount(2) calls, as the Go suite does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use api::services::snapshots::v1 as pb;
use tonic::Code;

use crate::tree::{Entry, Op, apply, capture};

mod layers;
use crate::util::{Daemon, Snap, TempDir, assert_root, labels, with_mounted};
use layers::*;

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
