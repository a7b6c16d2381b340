//! Creating layers through containerd 1.7.24 and 2.1.9: `ctr snapshots diff` of a change over 50 MB,
//! on a single-layer parent and on a two-layer parent, five times each. containerd routes
//! the Diff to Strata, which walks only the snapshot's upper directory and writes the blob
//! through containerd's Content service; ctr then reads it back. containerd's proxies pass
//! Strata no lease, so Strata must put the blob under a lease of its own: a garbage
//! collection right after the diff must leave it readable, and one after the lease has
//! expired must remove it. The layer applied to a copy of the parent must give the changed
//! tree.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api::types::Mount as PbMount;

use super::env::{Containerd, Env, SNAPSHOTTER};
use crate::tree::capture;
use crate::util;

/// Seconds Strata's own lease keeps a created layer (`--diff-lease-expiry`).
const LEASE_EXPIRY_SECS: u64 = 15;
/// Diffs of the same change.
const RUNS: usize = 5;
/// Large files of the change, 1 MiB each.
const LARGE_FILES: usize = 44;
/// Small files of the change, 2 KiB each, in 30 directories.
const SMALL_FILES: usize = 3000;

#[test]
#[ignore = "needs root"]
fn layer_creation_1_7() {
    layer_creation("containerd::layer_creation_1_7", Containerd::V1_7);
}

#[test]
#[ignore = "needs root"]
fn layer_creation_2_1() {
    layer_creation("containerd::layer_creation_2_1", Containerd::V2_1);
}

fn layer_creation(test: &str, release: Containerd) {
    let expiry = LEASE_EXPIRY_SECS.to_string();
    let env = Env::start_with(
        test,
        "overlayfs",
        release,
        &["--diff-lease-expiry", &expiry],
    );
    let snap = |args: &[&str]| {
        env.ctr_ok(&[&["snapshots", "--snapshotter", SNAPSHOTTER][..], args].concat())
    };

    // A one-layer parent.
    let base = parse_mounts(&snap(&["prepare", "--mounts", "lc-base"]));
    util::with_mounted(&base, env.scratch(), |root| {
        for dir in ["keep", "gone", "data"] {
            std::fs::create_dir(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("f"), format!("{dir} base")).unwrap();
        }
    });
    snap(&["commit", "lc-base-c", "lc-base"]);

    let first = change_and_diff(&env, "lc-top", "lc-base-c", 1, "gone");
    snap(&["commit", "lc-top-c", "lc-top"]);
    // A two-layer parent.
    let second = change_and_diff(&env, "lc-top2", "lc-top-c", 2, "data");
    let last_diff = Instant::now();

    // Once every lease of Strata's has expired, collection removes the unreferenced blobs.
    let expired = Duration::from_secs(LEASE_EXPIRY_SECS + 2);
    std::thread::sleep(expired.saturating_sub(last_diff.elapsed()));
    env.collect_garbage();
    let content = env.ctr_ok(&["content", "ls", "-q"]);
    for digest in [&first, &second] {
        assert!(
            !content.contains(digest.as_str()),
            "{digest} outlived its lease: {content}"
        );
    }
    let leases = env.ctr_ok(&["leases", "ls", "-q"]);
    assert!(!leases.contains("strata-diff-"), "{leases}");

    snap(&["rm", "lc-top2", "lc-top-c", "lc-base-c"]);
    env.collect_garbage();
    env.wait_strata_empty();
}

