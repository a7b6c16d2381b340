//! The fleet: Strata daemons on one machine, each with its own root, socket and loopback
//! address (127.0.0.x), sharing blobs through their peer APIs, with Debian's docker-registry
//! upstream behind a counting, rate-limiting proxy (`registry-aid.py count-proxy`), so the
//! registry's egress is measured. The image: busybox layers and one of 24 MiB of random
//! data (incompressible: its transfer time is the rate's).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::containerd::cri::Cri;
use crate::containerd::env::{Containerd, CriSetup, Env, build_image};
use crate::containerd::registry::{CountingProxy, FlakyProxy, Registry};
use crate::pull::rootfs_with;
use crate::tree::{Entry, capture};
use crate::util::{Daemon, TempDir, assert_root, free_port, ingest_bytes, strata_ok};

const SECRET: &str = "fleet-test-secret-0123456789";

/// One node: a daemon whose peer API listens on `peer`.
struct Node {
    daemon: Daemon,
    peer: String,
}

/// Starts a node in `dir` with its peer API on `peer` and the fleet `peers`.
fn start_node(dir: &Path, peer: &str, peers: &[String]) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let config = fleet_config(dir, peer, peers);
    let daemon = Daemon::start_with(dir, &["--config", config.to_str().unwrap()]);
    Node {
        daemon,
        peer: peer.to_string(),
    }
}

/// `n` nodes on 127.0.0.<first>.. (one port), each knowing all.
fn start_nodes(tmp: &Path, first: u8, n: u8) -> Vec<Node> {
    let port = free_port();
    let peers: Vec<String> = (0..n)
        .map(|i| format!("127.0.0.{}:{port}", first + i))
        .collect();
    peers
        .iter()
        .enumerate()
        .map(|(i, p)| start_node(&tmp.join(format!("node{i}")), p, &peers))
        .collect()
}

/// Starts `strata image pull image` on `daemon`.
fn spawn_pull(daemon: &Daemon, image: &str) -> Child {
    crate::util::strata_command()
        .arg("--address")
        .arg(&daemon.socket)
        .args(["image", "pull", image])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a pull started at `started`; its time. It must succeed.
fn finish_pull(pull: Child, started: Instant, what: &str, daemon: &Daemon) -> Duration {
    let out = pull.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{what}: {out:?}\ndaemon log:\n{}",
        daemon.log_text()
    );
    took
}

/// The root filesystem of `image` on `daemon`, captured.
fn tree_of(daemon: &Daemon, image: &str, dir: &Path) -> std::collections::BTreeMap<String, Entry> {
    rootfs_with(&daemon.socket, image, "fleet-root", dir, capture)
}

/// A plain HTTP/1.0 GET of `path` at `address` with `headers`: status, head, body.
fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[split + 4..].to_vec())
}

/// The image's manifest at `registry` (`repository`, `tag`): its digest and document.
fn manifest(registry: &str, repository: &str, tag: &str) -> (String, Value) {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let (status, head, body) = http_get(
        registry,
        &format!("/v2/{repository}/manifests/{tag}"),
        &[("Accept", accept)],
    );
    assert_eq!(status, 200, "{head}");
    (
        crate::util::sha256(&body),
        serde_json::from_slice(&body).unwrap(),
    )
}

/// The test image, built and pushed as `e2e/fleet:1`; its reference through `upstream`.
fn push_image(tmp: &Path, registry: &Registry) -> String {
    let archive = tmp.join("fleet.tar");
    build_image(&archive, "strata.test/fleet:1", 2, &[("BIG_MB", "24")]);
    registry.push(&archive, "e2e/fleet:1");
    "e2e/fleet".into()
}

