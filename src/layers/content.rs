//! Where the Diff service's blobs are: a local OCI-layout directory, or containerd's Content
//! gRPC service (Apply reads layers with `Read`, Diff writes them with `Write`). For
//! containerd the namespace and lease of the incoming request are forwarded; a blob written
//! without the caller's lease is written under a lease of Strata's own that expires, so
//! containerd's garbage collector leaves it until the client has taken it over. Calls run on
//! the daemon's runtime from the blocking thread doing the work.

use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime};

use differ::content::{BlobSink, BlobSource, BlobWriter, LocalStore};
use differ::{Digest, Error};
use std::sync::Arc;

use imagestore::ImageStore;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use api::services::content::v1 as pb;
use api::services::content::v1::content_client::ContentClient;
use api::services::leases::v1 as leases;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::namespaces::v1 as namespaces;
use api::services::namespaces::v1::namespaces_client::NamespacesClient;

/// A content store resolved for one call.
pub enum BlobStore {
    /// A local OCI-layout directory.
    Local(LocalStore),
    /// containerd's Content service in one namespace.
    Containerd(Box<ContainerdContent>),
    /// The daemon's own content store, in one namespace.
    Own(OwnContent),
}

impl BlobStore {
    /// Layer blob `digest` to apply. A blob is verified once, where it enters a store: a
    /// content store (the daemon's own, or containerd's) checked the digest of a blob when
    /// its write was committed, so what it hands out is not hashed again, only counted (its
    /// size is still checked) and its uncompressed stream hashed (the diffID); a write in
    /// progress in the own store checks the very bytes it hands out before it lets a reader
    /// reach the end. A local layout directory is only a directory: its blobs are hashed.
    pub fn open_layer(&self, digest: &Digest) -> differ::Result<differ::LayerSource> {
        match self {
            BlobStore::Local(s) => s.open(digest).map(differ::LayerSource::from),
            BlobStore::Containerd(s) => Ok(differ::LayerSource {
                reader: s.open(digest)?,
                verified: Some(digest.clone()),
            }),
            BlobStore::Own(s) => s.open_layer(digest),
        }
    }
}

impl BlobSource for BlobStore {
    fn open(&self, digest: &Digest) -> differ::Result<Box<dyn Read + Send>> {
        match self {
            BlobStore::Local(s) => s.open(digest),
            BlobStore::Containerd(s) => s.open(digest),
            BlobStore::Own(s) => s.open_layer(digest).map(|l| l.reader),
        }
    }
}

impl BlobSink for BlobStore {
    fn create(&self) -> differ::Result<Box<dyn BlobWriter>> {
        match self {
            BlobStore::Local(s) => s.create(),
            BlobStore::Containerd(s) => s.create(),
            BlobStore::Own(s) => Ok(Box::new(OwnWriter {
                inner: s.tree.create()?,
                owner: s.clone(),
            })),
        }
    }
}

/// The daemon's own content store for one call: layers are read from its blob tree by
/// digest, and a created layer is placed in the tree and recorded in the call's namespace
/// (and lease).
#[derive(Clone)]
pub struct OwnContent {
    store: Arc<ImageStore>,
    tree: LocalStore,
    namespace: String,
    lease: Option<String>,
}

impl OwnContent {
    pub fn new(store: Arc<ImageStore>, namespace: String, lease: Option<String>) -> Self {
        let tree = LocalStore::new(store.blobs().root());
        OwnContent {
            store,
            tree,
            namespace,
            lease,
        }
    }
}

impl OwnContent {
    /// Blob `digest`: from the tree (where only a verified write is committed), or, while a
    /// write of it runs (a pull that applies as it downloads), following that write, which
    /// verifies it. A write ending meanwhile has put the blob in the tree: it is looked for
    /// there again.
    fn open_layer(&self, digest: &Digest) -> differ::Result<differ::LayerSource> {
        let verified = |reader| differ::LayerSource {
            reader,
            verified: Some(digest.clone()),
        };
        match self.tree.open(digest) {
            Err(Error::NotFound(_)) => {}
            other => return other.map(verified),
        }
        match self.store.blobs().open_live(digest) {
            Ok(Some(live)) => Ok(verified(Box::new(live))),
            Ok(None) => self.tree.open(digest).map(verified),
            Err(e) => Err(Error::Store(format!("open {digest} while written: {e}"))),
        }
    }
}

/// A layer being written into the daemon's own store.
struct OwnWriter {
    inner: Box<dyn BlobWriter>,
    owner: OwnContent,
}

