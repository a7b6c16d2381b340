//! A model-based test of the collector: random sequences of what clients do (blobs, images,
//! containers, leases flat or expired and their resources, writes in progress, snapshots
//! with parents, label edits, deletions, in three namespaces) are applied both to a real
//! store (over a native snapshotter, in process, no root) and to a small reference model of
//! containerd's collection rules written here, independently of the collector's code. After
//! every collection the store must hold exactly what the model says survives.
//!
//! The model follows `core/metadata/gc.go` (containerd 2.2): roots are leases that have not
//! expired (with what they hold), images that have not expired, containers, blobs and the
//! store's snapshots labelled `gc.root*`, writes made without a lease; edges are an image's
//! target, a container's snapshot, a snapshot's parent, a write's expected blob, `gc.ref.*`
//! labels and `gc.bref.*` back-references; a flat lease's objects keep their snapshot
//! parents and image targets but follow no label. Snapshots are one space shared by the
//! namespaces (Strata's snapshotter keys are global): one survives if any namespace reaches
//! it. Snapshotter names in references are resolved as a Prepare resolves them.
//!
//! `STRATA_GC_MODEL_SEQUENCES` (default 2000) sets how many sequences run,
//! `STRATA_GC_MODEL_SECONDS` instead runs sequences for that long, `STRATA_GC_MODEL_THREADS`
//! on how many threads (default: one per CPU); `STRATA_GC_MODEL_SEED` replays one sequence.
//! A failure prints its seed.
//!
//! Here: the sequences and the test; [`model`] is the reference model, [`steps`] the
//! operations applied to both sides, [`real`] the store side and the comparison.

mod model;
mod real;
mod steps;

use std::collections::BTreeMap;

use crate::model::Model;
use crate::real::{Real, compare};
use crate::steps::step;

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const BLOBS: usize = 8;
const SNAPSHOTS: usize = 6;
const NAMES: usize = 3;
const PAST: &str = "2000-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";

/// xorshift64*: a sequence's randomness from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

type Labels = BTreeMap<String, String>;

fn blob_data(i: usize) -> Vec<u8> {
    format!("blob number {i}").into_bytes()
}

fn digest_of(data: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(data);
    h.finish().0.to_string()
}

/// Runs sequence `seed`; what went wrong, with the steps that led there.
fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let digests: Vec<String> = (0..BLOBS).map(|i| digest_of(&blob_data(i))).collect();
    let real = Real::new();
    let mut model = Model::default();
    let mut log = Vec::new();
    let mut counter = 0;
    let steps = 20 + rng.below(40);
    for i in 0..steps {
        if rng.chance(15) || i + 1 == steps {
            let report = real
                .store
                .collect(real.snapshots.snapshotters(), false)
                .map_err(|e| e.to_string())?;
            model.collect();
            log.push(format!("collect: {report:?}"));
            if let Err(e) = compare(&model, &real) {
                return Err(format!("{e}\nafter:\n  {}", log.join("\n  ")));
            }
        } else {
            log.push(step(&mut rng, &mut model, &real, &digests, &mut counter));
        }
    }
    Ok(())
}

#[test]
fn the_collector_keeps_exactly_what_the_model_reaches() {
    if let Some(seed) = std::env::var("STRATA_GC_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        if let Err(e) = run(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let number = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let seconds = number("STRATA_GC_MODEL_SECONDS");
    let default = if seconds.is_some() { u64::MAX } else { 2000 };
    let sequences = number("STRATA_GC_MODEL_SEQUENCES").unwrap_or(default);
    let deadline = seconds.map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let threads = number("STRATA_GC_MODEL_THREADS")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) as u64);
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut i, mut ran) = (t, 0u64);
                while i < sequences && deadline.is_none_or(|d| std::time::Instant::now() < d) {
                    let seed = base.wrapping_add(i);
                    if let Err(e) = run(seed) {
                        return Err(format!(
                            "seed {seed} (STRATA_GC_MODEL_SEED={seed} to replay): {e}"
                        ));
                    }
                    i += threads;
                    ran += 1;
                }
                Ok(ran)
            })
        })
        .collect();
    let mut sequences = 0;
    for w in workers {
        match w.join().expect("worker") {
            Ok(ran) => sequences += ran,
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "{sequences} sequences in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
