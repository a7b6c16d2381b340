//! gRPC channels to a daemon's unix socket (Strata's, or containerd's), with containerd's
//! message size limits applied by the clients made on them.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Opens a channel to the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_with_connector(socket_connector(path))
        .await
}

/// A channel to the unix socket at `path` that connects on first use.
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(socket_connector(path))
}

fn endpoint() -> Endpoint {
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://localhost")
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
