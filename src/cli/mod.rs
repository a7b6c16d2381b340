//! The command-line client: talks to a running daemon over its socket.

pub mod gc;
pub mod layer;
pub mod progress;
pub mod snapshot;
pub mod store;

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::server::MAX_MESSAGE_SIZE;

/// A connected snapshots client.
pub type SnapshotsClient =
    crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient<Channel>;

/// Opens a gRPC channel to the daemon's unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_with_connector(socket_connector(path))
        .await
}

/// A channel to the daemon at `path` that connects on first use (the daemon's own
/// connection to itself, made before it serves).
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(socket_connector(path))
}

fn endpoint() -> Endpoint {
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://strata.sock")
}

fn socket_connector(
    path: &Path,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let path: PathBuf = path.to_path_buf();
    tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    })
}

/// A snapshots client on `channel` with containerd's message size limits.
pub fn snapshots_client(channel: Channel) -> SnapshotsClient {
    SnapshotsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
