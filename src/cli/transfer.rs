//! The client side of containerd's Transfer service, as ctr 2.x speaks it: a lease for the
//! transfer (expiring in a day, deleted after), the side streams opened and acknowledged
//! first (progress, credential requests, archive bytes), then the one Transfer call. Strata's
//! CLI moves images only this way, so it runs the same code in the daemon as ctr does.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Streaming};

use super::Error;
use api::any::{self, TypeUrl};
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::streaming::v1::StreamInit;
use api::services::streaming::v1::streaming_client::StreamingClient;
use api::services::transfer::v1::transfer_client::TransferClient;
use api::services::transfer::v1::{TransferOptions, TransferRequest};
use api::types::transfer as t;

/// The largest `Data` sent, and a receiver's grant (containerd's).
const MAX_CHUNK: usize = 32 * 1024;
const WINDOW: i32 = 64 * 1024;
/// How long the progress stream may take to end after the answer.
const PROGRESS_WAIT: Duration = Duration::from_secs(5);

/// One transfer's lease and streams.
pub struct Session {
    channel: Channel,
    namespace: String,
    lease: String,
}

/// A stream opened (and acknowledged): what the daemon sends, and a way to send to it
/// (dropped: the client's half-close).
pub struct SideStream {
    pub id: String,
    pub inbound: Streaming<Any>,
    pub outbound: mpsc::Sender<Any>,
}

impl SideStream {
    async fn send<M: Message + TypeUrl>(&self, message: &M) -> Result<(), Error> {
        self.outbound
            .send(any::pack(message))
            .await
            .map_err(|_| format!("stream {}: closed", self.id).into())
    }
}

impl Session {
    /// A session in `namespace` under a new lease.
    pub async fn begin(channel: Channel, namespace: &str) -> Result<Self, Error> {
        let expires = api::time::rfc3339_utc(SystemTime::now() + Duration::from_secs(24 * 3600));
        let id = format!("strata-cli-{}", std::process::id());
        // Labelled with this process: if it dies holding the lease, the daemon's next
        // transfer deletes it.
        let holder = imagestore::transfer::this_process();
        let create = lpb::CreateRequest {
            id: format!("{id}-{}", imagestore::unique_suffix()),
            labels: [
                (api::labels::GC_EXPIRE.to_string(), expires),
                (imagestore::transfer::HOLDER_LABEL.to_string(), holder),
            ]
            .into(),
        };
        let lease = LeasesClient::new(channel.clone())
            .create(super::request(namespace, create))
            .await?
            .into_inner()
            .lease
            .ok_or("the daemon made no lease")?
            .id;
        Ok(Session {
            channel,
            namespace: namespace.to_string(),
            lease,
        })
    }

    /// `message` in the session's namespace, under its lease.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = super::request(&self.namespace, message);
        r.metadata_mut()
            .insert(api::headers::LEASE, self.lease.parse().expect("lease id"));
        r
    }

    /// Opens a stream named `<prefix>-<unique>` and waits for the daemon's acknowledgement.
    pub async fn open(&self, prefix: &str) -> Result<SideStream, Error> {
        let id = format!("{prefix}-{}", imagestore::unique_suffix());
        let (outbound, rx) = mpsc::channel(16);
        outbound
            .send(any::pack(&StreamInit { id: id.clone() }))
            .await
            .expect("the receiver is here");
        let mut inbound = StreamingClient::new(self.channel.clone())
            .stream(self.request(ReceiverStream::new(rx)))
            .await?
            .into_inner();
        inbound
            .message()
            .await?
            .ok_or_else(|| format!("stream {id}: ended before its acknowledgement"))?;
        Ok(SideStream {
            id,
            inbound,
            outbound,
        })
    }

    /// The Transfer call (`progress` names the progress stream, if any); the lease goes
    /// after, whatever the answer.
    pub async fn transfer(
        self,
        source: Any,
        destination: Any,
        progress: Option<String>,
    ) -> Result<(), Error> {
        let mut request = self.request(TransferRequest {
            source: Some(source),
            destination: Some(destination),
            options: Some(TransferOptions {
                progress_stream: progress.unwrap_or_default(),
            }),
        });
        request
            .metadata_mut()
            .insert(api::headers::TRANSFER_DETAIL, "1".parse().expect("header"));
        let answer = TransferClient::new(self.channel.clone())
            .max_decoding_message_size(api::headers::MAX_MESSAGE_SIZE)
            .transfer(request)
            .await;
        let delete = lpb::DeleteRequest {
            id: self.lease.clone(),
            sync: false,
        };
        let _ = LeasesClient::new(self.channel.clone())
            .delete(super::request(&self.namespace, delete))
            .await;
        answer?;
        Ok(())
    }
}

