//! Concurrent load over the socket: 16 clients × 1,000 mixed operations (Prepare, View,
//! Commit, Remove, Stat, Update, Mounts, Usage, List, Cleanup) on keys all of them share,
//! against both snapshotter kinds. Only the errors containerd's API promises may come back
//! (AlreadyExists, NotFound, FailedPrecondition), nothing may hang, and afterwards the
//! index and the directories agree with nothing left mounted. Prints throughput and the
//! p50/p99 latency of each RPC.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::services::snapshots::v1 as pb;
use tonic::Code;

use crate::crash::assert_consistent;
use crate::suite::Fixture;
use crate::util::{Rng, Snap};

const CLIENTS: u64 = 16;
const OPERATIONS: u64 = 1000;
/// Keys (and commit names, views) shared by every client.
const KEYS: u64 = 24;
/// Far more than the run needs: only a deadlock gets near it.
const DEADLINE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn sixteen_clients_on_shared_keys_native() {
    load("load-native", "native").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn sixteen_clients_on_shared_keys_overlayfs() {
    load("load-overlayfs", "overlayfs").await;
}

/// What one client saw: per RPC, latencies; and any error outside the promised ones.
#[derive(Default)]
struct Seen {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    unexpected: Vec<String>,
}

async fn load(test: &str, kind: &'static str) {
    let mut f = Fixture::new(test, kind).await;
    f.s.prepare("base-p", "").await.unwrap();
    f.s.commit("base", "base-p").await.unwrap();

    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let s = Snap::new(&f.daemon).await;
        clients.push(tokio::spawn(run_client(s, client)));
    }
    let all = tokio::time::timeout(DEADLINE, futures_join(clients))
        .await
        .unwrap_or_else(|_| panic!("{CLIENTS} clients did not finish in {DEADLINE:?}: a deadlock"));
    let elapsed = started.elapsed();

    let mut merged = Seen::default();
    for seen in all {
        for (rpc, mut l) in seen.latencies {
            merged.latencies.entry(rpc).or_default().append(&mut l);
        }
        merged.unexpected.extend(seen.unexpected);
    }
    let total: usize = merged.latencies.values().map(Vec::len).sum();
    eprintln!(
        "{kind}: {total} operations from {CLIENTS} clients in {:.2} s: {:.0} ops/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for (rpc, l) in &mut merged.latencies {
        l.sort();
        let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize].as_micros();
        eprintln!(
            "  {rpc:8} n={:5} p50={:6} µs p99={:6} µs",
            l.len(),
            at(0.5),
            at(0.99)
        );
    }
    assert!(
        merged.unexpected.is_empty(),
        "errors the API does not promise: {:#?}",
        &merged.unexpected[..merged.unexpected.len().min(20)]
    );
    assert_eq!(total as u64, CLIENTS * OPERATIONS);
    assert_consistent(&mut f.s, &f.daemon.root).await;
}

/// Awaits every task, panicking with the task's own panic.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Seen>>) -> Vec<Seen> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

/// One client: [`OPERATIONS`] operations picked by a per-client pseudo-random sequence.
async fn run_client(mut s: Snap, client: u64) -> Seen {
    let mut seen = Seen::default();
    let mut rng = Rng::new(client);
    for _ in 0..OPERATIONS {
        let x = rng.next();
        let k = x % KEYS;
        let (key, name, view) = (format!("k{k}"), format!("n{k}"), format!("v{k}"));
        let op = (x >> 32) % 10;
        let t = Instant::now();
        let (rpc, result): (&'static str, Result<(), tonic::Status>) = match op {
            0 | 1 => ("prepare", s.prepare(&key, "base").await.map(drop)),
            2 => ("view", s.view(&view, "base").await.map(drop)),
            3 => ("commit", s.commit(&name, &key).await),
            4 => {
                let target = [&key, &name, &view][(x >> 40) as usize % 3];
                ("remove", s.remove(target).await)
            }
            5 => ("stat", s.stat(&key).await.map(drop)),
            6 => {
                let info = pb::Info {
                    name: key.clone(),
                    labels: [(format!("client{client}"), "x".to_string())].into(),
                    ..Default::default()
                };
                let path = format!("labels.client{client}");
                ("update", s.update(info, &[&path]).await.map(drop))
            }
            7 => ("mounts", s.mounts(&key).await.map(drop)),
            8 => ("usage", s.usage(&name).await.map(drop)),
            _ if x.is_multiple_of(50) => ("cleanup", s.cleanup().await),
            _ => ("list", s.list(&[]).await.map(drop)),
        };
        seen.latencies.entry(rpc).or_default().push(t.elapsed());
        if let Err(status) = result
            && !matches!(
                status.code(),
                Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition
            )
        {
            seen.unexpected.push(format!("{rpc}: {status:?}"));
        }
    }
    seen
}
