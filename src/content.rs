//! Blob source and sink over containerd's Content gRPC service: Apply reads layers with
//! `Read`, Diff writes them with `Write`. The namespace and lease of the incoming request are
//! forwarded; calls run on the daemon's runtime from the blocking thread doing the work.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use differ::content::{BlobSink, BlobSource, BlobWriter};
use differ::{Digest, Error};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use crate::api::services::content::v1 as pb;
use crate::api::services::content::v1::content_client::ContentClient;

/// gRPC metadata key of the containerd namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// gRPC metadata key of the containerd lease.
pub const LEASE_HEADER: &str = "containerd-lease";

/// containerd's Content service for one namespace (and lease).
#[derive(Clone)]
pub struct ContainerdContent {
    client: ContentClient<Channel>,
    namespace: String,
    lease: Option<String>,
    runtime: Handle,
}

/// A lazily connected channel to containerd's socket.
pub fn containerd_channel(socket: PathBuf) -> Channel {
    tonic::transport::Endpoint::from_static("http://containerd.sock").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }),
    )
}

fn status_error(what: &str, s: Status) -> Error {
    match s.code() {
        Code::NotFound => Error::NotFound(format!("{what}: {}", s.message())),
        Code::InvalidArgument => Error::InvalidArgument(format!("{what}: {}", s.message())),
        _ => Error::Io {
            op: "containerd content",
            path: what.into(),
            source: io::Error::other(format!("{:?}: {}", s.code(), s.message())),
        },
    }
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
            client: ContentClient::new(channel)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
            namespace,
            lease,
            runtime,
        }
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        if let Some(Ok(v)) = self.lease.as_ref().map(|l| l.parse()) {
            r.metadata_mut().insert(LEASE_HEADER, v);
        }
        r
    }
}

impl BlobSource for ContainerdContent {
    fn open(&self, digest: &Digest) -> differ::Result<Box<dyn Read + Send>> {
        let mut client = self.client.clone();
        let info = self.request(pb::InfoRequest {
            digest: digest.to_string(),
        });
        let read = self.request(pb::ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        });
        let stream = self.runtime.block_on(async move {
            client.info(info).await?;
            Ok::<_, Status>(client.read(read).await?.into_inner())
        });
        let stream = stream.map_err(|s| status_error(digest.as_str(), s))?;
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
                Err(s) => return Err(io::Error::other(format!("content read: {}", s.message()))),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

const WRITE_CHUNK: usize = 1 << 20;
static REF_SEQ: AtomicU64 = AtomicU64::new(0);

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
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(Box::new(ContentWriter {
            tx,
            responses: Some(responses),
            buf: Vec::with_capacity(WRITE_CHUNK),
            offset: 0,
            reference: format!(
                "strata-diff-{nanos}-{}",
                REF_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
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
            Ok(Err(s)) => Err(status_error(digest.as_str(), s)),
            Err(e) => Err(io_err(io::Error::other(e.to_string()))),
        }
    }
}
