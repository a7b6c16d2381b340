//! The crash loop: several clients drive a mixed workload (Prepare on committed parents,
//! layers applied through the Diff service, writes through the mounts, Commit, View, label
//! Update, Remove, Cleanup) while the daemon is SIGKILLed at random moments and restarted.
//! After each restart the index is checked against what the clients were told:
//!
//! - nothing acknowledged is lost and nothing unacknowledged appears: the listed snapshots
//!   are exactly the committed ones the clients recorded, plus at most the outcome of the
//!   one call each client had in flight, which must be all-or-nothing;
//! - every committed snapshot has the recorded kind, parent and labels, its directories
//!   exist, its chain has the recorded depth, and a view of it shows the tree that was
//!   hashed when its Commit returned;
//! - user-namespaced active snapshots (uid/gid mapping labels, kept across kills) are still
//!   there, and their mounts show their parent's tree with owners shifted, plus what was
//!   written through them; for overlayfs their lowers are idmapped, never copied;
//! - after Cleanup every directory under `snapshots/` belongs to an entry, and nothing is
//!   left mounted (`/proc/self/mountinfo`) under the daemon's root or the test's but the
//!   idmapped trees of mappings a snapshot still uses.
//!
//! Violations are counted, not fatal, so one run reports them all in its summary line.
//! Here: the model the clients and the checker share, and the rounds; the clients are in
//! [`worker`], the checks after each restart in [`check`].
//! `scripts/crash-loop [N] [--seed S]` runs N kills (half per snapshotter kind), and the
//! pull crash loop ([`pulls`]) half as many; `.ci/run` runs 20 and 10. Environment: `STRATA_CRASH_LOOP_KILLS` (default 20), `STRATA_CRASH_LOOP_SEED`
//! (default from the clock; printed, and a run with the same seed makes the same choices).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::services::diff::v1::diff_client::DiffClient;
use api::types::{Descriptor, Mount};
use differ::Compression;
use differ::content::LocalStore;

mod check;
mod pulls;
mod worker;

use self::check::check;
use self::worker::Worker;

use crate::suite::without_root;
use crate::tree::{Op, apply, capture};
use crate::util::{Daemon, Labels, Rng, Snap, TempDir, assert_root, store_layer, try_with_mounted};

/// Concurrent clients.
const WORKERS: usize = 4;
/// Committed snapshots a client keeps before it prefers removing.
const KEEP: usize = 6;
/// Deepest parent chain a client builds on.
const MAX_DEPTH: usize = 6;
/// User-namespaced snapshots a client keeps before it removes one.
const KEEP_MAPPED: usize = 2;
/// Host ids that id 0 of the mappings maps to: two mappings, so two idmapped trees.
const MAPPING_BASES: [u32; 2] = [100_000, 200_000];
/// Ids each mapping maps.
const MAPPING_SIZE: u32 = 65_536;
/// Label every committed snapshot carries (its sequence number), and the one Update sets.
const SEQ_LABEL: &str = "crash-loop/seq";
const UPDATE_LABEL: &str = "crash-loop/updated";
/// Bound on one round's checks: only a hung daemon gets near it.
const CHECK_BOUND: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root"]
async fn crash_loop() {
    assert_root("crash_loop");
    let (kills, seed) = kills_and_seed();
    eprintln!("crash-loop: seed {seed}, {kills} kills");
    let started = Instant::now();
    let mut total = Counts::default();
    let mut violations = Vec::new();
    for (kind, kills) in [("overlayfs", kills.div_ceil(2)), ("native", kills / 2)] {
        let (counts, found) = run_kind(kind, kills, seed).await;
        eprintln!("crash-loop: {kind}: {}", counts.summary(kills, found.len()));
        total.add(&counts);
        violations.extend(found.into_iter().map(|v| format!("{kind}: {v}")));
    }
    eprintln!(
        "crash-loop: seed {seed}, {kills} kills in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        total.summary(kills, violations.len())
    );
    assert!(
        violations.is_empty(),
        "{} violations: {:#?}",
        violations.len(),
        &violations[..violations.len().min(30)]
    );
}

/// `STRATA_CRASH_LOOP_KILLS` (default 20) and `STRATA_CRASH_LOOP_SEED` (default from the
/// clock).
fn kills_and_seed() -> (usize, u64) {
    let kills: usize = std::env::var("STRATA_CRASH_LOOP_KILLS")
        .map(|v| v.parse().expect("STRATA_CRASH_LOOP_KILLS"))
        .unwrap_or(20);
    let seed: u64 = std::env::var("STRATA_CRASH_LOOP_SEED")
        .map(|v| v.parse().expect("STRATA_CRASH_LOOP_SEED"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        });
    (kills, seed)
}

