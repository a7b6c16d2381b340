//! The fleet: Strata nodes that share their content stores, so a rollout costs the
//! registry one copy of each blob. A node serves its store read-only over the OCI
//! distribution API (the daemon's `fleet` server, on [`Fleet::open_blob`] and
//! [`Fleet::serve_blob`]), blobs still downloading included (a reader follows the write).
//!
//! A pull resolves tags and manifests at the registry with its own credentials, then asks
//! the fleet for the blobs those manifests name (`Fleet::fetch`). Of the live nodes
//! ([`membership`]), ranked for the digest by rendezvous hashing, the first fetches the
//! blob upstream and every other streams it from that one while it downloads: the nodes
//! ranked above this one (two at most) are its sources, then the registry, then three more
//! peers for when the registry is down; the node ranked first asks the next two for what
//! they already hold (nothing more) before it goes upstream. A node fetches a blob once,
//! however many pulls and peers want it (one flight per digest), into the namespace
//! [`NAMESPACE`] under a lease that expires after [`FleetConfig::keep_for`]; a pull then
//! records the blob in its own namespace. Peer requests carry the fleet's shared secret; every byte is checked
//! against its digest before it is committed, and a peer's wrong bytes make the blob come
//! again from the other sources.

pub mod membership;
mod rendezvous;

pub use rendezvous::rank;

use std::collections::HashMap;
use std::io::Read;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use oci_client::Reference;
use tokio::sync::{oneshot, watch};

use self::membership::Membership;
use super::download::{Destination, Download, Fetched};
use super::events::Progress;
use super::source::{PeerHealth, PeerSource, Source};
use super::{Result, TransferError};
use crate::oci::Descriptor;
use crate::{ImageStore, StoreError, parse_digest, unique_suffix};
use differ::Digest;

/// The namespace a node's fleet downloads are written in.
pub const NAMESPACE: &str = "strata.fleet";
/// How long connecting to a peer may take before it is passed over.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a peer may take to send a manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Peers ranked above this node asked for a blob before the registry.
const PEERS_FIRST: usize = 2;
/// Peers asked after the registry failed.
const PEERS_LAST: usize = 3;

/// How a node takes part in the fleet.
pub struct FleetConfig {
    /// This node's peer address (`host:port`), as the others list it.
    pub advertise: String,
    /// The secret every peer request carries.
    pub secret: String,
    pub membership: Arc<dyn Membership>,
    /// How long a blob fetched for the fleet is kept when no image of this node holds it.
    pub keep_for: Duration,
    /// Registries (`host[:port]`) reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
}

/// Where one node's fetch of a blob is.
#[derive(Clone, Debug)]
enum Flight {
    Opening,
    /// Its write is open: readable as it comes.
    Open,
    Done(std::result::Result<Fetched, String>),
}

/// A blob wanted of the fleet, and how this node reaches its registry.
#[derive(Clone)]
pub(super) struct FleetBlob {
    pub desc: Descriptor,
    /// Registry host (`host[:port]`) and repository.
    pub upstream: String,
    pub repository: String,
    pub plain_http: bool,
    pub registry: Source,
    /// Whether peers are asked (not for a peer's request; such a request joins a flight of
    /// the blob already running, see [`Fleet`]'s `flights`).
    pub ask_peers: bool,
    pub parent: String,
    pub progress: Progress,
}

/// A blob to send: its reader (positioned at its start) and its size if known.
pub struct Served {
    pub reader: Box<dyn Read + Send>,
    pub size: Option<u64>,
}

/// A peer's (or a mirror client's) request for a blob.
pub struct BlobRequest {
    pub digest: String,
    pub repository: String,
    /// The registry host (the `ns` query parameter), if the request named one.
    pub upstream: Option<String>,
    /// The blob's size, if the request said it (a peer's does).
    pub size: Option<u64>,
    pub plain_http: bool,
    /// From a peer: a flight it starts fetches upstream only (it joins one already running).
    pub from_peer: bool,
    /// Answered from this store only.
    pub local_only: bool,
}

