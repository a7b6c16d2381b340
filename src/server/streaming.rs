//! `containerd.services.streaming.v1.Streaming`: the side channels of transfers (progress,
//! credential requests, archive bytes). A client opens a stream, names it in a
//! `StreamInit`, and waits for one acknowledgement; the stream is then parked under
//! (namespace, id) until the Transfer call that names it claims it ([`Streams::claim`]).
//! A claimed [`Stream`] dropped ends the RPC with OK (the client reads EOF); a parked one
//! whose client goes away is forgotten.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use prost_types::Any;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::namespace_of;
use api::any::{self, TypeUrl};
use api::services::streaming::v1::StreamInit;
use api::services::streaming::v1::streaming_server::Streaming as StreamingApi;

/// What the server sends on a stream.
type Outbound = mpsc::UnboundedSender<Result<Any, Status>>;

/// A stream waiting for its transfer.
struct Parked {
    serial: u64,
    inbound: Streaming<Any>,
    outbound: Outbound,
    /// Tells the watcher that forgets the stream if its client goes that it was claimed.
    claimed: oneshot::Sender<()>,
}

/// The streams parked, by (namespace, id).
#[derive(Default)]
pub struct Streams {
    parked: Mutex<HashMap<(String, String), Parked>>,
    serial: AtomicU64,
}

/// A stream a transfer claimed: what the client sends, and a way to send to it.
pub struct Stream {
    pub id: String,
    inbound: Streaming<Any>,
    outbound: Outbound,
}

impl Stream {
    /// Sends `message`; false if the client is gone.
    pub fn send<M: Message + TypeUrl>(&self, message: &M) -> bool {
        self.outbound.send(Ok(any::pack(message))).is_ok()
    }

    /// The next message from the client; `None` once it half-closed.
    pub async fn recv(&mut self) -> Result<Option<Any>, Status> {
        self.inbound.message().await
    }

    /// A handle to send with, apart from the receiving half.
    pub fn sender(&self) -> StreamSender {
        StreamSender(self.outbound.clone())
    }

    /// Splits the stream into what the client sends and the sending half; the stream ends
    /// when every sending half is dropped.
    pub fn split(self) -> (Streaming<Any>, StreamSender) {
        (self.inbound, StreamSender(self.outbound))
    }
}

/// The sending half of a claimed stream.
#[derive(Clone)]
pub struct StreamSender(Outbound);

impl StreamSender {
    /// Sends `message`; false if the client is gone.
    pub fn send<M: Message + TypeUrl>(&self, message: &M) -> bool {
        self.0.send(Ok(any::pack(message))).is_ok()
    }

    /// Whether the client went away.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl Streams {
    /// Claims stream `id` of `namespace` (it is parked no more), if it is there.
    pub fn claim(&self, namespace: &str, id: &str) -> Option<Stream> {
        let key = (namespace.to_string(), id.to_string());
        let parked = self.parked.lock().expect("streams lock").remove(&key)?;
        let _ = parked.claimed.send(());
        Some(Stream {
            id: id.to_string(),
            inbound: parked.inbound,
            outbound: parked.outbound,
        })
    }

    /// Parks a new stream; AlreadyExists if the id is taken in the namespace.
    fn park(
        self: &Arc<Self>,
        namespace: String,
        id: String,
        inbound: Streaming<Any>,
        outbound: Outbound,
    ) -> Result<(), Status> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let (claimed, was_claimed) = oneshot::channel();
        let key = (namespace, id);
        {
            let mut parked = self.parked.lock().expect("streams lock");
            if parked.contains_key(&key) {
                return Err(Status::already_exists(format!(
                    "stream {:?} of namespace {:?}: already exists",
                    key.1, key.0
                )));
            }
            let watched = outbound.clone();
            parked.insert(
                key.clone(),
                Parked {
                    serial,
                    inbound,
                    outbound,
                    claimed,
                },
            );
            // Forgets the stream if its client goes before a transfer claims it.
            let streams = Arc::clone(self);
            tokio::spawn(async move {
                tokio::select! {
                    () = watched.closed() => {
                        let mut parked = streams.parked.lock().expect("streams lock");
                        if parked.get(&key).is_some_and(|p| p.serial == serial) {
                            parked.remove(&key);
                        }
                    }
                    _ = was_claimed => {}
                }
            });
        }
        Ok(())
    }
}

/// The Streaming service.
pub struct StreamingService {
    streams: Arc<Streams>,
}

impl StreamingService {
    pub fn new(streams: Arc<Streams>) -> Self {
        StreamingService { streams }
    }
}

#[tonic::async_trait]
impl StreamingApi for StreamingService {
    type StreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<Any, Status>> + Send + 'static>>;

    async fn stream(
        &self,
        request: Request<Streaming<Any>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let namespace = namespace_of(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before its StreamInit"))?;
        let init: StreamInit = any::unpack(&first).ok_or_else(|| {
            Status::invalid_argument(format!(
                "the first message of a stream is a StreamInit, not {:?}",
                first.type_url
            ))
        })?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("StreamInit without an id"));
        }
        let (outbound, rx) = mpsc::unbounded_channel();
        // The acknowledgement goes first, once the stream can be claimed.
        let ack = Any {
            type_url: any::EMPTY.to_string(),
            value: Vec::new(),
        };
        outbound.send(Ok(ack)).expect("the receiver is held here");
        self.streams.park(namespace, init.id, inbound, outbound)?;
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
