//! The fleet's peer API: this node's content store, read-only, over the OCI distribution
//! API (`GET`/`HEAD` `/v2/`, `/v2/<name>/blobs/<digest>` with `Range`,
//! `/v2/<name>/manifests/<digest>`), for the other nodes of the fleet and for the node's
//! own containerd as a registry mirror. Only content-addressed data is served: a manifest
//! asked for by tag is not found here (a mirror client goes on to the next host). Every
//! request must carry the fleet's secret as a bearer token. Blobs still downloading are
//! served as they arrive; a blob this node lacks is fetched for the request when it says
//! from which registry (`?ns=`, as containerd's mirror requests do) and how big it is.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use imagestore::transfer::fleet::{BlobRequest, Fleet, Served};
use imagestore::transfer::source::{
    LOCAL_ONLY_HEADER, PEER_HEADER, PLAIN_HTTP_HEADER, SIZE_HEADER,
};

type Body = BoxBody<Bytes, io::Error>;

/// The largest manifest served (containerd refuses larger ones too).
const MANIFEST_MAX: u64 = 4 << 20;
/// Bytes read from a blob for one frame of the answer.
const FRAME: usize = 256 * 1024;

/// Serves the peer API on `address` until the process ends.
pub async fn serve(address: &str, fleet: Arc<Fleet>) -> io::Result<SocketAddr> {
    crate::http::serve(address, "fleet", move |req| {
        respond(req, Arc::clone(&fleet))
    })
    .await
}

/// What a request asks for.
#[derive(Debug, PartialEq)]
enum Asked<'a> {
    /// `/v2/`: the API version check.
    Base,
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    Manifest {
        name: &'a str,
        digest: &'a str,
    },
    /// Anything else, a manifest by tag included.
    Unknown,
}

fn asked(path: &str) -> Asked<'_> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Asked::Unknown;
    };
    if rest.is_empty() || rest == "/" {
        return Asked::Base;
    }
    let rest = &rest[1..];
    let by_digest = |d: &str| d.starts_with("sha256:") && differ::Digest::parse(d).is_ok();
    if let Some((name, digest)) = rest.rsplit_once("/blobs/")
        && !name.is_empty()
        && by_digest(digest)
    {
        return Asked::Blob { name, digest };
    }
    if let Some((name, digest)) = rest.rsplit_once("/manifests/")
        && !name.is_empty()
        && by_digest(digest)
    {
        return Asked::Manifest { name, digest };
    }
    Asked::Unknown
}

/// An answer of the distribution API's error form.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

async fn respond(req: hyper::Request<hyper::body::Incoming>, fleet: Arc<Fleet>) -> Response<Body> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !fleet.authorized(presented) {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the fleet's secret is required",
        );
    }
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this API is read-only",
            );
        }
    };
    let header_text = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let range = header_text(header::RANGE.as_str()).map(parse_range);
    let from = match range {
        None => 0,
        Some(Some(from)) => from,
        Some(None) => {
            return error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "only bytes=<from>- ranges",
            );
        }
    };
    // `ns`: the registry a mirror client (containerd) or a peer asks on behalf of.
    let upstream = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
    });
    match asked(req.uri().path()) {
        Asked::Base => {
            let mut r = Response::new(full(Bytes::from_static(b"{}")));
            r.headers_mut().insert(
                "docker-distribution-api-version",
                HeaderValue::from_static("registry/2.0"),
            );
            r
        }
        Asked::Unknown => error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "only content named by its digest is served here",
        ),
        // A HEAD is answered from this store only: asking is no reason to fetch.
        Asked::Blob { digest, .. } if head => {
            let (f, d) = (Arc::clone(&fleet), digest.to_string());
            match off_runtime(move || f.open_blob(&d, true).map_err(|e| e.to_string())).await {
                Ok(Some(served)) => send(served, from, head, digest, None),
                Ok(None) => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", digest),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e),
            }
        }
        Asked::Blob { name, digest } => {
            let request = BlobRequest {
                digest: digest.to_string(),
                repository: name.to_string(),
                upstream,
                size: header_text(SIZE_HEADER).and_then(|s| s.parse().ok()),
                plain_http: header_text(PLAIN_HTTP_HEADER).is_some(),
                from_peer: header_text(PEER_HEADER).is_some(),
                local_only: header_text(LOCAL_ONLY_HEADER).is_some(),
            };
            match fleet.serve_blob(request).await {
                Ok(Some(served)) => send(served, from, head, digest, None),
                Ok(None) => {
                    tracing::debug!(digest, query = ?req.uri().query(), "fleet: blob not here");
                    error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", digest)
                }
                Err(e) => {
                    tracing::info!(digest, error = %e, "fleet: a blob could not be served");
                    error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string())
                }
            }
        }
        Asked::Manifest { digest, .. } => {
            let (f, d) = (Arc::clone(&fleet), digest.to_string());
            // Only a committed manifest, of a manifest's size: its media type is read from it.
            let read = off_runtime(move || {
                let Some(served) = f.open_blob(&d, false).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                if served.size.is_none_or(|s| s > MANIFEST_MAX) {
                    return Ok(None);
                }
                let mut manifest = Vec::new();
                let mut reader = served.reader;
                reader
                    .read_to_end(&mut manifest)
                    .map_err(|e| e.to_string())?;
                Ok(Some(manifest))
            });
            match read.await {
                Ok(Some(manifest)) => {
                    let kind = media_type(&manifest);
                    let served = Served {
                        size: Some(manifest.len() as u64),
                        reader: Box::new(io::Cursor::new(manifest)),
                    };
                    send(served, from, head, digest, Some(kind))
                }
                Ok(None) => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", digest),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e),
            }
        }
    }
}

