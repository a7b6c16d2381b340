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
//! `scripts/crash-loop [N] [--seed S]` runs N kills (half per snapshotter kind), and the
//! pull crash loop ([`pulls`]) half as many; `.ci/run` runs 20 and 10. Environment: `STRATA_CRASH_LOOP_KILLS` (default 20), `STRATA_CRASH_LOOP_SEED`
//! (default from the clock; printed, and a run with the same seed makes the same choices).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::services::diff::v1 as dpb;
use api::services::diff::v1::diff_client::DiffClient;
use api::services::snapshots::v1 as pb;
use api::types::{Descriptor, Mount};
use differ::Compression;
use differ::content::LocalStore;
use tonic::Code;
use tonic::transport::Channel;

mod pulls;

use crate::crash::mount_paths;
use crate::suite::without_root;
use crate::tree::{Op, apply, capture};
use crate::userns::mapped;
use crate::util::{
    Daemon, Labels, Rng, Snap, TempDir, assert_root, mounts_under, snapshot_dirs, store_layer,
    try_with_mounted, with_mounted,
};

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

/// Why a client stops.
struct Stop;

/// A client of the workload.
struct Worker {
    id: usize,
    rng: Rng,
    s: Snap,
    d: DiffClient<Channel>,
    model: Shared,
    killed: Arc<AtomicBool>,
    mnt: PathBuf,
    layers: Arc<Vec<Descriptor>>,
}

impl Worker {
    /// The result of a call: `Ok(Some)` done, `Ok(None)` refused with an error the API
    /// promises (the call changed nothing), `Err(Stop)` the daemon is gone, with `op`
    /// recorded as in flight. An error before the kill is a violation.
    fn outcome<T>(
        &self,
        op: &'static str,
        in_flight: InFlight,
        r: Result<T, tonic::Status>,
    ) -> Result<Option<T>, Stop> {
        let mut m = model(&self.model);
        match r {
            Ok(v) => {
                *m.counts.acknowledged.entry(op).or_default() += 1;
                Ok(Some(v))
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition
                ) =>
            {
                Ok(None)
            }
            Err(s) => {
                if !self.killed.load(Ordering::SeqCst) {
                    m.violations.push(format!(
                        "client {}: {op} failed before any kill: {s:?}",
                        self.id
                    ));
                }
                m.counts.in_flight += 1;
                m.in_flight[self.id] = Some(in_flight);
                Err(Stop)
            }
        }
    }

    fn next_seq(&self) -> u64 {
        let mut m = model(&self.model);
        m.seq += 1;
        m.seq
    }

    fn hold(&self, key: &str) {
        model(&self.model).held[self.id].push(key.to_string());
    }

    fn release(&self, key: &str) {
        model(&self.model).held[self.id].retain(|k| k != key);
    }

    /// A random committed snapshot: any client's, or only this one's.
    fn pick(&mut self, own: bool) -> Option<(String, Committed)> {
        let m = model(&self.model);
        let candidates: Vec<_> = m
            .committed
            .iter()
            .filter(|(_, c)| !own || c.owner == self.id)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (name, c) = candidates[self.rng.below(candidates.len() as u64) as usize];
        Some((name.clone(), c.clone()))
    }

    fn own_count(&self) -> usize {
        let m = model(&self.model);
        m.committed.values().filter(|c| c.owner == self.id).count()
    }

    async fn run(mut self) {
        loop {
            let step = if self.own_count() > KEEP {
                6
            } else {
                self.rng.below(11)
            };
            let r = match step {
                0..=3 => self.build().await,
                4 => self.check_view().await,
                5 => self.update().await,
                6 | 7 => self.remove().await,
                8 => self.cleanup().await,
                9 => self.mapped().await,
                _ => self.stat().await,
            };
            if r.is_err() {
                return;
            }
        }
    }