/// Four nodes pull one image at the same moment through the rate-limited proxy: the
/// registry sends each blob once (upstream bytes ≤ 1.05× one node's pull alone), every
/// node's tree equals the image's, and the last node is done in little more than one
/// node's time. The peer API refuses requests without the secret, serves ranges, and
/// serves nothing by tag.
#[test]
#[ignore = "needs root"]
fn nodes_pulling_at_once_fetch_each_blob_once() {
    assert_root("fleet::nodes_pulling_at_once_fetch_each_blob_once");
    let tmp = TempDir::new("fleet-once");
    let registry = Registry::start(&tmp.path().join("registry"));
    let repository = push_image(tmp.path(), &registry);
    let proxy = CountingProxy::start(&registry.address, tmp.path().join("proxy.log"), 8000);
    let image = format!("{}/{repository}:1", proxy.address);

    // One node alone, without a fleet: the image's bytes and time, and its tree.
    let alone_dir = tmp.path().join("alone");
    std::fs::create_dir_all(&alone_dir).unwrap();
    let alone = Daemon::start(&alone_dir, "overlayfs");
    let started = Instant::now();
    let single = finish_pull(spawn_pull(&alone, &image), started, "alone", &alone);
    let image_bytes = proxy.bytes();
    let expected = tree_of(&alone, &image, tmp.path());
    assert_eq!(expected["/big"].data.len(), 24 << 20);

    let nodes = start_nodes(tmp.path(), 11, 4);
    let started = Instant::now();
    let pulls: Vec<Child> = nodes
        .iter()
        .map(|n| spawn_pull(&n.daemon, &image))
        .collect();
    let times: Vec<Duration> = pulls
        .into_iter()
        .zip(&nodes)
        .map(|(p, n)| finish_pull(p, started, &n.peer, &n.daemon))
        .collect();
    let upstream = proxy.bytes() - image_bytes;
    eprintln!(
        "fleet of 4: upstream {upstream} bytes (one image: {image_bytes}); one node alone \
         {single:?}, the four {times:?}"
    );
    assert!(
        upstream as f64 <= 1.05 * image_bytes as f64,
        "the registry sent {upstream} bytes for a {image_bytes}-byte image"
    );
    let last = times.iter().max().unwrap();
    // The target is 2x (scripts/bench/fleet measures it); four daemons applying at once on
    // a CI machine's two cores get some slack here.
    assert!(
        last.as_secs_f64() <= 2.5 * single.as_secs_f64() + 1.0,
        "the last node took {last:?}, one node alone {single:?}"
    );
    for n in &nodes {
        assert_eq!(ingest_bytes(&n.daemon.root), 0, "{}: a write left", n.peer);
        let tree = tree_of(&n.daemon, &image, tmp.path());
        assert!(
            tree == expected,
            "{}: the tree differs from the image's",
            n.peer
        );
    }

    // The peer API: the secret, ranges, digests only.
    let (_, document) = manifest(&registry.address, &repository, "1");
    let config = document["config"]["digest"].as_str().unwrap().to_string();
    let blob_path = format!("/v2/{repository}/blobs/{config}");
    let (_, _, whole) = http_get(&registry.address, &blob_path, &[]);
    let peer = &nodes[0].peer;
    let bearer = format!("Bearer {SECRET}");
    for refused in [
        vec![],
        vec![("Authorization", "Bearer wrong-secret-0123456789")],
    ] {
        let (status, head, _) = http_get(peer, "/v2/", &refused);
        assert_eq!(status, 401, "{head}");
        let (status, head, _) = http_get(peer, &blob_path, &refused);
        assert_eq!(status, 401, "{head}");
    }
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(http_get(peer, "/v2/", &auth).0, 200);
    let (status, _, body) = http_get(peer, &blob_path, &auth);
    assert_eq!((status, &body), (200, &whole));
    let ranged = [("Authorization", bearer.as_str()), ("Range", "bytes=10-")];
    let (status, head, body) = http_get(peer, &blob_path, &ranged);
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, whole[10..]);
    let (status, head, _) = http_get(peer, &format!("/v2/{repository}/manifests/1"), &auth);
    assert_eq!(status, 404, "a tag is not served: {head}");
}

