//! The snapshotter library on its own, no daemon and no mounts, for both drivers: the index
//! and the directories agree through every operation, orphans are reclaimed by Cleanup and
//! at open, state survives reopening, a second opener of a root is refused, and concurrent
//! calls on overlapping keys get only the errors containerd's API promises. None of this
//! needs root.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use snapshotter::native::{Native, NativeSnapshotter};
use snapshotter::overlay::{Overlay, OverlayOptions, OverlaySnapshotter};
use snapshotter::{Error, Filters, Kind, Labels, Options, Snapshotter};

/// Opens a snapshotter of `kind` at `root`.
fn open(kind: &str, root: &Path) -> snapshotter::Result<Arc<dyn Snapshotter>> {
    let options = Options::default();
    Ok(match kind {
        "native" => Arc::new(NativeSnapshotter::open(root, Native, options)?),
        _ => {
            let driver = Overlay::probe(root, OverlayOptions::default())?;
            Arc::new(OverlaySnapshotter::open(root, driver, options)?)
        }
    })
}

/// The directory names under `<root>/snapshots`.
fn dirs(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every snapshot's name.
fn names(s: &dyn Snapshotter) -> BTreeSet<String> {
    let all = Filters::parse::<&str>(&[]).unwrap();
    s.list(&all).unwrap().into_iter().map(|i| i.name).collect()
}

/// After a cleanup, exactly one directory per snapshot.
fn assert_agree(s: &dyn Snapshotter, root: &Path) {
    s.cleanup().unwrap();
    let snapshots = names(s);
    let dirs = dirs(root);
    assert_eq!(dirs.len(), snapshots.len(), "{dirs:?} for {snapshots:?}");
    assert!(dirs.iter().all(|d| d.parse::<u64>().is_ok()), "{dirs:?}");
}

/// The directory an active snapshot's layer is written to.
fn fs_of(s: &dyn Snapshotter, key: &str) -> std::path::PathBuf {
    let mounts = s.mounts(key).unwrap();
    s.recognize(&mounts).unwrap().expect("our own mounts").fs
}

fn lifecycle(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(kind, root).unwrap();

    s.prepare("a", "", Labels::new()).unwrap();
    std::fs::write(fs_of(s.as_ref(), "a").join("f"), "a").unwrap();
    s.commit("a-c", "a", Labels::new(), "").unwrap();
    s.prepare("b", "a-c", Labels::new()).unwrap();
    s.view("v", "a-c", Labels::new()).unwrap();
    assert_agree(s.as_ref(), root);
    assert_eq!(s.stat("a-c").unwrap().kind, Kind::Committed);
    assert_eq!(s.stat("b").unwrap().parent, "a-c");
    assert!(matches!(s.stat("a"), Err(Error::NotFound(_))));

    // A committed parent with children stays, and so does its directory.
    assert!(matches!(s.remove("a-c"), Err(Error::FailedPrecondition(_))));
    assert_agree(s.as_ref(), root);

    // The index survives reopening; a second opener is refused while the first lives.
    assert!(open(kind, root).is_err());
    let before = names(s.as_ref());
    drop(s);
    let s = open(kind, root).unwrap();
    assert_eq!(names(s.as_ref()), before);
    let copy = fs_of(s.as_ref(), "b");
    if kind == "native" {
        assert_eq!(std::fs::read_to_string(copy.join("f")).unwrap(), "a");
    }

    for key in ["b", "v", "a-c"] {
        s.remove(key).unwrap();
    }
    assert_agree(s.as_ref(), root);
    assert!(dirs(root).is_empty());
}

/// A committed snapshot's usage is its tree's, measured when first asked for, not at commit
/// (where the walk would lengthen every layer's unpack), and kept: the tree is walked once
/// (files slipped into it behind the index's back show when they were there at that first
/// walk, not after), and the measure survives reopening.
fn committed_usage_is_measured_once(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(kind, root).unwrap();
    s.prepare("a", "", Labels::new()).unwrap();
    let fs = fs_of(s.as_ref(), "a");
    std::fs::write(fs.join("f"), vec![7u8; 100 << 10]).unwrap();
    s.commit("a-c", "a", Labels::new(), "").unwrap();
    std::fs::create_dir(fs.join("after-commit")).unwrap();

    let usage = s.usage("a-c").unwrap();
    assert_eq!(usage.inodes, 3, "{usage:?}");
    assert!(usage.size >= 100 << 10, "{usage:?}");
    std::fs::write(fs.join("after-usage"), vec![7u8; 1 << 20]).unwrap();
    assert_eq!(s.usage("a-c").unwrap(), usage);
    drop(s);
    let s = open(kind, root).unwrap();
    assert_eq!(s.usage("a-c").unwrap(), usage);
}

fn orphans_are_reclaimed(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(kind, root).unwrap();
    s.prepare("kept", "", Labels::new()).unwrap();
    let kept = dirs(root);
    // What a crash leaves: a creation never renamed, a directory whose entry is gone, a
    // removal half done.
    for orphan in ["new-7", "999", "rm-998"] {
        std::fs::create_dir_all(root.join("snapshots").join(orphan).join("fs/deep")).unwrap();
    }
    s.cleanup().unwrap();
    assert_eq!(dirs(root), kept);

    std::fs::create_dir_all(root.join("snapshots/new-8/fs")).unwrap();
    drop(s);
    let s = open(kind, root).unwrap();
    assert_eq!(dirs(root), kept, "opening reclaims orphans too");
    assert_eq!(names(s.as_ref()), BTreeSet::from(["kept".to_string()]));
}

fn concurrent_calls_on_overlapping_keys(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let s = open(kind, &root).unwrap();
    s.prepare("base", "", Labels::new()).unwrap();
    s.commit("base-c", "base", Labels::new(), "").unwrap();

    let workers: Vec<_> = (0..8)
        .map(|w| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut committed = 0;
                for i in 0..40 {
                    // Keys shared by every worker: only one may win each step.
                    let key = format!("k{i}");
                    let name = format!("n{i}");
                    // Usage and Commit walk the active snapshot's directory, which another
                    // worker's Remove and Cleanup may take away meanwhile.
                    let steps = [
                        s.prepare(&key, "base-c", Labels::new()).map(|_| ()),
                        s.usage(&key).map(|_| ()),
                        s.commit(&name, &key, Labels::new(), ""),
                        s.remove(&name),
                        s.remove(&key),
                        s.cleanup(),
                    ];
                    for (step, result) in steps.into_iter().enumerate() {
                        match result {
                            Ok(()) if step == 2 => committed += 1,
                            Ok(())
                            | Err(Error::AlreadyExists(_))
                            | Err(Error::NotFound(_))
                            | Err(Error::FailedPrecondition(_)) => {}
                            Err(e) => panic!("worker {w}, {key} step {step}: {e}"),
                        }
                    }
                }
                committed
            })
        })
        .collect();
    let committed: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(committed >= 1, "no commit ever won");
    assert!(committed <= 8 * 40);
    assert_agree(s.as_ref(), &root);
    let left: BTreeSet<String> = names(s.as_ref());
    assert!(left.contains("base-c"), "{left:?}");
    for name in &left {
        let info = s.stat(name).unwrap();
        assert!(
            info.parent.is_empty() || left.contains(&info.parent),
            "{info:?}"
        );
    }
}