/// A committed snapshot as its client recorded it when Commit returned.
#[derive(Debug, Clone)]
struct Committed {
    parent: String,
    /// Chain length, this snapshot included.
    depth: usize,
    tree: u64,
    labels: Labels,
    owner: usize,
}

/// A user-namespaced active snapshot as its client recorded it.
#[derive(Debug, Clone)]
struct Mapped {
    parent: String,
    /// The host id that id 0 maps to.
    base: u32,
    /// [`mapped_tree`] of its mounts: the parent's tree, then what was written; `None` until
    /// seen where the parent's recorded tree does not tell (see [`Worker::mapped`]).
    tree: Option<u64>,
    owner: usize,
}

/// The call a client had in flight when the daemon died.
#[derive(Debug)]
enum InFlight {
    /// Prepare, View, Apply, Remove of an uncommitted key, reads, Cleanup: the keys the
    /// client holds are discarded after the restart whatever happened.
    Discardable,
    Commit {
        name: String,
        key: String,
        expect: Committed,
    },
    /// Prepare of a user-namespaced snapshot: kept if it took effect.
    PrepareMapped { key: String, expect: Mapped },
    /// Remove of a committed or a user-namespaced snapshot.
    Remove { name: String },
    Update {
        name: String,
        before: Labels,
        after: Labels,
    },
}

/// Operation counts over a run.
#[derive(Default, Debug)]
struct Counts {
    acknowledged: BTreeMap<&'static str, u64>,
    in_flight: u64,
    took_effect: u64,
    did_not: u64,
    trees_verified: u64,
    mapped_verified: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        for (op, n) in &other.acknowledged {
            *self.acknowledged.entry(op).or_default() += n;
        }
        self.in_flight += other.in_flight;
        self.took_effect += other.took_effect;
        self.did_not += other.did_not;
        self.trees_verified += other.trees_verified;
        self.mapped_verified += other.mapped_verified;
    }

    fn summary(&self, kills: usize, violations: usize) -> String {
        let acked: u64 = self.acknowledged.values().sum();
        let detail: Vec<String> = self
            .acknowledged
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        format!(
            "{kills} kills, {acked} calls acknowledged ({}), {} in flight at a kill \
             ({} took effect, {} did not), {} committed trees and {} user-namespaced snapshots \
             verified, {violations} violations",
            detail.join(", "),
            self.in_flight,
            self.took_effect,
            self.did_not,
            self.trees_verified,
            self.mapped_verified
        )
    }
}

/// What the clients know, shared between them and the checker.
#[derive(Default)]
struct Model {
    committed: BTreeMap<String, Committed>,
    /// User-namespaced active snapshots, by key.
    mapped: BTreeMap<String, Mapped>,
    /// Per client: the call in flight when the daemon died.
    in_flight: Vec<Option<InFlight>>,
    /// Per client: active snapshots and views it made and has not committed or removed.
    held: Vec<Vec<String>>,
    counts: Counts,
    violations: Vec<String>,
    seq: u64,
}

type Shared = Arc<Mutex<Model>>;

fn model(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap()
}

/// [`tree_hash`] of `mounts` mounted under `mnt`; a mount that fails is a finding, not a
/// panic (it says a directory the index names is gone).
async fn mounted_tree(mounts: &[Mount], mnt: &Path) -> Result<u64, String> {
    let (mounts, mnt) = (mounts.to_vec(), mnt.to_path_buf());
    tokio::task::spawn_blocking(move || {
        try_with_mounted(&mounts, &mnt, tree_hash).map_err(|e| format!("{mounts:?}: {e}"))
    })
    .await
    .unwrap()
}

/// [`tree_hash`] of a user-namespaced snapshot's `mounts`, owners mapped back from the
/// mapping starting at host id `base` (a tree shown through its mapping hashes as the tree).
async fn mapped_tree(mounts: &[Mount], mnt: &Path, base: u32) -> Result<u64, String> {
    let (mounts, mnt) = (mounts.to_vec(), mnt.to_path_buf());
    tokio::task::spawn_blocking(move || {
        try_with_mounted(&mounts, &mnt, |root| {
            let unshift = |id: u32| match id.checked_sub(base) {
                Some(inside) if inside < MAPPING_SIZE => inside,
                _ => id,
            };
            let mut tree = capture(root);
            for entry in tree.values_mut() {
                (entry.uid, entry.gid) = (unshift(entry.uid), unshift(entry.gid));
            }
            hash_of(tree)
        })
        .map_err(|e| format!("{mounts:?}: {e}"))
    })
    .await
    .unwrap()
}

