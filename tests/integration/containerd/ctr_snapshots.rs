//! `ctr snapshots` and `ctr snapshots diff` through containerd to Strata: the snapshot
//! commands checked both as containerd reports them and as Strata stores them, a layer
//! created by Strata's Diff service and read back from containerd's content store, and the
//! whole image flow on containerd 1.6 (the tests are in `containerd.rs`).

use api::services::snapshots::v1 as pb;

use super::env::{Containerd, Env, NAMESPACE, SNAPSHOTTER, Unpack, table};
use crate::util;

/// The whole flow on one snapshotter kind under containerd 1.6: snapshot commands, import,
/// run, removal and GC.
pub(super) fn image_lifecycle(test: &str, kind: &str) {
    let env = Env::start(test, kind, Containerd::V1_6);
    snapshot_commands(&env, kind);

    let image = format!("strata.test/e2e/{kind}:1");
    env.import(&image, 0, Unpack::Client);
    env.run_container(&image, &format!("e2e-{kind}"), 0);
    env.remove_image(&image);
}

/// `ctr snapshots` prepare/commit/view/ls/info/usage/mounts/rm, checked both as containerd
/// reports it and as Strata stores it (keys namespaced by containerd's metadata layer).
pub(super) fn snapshot_commands(env: &Env, kind: &str) {
    let snap = |args: &[&str]| {
        env.ctr_ok(&[&["snapshots", "--snapshotter", SNAPSHOTTER][..], args].concat())
    };

    snap(&["prepare", "k1"]);
    snap(&["commit", "n1", "k1"]);
    let mounts: serde_json::Value =
        serde_json::from_str(&snap(&["prepare", "--mounts", "k2", "n1"])).expect("mounts JSON");
    let mount = &mounts[0];
    let strata_root = env.strata.root.to_string_lossy().into_owned();
    if kind == "native" {
        assert_eq!(mount["Type"], "bind", "{mounts}");
        let source = mount["Source"].as_str().expect("source");
        assert!(source.starts_with(&strata_root), "{mounts}");
    } else {
        assert_eq!(mount["Type"], "overlay", "{mounts}");
        let options = mount["Options"].to_string();
        assert!(
            options.contains(&format!("upperdir={strata_root}")),
            "{mounts}"
        );
        assert!(
            options.contains(&format!("lowerdir={strata_root}")),
            "{mounts}"
        );
    }
    snap(&["view", "v1", "n1"]);
    // Unlike prepare, ctr's view sets no gc.root label, and the next collection (after the
    // first removal) would take the view away.
    snap(&["label", "v1", "containerd.io/gc.root=e2e"]);
    // containerd forwards only labels under containerd.io/snapshot/ to the backend.
    snap(&["label", "n1", "containerd.io/snapshot/e2e=yes", "other=no"]);

    assert_eq!(
        table(&snap(&["ls"])),
        [
            vec!["KEY", "PARENT", "KIND"],
            vec!["k2", "n1", "Active"],
            vec!["n1", "Committed"],
            vec!["v1", "n1", "View"],
        ]
    );
    let info: serde_json::Value = serde_json::from_str(&snap(&["info", "n1"])).expect("info JSON");
    assert_eq!(
        [&info["Name"], &info["Kind"]],
        ["n1", "Committed"],
        "{info}"
    );
    let info: serde_json::Value = serde_json::from_str(&snap(&["info", "k2"])).expect("info JSON");
    assert_eq!(
        [&info["Name"], &info["Kind"], &info["Parent"]],
        ["k2", "Active", "n1"],
        "{info}"
    );
    let usage = snap(&["usage", "k2", "n1"]);
    let usage = table(&usage);
    assert_eq!(usage[0], ["KEY", "SIZE", "INODES"]);
    assert_eq!(
        usage[1..].iter().map(|row| row[0]).collect::<Vec<_>>(),
        ["k2", "n1"]
    );
    let shown = snap(&["mounts", "/mnt", "k2"]);
    assert!(shown.starts_with("mount -t "), "{shown}");

    // Strata sees containerd's backend keys "<namespace>/<seq>/<key>", parents mapped.
    let stored = env.strata_snapshots();
    assert_eq!(stored.len(), 3, "{stored:?}");
    let n1 = backend(&stored, "n1");
    assert_eq!(n1.kind(), pb::Kind::Committed);
    assert_eq!(
        n1.labels,
        util::labels(&[("containerd.io/snapshot/e2e", "yes")]),
        "{n1:?}"
    );
    let k2 = backend(&stored, "k2");
    assert_eq!((k2.kind(), &k2.parent), (pb::Kind::Active, &n1.name));
    let v1 = backend(&stored, "v1");
    assert_eq!((v1.kind(), &v1.parent), (pb::Kind::View, &n1.name));

    let err = env.ctr_err(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", "missing"]);
    assert!(err.contains("not found"), "{err}");
    let err = env.ctr_err(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", "n1"]);
    assert!(err.contains("child"), "{err}");
    snap(&["rm", "k2", "v1", "n1"]);
    assert_eq!(table(&snap(&["ls"])), [vec!["KEY", "PARENT", "KIND"]]);
    env.collect_garbage();
    env.wait_strata_empty();
}

/// `ctr snapshots diff`, which containerd's diff service routes to Strata (first in 1.7's
/// order): Strata walks the active snapshot's upper directory and writes the layer through
/// containerd's Content service in the snapshot's namespace; ctr then reads it back from
/// containerd's content store.
pub(super) fn diff_through_containerd(env: &Env) {
    let snap = |args: &[&str]| {
        env.ctr_ok(&[&["snapshots", "--snapshotter", SNAPSHOTTER][..], args].concat())
    };
    let dir_of = |mounts: &str| -> std::path::PathBuf {
        let mounts: serde_json::Value = serde_json::from_str(mounts).expect("mounts JSON");
        let m = &mounts[0];
        let dir = if m["Type"] == "bind" {
            m["Source"].as_str().expect("source").to_string()
        } else {
            m["Options"]
                .as_array()
                .expect("options")
                .iter()
                .find_map(|o| o.as_str()?.strip_prefix("upperdir=").map(str::to_string))
                .expect("upperdir")
        };
        dir.into()
    };
    let base = dir_of(&snap(&["prepare", "--mounts", "diff-base"]));
    std::fs::write(base.join("keep"), "keep").unwrap();
    std::fs::write(base.join("gone"), "gone").unwrap();
    snap(&["commit", "diff-base-c", "diff-base"]);
    let upper = dir_of(&snap(&["prepare", "--mounts", "diff-top", "diff-base-c"]));
    std::fs::write(upper.join("added"), "added").unwrap();
    mountutil::fs::mknod(&upper.join("gone"), mountutil::fs::NodeKind::Char, 0, 0, 0).unwrap();

    let before = env.strata.log_text().matches("created layer").count();
    let layer = env.ctr_bytes(&[
        "snapshots",
        "--snapshotter",
        SNAPSHOTTER,
        "diff",
        "--media-type",
        "application/vnd.oci.image.layer.v1.tar",
        "diff-top",
    ]);
    let mut names: Vec<String> = tar::Archive::new(&layer[..])
        .entries()
        .expect("a tar from ctr")
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, [".wh.gone", "added"], "{}", env.strata.log_text());
    let log = env.strata.log_text();
    assert_eq!(
        log.matches("created layer").count(),
        before + 1,
        "Strata's Diff service must have made the layer:\n{log}"
    );
    assert!(log.contains("method=\"overlay upper\""), "{log}");

    snap(&["rm", "diff-top", "diff-base-c"]);
    env.collect_garbage();
    env.wait_strata_empty();
}

/// The snapshot containerd stores in Strata for its `key` in [`NAMESPACE`].
fn backend<'a>(stored: &'a [pb::Info], key: &str) -> &'a pb::Info {
    let (prefix, suffix) = (format!("{NAMESPACE}/"), format!("/{key}"));
    stored
        .iter()
        .find(|i| i.name.starts_with(&prefix) && i.name.ends_with(&suffix))
        .unwrap_or_else(|| panic!("{key} not in Strata: {stored:?}"))
}
