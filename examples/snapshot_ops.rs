//! Snapshot-operation benchmark client, driven by `scripts/bench/snapshot-ops`: over a
//! Snapshots API socket (Strata's, or containerd's own with `--namespace` and
//! `--snapshotter overlayfs`) it times Prepare+Commit+Remove cycles from one or many clients,
//! List of many snapshots, and mounting views of 1- to 500-layer chains, and prints ops/s and
//! latency percentiles.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::headers::{LEASE as LEASE_HEADER, NAMESPACE as NAMESPACE_HEADER};
use api::services::leases::v1 as leases;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::snapshots::v1 as pb;
use strata::cli::SnapshotsClient;
use tonic::Request;

struct Args {
    address: PathBuf,
    count: usize,
    clients: usize,
    phases: Vec<String>,
    layers: Vec<usize>,
    mount_dir: PathBuf,
    label: String,
    namespace: Option<String>,
    snapshotter: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        address: PathBuf::from(strata::config::DEFAULT_ADDRESS),
        count: 10_000,
        clients: 1,
        phases: vec!["cycles".into(), "list".into(), "mounts".into()],
        layers: vec![1, 50, 128, 500],
        mount_dir: std::env::temp_dir(),
        label: "strata".into(),
        namespace: None,
        snapshotter: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
        match flag.as_str() {
            "--address" => a.address = value.into(),
            "--count" => a.count = value.parse().expect("--count"),
            "--clients" => a.clients = value.parse().expect("--clients"),
            "--phases" => a.phases = list(&value),
            "--layers" => {
                a.layers = list(&value)
                    .iter()
                    .map(|v| v.parse().expect("--layers"))
                    .collect()
            }
            "--mount-dir" => a.mount_dir = value.into(),
            "--label" => a.label = value,
            "--namespace" => a.namespace = Some(value),
            "--snapshotter" => a.snapshotter = value,
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// One connection to the socket. For containerd's own Snapshots service it adds what
/// that needs: the namespace header, the snapshotter name, and a lease of the client's own
/// (containerd's collector removes snapshots no lease or image holds, as `ctr` and every
/// containerd client use one).
struct Client {
    rpc: SnapshotsClient,
    namespace: Option<String>,
    lease: Option<String>,
    snapshotter: String,
}

impl Client {
    async fn connect(a: &Args) -> Client {
        let channel = api::channel::connect(&a.address).await.expect("connect");
        let mut c = Client {
            rpc: strata::cli::snapshots_client(channel.clone()),
            namespace: a.namespace.clone(),
            lease: None,
            snapshotter: a.snapshotter.clone(),
        };
        if a.namespace.is_some() {
            let id = format!("snapshot-ops-{}-{}", std::process::id(), client_seq());
            let r = c.request(leases::CreateRequest {
                id: id.clone(),
                labels: Default::default(),
            });
            LeasesClient::new(channel)
                .create(r)
                .await
                .expect("create lease");
            c.lease = Some(id);
        }
        c
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        if let Some(ns) = &self.namespace {
            r.metadata_mut()
                .insert(NAMESPACE_HEADER, ns.parse().expect("namespace"));
        }
        if let Some(lease) = &self.lease {
            r.metadata_mut()
                .insert(LEASE_HEADER, lease.parse().expect("lease"));
        }
        r
    }

    async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<api::types::Mount>, tonic::Status> {
        let r = self.request(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        });
        Ok(self.rpc.prepare(r).await?.into_inner().mounts)
    }

    async fn view(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<api::types::Mount>, tonic::Status> {
        let r = self.request(pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        });
        Ok(self.rpc.view(r).await?.into_inner().mounts)
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        let r = self.request(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            ..Default::default()
        });
        self.rpc.commit(r).await.map(|_| ())
    }

    async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let r = self.request(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        });
        self.rpc.remove(r).await.map(|_| ())
    }

    async fn list_count(&mut self) -> Result<usize, tonic::Status> {
        let r = self.request(pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            ..Default::default()
        });
        let mut s = self.rpc.list(r).await?.into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await? {
            n += m.info.len();
        }
        Ok(n)
    }
}

/// A suffix that differs between the clients of one process.
fn client_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

/// Latencies of one client's Prepare, Commit and Remove calls.
#[derive(Default)]
struct CycleLatencies {
    prepare: Vec<Duration>,
    commit: Vec<Duration>,
    remove: Vec<Duration>,
}