    /// Prepare on a random committed parent (or none), apply a layer and/or write through
    /// the mounts, hash the tree, Commit.
    async fn build(&mut self) -> Result<(), Stop> {
        let (parent, depth) = match self.pick(false) {
            Some((name, c)) if c.depth < MAX_DEPTH && self.rng.below(4) != 0 => (name, c.depth),
            _ => (String::new(), 0),
        };
        let seq = self.next_seq();
        let (key, name) = (
            format!("w{}-k{seq}", self.id),
            format!("w{}-n{seq}", self.id),
        );
        // Held before the call: a Prepare cut off by the kill may still have taken effect.
        self.hold(&key);
        let r = self.s.prepare(&key, &parent).await;
        let Some(mounts) = self.outcome("prepare", InFlight::Discardable, r)? else {
            return Ok(());
        };
        let apply_layer = self.rng.below(10) < 6;
        if apply_layer {
            let layer = self.layers[self.rng.below(self.layers.len() as u64) as usize].clone();
            let r = self
                .d
                .apply(dpb::ApplyRequest {
                    diff: Some(layer),
                    mounts: mounts.clone(),
                    ..Default::default()
                })
                .await;
            if self.outcome("apply", InFlight::Discardable, r)?.is_none() {
                return Ok(());
            }
        }
        if !apply_layer || self.rng.below(2) == 0 {
            let (mounts, mnt, id, pick) =
                (mounts.clone(), self.mnt.clone(), self.id, self.rng.next());
            tokio::task::spawn_blocking(move || {
                with_mounted(&mounts, &mnt, |root| write_files(root, id, seq, pick))
            })
            .await
            .unwrap();
        }
        let tree = match mounted_tree(&mounts, &self.mnt).await {
            Ok(tree) => tree,
            Err(e) => {
                model(&self.model).violations.push(format!("{key}: {e}"));
                return Ok(());
            }
        };
        let labels: Labels = [(SEQ_LABEL.to_string(), seq.to_string())].into();
        let expect = Committed {
            parent: parent.clone(),
            depth: depth + 1,
            tree,
            labels: labels.clone(),
            owner: self.id,
        };
        let r = self.s.commit_full(&name, &key, labels, "").await;
        let in_flight = InFlight::Commit {
            name: name.clone(),
            key: key.clone(),
            expect: expect.clone(),
        };
        if self.outcome("commit", in_flight, r)?.is_some() {
            self.release(&key);
            model(&self.model).committed.insert(name, expect);
        }
        Ok(())
    }

    /// A view of any committed snapshot shows the recorded tree.
    async fn check_view(&mut self) -> Result<(), Stop> {
        let Some((name, c)) = self.pick(false) else {
            return Ok(());
        };
        let key = format!("w{}-v{}", self.id, self.next_seq());
        self.hold(&key);
        let r = self.s.view(&key, &name).await;
        let Some(mounts) = self.outcome("view", InFlight::Discardable, r)? else {
            return Ok(());
        };
        match mounted_tree(&mounts, &self.mnt).await {
            Ok(tree) if tree == c.tree => {}
            Ok(_) => model(&self.model).violations.push(format!(
                "a view of {name} shows another tree than its Commit's"
            )),
            Err(e) => model(&self.model)
                .violations
                .push(format!("a view of {name}: {e}")),
        }
        let r = self.s.remove(&key).await;
        if self.outcome("remove", InFlight::Discardable, r)?.is_some() {
            self.release(&key);
        }
        Ok(())
    }