impl Write for OwnWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter for OwnWriter {
    fn commit(
        self: Box<Self>,
        digest: &Digest,
        size: u64,
        labels: &[(String, String)],
    ) -> differ::Result<()> {
        let OwnWriter { inner, owner } = *self;
        inner.commit(digest, size, labels)?;
        owner
            .store
            .content_record(
                &owner.namespace,
                digest,
                labels.iter().cloned().collect(),
                owner.lease.as_deref(),
            )
            .map_err(|e| Error::Store(format!("record {digest}: {e}")))
    }
}

/// containerd's Content service for one namespace (and lease).
#[derive(Clone)]
pub struct ContainerdContent {
    client: ContentClient<Channel>,
    /// The same connection, for the Leases service.
    channel: Channel,
    namespace: String,
    /// The namespace is a default, not the caller's (see [`ContainerdContent::guessed`]).
    namespace_guessed: bool,
    lease: Option<String>,
    runtime: Handle,
}

impl ContainerdContent {
    /// A client on `channel` for `namespace`; call from a thread outside the runtime.
    pub fn new(
        channel: Channel,
        namespace: String,
        lease: Option<String>,
        runtime: Handle,
    ) -> Self {
        ContainerdContent {
            client: ContentClient::new(channel.clone())
                .max_decoding_message_size(api::headers::MAX_MESSAGE_SIZE),
            channel,
            namespace,
            namespace_guessed: false,
            lease,
            runtime,
        }
    }

    /// The same, for a call whose namespace is unknown (containerd 1.7 does not pass it to
    /// proxy differs, and foreign mounts do not name it): the namespace given is a default,
    /// and a blob it lacks is looked for in the others. Any namespace that has the blob has
    /// the same bytes (the Apply checks the digest); the read needs no lease.
    pub fn guessed(mut self) -> Self {
        self.namespace_guessed = true;
        self
    }

    /// Whether calls carry a lease (the caller's or one of ours).
    pub fn has_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// Creates a lease of Strata's own in this namespace that containerd's collector drops
    /// `expiry` from now, and makes the calls that follow run under it: a blob written then
    /// is kept at least that long.
    pub fn lease_for(&mut self, expiry: Duration) -> differ::Result<String> {
        let id = format!("strata-diff-{}", imagestore::unique_suffix());
        let expires = api::time::rfc3339_utc(SystemTime::now() + expiry);
        let request = self.request(leases::CreateRequest {
            id: id.clone(),
            labels: [(api::labels::GC_EXPIRE.to_string(), expires)].into(),
        });
        let mut client = LeasesClient::new(self.channel.clone());
        self.runtime
            .block_on(client.create(request))
            .map_err(|s| remote_error(&format!("create lease {id}"), &s))?;
        self.lease = Some(id.clone());
        Ok(id)
    }

    /// Adds blob `digest` to this client's lease, and checks that the blob is there: a blob
    /// that already existed is not added to the lease of a write that found it, and could
    /// otherwise be collected before the client reads it.
    pub fn hold(&self, digest: &Digest) -> differ::Result<()> {
        let Some(lease) = self.lease.clone() else {
            return Ok(());
        };
        let add = self.request(leases::AddResourceRequest {
            id: lease.clone(),
            resource: Some(leases::Resource {
                id: digest.to_string(),
                r#type: "content".into(),
            }),
        });
        let info = self.request(pb::InfoRequest {
            digest: digest.to_string(),
        });
        let mut leases = LeasesClient::new(self.channel.clone());
        let mut content = self.client.clone();
        self.runtime
            .block_on(async move {
                leases.add_resource(add).await?;
                content.info(info).await
            })
            .map_err(|s| remote_error(&format!("{digest} in lease {lease}"), &s))?;
        Ok(())
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        self.request_in(&self.namespace, msg)
    }

    fn request_in<T>(&self, namespace: &str, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = namespace.parse() {
            r.metadata_mut().insert(api::headers::NAMESPACE, v);
        }
        if let Some(Ok(v)) = self.lease.as_ref().map(|l| l.parse()) {
            r.metadata_mut().insert(api::headers::LEASE, v);
        }
        r
    }

