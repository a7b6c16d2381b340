//! The namespace a request names (`containerd-namespace`), checked with containerd's
//! identifier rule before any service reads or stores anything, for every service at once:
//! containerd validates it wherever it reads it from a request, so a name such as
//! `../../etc` is refused with InvalidArgument, never stored or listed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Wraps the gRPC services with the check.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceCheckLayer;

impl<S> tower::Layer<S> for NamespaceCheckLayer {
    type Service = NamespaceCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NamespaceCheck { inner }
    }
}

/// The service [`NamespaceCheckLayer`] wraps around the gRPC services.
#[derive(Debug, Clone)]
pub struct NamespaceCheck<S> {
    inner: S,
}

/// containerd's refusal of a request's namespace, if it has one to refuse.
fn refusal<B>(req: &http::Request<B>) -> Option<tonic::Status> {
    let value = req.headers().get(api::headers::NAMESPACE)?;
    let Ok(name) = value.to_str() else {
        return Some(tonic::Status::invalid_argument(
            "namespace validation: namespace is not valid UTF-8: invalid argument",
        ));
    };
    if name.is_empty() {
        return None;
    }
    imagestore::validate_identifier(name)
        .err()
        .map(|e| tonic::Status::invalid_argument(format!("namespace validation: {e}")))
}

impl<S, B> tower::Service<http::Request<B>> for NamespaceCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match refusal(&req) {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => Box::pin(self.inner.call(req)),
        }
    }
}
