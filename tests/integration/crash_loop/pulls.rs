//! The pull crash loop: three clients at a time pull images from a registry (layers shared
//! between images, gzip and zstd, a large layer slow enough to be cut), remove images and
//! collect garbage, while the daemon is SIGKILLed at random moments and restarted. After each
//! restart:
//!
//! - an image whose pull was acknowledged is listed, and one whose removal was acknowledged
//!   is not (each round touches an image at most once, so the outcome is known);
//! - every listed image is whole: unpacking it applies nothing (every layer is there) and its
//!   root filesystem is the tree a pull without kills gave;
//! - every blob in the content store hashes to its name: a cut write never shows as a blob;
//! - no call failed before the kill.
//!
//! At the end every image is pulled again (each completes), then all are removed and
//! collected: no lease, write in progress, blob, snapshot or mount is left. Half the crash
//! loop's kills (`STRATA_CRASH_LOOP_KILLS`), with its seed, half of them on overlayfs and
//! half on native.
//!
//! The corruption loop (`pulls_through_damage_under_kills`) does the same through a proxy
//! that damages transfers at random (`registry-aid.py flaky-proxy chaos:SEED`: blob
//! responses cut, or a byte flipped; manifest requests refused): a pull may then fail (its
//! client said so), and nothing else changes; after the kills the proxy passes everything,
//! and every image pulls at the first attempt, whole: no damaged transfer is resumed or
//! kept.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use differ::digest::HashingWriter;

use super::kills_and_seed;
use crate::containerd::env::build_image;
use crate::containerd::registry::{FlakyProxy, Registry};
use crate::pull::{rich_image, rootfs_with};
use crate::tree::{Entry, capture};
use crate::util::{
    Daemon, Rng, TempDir, assert_root, ingest_bytes, mounts_under, snapshot_dirs, strata_command,
    strata_ok, strata_run,
};

/// Clients at once.
const CLIENTS: usize = 3;
/// Bound on a client's exit once the daemon is gone.
const CLIENT_BOUND: Duration = Duration::from_secs(60);

type Tree = BTreeMap<String, Entry>;

/// What a client does in a round.
#[derive(Debug, Clone, Copy)]
enum Op {
    Pull(usize),
    Remove(usize),
    Collect,
}

impl Op {
    fn args<'a>(&self, images: &'a [String]) -> Vec<&'a str> {
        match *self {
            Op::Pull(i) => vec!["image", "pull", "--quiet", &images[i]],
            Op::Remove(i) => vec!["image", "rm", "--sync", &images[i]],
            Op::Collect => vec!["gc", "--force"],
        }
    }

    fn image(&self) -> Option<usize> {
        match *self {
            Op::Pull(i) | Op::Remove(i) => Some(i),
            Op::Collect => None,
        }
    }
}

#[test]
#[ignore = "needs root"]
fn pulls_under_kills() {
    assert_root("crash_loop::pulls::pulls_under_kills");
    run_loop("crash-loop pulls", false);
}

#[test]
#[ignore = "needs root"]
fn pulls_through_damage_under_kills() {
    assert_root("crash_loop::pulls::pulls_through_damage_under_kills");
    run_loop("crash-loop damaged pulls", true);
}

