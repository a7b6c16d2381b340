//! Serving HTTP/1 on a TCP address until the process ends: the metrics endpoint and the
//! fleet's peer API, each a function from request to response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Binds `address` and answers every request with `respond`; the address bound. `what`
/// names the server in logs.
pub async fn serve<F, Fut, B>(
    address: &str,
    what: &'static str,
    respond: F,
) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, server = what, "accept");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let respond = respond.clone();
            let service = hyper::service::service_fn(move |req| {
                let answer = respond(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, server = what, "connection");
                }
            });
        }
    });
    Ok(local)
}