/// `labels` from pairs.
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Unpacks a layer as containerd's unpacker does: Prepare `key` labelled with the chain ID
/// (and whatever else `extra` says), commit it as `name` with the same labels.
fn unpack(s: &dyn Snapshotter, name: &str, key: &str, parent: &str, extra: &[(&str, &str)]) {
    let labels = labels(extra);
    s.prepare(key, parent, labels.clone()).unwrap();
    s.commit(name, key, labels, "").unwrap();
}

/// A Prepare for a layer already committed on the same parent (another containerd
/// namespace unpacked it) creates nothing and answers AlreadyExists; the filter containerd
/// then lists with finds the committed snapshot. Anything that does not match exactly (other
/// parent, other chain, labels that do not add up, a parallel-unpack Prepare) gets a fresh
/// snapshot as before.
fn committed_layers_are_reused(kind: &str) {
    use snapshotter::{DIFF_ID, PARENT_CHAIN_ID, SNAPSHOT_REF};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(kind, root).unwrap();
    let (base, top) = (
        "sha256:b68ad689d6d1ec110ea1c13617437ad6f3766d4b3b309f6a603a222e07a0164f",
        "sha256:5f1f3c1bd5b0f2a41c5e6f1aeb23a5b61f4e1bbde0b0b6b4c1a3b9db1e7b2f00",
    );
    unpack(&*s, "a/1/base", "a/k1", "", &[(SNAPSHOT_REF, base)]);
    unpack(&*s, "a/2/top", "a/k2", "a/1/base", &[(SNAPSHOT_REF, top)]);
    let before = names(&*s);

    let reused = |key: &str, parent: &str, extra: &[(&str, &str)]| match s.prepare(
        key,
        parent,
        labels(extra),
    ) {
        Err(Error::LayerCommitted { .. }) => true,
        Ok(_) => {
            s.remove(key).unwrap();
            false
        }
        Err(e) => panic!("prepare {key}: {e}"),
    };
    assert!(reused("b/k1", "", &[(SNAPSHOT_REF, base)]));
    assert!(reused("b/k2", "a/1/base", &[(SNAPSHOT_REF, top)]));
    assert_eq!(names(&*s), before, "a reused layer creates nothing");
    let filter = format!("labels.\"{SNAPSHOT_REF}\"=={top},parent==\"a/1/base\"");
    let found = s.list(&Filters::parse(&[filter]).unwrap()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].name.as_str(), found[0].kind),
        ("a/2/top", Kind::Committed)
    );

    // containerd 2.3's labels agree: still reused.
    let diff = "sha256:bb";
    let first = "sha256:bb";
    unpack(
        &*s,
        "a/3/first",
        "a/k3",
        "",
        &[(SNAPSHOT_REF, first), (DIFF_ID, diff)],
    );
    assert!(reused(
        "b/k3",
        "",
        &[(SNAPSHOT_REF, first), (DIFF_ID, diff)]
    ));
    assert!(reused("b/k4", "", &[(SNAPSHOT_REF, first)]));
    // ... and do not: a chain ID that is not the diff ID of a first layer, another diff ID
    // than the one recorded, a parent that is not the chain named, a parallel unpack.
    assert!(!reused(
        "b/k5",
        "",
        &[(SNAPSHOT_REF, first), (DIFF_ID, "sha256:cc")]
    ));
    assert!(!reused(
        "b/k6",
        "a/1/base",
        &[(SNAPSHOT_REF, top), (PARENT_CHAIN_ID, first)]
    ));
    assert!(!reused(
        "b/k7",
        "",
        &[(SNAPSHOT_REF, top), (PARENT_CHAIN_ID, base)]
    ));
    // Another parent, another chain, an active snapshot with the chain, no label at all.
    assert!(!reused("b/k8", "a/3/first", &[(SNAPSHOT_REF, top)]));
    assert!(!reused("b/k9", "", &[(SNAPSHOT_REF, "sha256:other")]));
    s.prepare("a/k10", "", labels(&[(SNAPSHOT_REF, "sha256:busy")]))
        .unwrap();
    assert!(!reused("b/k10", "", &[(SNAPSHOT_REF, "sha256:busy")]));
    assert!(!reused("b/k11", "", &[]));
    // An existing key is still an existing key, and a missing parent still missing.
    assert!(matches!(
        s.prepare("a/k10", "", labels(&[(SNAPSHOT_REF, base)])),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("b/k12", "nope", labels(&[(SNAPSHOT_REF, top)])),
        Err(Error::NotFound(_))
    ));
    assert_agree(&*s, root);
}

macro_rules! for_each_kind {
    ($($case:ident),* $(,)?) => {
        mod native {
            $( #[test] fn $case() { super::$case("native") } )*
        }
        mod overlayfs {
            $( #[test] fn $case() { super::$case("overlayfs") } )*
        }
    };
}

for_each_kind!(
    lifecycle,
    committed_usage_is_measured_once,
    orphans_are_reclaimed,
    concurrent_calls_on_overlapping_keys,
    committed_layers_are_reused
);