/// The loop, pulling from the registry or, if `damaged`, through the damaging proxy.
fn run_loop(name: &str, damaged: bool) {
    let (kills, seed) = kills_and_seed();
    let kills = kills.div_ceil(2);
    let started = Instant::now();
    let tmp = TempDir::new(if damaged {
        "crash-loop-damage"
    } else {
        "crash-loop-pulls"
    });
    let registry = Registry::start(&tmp.path().join("registry"));
    let direct = push_images(tmp.path(), &registry);
    let trees = reference_trees(tmp.path(), &direct);
    let proxy = damaged.then(|| {
        let mode = format!("chaos:{seed}");
        FlakyProxy::start(&registry.address, tmp.path().join("proxy.log"), &mode)
    });
    let images: Vec<String> = match &proxy {
        Some(p) => direct
            .iter()
            .map(|i| i.replacen(&registry.address, &p.address, 1))
            .collect(),
        None => direct.clone(),
    };

    let mut rng = Rng::new(seed ^ 0x70_75_6c_6c);
    let mut total = Tally::default();
    let mut violations = Vec::new();
    for (kind, kills) in [("overlayfs", kills.div_ceil(2)), ("native", kills / 2)] {
        let world = World {
            kind,
            images: &images,
            trees: &trees,
            tmp: tmp.path(),
            proxy: proxy.as_ref(),
        };
        let (tally, found) = world.run(kills, &mut rng);
        eprintln!("{name}: {kind}: {}", tally.summary(kills, found.len()));
        total.add(&tally);
        violations.extend(found.into_iter().map(|v| format!("{kind}: {v}")));
    }
    eprintln!(
        "{name}: seed {seed}, {kills} kills in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        total.summary(kills, violations.len())
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

/// What a run counted.
#[derive(Default)]
struct Tally {
    acknowledged: usize,
    cut: usize,
    /// Pulls that failed on a damaged transfer (and said so).
    damaged: usize,
    verified: usize,
    /// Snapshots a kill caught between the snapshotter's change and the image store's
    /// record, settled at the next start (the daemon logs each).
    settled: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.acknowledged += other.acknowledged;
        self.cut += other.cut;
        self.damaged += other.damaged;
        self.verified += other.verified;
        self.settled += other.settled;
    }

    fn summary(&self, kills: usize, violations: usize) -> String {
        format!(
            "{kills} kills, {} calls acknowledged, {} cut by a kill, {} pulls failed on a \
             damaged transfer, {} listed images verified whole, {} snapshots settled at a \
             restart, {violations} violations",
            self.acknowledged, self.cut, self.damaged, self.verified, self.settled
        )
    }
}

/// One snapshotter kind's run over the pushed images.
struct World<'a> {
    kind: &'a str,
    images: &'a [String],
    /// Each image's tree from a clean pull.
    trees: &'a [Tree],
    tmp: &'a Path,
    /// The damaging proxy the images are pulled through, if any.
    proxy: Option<&'a FlakyProxy>,
}

impl World<'_> {
    /// `kills` rounds of calls, kill, restart and checks, then the final pull and removal
    /// of everything; what was counted and the violations found.
    fn run(&self, kills: usize, rng: &mut Rng) -> (Tally, Vec<String>) {
        let images = self.images;
        let dir = new_dir(self.tmp, &format!("loop-{}", self.kind));
        let mut daemon = Daemon::start(&dir, self.kind);
        if let Some(proxy) = self.proxy {
            // The run before (the other snapshotter kind's) calmed it for its last pulls.
            proxy.stir();
        }
        let mut present = BTreeSet::new();
        let mut violations = Vec::new();
        let mut tally = Tally::default();
        for round in 0..kills {
            let ops = pick_ops(rng, images.len(), &present);
            let mut clients: Vec<Child> = ops
                .iter()
                .map(|op| client(&daemon.socket, &op.args(images)))
                .collect();
            std::thread::sleep(Duration::from_millis(50 + rng.below(2200)));
            let mut failed = vec![false; ops.len()];
            for ((op, c), failed) in ops.iter().zip(&mut clients).zip(&mut failed) {
                if let Some(status) = c.try_wait().unwrap()
                    && !status.success()
                {
                    *failed = true;
                    let why = stderr_of(c);
                    if matches!(op, Op::Pull(_)) && self.proxy.is_some() && damage_said(&why) {
                        tally.damaged += 1;
                    } else {
                        violations.push(format!(
                            "round {round}: {op:?} failed before the kill: {why}"
                        ));
                    }
                }
            }
            daemon.kill();
            let done: Vec<bool> = clients.iter_mut().map(exited_cleanly).collect();
            let done: Vec<bool> = done.iter().zip(&failed).map(|(d, f)| *d && !f).collect();
            daemon.respawn();

            let listed = listed_images(&daemon.socket, images);
            for (op, ok) in ops.iter().zip(&done) {
                if *ok {
                    tally.acknowledged += 1;
                } else {
                    tally.cut += 1;
                }
                match (op, ok) {
                    (Op::Pull(i), true) if !listed.contains(i) => violations.push(format!(
                        "round {round}: the acknowledged pull of {} is lost",
                        images[*i]
                    )),
                    (Op::Remove(i), true) if listed.contains(i) => violations.push(format!(
                        "round {round}: {} is listed after its removal was acknowledged",
                        images[*i]
                    )),
                    _ => {}
                }
            }
            let touched: BTreeSet<usize> = ops.iter().filter_map(Op::image).collect();
            for i in present.symmetric_difference(&listed) {
                if !touched.contains(i) {
                    violations.push(format!(
                        "round {round}: {} changed with no call on it",
                        images[*i]
                    ));
                }
            }
            for &i in &listed {
                tally.verified += 1;
                if let Err(e) = check_whole(&daemon, &images[i], &self.trees[i], self.tmp) {
                    violations.push(format!("round {round}: {}: {e}", images[i]));
                }
            }
            violations.extend(
                blobs_not_matching_their_names(&daemon.root)
                    .into_iter()
                    .map(|b| format!("round {round}: blob {b} does not hash to its name")),
            );
            present = listed;
        }
        if let Some(proxy) = self.proxy {
            proxy.calm();
        }
        violations.extend(pull_all_then_remove_all(
            &daemon, images, self.trees, self.tmp,
        ));
        daemon.stop();
        tally.settled = daemon
            .log_text()
            .matches("snapshot made before a crash recorded")
            .count();
        (tally, violations)
    }
}