/// Prepares `key` on `parent`, writes a change of over 50 MB into it through its overlay
/// mount (new files, directory `removed` deleted, a modified file), then diffs it [`RUNS`] times and
/// checks each layer: the same bytes every time, created by Strata from the upper directory,
/// still readable after a garbage collection, and applied to a copy of the parent giving the
/// snapshot's tree. Returns the layer's digest.
fn change_and_diff(env: &Env, key: &str, parent: &str, seed: u32, removed: &str) -> String {
    let snap = |args: &[&str]| {
        env.ctr_ok(&[&["snapshots", "--snapshotter", SNAPSHOTTER][..], args].concat())
    };
    let mounts = parse_mounts(&snap(&["prepare", "--mounts", key, parent]));
    let expected = util::with_mounted(&mounts, env.scratch(), |root| {
        write_change(root, seed);
        std::fs::remove_dir_all(root.join(removed)).unwrap();
        std::fs::write(root.join("keep/f"), format!("changed {seed}")).unwrap();
        without_root(capture(root))
    });

    let mut layer: Option<Vec<u8>> = None;
    for run in 0..RUNS {
        let before = created_lines(env);
        let bytes = env.ctr_bytes(&["snapshots", "--snapshotter", SNAPSHOTTER, "diff", key]);
        let lines = created_lines(env);
        assert_eq!(lines.len(), before.len() + 1, "Strata made no layer");
        let line = lines.last().unwrap();
        assert!(line.contains("method=\"overlay upper\""), "{line}");
        if let Some(first) = &layer {
            assert!(
                *first == bytes,
                "run {run}: the layer differs from the first run's"
            );
        }
        layer = Some(bytes);
    }
    let layer = layer.unwrap();
    assert!(layer.len() > 10 << 20, "{} bytes", layer.len());
    let digest = sha256(&layer);

    // A collection now must not take the blob: Strata's lease holds it.
    env.collect_garbage();
    let stored = env.ctr_bytes(&["content", "get", &digest]);
    assert!(stored == layer, "containerd's copy of {digest} differs");

    // The layer over a copy of the parent gives the changed tree.
    let blob = env.scratch().join(format!("{key}.tgz"));
    std::fs::write(&blob, &layer).unwrap();
    let view_key = format!("{key}-parent");
    let view = parse_mounts(&snap(&["view", "--mounts", &view_key, parent]));
    // ctr's view sets no gc.root label, unlike its prepare.
    snap(&["label", &view_key, "containerd.io/gc.root=e2e"]);
    let copy = env.scratch().join(format!("{key}-check"));
    util::with_mounted(&view, env.scratch(), |root| copy_tree(root, &copy));
    let applied = strata_layer(&[
        "apply".as_ref(),
        "--mode".as_ref(),
        "native".as_ref(),
        blob.as_ref(),
        copy.as_ref(),
    ]);
    // `strata layer cat` gives the tar whose digest the apply printed as the diffID.
    let diff_id = String::from_utf8_lossy(&applied)
        .split_whitespace()
        .next()
        .map(str::to_string);
    let tar = strata_layer(&["cat".as_ref(), blob.as_ref()]);
    assert_eq!(
        Some(sha256(&tar)),
        diff_id,
        "layer cat's tar is not the diffID's"
    );
    let applied = without_root(capture(&copy));
    assert_eq!(applied.len(), expected.len());
    assert!(
        applied == expected,
        "the applied layer differs from the snapshot"
    );
    std::fs::remove_dir_all(&copy).unwrap();
    snap(&["rm", &view_key]);
    digest
}

/// ctr's mount JSON as wire mounts.
fn parse_mounts(json: &str) -> Vec<PbMount> {
    let v: serde_json::Value = serde_json::from_str(json).expect("mounts JSON");
    v.as_array()
        .expect("a list of mounts")
        .iter()
        .map(|m| PbMount {
            r#type: m["Type"].as_str().expect("type").into(),
            source: m["Source"].as_str().expect("source").into(),
            target: String::new(),
            options: m["Options"]
                .as_array()
                .map(|o| o.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// Strata's log lines for the layers it created.
fn created_lines(env: &Env) -> Vec<String> {
    env.strata
        .log_text()
        .lines()
        .filter(|l| l.contains("created layer"))
        .map(str::to_string)
        .collect()
}

/// Writes [`LARGE_FILES`] files of 1 MiB (compressible about 2:1) and [`SMALL_FILES`]
/// small ones under `root/change-<seed>`, different for each seed.
fn write_change(root: &Path, seed: u32) {
    let top = root.join(format!("change-{seed}"));
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut bytes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                b"0123456789abcdef"[(state & 15) as usize]
            })
            .collect()
    };
    std::fs::create_dir(&top).unwrap();
    for n in 0..LARGE_FILES {
        std::fs::write(top.join(format!("large-{n}")), bytes(1 << 20)).unwrap();
    }
    for n in 0..SMALL_FILES {
        let dir = top.join(format!("dir-{}", n % 30));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("small-{n}")), bytes(2048)).unwrap();
    }
}

/// `cp -a` of `from` to a new directory `to`.
fn copy_tree(from: &Path, to: &PathBuf) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A captured tree without its root, whose metadata is the mount point's.
fn without_root(
    mut tree: std::collections::BTreeMap<String, crate::tree::Entry>,
) -> std::collections::BTreeMap<String, crate::tree::Entry> {
    tree.remove("/");
    tree
}

/// `strata layer ARGS...`, which must succeed; its standard output.
fn strata_layer(args: &[&OsStr]) -> Vec<u8> {
    let out = util::strata_command()
        .arg("layer")
        .args(args)
        .output()
        .expect("run strata layer");
    assert!(
        out.status.success(),
        "strata layer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    let mut hasher = differ::digest::Hasher::default();
    hasher.update(data);
    hasher.finish().0.to_string()
}