/// Faults. A serving peer killed in the middle of the big blob: the node streaming from it
/// goes on from the registry where it was (a ranged request, not from zero). Then, with
/// the registry down, a digest-pinned pull by a node whose peers are a proxy that flips a
/// byte of each blob, a dead address, a peer that never answers and an honest peer: the
/// manifest and the blobs come from the peers, the flipped bytes are caught and fetched
/// again, the silent peer is left after 3 s, and the tree is right.
/// No node that lived keeps a partial write.
#[test]
#[ignore = "needs root"]
fn pulls_survive_dead_lying_and_missing_sources() {
    assert_root("fleet::pulls_survive_dead_lying_and_missing_sources");
    let tmp = TempDir::new("fleet-faults");
    let registry = Registry::start(&tmp.path().join("registry"));
    let repository = push_image(tmp.path(), &registry);
    let mut proxy = CountingProxy::start(&registry.address, tmp.path().join("proxy.log"), 3000);
    let image = format!("{}/{repository}:1", proxy.address);
    let (digest, document) = manifest(&registry.address, &repository, "1");
    let big = document["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // Killed mid-blob: the node the big layer hashes to fetches it upstream; the other
    // streams it from that one, which dies.
    let nodes = start_nodes(tmp.path(), 21, 2);
    let peers: Vec<String> = nodes.iter().map(|n| n.peer.clone()).collect();
    let owner_at = peers
        .iter()
        .position(|p| *p == imagestore::transfer::fleet::rank(&big, &peers)[0])
        .unwrap();
    let mut nodes = nodes;
    let other = nodes.remove(1 - owner_at);
    let mut owner = nodes.remove(0);
    let owner_pull = spawn_pull(&owner.daemon, &image);
    let wait_for = |root: &Path, bytes: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ingest_bytes(root) < bytes {
            assert!(Instant::now() < deadline, "no {bytes} bytes written");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&owner.daemon.root, 6 << 20);
    let started = Instant::now();
    let other_pull = spawn_pull(&other.daemon, &image);
    wait_for(&other.daemon.root, 4 << 20);
    owner.daemon.kill();
    drop(owner_pull);
    finish_pull(other_pull, started, "after its peer died", &other.daemon);
    let log = other.daemon.log_text();
    assert!(
        log.contains("failed; going on from the next source"),
        "{log}"
    );
    let resumed = proxy
        .requests()
        .into_iter()
        .any(|(_, path, range, status, _)| {
            path.ends_with(&big)
                && range.starts_with("bytes=")
                && range != "bytes=0-"
                && status == 206
        });
    assert!(
        resumed,
        "no ranged request for {big}: {:?}",
        proxy.requests()
    );
    assert_eq!(ingest_bytes(&other.daemon.root), 0);
    let expected = tree_of(&other.daemon, &image, tmp.path());
    assert_eq!(expected["/big"].data.len(), 24 << 20);

    // The registry down; a lying peer ranked first for the config and the big layer (so
    // the unpack starts at once and applies the big layer as the lie arrives), a dead
    // address.
    proxy.stop();
    let config = document["config"]["digest"].as_str().unwrap().to_string();
    let me = format!("127.0.0.23:{}", free_port());
    let liar_address = loop {
        let address = format!("127.0.0.1:{}", free_port());
        let three = [address.clone(), other.peer.clone(), me.clone()];
        let first = |d: &str| imagestore::transfer::fleet::rank(d, &three)[0] == address;
        if first(&big) && first(&config) {
            break address;
        }
    };
    let liar_log = tmp.path().join("liar.log");
    let _liar = FlakyProxy::start_on(
        liar_address.clone(),
        &other.peer,
        liar_log.clone(),
        "flip-slow:20000",
    );
    let dead = format!("127.0.0.1:{}", free_port());
    // A peer that accepts connections and never answers: ranked first for a small layer
    // (so it is asked, and left), after the honest peer for the config (which must come at
    // once, for the unpack to follow the liar's big layer).
    let small: Vec<String> = document["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .filter(|d| *d != big)
        .collect();
    let silent_address = loop {
        let address = format!("127.0.0.1:{}", free_port());
        let four = [
            liar_address.clone(),
            address.clone(),
            other.peer.clone(),
            me.clone(),
        ];
        let order = imagestore::transfer::fleet::rank(&config, &four);
        let at = |n: &String| order.iter().position(|o| o == n);
        let first_for_one = small
            .iter()
            .any(|d| imagestore::transfer::fleet::rank(d, &four)[0] == address);
        if at(&other.peer) < at(&address) && first_for_one {
            break address;
        }
    };
    // Listening, never accepting: the kernel completes connections into the backlog and
    // nothing answers. Closed when the test ends.
    let _silent = std::net::TcpListener::bind(&silent_address).unwrap();
    let peers = [
        liar_address,
        dead,
        silent_address.clone(),
        other.peer.clone(),
        me.clone(),
    ];
    let late = start_node(&tmp.path().join("late"), &me, &peers);
    let pinned = format!("{}/{repository}@{digest}", proxy.address);
    let started = Instant::now();
    let took = finish_pull(
        spawn_pull(&late.daemon, &pinned),
        started,
        "pinned",
        &late.daemon,
    );
    eprintln!("digest-pinned pull with the registry down: {took:?} (big layer {big})");
    let log = late.daemon.log_text();
    assert!(
        log.contains("bytes from a peer failed the digest"),
        "the flipped bytes went unnoticed: {log}"
    );
    // Left after 3 s, and passed over from then on: waited for once by each transfer that
    // had chosen it before the first wait ended (three downloads run at once).
    let silence = log.lines().filter(|l| {
        l.contains(&silent_address)
            && (l.contains("it sent nothing for a while") || l.contains("did not send a manifest"))
    });
    let waits = silence.count();
    assert!((1..=3).contains(&waits), "{waits} waits: {log}");
    assert!(
        took < Duration::from_secs(20),
        "a silent peer held the pull up: {took:?}"
    );
    let flipped = std::fs::read_to_string(&liar_log).unwrap();
    assert!(
        flipped
            .lines()
            .any(|l| l.contains(&big) && l.ends_with(" 200 flip")),
        "{flipped}"
    );
    assert!(
        log.contains("applying a layer again"),
        "the apply that read them was not redone: {log}"
    );
    assert_eq!(ingest_bytes(&late.daemon.root), 0);
    let tree = tree_of(&late.daemon, &pinned, tmp.path());
    assert!(tree == expected, "the tree differs from the image's");
}

/// containerd pulls through the node's Strata as its registry mirror (`hosts.toml`, in
/// `ctr --hosts-dir` or, with `cri`, the CRI plugin's `config_path`): the blobs come through the
/// fleet (Strata fetches each upstream once, keeps it in its `strata.fleet` namespace),
/// containerd resolves the tag at the registry itself (the mirror answers no tag). A second
/// node, started only then, pulls the image: the blobs it ranks first it asks the first node
/// for (what that one holds) before the registry, the others it streams from that node. The
/// registry sent each blob once for both.
fn pulls_through_the_mirror(test: &str, release: Containerd, first: u8, cri: bool) {
    let port = free_port();
    let (a, b) = (
        format!("127.0.0.{first}:{port}"),
        format!("127.0.0.{}:{port}", first + 1),
    );
    let peers = [a.clone(), b.clone()];
    let config = TempDir::new("mirror-config");
    let config_file = fleet_config(config.path(), &a, &peers);
    // The registry and its proxy first: the CRI plugin reads the hosts directory at start.
    let scratch_dir = TempDir::new("mirror-upstream");
    let scratch = scratch_dir.path().to_path_buf();
    let registry = Registry::start(&scratch.join("registry"));
    let proxy = CountingProxy::start(&registry.address, scratch.join("proxy.log"), 0);
    let hosts = scratch.join("hosts");
    let dir = hosts.join(&proxy.address);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "server = \"http://{}\"\n\n[host.\"http://{a}\"]\n  capabilities = [\"pull\"]\n  \
         [host.\"http://{a}\".header]\n    Authorization = \"Bearer {SECRET}\"\n",
        proxy.address
    );
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
    let strata_args = ["--config", config_file.to_str().unwrap()];
    let mut env = match cri {
        true => {
            let setup = CriSetup {
                hosts_dir: hosts.clone(),
                sandbox_image: format!("{}/e2e/pause:1", proxy.address),
            };
            Env::start_cri_with(test, release, setup, &strata_args)
        }
        false => Env::start_with(test, "overlayfs", release, &strata_args),
    };
    let repository = push_image(&scratch, &registry);
    let image = format!("{}/{repository}:1", proxy.address);
    let (_, document) = manifest(&registry.address, &repository, "1");
    let blobs: Vec<(String, u64)> = std::iter::once(&document["config"])
        .chain(document["layers"].as_array().unwrap())
        .map(|d| {
            let digest = d["digest"].as_str().unwrap().to_string();
            (digest, d["size"].as_u64().unwrap())
        })
        .collect();
    let blob_bytes: u64 = blobs.iter().map(|b| b.1).sum();

    if cri {
        env.use_namespace("k8s.io");
        let socket = env.socket().to_path_buf();
        let pulled = env.block_on(async {
            let mut cri = Cri::connect(&socket).await;
            cri.pull(&image, None).await
        });
        pulled.expect("a CRI pull through the mirror");
    } else {
        env.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            &image,
        ]);
    }
    let held = strata_ok(
        &env.strata.socket,
        &["content", "ls", "--namespace", "strata.fleet"],
    );
    for (digest, _) in &blobs {
        assert!(
            held.contains(digest.as_str()),
            "{digest} did not come through Strata: {held}\nupstream: {:?}\nStrata: {}",
            proxy.requests(),
            env.strata.log_text()
        );
    }
    let blob_upstream = |proxy: &CountingProxy| -> u64 {
        let requests = proxy.requests();
        requests
            .iter()
            .filter(|r| r.1.contains("/blobs/sha256:"))
            .map(|r| r.4)
            .sum()
    };
    let through_containerd = blob_upstream(&proxy);
    assert_eq!(through_containerd, blob_bytes, "{:?}", proxy.requests());

    let node_b = start_node(&scratch.join("b"), &b, &peers);
    strata_ok(&node_b.daemon.socket, &["image", "pull", &image]);
    let upstream = blob_upstream(&proxy);
    eprintln!("{test}: blob bytes upstream {upstream} for two nodes, the blobs are {blob_bytes}");
    assert_eq!(upstream, blob_bytes, "{:?}", proxy.requests());
}