    /// A Read stream of blob `digest` in namespace `namespace`, once Info found it there.
    fn read_in(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Streaming<pb::ReadContentResponse>, Status> {
        let mut client = self.client.clone();
        let info = self.request_in(
            namespace,
            pb::InfoRequest {
                digest: digest.to_string(),
            },
        );
        let read = self.request_in(
            namespace,
            pb::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
        );
        self.runtime.block_on(async move {
            client.info(info).await?;
            Ok::<_, Status>(client.read(read).await?.into_inner())
        })
    }

    /// containerd's namespaces other than this client's.
    fn other_namespaces(&self) -> Result<Vec<String>, Status> {
        let mut client = NamespacesClient::new(self.channel.clone());
        let listed = self
            .runtime
            .block_on(client.list(Request::new(namespaces::ListNamespacesRequest::default())))?;
        Ok(listed
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .filter(|n| *n != self.namespace)
            .collect())
    }
}

impl BlobSource for ContainerdContent {
    fn open(&self, digest: &Digest) -> differ::Result<Box<dyn Read + Send>> {
        let stream = match self.read_in(&self.namespace, digest) {
            Err(s) if s.code() == Code::NotFound && self.namespace_guessed => {
                let others = self
                    .other_namespaces()
                    .map_err(|e| remote_error("list namespaces", &e))?;
                let found = others.iter().find_map(|ns| match self.read_in(ns, digest) {
                    Err(e) if e.code() == Code::NotFound => None,
                    other => Some(other),
                });
                if found.is_some() {
                    tracing::debug!(%digest, "blob found outside the default namespace");
                }
                found.unwrap_or(Err(s))
            }
            other => other,
        };
        let stream = stream.map_err(|s| remote_error(digest.as_str(), &s))?;
        Ok(Box::new(StreamReader {
            stream,
            chunk: Vec::new(),
            pos: 0,
            runtime: self.runtime.clone(),
        }))
    }
}

/// A Read stream as a blocking reader.
struct StreamReader {
    stream: Streaming<pb::ReadContentResponse>,
    chunk: Vec<u8>,
    pos: usize,
    runtime: Handle,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.runtime.block_on(self.stream.message()) {
                Ok(Some(m)) => {
                    self.chunk = m.data;
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                // Kept whole, so the apply reports the store's class (Unavailable, ...).
                Err(s) => return Err(io::Error::other(remote_error("content read", &s))),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

const WRITE_CHUNK: usize = 1 << 20;

impl BlobSink for ContainerdContent {
    fn create(&self) -> differ::Result<Box<dyn BlobWriter>> {
        let (tx, rx) = mpsc::channel::<pb::WriteContentRequest>(4);
        let mut client = self.client.clone();
        let request = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let responses = self.runtime.spawn(async move {
            let mut stream = client.write(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<_, Status>(())
        });
        Ok(Box::new(ContentWriter {
            tx,
            responses: Some(responses),
            buf: Vec::with_capacity(WRITE_CHUNK),
            offset: 0,
            reference: format!("strata-diff-{}", imagestore::unique_suffix()),
            runtime: self.runtime.clone(),
        }))
    }
}

struct ContentWriter {
    tx: mpsc::Sender<pb::WriteContentRequest>,
    responses: Option<tokio::task::JoinHandle<Result<(), Status>>>,
    buf: Vec<u8>,
    offset: i64,
    reference: String,
    runtime: Handle,
}

impl ContentWriter {
    fn send(&mut self, req: pb::WriteContentRequest) -> io::Result<()> {
        self.tx
            .blocking_send(req)
            .map_err(|_| io::Error::other("containerd closed the content write"))
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
        let len = data.len() as i64;
        let req = pb::WriteContentRequest {
            action: pb::WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset: self.offset,
            data,
            ..Default::default()
        };
        self.send(req)?;
        self.offset += len;
        Ok(())
    }
}

impl Write for ContentWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(WRITE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == WRITE_CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for ContentWriter {
    fn commit(
        mut self: Box<Self>,
        digest: &Digest,
        size: u64,
        labels: &[(String, String)],
    ) -> differ::Result<()> {
        let io_err = |e| Error::io("write content", digest.as_str(), e);
        self.flush_chunk().map_err(io_err)?;
        let req = pb::WriteContentRequest {
            action: pb::WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            offset: self.offset,
            total: size as i64,
            expected: digest.to_string(),
            labels: labels.iter().cloned().collect(),
            ..Default::default()
        };
        self.send(req).map_err(io_err)?;
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        let responses = self.responses.take().expect("committed once");
        match self.runtime.block_on(responses) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(s)) if s.code() == Code::AlreadyExists => Ok(()),
            Ok(Err(s)) => Err(remote_error(digest.as_str(), &s)),
            Err(e) => Err(io_err(io::Error::other(e.to_string()))),
        }
    }
}

/// A status from containerd (about `what`) as a differ error of the same class.
pub fn remote_error(what: &str, s: &Status) -> differ::Error {
    use differ::Error as D;
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        Code::NotFound => D::NotFound(msg),
        Code::InvalidArgument => D::InvalidArgument(msg),
        Code::Unimplemented => D::NotImplemented(msg),
        Code::Unavailable => D::Unavailable(msg),
        Code::DeadlineExceeded => D::TimedOut(msg),
        code => D::Store(format!("{msg} ({code:?})")),
    }
}