/// This node's part in the fleet (see the module doc).
pub struct Fleet {
    advertise: String,
    secret: Arc<str>,
    membership: Arc<dyn Membership>,
    keep_for: Duration,
    insecure_registries: Vec<String>,
    store: Arc<ImageStore>,
    /// For peers: short connect timeout.
    http: reqwest::Client,
    /// For registries (the size of a blob a mirror client asks for).
    upstream_http: reqwest::Client,
    health: Arc<PeerHealth>,
    /// Flights by digest. Whoever wants a blob joins the flight running for it, whatever its
    /// sources: two flights of one blob would fetch it twice, or one would wait for the
    /// other's write without answering (its requester then leaves it, after 3 s, for a peer
    /// that fetches the blob upstream again; measured: 1.06x the image upstream for 8 nodes).
    /// A peer's request that joins a flight asking peers can go round the fleet only while
    /// nodes disagree on the membership, and a silent peer is left after 3 s.
    flights: Mutex<HashMap<String, watch::Receiver<Flight>>>,
}

/// Removes a flight's entry when its task ends, panicking or not.
struct FlightEntry {
    fleet: Arc<Fleet>,
    key: String,
}

impl Drop for FlightEntry {
    fn drop(&mut self) {
        self.fleet
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Fleet {
    /// This node's fleet over `store`.
    pub fn new(config: FleetConfig, store: Arc<ImageStore>) -> Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| TransferError::Invalid(format!("fleet HTTP client: {e}")))?;
        let upstream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| TransferError::Invalid(format!("fleet HTTP client: {e}")))?;
        Ok(Arc::new(Fleet {
            advertise: config.advertise,
            secret: config.secret.into(),
            membership: config.membership,
            keep_for: config.keep_for,
            insecure_registries: config.insecure_registries,
            store,
            http,
            upstream_http,
            health: Arc::default(),
            flights: Mutex::default(),
        }))
    }

    /// Whether `presented` (an `Authorization` header's value) carries the fleet's secret.
    pub fn authorized(&self, presented: Option<&str>) -> bool {
        let Some(token) = presented.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        // Compared in time independent of where the two differ.
        let (a, b) = (token.as_bytes(), self.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The fleet's nodes ranked for `digest`, this one among them.
    fn ranked(&self, digest: &str) -> Vec<String> {
        let mut nodes = self.membership.nodes();
        if !nodes.contains(&self.advertise) {
            nodes.push(self.advertise.clone());
        }
        nodes.sort();
        nodes.dedup();
        rendezvous::rank(digest, &nodes)
    }

    /// Where this node reads `wanted` from, in order (see the module doc).
    fn sources(&self, wanted: &FleetBlob) -> Vec<Source> {
        let peer = |node: &String, local_only: bool| {
            Source::Peer(PeerSource {
                peer: node.clone(),
                http: self.http.clone(),
                secret: Arc::clone(&self.secret),
                upstream: wanted.upstream.clone(),
                repository: wanted.repository.clone(),
                plain_http: wanted.plain_http,
                local_only,
                health: Arc::clone(&self.health),
            })
        };
        if !wanted.ask_peers {
            return vec![wanted.registry.clone()];
        }
        let ranked = self.ranked(&wanted.desc.digest);
        let me = ranked.iter().position(|n| *n == self.advertise);
        let live = |(i, n): &(usize, &String)| Some(*i) != me && !self.health.is_down(n);
        let (above, below): (Vec<_>, Vec<_>) = ranked
            .iter()
            .enumerate()
            .filter(live)
            .partition(|(i, _)| me.is_none_or(|me| *i < me));
        let mut sources: Vec<Source> = above
            .iter()
            .take(PEERS_FIRST)
            .map(|(_, n)| peer(n, false))
            .collect();
        let mut rest = above.iter().skip(PEERS_FIRST).chain(&below);
        if sources.is_empty() {
            // This node fetches the blob upstream, unless the next ones hold it already (they
            // got it while this one was away): asked for what they hold, nothing more.
            sources.extend(rest.by_ref().take(PEERS_FIRST).map(|(_, n)| peer(n, true)));
        }
        sources.push(wanted.registry.clone());
        sources.extend(rest.take(PEERS_LAST).map(|(_, n)| peer(n, false)));
        sources
    }

    /// This node's flight of `wanted`: the one running (joined: `false`), or a new one
    /// (`true`).
    fn flight(self: &Arc<Self>, wanted: FleetBlob) -> (watch::Receiver<Flight>, bool) {
        let key = wanted.desc.digest.clone();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = flights.get(&key) {
            return (rx.clone(), false);
        }
        let (tx, rx) = watch::channel(Flight::Opening);
        flights.insert(key.clone(), rx.clone());
        drop(flights);
        let entry = FlightEntry {
            fleet: Arc::clone(self),
            key,
        };
        tokio::spawn(async move {
            let done = entry
                .fleet
                .fly(wanted, &tx)
                .await
                .map_err(|e| e.to_string());
            drop(entry);
            let _ = tx.send(Flight::Done(done));
        });
        (rx, true)
    }

    /// Fetches `wanted` into the fleet's namespace under a lease of its own, saying on
    /// `state` when its write is open.
    async fn fly(&self, wanted: FleetBlob, state: &watch::Sender<Flight>) -> Result<Fetched> {
        let lease = format!("fleet-{}", unique_suffix());
        let labels: HashMap<String, String> = [(
            api::labels::GC_EXPIRE.to_string(),
            api::time::rfc3339_utc(SystemTime::now() + self.keep_for),
        )]
        .into();
        let (store, id) = (Arc::clone(&self.store), lease.clone());
        blocking(move || store.lease_create(NAMESPACE, &id, labels)).await?;
        let digest = parse_digest(&wanted.desc.digest)?;
        let sources = self.sources(&wanted);
        tracing::debug!(
            digest = wanted.desc.digest,
            sources = ?sources.iter().map(Source::describe).collect::<Vec<_>>(),
            "fleet: fetching"
        );
        let download = Download {
            sources,
            desc: wanted.desc,
            parent: wanted.parent,
            progress: wanted.progress,
        };
        let to = Destination {
            store: Arc::clone(&self.store),
            namespace: NAMESPACE.to_string(),
            lease: lease.clone(),
            busy: Arc::default(),
        };
        let (opened, opening) = oneshot::channel();
        let watch_open = async {
            if opening.await.is_ok() {
                let _ = state.send(Flight::Open);
            }
        };
        let (fetched, ()) = tokio::join!(download.run(to, opened), watch_open);
        let fetched = fetched?;
        // In this flight's lease, also when the namespace had it (an earlier flight's lease
        // may be about to expire).
        self.record(NAMESPACE, digest, lease).await?;
        Ok(fetched)
    }

    /// Records blob `digest` (in the tree) in `namespace` and in its `lease`.
    async fn record(&self, namespace: &str, digest: Digest, lease: String) -> Result<()> {
        let (store, namespace) = (Arc::clone(&self.store), namespace.to_string());
        blocking(move || store.content_record(&namespace, &digest, HashMap::new(), Some(&lease)))
            .await
    }

    /// Brings `wanted` into namespace `to` of this node's store through the fleet: says on
    /// `opened` once it can be read as it comes, and returns what this node downloaded.
    pub(super) async fn fetch(
        self: &Arc<Self>,
        wanted: FleetBlob,
        to: &Destination,
        opened: oneshot::Sender<()>,
    ) -> Result<Fetched> {
        let digest = parse_digest(&wanted.desc.digest)?;
        let mut opened = Some(opened);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut flight, started) = self.flight(wanted.clone());
            let done = loop {
                let state = flight.borrow_and_update().clone();
                match state {
                    Flight::Opening => {}
                    Flight::Open => {
                        if let Some(opened) = opened.take() {
                            let _ = opened.send(());
                        }
                    }
                    Flight::Done(done) => break done,
                }
                if flight.changed().await.is_err() {
                    // The flight's task ended without a word: it panicked.
                    break Err(format!("fetch of {digest} vanished"));
                }
            };
            match done {
                // In the fleet's namespace now: recorded in the pull's too, under its lease.
                Ok(fetched) => match self
                    .record(&to.namespace, digest.clone(), to.lease.clone())
                    .await
                {
                    Ok(()) => return Ok(fetched),
                    // Collected between the flight's commit and now: once more.
                    Err(TransferError::Store(StoreError::NotFound(_))) if attempts < 2 => {}
                    Err(TransferError::Store(StoreError::NotFound(_))) => {
                        return Err(TransferError::Store(StoreError::Unavailable(format!(
                            "blob {digest} was collected before it was recorded; pull again"
                        ))));
                    }
                    Err(e) => return Err(e),
                },
                // Joined another's flight (its sources, its credentials), which failed: once
                // more, this pull's own.
                Err(_) if attempts < 2 && !started => {}
                Err(why) => return Err(TransferError::Registry(why)),
            }
        }
    }

    /// Blob `digest` of this node's store, committed or (with `live`) still being written;
    /// `None` if it has neither. Blocks.
    pub fn open_blob(
        &self,
        digest: &str,
        live: bool,
    ) -> std::result::Result<Option<Served>, StoreError> {
        let digest = parse_digest(digest)?;
        let blobs = self.store.blobs();
        let committed = || -> std::result::Result<Option<Served>, StoreError> {
            match blobs.open_blob(&digest) {
                Ok(file) => {
                    let size =
                        file.metadata()
                            .map(|m| m.len())
                            .map_err(|source| StoreError::Io {
                                op: "stat",
                                path: blobs.path(&digest),
                                source,
                            })?;
                    Ok(Some(Served {
                        reader: Box::new(file),
                        size: Some(size),
                    }))
                }
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        };
        if let Some(served) = committed()? {
            return Ok(Some(served));
        }
        if !live {
            return Ok(None);
        }
        if let Some(live) = blobs.open_live(&digest)? {
            return Ok(Some(Served {
                reader: Box::new(live),
                size: None,
            }));
        }
        // Committed between the two looks.
        committed()
    }

    /// The blob a peer (or the node's containerd, as a mirror) asks for: from this store,
    /// or fetched for it — from upstream for a peer, through the fleet for a mirror client —
    /// when the request says where upstream is and how big the blob is. `None`: not here.
    pub async fn serve_blob(self: &Arc<Self>, request: BlobRequest) -> Result<Option<Served>> {
        let fleet = Arc::clone(self);
        let digest = request.digest.clone();
        // A node asked for what it holds is asked by the node the blob hashes to, which may
        // be what feeds this node's write of it: only a committed blob is an answer.
        let live = !request.local_only;
        let local = move || fleet.open_blob(&digest, live);
        // The size known: a live blob goes out with its length (and ranges honoured).
        let sized = |served: Option<Served>, size: Option<u64>| {
            served.map(|s| Served {
                size: s.size.or(size),
                ..s
            })
        };
        if let Some(served) = blocking(local.clone()).await? {
            return Ok(sized(Some(served), request.size));
        }
        let Some(upstream) = request.upstream.as_ref().filter(|_| !request.local_only) else {
            return Ok(None);
        };
        let plain_http = request.plain_http
            || super::registry::loopback(upstream)
            || self.insecure_registries.iter().any(|r| r == upstream);
        // A mirror client (the node's containerd) does not say the size: the registry does.
        let size = match request.size {
            Some(size) => size,
            None if request.from_peer => return Ok(None),
            None => {
                let asked =
                    self.upstream_size(upstream, &request.repository, &request.digest, plain_http);
                match asked.await {
                    Some(size) => size,
                    None => return Ok(None),
                }
            }
        };
        let image = Reference::from_str(&format!("{upstream}/{}", request.repository))
            .map_err(|e| TransferError::Invalid(format!("repository: {e}")))?;
        let client = super::clients::shared(plain_http).await;
        // The token a registry wants even for anonymous pulls (Docker Hub's, say): the
        // client attaches a cached one to blob requests but never asks for it itself.
        let anonymous = oci_client::secrets::RegistryAuth::Anonymous;
        let pull = oci_client::RegistryOperation::Pull;
        if let Err(e) = client.auth(&image, &anonymous, pull).await {
            tracing::debug!(upstream, error = %e, "fleet: no anonymous token");
        }
        let desc = Descriptor {
            media_type: String::new(),
            digest: request.digest.clone(),
            size: size as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        let wanted = FleetBlob {
            desc,
            upstream: upstream.clone(),
            repository: request.repository.clone(),
            plain_http,
            registry: Source::Registry {
                client,
                image: image.clone(),
            },
            ask_peers: !request.from_peer,
            parent: String::new(),
            progress: Arc::new(|_| {}),
        };
        let (mut flight, _) = self.flight(wanted);
        loop {
            let state = flight.borrow_and_update().clone();
            match state {
                Flight::Opening => {}
                Flight::Open | Flight::Done(Ok(_)) => break,
                Flight::Done(Err(why)) => return Err(TransferError::Registry(why)),
            }
            if flight.changed().await.is_err() {
                break;
            }
        }
        Ok(sized(blocking(local).await?, Some(size)))
    }

    /// The size of blob `digest` of `repository` at registry `upstream`, asked anonymously:
    /// a `HEAD`, again with a bearer token from the registry's token service if it wants
    /// one. `None` if the registry does not say (a private repository, say).
    async fn upstream_size(
        &self,
        upstream: &str,
        repository: &str,
        digest: &str,
        plain_http: bool,
    ) -> Option<u64> {
        // containerd names Docker Hub by its reference name.
        let host = if upstream == "docker.io" {
            "registry-1.docker.io"
        } else {
            upstream
        };
        let scheme = if plain_http { "http" } else { "https" };
        let url = format!("{scheme}://{host}/v2/{repository}/blobs/{digest}");
        let mut response = self.upstream_http.head(&url).send().await.ok()?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(http::header::WWW_AUTHENTICATE)?
                .to_str()
                .ok()?
                .to_string();
            let token = self.anonymous_token(&challenge).await?;
            response = self
                .upstream_http
                .head(&url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
        }
        if !response.status().is_success() {
            return None;
        }
        response
            .headers()
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// An anonymous token from the token service a `Bearer realm=...,service=...,scope=...`
    /// challenge names.
    async fn anonymous_token(&self, challenge: &str) -> Option<String> {
        let params = challenge_params(challenge.strip_prefix("Bearer ")?);
        let realm = params.iter().find(|(k, _)| k == "realm")?.1.clone();
        let query: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "realm").collect();
        let answer: serde_json::Value = self
            .upstream_http
            .get(realm)
            .query(&query)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let token = answer.get("token").or_else(|| answer.get("access_token"))?;
        token.as_str().map(str::to_string)
    }

    /// Manifest (or index) `digest` of `repository` from a peer, checked against its
    /// digest: for a digest-pinned pull while the registry cannot be reached.
    pub(super) async fn manifest(&self, repository: &str, digest: &str) -> Option<Vec<u8>> {
        let ranked = self.ranked(digest);
        let peers = ranked
            .iter()
            .filter(|n| **n != self.advertise && !self.health.is_down(n));
        for peer in peers.take(PEERS_FIRST + PEERS_LAST) {
            let url = format!("http://{peer}/v2/{repository}/manifests/{digest}");
            let answer = self
                .http
                .get(url)
                .bearer_auth(&*self.secret)
                .header(super::source::PEER_HEADER, "1")
                .header(http::header::ACCEPT, api::media_types::MANIFESTS.join(", "))
                // A manifest is small: a peer that has not sent it by then is not answering.
                .timeout(MANIFEST_TIMEOUT)
                .send()
                .await;
            let bytes = match answer {
                Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                Ok(_) => None,
                Err(e) => {
                    tracing::info!(peer, error = %e, "fleet: a peer did not send a manifest");
                    self.health.failed(peer);
                    None
                }
            };
            if let Some(bytes) = bytes
                && sha256(&bytes) == digest
            {
                tracing::info!(digest, peer, "fleet: manifest from a peer");
                return Some(bytes.to_vec());
            }
        }
        None
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransferError::Invalid(format!("store task: {e}")))?
        .map_err(TransferError::Store)
}

/// The `key="value"` pairs of a challenge's parameters.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, next)) => (v, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((key, value.to_string()));
        rest = next.trim_start_matches(',').trim();
    }
    out
}

/// `sha256:<hex>` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    let mut hasher = differ::digest::Hasher::default();
    hasher.update(bytes);
    hasher.finish().0.to_string()
}

#[cfg(test)]
mod tests {
    use super::challenge_params;

    #[test]
    fn bearer_challenges_are_read() {
        let params = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        let want = [
            ("realm", "https://auth.docker.io/token"),
            ("service", "registry.docker.io"),
            ("scope", "repository:library/busybox:pull"),
        ];
        let got: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            challenge_params("a=b, c=\"d,e\""),
            [("a".into(), "b".into()), ("c".into(), "d,e".into())]
        );
    }
}
