//! Snapshot-operation benchmark client, driven by `scripts/bench/snapshot-ops`: over a
//! daemon's socket it times Prepare+Commit+Remove cycles, List of many snapshots, and
//! mounting views of 1- to 500-layer chains, and prints ops/s and latency percentiles.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata::api::services::snapshots::v1 as pb;
use strata::cli::SnapshotsClient;

struct Args {
    address: PathBuf,
    count: usize,
    layers: Vec<usize>,
    mount_dir: PathBuf,
    label: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        address: PathBuf::from(strata::config::DEFAULT_ADDRESS),
        count: 10_000,
        layers: vec![1, 50, 128, 500],
        mount_dir: std::env::temp_dir(),
        label: "strata".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--address" => a.address = value.into(),
            "--count" => a.count = value.parse().expect("--count"),
            "--layers" => {
                a.layers = value
                    .split(',')
                    .map(|v| v.parse().expect("--layers"))
                    .collect()
            }
            "--mount-dir" => a.mount_dir = value.into(),
            "--label" => a.label = value,
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    format!(
        "p50 {:>7.0} µs  p90 {:>7.0} µs  p99 {:>7.0} µs",
        p(0.5),
        p(0.9),
        p(0.99)
    )
}

async fn timed<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    lat: &mut Vec<Duration>,
    f: F,
) -> T {
    let t = Instant::now();
    let out = f.await.expect("rpc");
    lat.push(t.elapsed());
    out
}

async fn prepare(
    c: &mut SnapshotsClient,
    key: &str,
    parent: &str,
) -> Result<Vec<strata::api::types::Mount>, tonic::Status> {
    let r = pb::PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    };
    Ok(c.prepare(r).await?.into_inner().mounts)
}

async fn commit(c: &mut SnapshotsClient, name: &str, key: &str) -> Result<(), tonic::Status> {
    let r = pb::CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    };
    c.commit(r).await.map(|_| ())
}

async fn remove(c: &mut SnapshotsClient, key: &str) -> Result<(), tonic::Status> {
    let r = pb::RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    };
    c.remove(r).await.map(|_| ())
}

async fn list_count(c: &mut SnapshotsClient) -> Result<usize, tonic::Status> {
    let mut s = c
        .list(pb::ListSnapshotsRequest::default())
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await? {
        n += m.info.len();
    }
    Ok(n)
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let channel = strata::cli::connect(&a.address).await.expect("connect");
    let mut c = strata::cli::snapshots_client(channel);
    let tag = &a.label;

    let (mut lp, mut lc, mut lr) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    for i in 0..a.count {
        let (key, name) = (format!("cycle-k{i}"), format!("cycle-n{i}"));
        timed(&mut lp, prepare(&mut c, &key, "")).await;
        timed(&mut lc, commit(&mut c, &name, &key)).await;
        timed(&mut lr, remove(&mut c, &name)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "[{tag}] {} Prepare+Commit+Remove cycles: {:.0} cycles/s ({:.0} ops/s)",
        a.count,
        a.count as f64 / secs,
        3.0 * a.count as f64 / secs
    );
    println!("[{tag}]   Prepare {}", percentiles(lp));
    println!("[{tag}]   Commit  {}", percentiles(lc));
    println!("[{tag}]   Remove  {}", percentiles(lr));

    for i in 0..a.count {
        prepare(&mut c, &format!("list-k{i}"), "")
            .await
            .expect("prepare");
        commit(&mut c, &format!("list-n{i}"), &format!("list-k{i}"))
            .await
            .expect("commit");
    }
    let mut ll = Vec::new();
    for _ in 0..10 {
        let n = timed(&mut ll, list_count(&mut c)).await;
        assert_eq!(n, a.count);
    }
    let median = {
        let mut v = ll.clone();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "[{tag}] List of {} snapshots: {:.1} ms median ({:.0} snapshots/s)",
        a.count,
        median.as_secs_f64() * 1e3,
        a.count as f64 / median.as_secs_f64()
    );
    for i in 0..a.count {
        remove(&mut c, &format!("list-n{i}")).await.expect("remove");
    }

    let deepest = a.layers.iter().copied().max().unwrap_or(0);
    let mut parent = String::new();
    for i in 0..deepest {
        prepare(&mut c, &format!("chain-k{i}"), &parent)
            .await
            .expect("prepare");
        commit(&mut c, &format!("chain-n{i}"), &format!("chain-k{i}"))
            .await
            .expect("commit");
        parent = format!("chain-n{i}");
    }
    for &n in &a.layers {
        let key = format!("view-{n}");
        let r = pb::ViewSnapshotRequest {
            key: key.clone(),
            parent: format!("chain-n{}", n - 1),
            ..Default::default()
        };
        let mounts: Vec<_> = c
            .view(r)
            .await
            .expect("view")
            .into_inner()
            .mounts
            .into_iter()
            .map(strata::convert::mount_from_pb)
            .collect();
        let mut lat = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            let m = mountutil::TempMount::new(&mounts, &a.mount_dir).expect("mount");
            lat.push(t.elapsed());
            m.release().expect("unmount");
        }
        lat.sort();
        println!(
            "[{tag}] mount a {n:>3}-layer view ({}): {:.0} µs median",
            mounts[0].fstype,
            lat[lat.len() / 2].as_secs_f64() * 1e6
        );
        remove(&mut c, &key).await.expect("remove");
    }
}