/// Whether a client's error says a transfer was damaged: a blob failed its digest or size,
/// a transfer broke, or the registry refused.
fn damage_said(stderr: &str) -> bool {
    [
        "failed precondition",
        "registry",
        "transfer",
        "unavailable",
        "503",
    ]
    .iter()
    .any(|w| stderr.to_lowercase().contains(w))
}

/// Builds and pushes the images; their references. Two small images sharing their first
/// three layers, two with a 48 MiB layer of random data (what a kill most often cuts)
/// sharing their extra layers with the small ones, and the rich image (zstd layers, hard
/// links, whiteouts, xattrs).
fn push_images(tmp: &Path, registry: &Registry) -> Vec<String> {
    let mut images: Vec<String> = [
        ("small", 0, 0),
        ("small", 2, 0),
        ("big", 1, 48),
        ("big", 3, 48),
    ]
    .iter()
    .map(|&(name, extra, big_mb)| {
        let tag = format!("e2e/{name}:{extra}");
        let archive = tmp.join(format!("{name}-{extra}.tar"));
        let big = big_mb.to_string();
        let vars: &[(&str, &str)] = if big_mb > 0 { &[("BIG_MB", &big)] } else { &[] };
        build_image(&archive, &tag, extra, vars);
        registry.push(&archive, &tag)
    })
    .collect();
    images.push(registry.push_from(&rich_image(&tmp.join("rich"), &[]), "e2e/rich:1"));
    images
}

/// Each image's root filesystem as a daemon of its own pulls it, nothing killed.
fn reference_trees(tmp: &Path, images: &[String]) -> Vec<Tree> {
    let mut daemon = Daemon::start(&new_dir(tmp, "reference"), "overlayfs");
    let trees = images
        .iter()
        .map(|image| {
            strata_ok(&daemon.socket, &["image", "pull", "--quiet", image]);
            rootfs_with(&daemon.socket, image, "clean-pull", tmp, capture)
        })
        .collect();
    daemon.stop();
    trees
}

/// `parent/name`, created.
fn new_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// One op per client, on distinct images: a pull of an image not listed, a removal of one
/// that is, or a collection.
fn pick_ops(rng: &mut Rng, images: usize, present: &BTreeSet<usize>) -> Vec<Op> {
    let mut free: Vec<usize> = (0..images).collect();
    (0..CLIENTS)
        .map(|_| {
            if rng.below(6) == 0 || free.is_empty() {
                return Op::Collect;
            }
            let i = free.remove(rng.below(free.len() as u64) as usize);
            if present.contains(&i) && rng.below(2) == 0 {
                Op::Remove(i)
            } else {
                Op::Pull(i)
            }
        })
        .collect()
}