/// `count` cycles on keys of client `id`.
async fn cycles(mut c: Client, id: usize, count: usize) -> CycleLatencies {
    let mut lat = CycleLatencies::default();
    for i in 0..count {
        let (key, name) = (format!("cycle-k{id}-{i}"), format!("cycle-n{id}-{i}"));
        timed(&mut lat.prepare, c.prepare(&key, "")).await;
        timed(&mut lat.commit, c.commit(&name, &key)).await;
        timed(&mut lat.remove, c.remove(&name)).await;
    }
    lat
}

/// `a.count` cycles in all, split over `a.clients` concurrent clients.
async fn cycle_phase(a: &Args) {
    let tag = &a.label;
    let per_client = a.count / a.clients;
    let mut clients = Vec::new();
    for _ in 0..a.clients {
        clients.push(Client::connect(a).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, c)| tokio::spawn(cycles(c, id, per_client)))
        .collect();
    let mut all = CycleLatencies::default();
    for t in tasks {
        let l = t.await.expect("client");
        all.prepare.extend(l.prepare);
        all.commit.extend(l.commit);
        all.remove.extend(l.remove);
    }
    let secs = start.elapsed().as_secs_f64();
    let total = per_client * a.clients;
    println!(
        "[{tag}] {total} Prepare+Commit+Remove cycles, {} client(s): {:.0} cycles/s ({:.0} ops/s)",
        a.clients,
        total as f64 / secs,
        3.0 * total as f64 / secs
    );
    println!("[{tag}]   Prepare {}", percentiles(all.prepare));
    println!("[{tag}]   Commit  {}", percentiles(all.commit));
    println!("[{tag}]   Remove  {}", percentiles(all.remove));
}

/// Stat of one snapshot, `a.count` times: the cost of a call that only reads.
async fn stat_phase(a: &Args, c: &mut Client) {
    c.prepare("stat-k", "").await.expect("prepare");
    let mut lat = Vec::new();
    for _ in 0..a.count {
        let r = c.request(pb::StatSnapshotRequest {
            snapshotter: c.snapshotter.clone(),
            key: "stat-k".into(),
        });
        timed(&mut lat, c.rpc.stat(r)).await;
    }
    println!("[{}] Stat {}", a.label, percentiles(lat));
    c.remove("stat-k").await.expect("remove");
}

async fn list_phase(a: &Args, c: &mut Client) {
    let tag = &a.label;
    for i in 0..a.count {
        c.prepare(&format!("list-k{i}"), "").await.expect("prepare");
        c.commit(&format!("list-n{i}"), &format!("list-k{i}"))
            .await
            .expect("commit");
    }
    let mut ll = Vec::new();
    for _ in 0..10 {
        let n = timed(&mut ll, c.list_count()).await;
        assert!(n >= a.count, "listed {n} of {}", a.count);
    }
    ll.sort();
    let median = ll[ll.len() / 2];
    println!(
        "[{tag}] List of {} snapshots: {:.1} ms median ({:.0} snapshots/s)",
        a.count,
        median.as_secs_f64() * 1e3,
        a.count as f64 / median.as_secs_f64()
    );
    for i in 0..a.count {
        c.remove(&format!("list-n{i}")).await.expect("remove");
    }
}

async fn mount_phase(a: &Args, c: &mut Client) {
    let tag = &a.label;
    let deepest = a.layers.iter().copied().max().unwrap_or(0);
    let mut parent = String::new();
    for i in 0..deepest {
        c.prepare(&format!("chain-k{i}"), &parent)
            .await
            .expect("prepare");
        c.commit(&format!("chain-n{i}"), &format!("chain-k{i}"))
            .await
            .expect("commit");
        parent = format!("chain-n{i}");
    }
    for &n in &a.layers {
        let key = format!("view-{n}");
        let mounts: Vec<_> = c
            .view(&key, &format!("chain-n{}", n - 1))
            .await
            .expect("view")
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
        c.remove(&key).await.expect("remove");
    }
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let mut c = Client::connect(&a).await;
    for phase in &a.phases {
        match phase.as_str() {
            "cycles" => cycle_phase(&a).await,
            "list" => list_phase(&a, &mut c).await,
            "mounts" => mount_phase(&a, &mut c).await,
            "stat" => stat_phase(&a, &mut c).await,
            other => panic!("unknown phase {other}"),
        }
    }
}
