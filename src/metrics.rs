//! Prometheus metrics, served over HTTP on `metrics_address` (off by default): gRPC calls by
//! service, method and code (count, latency, in flight), layers applied and created (bytes
//! read and written, apply throughput), snapshots by instance and kind, and the space of
//! each instance's filesystem. Counters are process-wide atomics ([`METRICS`]), recorded
//! whether or not anyone scrapes; gauges of state are read at each scrape.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use snapshotter::{Filters, Kind};

use crate::instances::Instances;

type Labels = Vec<(&'static str, String)>;

/// Every metric Strata exports.
pub struct Metrics {
    registry: Registry,
    grpc_requests: Family<Labels, Counter>,
    grpc_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    grpc_in_flight: Family<Labels, Gauge>,
    layers_applied: Counter,
    layers_created: Counter,
    layers_reused: Counter,
    layer_read_bytes: Counter,
    layer_written_bytes: Counter,
    apply_throughput: Histogram,
    snapshots: Family<Labels, Gauge>,
    filesystem_size: Family<Labels, Gauge>,
    filesystem_avail: Family<Labels, Gauge>,
    /// Held from a scrape's refresh to its encoding: the gauges of state are cleared and
    /// set again at each scrape, so another scrape in between (two Prometheus servers)
    /// would print them half gone.
    scraping: Mutex<()>,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// gRPC calls being handled, all services together.
static CALLS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many gRPC calls are being handled right now.
pub fn calls_in_flight() -> usize {
    CALLS_IN_FLIGHT.load(Ordering::Acquire)
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~105 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let m = Metrics {
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency_histogram),
            grpc_in_flight: Family::default(),
            layers_applied: Counter::default(),
            layers_created: Counter::default(),
            layers_reused: Counter::default(),
            layer_read_bytes: Counter::default(),
            layer_written_bytes: Counter::default(),
            // 1 MB/s to ~4 GB/s.
            apply_throughput: Histogram::new(exponential_buckets(1e6, 2.0, 13)),
            snapshots: Family::default(),
            filesystem_size: Family::default(),
            filesystem_avail: Family::default(),
            registry: Registry::default(),
            scraping: Mutex::new(()),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls handled, by service, method and status code",
            m.grpc_requests.clone(),
        );
        registry.register_with_unit(
            "grpc_request_duration",
            "gRPC call latency, by service and method",
            Unit::Seconds,
            m.grpc_seconds.clone(),
        );
        registry.register(
            "grpc_requests_in_flight",
            "gRPC calls being handled, by service",
            m.grpc_in_flight.clone(),
        );
        registry.register(
            "layers_applied",
            "layers applied by the Diff service",
            m.layers_applied.clone(),
        );
        registry.register(
            "layers_created",
            "layers created by the Diff service",
            m.layers_created.clone(),
        );
        registry.register(
            "layers_reused",
            "extraction Prepares answered with a layer already committed on their parent",
            m.layers_reused.clone(),
        );
        registry.register_with_unit(
            "layer_read",
            "compressed layer bytes read by Apply",
            Unit::Bytes,
            m.layer_read_bytes.clone(),
        );
        registry.register_with_unit(
            "layer_written",
            "uncompressed layer bytes written into snapshots by Apply",
            Unit::Bytes,
            m.layer_written_bytes.clone(),
        );
        registry.register(
            "layer_apply_throughput_bytes_per_second",
            "uncompressed bytes per second of each Apply",
            m.apply_throughput.clone(),
        );
        registry.register(
            "snapshots",
            "snapshots, by instance and kind",
            m.snapshots.clone(),
        );
        registry.register_with_unit(
            "filesystem_size",
            "size of the filesystem holding each instance's root",
            Unit::Bytes,
            m.filesystem_size.clone(),
        );
        registry.register_with_unit(
            "filesystem_available",
            "space available on the filesystem holding each instance's root",
            Unit::Bytes,
            m.filesystem_avail.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A layer applied: `read` blob bytes, `written` tar bytes, in `took`.
    pub fn layer_applied(&self, read: u64, written: u64, took: Duration) {
        self.layers_applied.inc();
        self.layer_read_bytes.inc_by(read);
        self.layer_written_bytes.inc_by(written);
        self.apply_throughput
            .observe(written as f64 / took.as_secs_f64().max(1e-9));
    }

    /// A layer created.
    pub fn layer_created(&self) {
        self.layers_created.inc();
    }

    /// An extraction Prepare answered with a layer already committed.
    pub fn layer_reused(&self) {
        self.layers_reused.inc();
    }

    /// Sets the gauges of state from `instances` (on a blocking thread: List reads the
    /// index, statvfs may block).
    fn refresh(&self, instances: &Instances) {
        self.snapshots.clear();
        self.filesystem_size.clear();
        self.filesystem_avail.clear();
        for inst in instances.all() {
            let instance = || vec![("instance", inst.name.clone())];
            match inst.snapshotter.list(&Filters::default()) {
                Ok(infos) => {
                    for kind in [Kind::Active, Kind::Committed, Kind::View] {
                        let n = infos.iter().filter(|i| i.kind == kind).count();
                        let mut labels = instance();
                        labels.push(("kind", kind.as_str().to_string()));
                        self.snapshots.get_or_create(&labels).set(n as i64);
                    }
                }
                Err(e) => tracing::warn!(error = %e, instance = %inst.name, "metrics: list"),
            }
            match mountutil::fs::filesystem_space(&inst.root) {
                Ok((size, avail)) => {
                    self.filesystem_size
                        .get_or_create(&instance())
                        .set(size as i64);
                    self.filesystem_avail
                        .get_or_create(&instance())
                        .set(avail as i64);
                }
                Err(e) => tracing::warn!(error = %e, instance = %inst.name, "metrics: statvfs"),
            }
        }
    }

    /// The text of a scrape: the gauges of state refreshed from `instances`, then every
    /// metric encoded, one scrape at a time.
    fn scrape(&self, instances: &Instances) -> String {
        let _one_at_a_time = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh(instances);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Serves `/metrics` on `address` until the process ends.
pub async fn serve(address: &str, instances: Arc<Instances>) -> std::io::Result<SocketAddr> {
    crate::http::serve(address, "metrics", move |req| {
        respond(req, Arc::clone(&instances))
    })
    .await
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    instances: Arc<Instances>,
) -> hyper::Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut not_found = hyper::Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *not_found.status_mut() = hyper::StatusCode::NOT_FOUND;
        return not_found;
    }
    let body = tokio::task::spawn_blocking(move || METRICS.scrape(&instances))
        .await
        .unwrap_or_default();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

/// A tower layer recording every gRPC call: count by code, latency, calls in flight.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the gRPC services.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // "/containerd.services.snapshots.v1.Snapshots/Prepare"
        let (service, method) = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .map(|(s, m)| (s.to_string(), m.to_string()))
            .unwrap_or_default();
        let in_flight = METRICS
            .grpc_in_flight
            .get_or_create_owned(&vec![("service", service.clone())]);
        in_flight.inc();
        CALLS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let out = future.await;
            // Errors come back "trailers-only": the status is in the headers. A success
            // carries it in the trailers, so no status header means OK.
            let code = match &out {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Internal,
            };
            let labels = vec![("service", service), ("method", method)];
            METRICS
                .grpc_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let mut labels = labels;
            labels.push(("code", format!("{code:?}")));
            METRICS.grpc_requests.get_or_create(&labels).inc();
            in_flight.dec();
            CALLS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            out
        })
    }
}