/// `strata --address SOCKET ARGS...`, started.
fn client(socket: &Path, args: &[&str]) -> Child {
    strata_command()
        .arg("--address")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a client (killing it past [`CLIENT_BOUND`]); whether it exited with success.
fn exited_cleanly(c: &mut Child) -> bool {
    let deadline = Instant::now() + CLIENT_BOUND;
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(c: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = c.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// The indexes of `images` that `image ls` lists.
fn listed_images(socket: &Path, images: &[String]) -> BTreeSet<usize> {
    let out = strata_ok(socket, &["image", "ls"]);
    let names: BTreeSet<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    (0..images.len())
        .filter(|&i| names.contains(images[i].as_str()))
        .collect()
}

/// A listed image unpacks with nothing to apply, and its root filesystem is `tree`.
fn check_whole(daemon: &Daemon, image: &str, tree: &Tree, tmp: &Path) -> Result<(), String> {
    let unpack = strata_run(&daemon.socket, &["image", "unpack", image]);
    let said = String::from_utf8_lossy(&unpack.stdout);
    if !unpack.status.success() || !said.contains(": 0 layers applied") {
        return Err(format!(
            "unpack of a listed image: {said}{}",
            String::from_utf8_lossy(&unpack.stderr)
        ));
    }
    let seen = rootfs_with(&daemon.socket, image, "listed-image", tmp, capture);
    if seen != *tree {
        let differ: Vec<&String> = seen
            .keys()
            .chain(tree.keys())
            .filter(|p| seen.get(*p) != tree.get(*p))
            .take(5)
            .collect();
        return Err(format!(
            "root filesystem differs from a clean pull's at {differ:?}"
        ));
    }
    Ok(())
}

/// Blobs under `<root>/content/blobs/sha256` whose content hashes to another name.
fn blobs_not_matching_their_names(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("content/blobs/sha256")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|path| {
            let mut file = std::fs::File::open(path).unwrap();
            let mut hashed = HashingWriter::new(std::io::sink());
            std::io::copy(&mut file, &mut hashed).unwrap();
            let (_, digest, _) = hashed.finish();
            path.file_name()
                .is_none_or(|n| n.to_string_lossy() != digest.hex())
        })
        .map(|path| path.display().to_string())
        .collect()
}

/// After the kills: every image pulls, whole; once all are removed and collected nothing
/// is left. The violations found.
fn pull_all_then_remove_all(
    daemon: &Daemon,
    images: &[String],
    trees: &[Tree],
    tmp: &Path,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (image, tree) in images.iter().zip(trees) {
        let pulled = strata_run(&daemon.socket, &["image", "pull", "--quiet", image]);
        if !pulled.status.success() {
            violations.push(format!("the last pull of {image}: {pulled:?}"));
        } else if let Err(e) = check_whole(daemon, image, tree, tmp) {
            violations.push(format!("after the last pull, {image}: {e}"));
        }
    }
    let mut rm = vec!["image", "rm", "--sync"];
    rm.extend(images.iter().map(String::as_str));
    strata_ok(&daemon.socket, &rm);
    strata_ok(&daemon.socket, &["gc", "--force"]);
    let root = &daemon.root;
    let leases = strata_ok(&daemon.socket, &["lease", "ls"]);
    let snapshots = strata_ok(&daemon.socket, &["snapshot", "ls"]);
    let blobs = std::fs::read_dir(root.join("content/blobs/sha256")).map_or(0, |d| d.count());
    let left = [
        (leases.lines().count() > 1, format!("leases: {leases}")),
        (ingest_bytes(root) > 0, "writes in progress".to_string()),
        (blobs > 0, format!("{blobs} blobs")),
        (
            snapshots.lines().count() > 1,
            format!("snapshots: {snapshots}"),
        ),
        (
            !snapshot_dirs(root).is_empty(),
            format!("{:?}", snapshot_dirs(root)),
        ),
        (
            !mounts_under(root).is_empty(),
            format!("mounts: {:?}", mounts_under(root)),
        ),
    ];
    violations.extend(
        left.into_iter()
            .filter(|(found, _)| *found)
            .map(|(_, what)| format!("left after removing every image: {what}")),
    );
    violations
}