    /// A user-namespaced active snapshot of a committed parent, written to and kept across
    /// kills; once the client has [`KEEP_MAPPED`], removes one of them instead.
    async fn mapped(&mut self) -> Result<(), Stop> {
        let own: Vec<String> = model(&self.model)
            .mapped
            .iter()
            .filter(|(_, m)| m.owner == self.id)
            .map(|(key, _)| key.clone())
            .collect();
        if own.len() >= KEEP_MAPPED {
            let key = own[self.rng.below(own.len() as u64) as usize].clone();
            let r = self.s.remove(&key).await;
            let in_flight = InFlight::Remove { name: key.clone() };
            if self.outcome("remove", in_flight, r)?.is_some() {
                model(&self.model).mapped.remove(&key);
            }
            return Ok(());
        }
        let Some((parent, c)) = self.pick(false) else {
            return Ok(());
        };
        let base = MAPPING_BASES[self.rng.below(MAPPING_BASES.len() as u64) as usize];
        let mapping = format!("0:{base}:{MAPPING_SIZE}");
        let seq = self.next_seq();
        let key = format!("w{}-u{seq}", self.id);
        // The parent's tree was hashed through its view: for an overlayfs snapshot without a
        // parent that is a bind of its directory, showing a layer's whiteouts as the devices
        // they are, which an overlay of it (this snapshot's mounts) hides.
        let mut expect = Mapped {
            parent: parent.clone(),
            base,
            tree: (c.depth > 1).then_some(c.tree),
            owner: self.id,
        };
        let r = self
            .s
            .prepare_labels(&key, &parent, mapped(&mapping, &mapping))
            .await;
        let in_flight = InFlight::PrepareMapped {
            key: key.clone(),
            expect: expect.clone(),
        };
        let Some(mounts) = self.outcome("prepare mapped", in_flight, r)? else {
            return Ok(());
        };
        let comparable = c.depth > 1 || mounts.iter().all(|m| m.r#type != "overlay");
        match mapped_tree(&mounts, &self.mnt, base).await {
            Ok(_) if !comparable => {}
            Ok(tree) if tree == c.tree => {}
            Ok(_) => model(&self.model).violations.push(format!(
                "{key}: its mounts show another tree than {parent}'s, owners shifted"
            )),
            Err(e) => model(&self.model).violations.push(format!("{key}: {e}")),
        }
        let (written, mnt, id, pick) = (mounts.clone(), self.mnt.clone(), self.id, self.rng.next());
        let wrote = tokio::task::spawn_blocking(move || {
            try_with_mounted(&written, &mnt, |root| write_files(root, id, seq, pick))
                .map_err(|e| format!("{written:?}: {e}"))
        })
        .await
        .unwrap();
        match wrote.and(mapped_tree(&mounts, &self.mnt, base).await) {
            Ok(tree) => expect.tree = Some(tree),
            Err(e) => model(&self.model).violations.push(format!("{key}: {e}")),
        }
        model(&self.model).mapped.insert(key, expect);
        Ok(())
    }

    /// Sets a label on one of this client's committed snapshots.
    async fn update(&mut self) -> Result<(), Stop> {
        let Some((name, c)) = self.pick(true) else {
            return Ok(());
        };
        let value = self.next_seq().to_string();
        let mut after = c.labels.clone();
        after.insert(UPDATE_LABEL.to_string(), value.clone());
        let info = pb::Info {
            name: name.clone(),
            labels: [(UPDATE_LABEL.to_string(), value)].into(),
            ..Default::default()
        };
        let path = format!("labels.{UPDATE_LABEL}");
        let r = self.s.update(info, &[&path]).await;
        let in_flight = InFlight::Update {
            name: name.clone(),
            before: c.labels,
            after: after.clone(),
        };
        if self.outcome("update", in_flight, r)?.is_some()
            && let Some(c) = model(&self.model).committed.get_mut(&name)
        {
            c.labels = after;
        }
        Ok(())
    }

    /// Removes one of this client's committed snapshots (refused while it has children).
    async fn remove(&mut self) -> Result<(), Stop> {
        let Some((name, _)) = self.pick(true) else {
            return Ok(());
        };
        let r = self.s.remove(&name).await;
        let in_flight = InFlight::Remove { name: name.clone() };
        if self.outcome("remove", in_flight, r)?.is_some() {
            model(&self.model).committed.remove(&name);
        }
        Ok(())
    }

    async fn cleanup(&mut self) -> Result<(), Stop> {
        let r = self.s.cleanup().await;
        self.outcome("cleanup", InFlight::Discardable, r).map(drop)
    }

    /// Stat of one of this client's committed snapshots matches the record.
    async fn stat(&mut self) -> Result<(), Stop> {
        let Some((name, c)) = self.pick(true) else {
            return Ok(());
        };
        let r = self.s.stat(&name).await;
        match self.outcome("stat", InFlight::Discardable, r)? {
            Some(info) if info.parent == c.parent && own_labels(&info.labels) == c.labels => {}
            seen => model(&self.model)
                .violations
                .push(format!("stat {name}: {seen:?}, recorded {c:?}")),
        }
        Ok(())
    }
}

/// Writes a few files, a directory and a symlink, and removes one entry the parent had.
fn write_files(root: &Path, id: usize, seq: u64, pick: u64) {
    let dir = root.join(format!("w{id}-{seq}"));
    std::fs::create_dir(&dir).unwrap();
    for i in 0..(pick % 8) {
        let data = format!("{id}/{seq}/{i} ").repeat(1 + (pick >> (8 + i)) as usize % 2000);
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    std::os::unix::fs::symlink("f0", dir.join("link")).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != dir)
        .collect();
    entries.sort();
    if !entries.is_empty() && pick.is_multiple_of(3) {
        let victim = &entries[(pick >> 32) as usize % entries.len()];
        // A directory only the overlay's upper layer has, holding a layer's whiteout of a
        // path no lower layer has, cannot be removed through the mount (ENOTEMPTY), as
        // with containerd: the tree is hashed after, whatever this did.
        let _ = if victim.symlink_metadata().unwrap().is_dir() {
            std::fs::remove_dir_all(victim)
        } else {
            std::fs::remove_file(victim)
        };
    }
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

/// After a restart: settles the calls that were in flight, then checks the index, the
/// trees, the directories and the mounts against the model.
async fn check(s: &mut Snap, shared: &Shared, root: &Path, mnt: &Path, kind: &str, round: usize) {
    let mut listed: BTreeMap<String, pb::Info> = s
        .list(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    let mut violations = Vec::new();
    let held: Vec<String> = {
        let mut guard = model(shared);
        let m = &mut *guard;
        for op in m.in_flight.iter_mut().filter_map(Option::take) {
            let effect = match op {
                InFlight::Discardable => continue,
                InFlight::Commit { name, key, expect } => {
                    match (listed.contains_key(&name), listed.contains_key(&key)) {
                        (true, false) => {
                            m.committed.insert(name, expect);
                            true
                        }
                        (false, true) => false,
                        both => {
                            violations.push(format!(
                                "commit {key} -> {name} half done: (name, key) present = {both:?}"
                            ));
                            continue;
                        }
                    }
                }
                InFlight::PrepareMapped { key, expect } => {
                    let made = listed.contains_key(&key);
                    if made {
                        m.mapped.insert(key, expect);
                    }
                    made
                }
                InFlight::Remove { name } => {
                    let gone = !listed.contains_key(&name);
                    if gone {
                        m.committed.remove(&name);
                        m.mapped.remove(&name);
                    }
                    gone
                }
                InFlight::Update {
                    name,
                    before,
                    after,
                } => {
                    let seen = listed.get(&name).map(|i| own_labels(&i.labels));
                    if seen.as_ref() == Some(&after) {
                        if let Some(c) = m.committed.get_mut(&name) {
                            c.labels = after;
                        }
                        true
                    } else if seen.as_ref() == Some(&before) {
                        false
                    } else {
                        violations.push(format!("update of {name}: labels {seen:?}"));
                        continue;
                    }
                }
            };
            if effect {
                m.counts.took_effect += 1;
            } else {
                m.counts.did_not += 1;
            }
        }
        m.held.iter_mut().flat_map(std::mem::take).collect()
    };
    // What the clients held uncommitted is discarded, as containerd discards a failed
    // unpack's snapshots.
    for key in held {
        if let Some(info) = listed.remove(&key) {
            if info.kind == pb::Kind::Committed as i32 {
                violations.push(format!("{key} was never committed but is"));
            }
            s.remove(&key).await.unwrap();
        }
    }
    let dropped = MAPPING_BASES[round % MAPPING_BASES.len()];
    let in_use = check_mapped(s, shared, &mut listed, mnt, kind, dropped, &mut violations).await;
    let committed = model(shared).committed.clone();
    for name in listed.keys().filter(|n| !committed.contains_key(*n)) {
        violations.push(format!("{name} is in the index but was never acknowledged"));
    }
    let mut verified = 0;
    for (name, c) in &committed {
        let Some(info) = listed.get(name) else {
            violations.push(format!("{name} was acknowledged and is lost"));
            continue;
        };
        if info.kind != pb::Kind::Committed as i32
            || info.parent != c.parent
            || own_labels(&info.labels) != c.labels
        {
            violations.push(format!("{name}: index has {info:?}, recorded {c:?}"));
        }
        let key = format!("check {name}");
        let mounts = s.view(&key, name).await.unwrap();
        for p in mount_paths(&mounts) {
            if !Path::new(&p).is_dir() {
                violations.push(format!("{name}: {p} is missing"));
            }
        }
        // A native snapshot is one full copy: only overlay mounts show the chain.
        if kind == "overlayfs" && overlay_layers(&mounts) != Some(c.depth) {
            violations.push(format!(
                "{name}: view mounts {mounts:?}, recorded chain depth {}",
                c.depth
            ));
        }
        match mounted_tree(&mounts, mnt).await {
            Ok(tree) if tree == c.tree => {}
            Ok(_) => violations.push(format!("{name}: tree differs from the one committed")),
            Err(e) => violations.push(format!("{name}: {e}")),
        }
        verified += 1;
        s.remove(&key).await.unwrap();
    }
    s.cleanup().await.unwrap();
    let dirs = snapshot_dirs(root);
    let snapshots = committed.len() + model(shared).mapped.len();
    if dirs.iter().any(|d| d.parse::<u64>().is_err()) || dirs.len() != snapshots {
        violations.push(format!(
            "after Cleanup {} directories for {snapshots} snapshots: {dirs:?}",
            dirs.len(),
        ));
    }
    let (idmapped, leaked): (Vec<PathBuf>, Vec<PathBuf>) = mounts_under(root)
        .into_iter()
        .chain(mounts_under(mnt))
        .partition(|p| p.parent() == Some(&root.join("idmapped")));
    if !leaked.is_empty() {
        violations.push(format!("mounts left: {leaked:?}"));
    }
    // Cleanup detaches the tree of every mapping no snapshot uses. A native snapshot is a
    // shifted copy made through its mapping's tree, which stays attached while the snapshot
    // exists but is not re-attached after a restart; overlay mounts name theirs.
    let expected = match &in_use.trees {
        Some(trees) => idmapped.iter().cloned().collect::<BTreeSet<_>>() == *trees,
        None => idmapped.len() <= in_use.bases.len(),
    };
    if !expected {
        violations.push(format!(
            "after Cleanup idmapped trees {idmapped:?} for mappings {:?} in use",
            in_use.bases
        ));
    }
    let mut m = model(shared);
    m.counts.trees_verified += verified;
    m.violations.extend(violations);
}

/// The mappings user-namespaced snapshots use after [`check_mapped`].
struct MappingsInUse {
    bases: BTreeSet<u32>,
    /// For overlayfs, the idmapped trees their lowers are in.
    trees: Option<BTreeSet<PathBuf>>,
}

/// Checks each user-namespaced snapshot the clients recorded (taking it out of `listed`): it
/// is active on its parent, its lowers are idmapped (overlayfs) and its mounts show its
/// recorded tree. Then removes those of mapping `dropped` (alternating by round), so that the
/// Cleanup after must detach that mapping's tree and keep the other's.
async fn check_mapped(
    s: &mut Snap,
    shared: &Shared,
    listed: &mut BTreeMap<String, pb::Info>,
    mnt: &Path,
    kind: &str,
    dropped: u32,
    violations: &mut Vec<String>,
) -> MappingsInUse {
    let mapped = model(shared).mapped.clone();
    let mut in_use = MappingsInUse {
        bases: BTreeSet::new(),
        trees: (kind == "overlayfs").then(BTreeSet::new),
    };
    for (key, m) in &mapped {
        let Some(info) = listed.remove(key) else {
            violations.push(format!("{key} was acknowledged and is lost"));
            model(shared).mapped.remove(key);
            continue;
        };
        if info.kind != pb::Kind::Active as i32 || info.parent != m.parent {
            violations.push(format!("{key}: index has {info:?}, recorded {m:?}"));
        }
        let mounts = match s.mounts(key).await {
            Ok(mounts) => mounts,
            Err(e) => {
                violations.push(format!("{key}: Mounts: {e:?}"));
                continue;
            }
        };
        match (mapped_tree(&mounts, mnt, m.base).await, m.tree) {
            (Ok(tree), Some(recorded)) if tree == recorded => {}
            (Ok(tree), None) => {
                if let Some(m) = model(shared).mapped.get_mut(key) {
                    m.tree = Some(tree);
                }
            }
            (Ok(_), Some(_)) => {
                violations.push(format!("{key}: its mounts show another tree than recorded"))
            }
            (Err(e), _) => violations.push(format!("{key}: {e}")),
        }
        model(shared).counts.mapped_verified += 1;
        if m.base == dropped {
            s.remove(key).await.unwrap();
            model(shared).mapped.remove(key);
            continue;
        }
        in_use.bases.insert(m.base);
        let Some(trees) = in_use.trees.as_mut() else {
            continue;
        };
        let lowers: Vec<String> = mounts
            .iter()
            .map(|pm| strata::convert::mount_from_pb(pm.clone()))
            .flat_map(|m| {
                m.lowerdirs()
                    .into_iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        for lower in lowers {
            // `<root>/idmapped/<tree>/<id>/fs`
            match Path::new(&lower).ancestors().nth(2) {
                Some(tree) if tree.parent().is_some_and(|d| d.ends_with("idmapped")) => {
                    trees.insert(tree.to_path_buf());
                }
                _ => violations.push(format!("{key}: lower {lower} is not idmapped")),
            }
        }
    }
    in_use
}

/// How many layers an overlayfs view's mounts stack: its lowers, or one for a bind.
fn overlay_layers(mounts: &[Mount]) -> Option<usize> {
    let [m] = mounts else { return None };
    let m = strata::convert::mount_from_pb(m.clone());
    match m.fstype.as_str() {
        "overlay" => Some(m.lowerdirs().len()),
        "bind" => Some(1),
        _ => None,
    }
}