/// Writes a fleet configuration (and its secret) into `dir`: listening on `listen`, the
/// fleet `peers`; its path.
fn fleet_config(dir: &Path, listen: &str, peers: &[String]) -> std::path::PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = dir.join("config.toml");
    let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        "[fleet]\nlisten = {listen:?}\nsecret_file = {:?}\npeers = [{}]\n",
        secret.to_str().unwrap(),
        list.join(", ")
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
#[ignore = "needs root"]
fn containerd_1_7_pulls_through_the_mirror() {
    // A short tag: containerd's socket path under it must stay within 104 bytes.
    assert_root("fleet::containerd_1_7_pulls_through_the_mirror");
    pulls_through_the_mirror("fleet::mirror-1.7", Containerd::V1_7, 31, false);
}

#[test]
#[ignore = "needs root"]
fn containerd_2_1_pulls_through_the_mirror() {
    assert_root("fleet::containerd_2_1_pulls_through_the_mirror");
    pulls_through_the_mirror("fleet::mirror-2.1", Containerd::V2_1, 33, false);
}

#[test]
#[ignore = "needs root"]
fn cri_1_7_pulls_through_the_mirror() {
    assert_root("fleet::cri_1_7_pulls_through_the_mirror");
    pulls_through_the_mirror("fleet::cri-1.7", Containerd::V1_7, 35, true);
}

#[test]
#[ignore = "needs root"]
fn cri_2_1_pulls_through_the_mirror() {
    assert_root("fleet::cri_2_1_pulls_through_the_mirror");
    pulls_through_the_mirror("fleet::cri-2.1", Containerd::V2_1, 37, true);
}