/// A hash of everything a process sees under `root` (types, modes, owners, contents).
fn tree_hash(root: &Path) -> u64 {
    hash_of(capture(root))
}

/// A hash of a captured tree, its root's own entry left out.
fn hash_of(tree: BTreeMap<String, crate::tree::Entry>) -> u64 {
    let mut h = DefaultHasher::new();
    without_root(tree).hash(&mut h);
    h.finish()
}

/// The labels this test sets (the snapshotter may add its own).
fn own_labels(labels: &HashMap<String, String>) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with("crash-loop/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A pool of layers of different sizes and compressions, with whiteouts, in `content`.
fn make_layers(tmp: &Path, content: &LocalStore) -> Vec<Descriptor> {
    let base = tmp.join("layer-base");
    std::fs::create_dir(&base).unwrap();
    apply(&base, &[Op::Dir("/shared", 0o755)]);
    for f in ["a", "b", "c", "d"] {
        std::fs::write(base.join("shared").join(f), f).unwrap();
    }
    let compressions = [Compression::Gzip, Compression::Zstd, Compression::None];
    (0..6)
        .map(|i| {
            let upper = tmp.join(format!("layer-{i}"));
            std::process::Command::new("cp")
                .args(["-a"])
                .arg(&base)
                .arg(&upper)
                .status()
                .unwrap();
            std::fs::remove_file(upper.join("shared").join(["a", "b", "c", "d"][i % 4])).unwrap();
            let dir = upper.join(format!("l{i}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..[20, 60, 300, 1200][i % 4] {
                std::fs::write(dir.join(format!("f{f}")), format!("{i}:{f} ").repeat(300)).unwrap();
            }
            store_layer(content, &base, &upper, compressions[i % 3]).0
        })
        .collect()
}

/// One snapshotter kind: `kills` rounds of workload, kill, restart and checks. Returns the
/// counts and the violations found.
async fn run_kind(kind: &str, kills: usize, seed: u64) -> (Counts, Vec<String>) {
    let tmp = TempDir::new(&format!("crash-loop-{kind}"));
    let content_dir = tmp.path().join("content");
    let content = LocalStore::new(content_dir.clone());
    let layers = Arc::new(make_layers(tmp.path(), &content));
    let mut daemon = Daemon::start_with_content(tmp.path(), kind, &content_dir);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let shared: Shared = Arc::new(Mutex::new(Model {
        in_flight: (0..WORKERS).map(|_| None).collect(),
        held: vec![Vec::new(); WORKERS],
        ..Default::default()
    }));
    let mut rng = Rng::new(seed ^ kind.len() as u64);
    for round in 0..kills {
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..WORKERS {
            let channel = api::channel::connect(&daemon.socket).await.unwrap();
            let worker = Worker {
                id,
                rng: Rng::new(seed.wrapping_add((round * WORKERS + id) as u64 + 1)),
                s: Snap {
                    client: strata::cli::snapshots_client(channel.clone()),
                },
                d: DiffClient::new(channel),
                model: Arc::clone(&shared),
                killed: Arc::clone(&killed),
                mnt: mnt.clone(),
                layers: Arc::clone(&layers),
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(1400))).await;
        killed.store(true, Ordering::SeqCst);
        daemon.kill();
        for t in tasks {
            t.await.expect("client task");
        }
        daemon.respawn();
        let mut s = Snap::new(&daemon).await;
        let check = check(&mut s, &shared, &daemon.root, &mnt, kind, round);
        if tokio::time::timeout(CHECK_BOUND, check).await.is_err() {
            model(&shared).violations.push(format!(
                "round {round}: checks did not finish in {CHECK_BOUND:?}"
            ));
            break;
        }
    }
    daemon.stop();
    let m = std::mem::take(&mut *model(&shared));
    if !m.violations.is_empty() {
        // The test directory goes with the test: keep the daemon's log for the post-mortem.
        let kept = std::env::temp_dir().join(format!("crash-loop-{kind}-{seed}.log"));
        let _ = std::fs::write(&kept, daemon.log_text());
        eprintln!("crash-loop: {kind}: daemon log kept at {}", kept.display());
    }
    (m.counts, m.violations)
}