/// Runs `f` on the blocking pool; its error, or the task's, as text.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// The first byte of a `Range: bytes=<from>-` request; `None` for any other form.
fn parse_range(value: &str) -> Option<u64> {
    let (from, to) = value.strip_prefix("bytes=")?.split_once('-')?;
    if !to.is_empty() {
        return None;
    }
    from.parse().ok()
}

/// The media type a manifest or index names, else OCI's manifest.
fn media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .unwrap_or_else(|| api::media_types::OCI_MANIFEST.to_string())
}

/// Answers with `served` from byte `from` on (206 for a range), streamed from a blocking
/// reader; a read that fails ends the body with an error (the client sees a broken
/// transfer, and resumes elsewhere).
fn send(
    served: Served,
    from: u64,
    head: bool,
    digest: &str,
    media_type: Option<String>,
) -> Response<Body> {
    let size = served.size;
    if let Some(size) = size
        && from > 0
        && from >= size
    {
        return error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
            "past the end",
        );
    }
    // A blob still downloading whose size nobody said: whole, without a length.
    let from = if size.is_some() { from } else { 0 };
    let body = if head {
        full(Bytes::new())
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Frame<Bytes>>>(4);
        let mut reader = served.reader;
        tokio::task::spawn_blocking(move || {
            let skipped = io::copy(&mut reader.by_ref().take(from), &mut io::sink());
            if let Err(e) = skipped {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            // No further than the size: a blob still being written is not waited on past
            // its last byte (its commit), which would hold this thread for nothing.
            let mut reader = reader.take(size.map_or(u64::MAX, |s| s - from));
            loop {
                let mut buf = vec![0u8; FRAME];
                match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Frame::data(buf.into()))).is_err() {
                            return; // The client went away.
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    };
    let mut r = Response::new(body);
    let headers = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(digest) {
        headers.insert("docker-content-digest", v);
    }
    let kind = media_type.unwrap_or_else(|| "application/octet-stream".into());
    if let Ok(v) = HeaderValue::from_str(&kind) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(size) = size {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size - from));
        if from > 0 {
            let range = format!("bytes {from}-{}/{size}", size - 1);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&range).expect("ASCII"),
            );
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_as_the_distribution_api_names_them() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(asked("/v2/"), Asked::Base);
        assert_eq!(asked("/v2"), Asked::Base);
        assert_eq!(
            asked(&format!("/v2/library/debian/blobs/{d}")),
            Asked::Blob {
                name: "library/debian",
                digest: &d
            }
        );
        assert_eq!(
            asked(&format!("/v2/a/manifests/{d}")),
            Asked::Manifest {
                name: "a",
                digest: &d
            }
        );
        assert_eq!(asked("/v2/a/manifests/latest"), Asked::Unknown);
        assert_eq!(asked("/v2/a/blobs/sha256:short"), Asked::Unknown);
        assert_eq!(asked(&format!("/v2//blobs/{d}")), Asked::Unknown);
        assert_eq!(asked("/metrics"), Asked::Unknown);
        assert_eq!(parse_range("bytes=10-"), Some(10));
        assert_eq!(parse_range("bytes=10-20"), None);
        assert_eq!(parse_range("items=1-"), None);
    }
}
