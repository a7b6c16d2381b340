//! Where a download's bytes come from: the image's registry, or another Strata node of the
//! fleet serving its content store ([`super::fleet`]). Every source is asked for the blob
//! from an offset on (a ranged request), so a transfer that breaks goes on where it
//! stopped, at the same source or at the next.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use oci_client::Reference;
use oci_client::client::BlobResponse;
use tokio_stream::{Stream, StreamExt};

/// A blob's bytes as they arrive.
pub(super) type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Header a node's requests to its peers carry: the peer answers from its own store or the
/// upstream registry, never by asking other peers (no request goes round the fleet).
pub const PEER_HEADER: &str = "x-strata-peer";
/// Header with the blob's size, so a peer that fetches it upstream on the request's behalf
/// can open its write (the digest checks both).
pub const SIZE_HEADER: &str = "x-strata-size";
/// Header asking a peer to answer from its own store only (404 if it lacks the blob).
pub const LOCAL_ONLY_HEADER: &str = "x-strata-local-only";
/// Header asking a peer to reach the upstream registry over plain HTTP.
pub const PLAIN_HTTP_HEADER: &str = "x-strata-plain-http";

/// One place a blob can be read from.
#[derive(Clone)]
pub(super) enum Source {
    /// The image's registry, through the pull's client (its credentials).
    Registry {
        client: Arc<oci_client::Client>,
        image: Reference,
    },
    /// A peer node's distribution API.
    Peer(PeerSource),
}

/// A peer asked for blobs of one repository of one upstream registry.
#[derive(Clone)]
pub(super) struct PeerSource {
    /// Its `host:port`.
    pub peer: String,
    pub http: reqwest::Client,
    /// The fleet's shared secret, sent as a bearer token.
    pub secret: Arc<str>,
    /// Upstream registry host and repository, for a peer that must fetch the blob itself.
    pub upstream: String,
    pub repository: String,
    pub plain_http: bool,
    /// Asked only for what it holds already (never to fetch the blob upstream).
    pub local_only: bool,
    /// Where a peer that cannot be reached is noted.
    pub health: Arc<PeerHealth>,
}

/// How long a peer that could not be reached is passed over.
const PEER_BACKOFF: Duration = Duration::from_secs(10);

/// Peers that could not be reached lately, passed over for `PEER_BACKOFF` (a node gone
/// after a scale-down costs one failed connection, not one per blob).
#[derive(Default)]
pub struct PeerHealth {
    down_until: Mutex<HashMap<String, Instant>>,
}

impl PeerHealth {
    /// Notes that `peer` could not be reached.
    pub fn failed(&self, peer: &str) {
        self.map()
            .insert(peer.to_string(), Instant::now() + PEER_BACKOFF);
    }

    /// Whether `peer` is passed over now.
    pub fn is_down(&self, peer: &str) -> bool {
        let mut map = self.map();
        match map.get(peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(peer);
                false
            }
            None => false,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Source {
    /// Says what the source is, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Source::Registry { .. } => "the registry".into(),
            Source::Peer(p) => format!("peer {}", p.peer),
        }
    }

    /// The peer's address, if the source is one.
    pub fn peer(&self) -> Option<&str> {
        match self {
            Source::Registry { .. } => None,
            Source::Peer(p) => Some(&p.peer),
        }
    }

    /// Whether the source is a peer passed over now (it failed another transfer lately).
    pub fn is_down(&self) -> bool {
        match self {
            Source::Registry { .. } => false,
            Source::Peer(p) => p.health.is_down(&p.peer),
        }
    }

    /// Notes that the source went silent: a peer is passed over for a while.
    pub fn stalled(&self) {
        if let Source::Peer(p) = self {
            p.health.failed(&p.peer);
        }
    }

    /// Asks for blob `digest` (`size` bytes) from `offset` on: its bytes, and how many of
    /// them to skip first (a source that ignored the range sends the blob from its start).
    pub async fn open(
        &self,
        digest: &str,
        size: u64,
        offset: u64,
    ) -> Result<(Chunks, u64), String> {
        match self {
            Source::Registry { client, image } => {
                // From the start too: a ranged answer is not hashed by the registry client,
                // and the store checks the digest anyway.
                let response = client
                    .pull_blob_stream_partial(image, digest, offset, None)
                    .await
                    .map_err(|e| e.to_string())?;
                let (stream, skip) = match response {
                    BlobResponse::Partial(s) => (s.stream, 0),
                    BlobResponse::Full(s) => (s.stream, offset),
                };
                Ok((Box::pin(stream.map(|c| c.map_err(|e| e.to_string()))), skip))
            }
            Source::Peer(p) => p.open(digest, size, offset).await,
        }
    }
}

impl PeerSource {
    async fn open(&self, digest: &str, size: u64, offset: u64) -> Result<(Chunks, u64), String> {
        let url = format!(
            "http://{}/v2/{}/blobs/{digest}?ns={}",
            self.peer, self.repository, self.upstream
        );
        let mut request = self
            .http
            .get(url)
            .bearer_auth(&*self.secret)
            .header(PEER_HEADER, "1")
            .header(SIZE_HEADER, size.to_string());
        if self.plain_http {
            request = request.header(PLAIN_HTTP_HEADER, "1");
        }
        if self.local_only {
            request = request.header(LOCAL_ONLY_HEADER, "1");
        }
        if offset > 0 {
            request = request.header(http::header::RANGE, format!("bytes={offset}-"));
        }
        let response = request.send().await.map_err(|e| {
            self.health.failed(&self.peer);
            e.to_string()
        })?;
        let skip = match response.status() {
            reqwest::StatusCode::PARTIAL_CONTENT => {
                let from = response
                    .headers()
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_start);
                if from != Some(offset) {
                    return Err(format!("answered a range from {from:?}, not {offset}"));
                }
                0
            }
            reqwest::StatusCode::OK => offset,
            status => return Err(format!("answered {status}")),
        };
        let stream = response
            .bytes_stream()
            .map(|c| c.map_err(|e| e.to_string()));
        Ok((Box::pin(stream), skip))
    }
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<size>` value.
fn range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_peers_are_passed_over_for_a_while() {
        let health = PeerHealth::default();
        assert!(!health.is_down("a:1"));
        health.failed("a:1");
        assert!(health.is_down("a:1"));
        assert!(!health.is_down("b:1"));
        health
            .map()
            .insert("a:1".into(), Instant::now() - Duration::from_millis(1));
        assert!(!health.is_down("a:1"));
    }

    #[test]
    fn content_range_starts() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/1"), Some(0));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