/// Hands each progress event of `stream` to `each` until the daemon ends it; the task
/// doing it.
pub fn follow_progress(
    mut stream: SideStream,
    mut each: impl FnMut(t::Progress) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(message)) = stream.inbound.message().await {
            if let Some(p) = any::unpack::<t::Progress>(&message) {
                each(p);
            }
        }
    })
}

/// Waits (a while) for the progress task to see the stream end.
pub async fn progress_done(task: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(PROGRESS_WAIT, task).await;
}

/// Answers the daemon's credential requests on `stream` with `credentials` of the host it
/// names (user and secret), or none.
pub fn answer_credentials(
    mut stream: SideStream,
    credentials: impl Fn(&str) -> Option<(String, String)> + Send + 'static,
) {
    tokio::spawn(async move {
        while let Ok(Some(message)) = stream.inbound.message().await {
            let Some(asked) = any::unpack::<t::AuthRequest>(&message) else {
                continue;
            };
            let answer = match credentials(&asked.host) {
                Some((username, secret)) => t::AuthResponse {
                    auth_type: t::AuthType::Credentials.into(),
                    username,
                    secret,
                    expire_at: None,
                },
                None => t::AuthResponse {
                    auth_type: t::AuthType::Refresh.into(),
                    ..Default::default()
                },
            };
            if stream.send(&answer).await.is_err() {
                return;
            }
        }
    });
}

/// Sends what `reader` reads on `stream` (an archive to import), within the daemon's
/// grants, then half-closes; the task doing it (a read error fails it).
pub fn send_bytes(
    stream: SideStream,
    mut reader: impl Read + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let (chunks_tx, mut chunks) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        loop {
            let mut buf = vec![0u8; MAX_CHUNK];
            let read = reader.read(&mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            let end = matches!(&read, Ok(b) if b.is_empty()) || read.is_err();
            if chunks_tx.blocking_send(read).is_err() || end {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let SideStream {
            id,
            mut inbound,
            outbound,
        } = stream;
        let mut credit: i64 = 0;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|e| format!("read the archive: {e}"))?;
            if chunk.is_empty() {
                // The end: half-close, and wait for the daemon to end the stream.
                drop(outbound);
                while let Ok(Some(_)) = inbound.message().await {}
                return Ok(());
            }
            let mut at = 0;
            while at < chunk.len() {
                while credit <= 0 {
                    match inbound.message().await {
                        Ok(Some(m)) => {
                            if let Some(w) = any::unpack::<t::WindowUpdate>(&m) {
                                credit += i64::from(w.update);
                            }
                        }
                        _ => return Err(format!("stream {id}: the daemon stopped reading")),
                    }
                }
                let n = (chunk.len() - at).min(credit as usize);
                let data = t::Data {
                    data: chunk[at..at + n].to_vec(),
                };
                outbound
                    .send(any::pack(&data))
                    .await
                    .map_err(|_| format!("stream {id}: closed"))?;
                at += n;
                credit -= n as i64;
            }
        }
        Ok(())
    })
}

/// Writes what the daemon sends on `stream` (an exported archive) to `out`, granting it
/// room as it goes, until the daemon ends the stream; the task doing it.
pub fn receive_bytes(
    stream: SideStream,
    mut out: impl Write + Send + 'static,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let SideStream {
            id,
            mut inbound,
            outbound,
        } = stream;
        let mut window: i64 = 0;
        let mut written = 0u64;
        loop {
            if window < i64::from(WINDOW) {
                let grant = any::pack(&t::WindowUpdate { update: WINDOW });
                if outbound.send(grant).await.is_err() {
                    return Err(format!("stream {id}: closed"));
                }
                window += i64::from(WINDOW);
            }
            match inbound.message().await {
                Ok(Some(m)) => {
                    if let Some(t::Data { data }) = any::unpack::<t::Data>(&m) {
                        // Blocking, but small: the file is local.
                        out.write_all(&data).map_err(|e| format!("write: {e}"))?;
                        written += data.len() as u64;
                        window -= data.len() as i64;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(format!("stream {id}: {e}")),
            }
        }
        out.flush().map_err(|e| format!("write: {e}"))?;
        Ok(written)
    })
}

/// An image store as a transfer's source or destination.
pub fn image_store(name: &str, labels: HashMap<String, String>) -> t::ImageStore {
    t::ImageStore {
        name: name.to_string(),
        labels,
        ..Default::default()
    }
}

/// `os/arch[/variant]` as a platform.
pub fn platform(spec: &str) -> Result<api::types::Platform, Error> {
    let mut parts = spec.split('/');
    let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
        return Err(format!("platform {spec:?}: not os/arch[/variant]").into());
    };
    Ok(api::types::Platform {
        os: os.to_string(),
        architecture: architecture.to_string(),
        variant: parts.next().unwrap_or_default().to_string(),
        ..Default::default()
    })
}
