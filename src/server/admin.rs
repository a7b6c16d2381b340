//! `strata.admin.v1.Admin`: Strata's own calls. Garbage collection on demand (`strata gc`),
//! and pulling an image in the daemon (`strata image pull`): the pull is a client of the
//! daemon's own services, over its own socket, except for blob bytes, which go from the
//! registry straight into the content store.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use super::collector::Collector;
use super::namespace_of;
use crate::unpack::Client;
use crate::unpack::pull::{Progress, PullOptions};
use api::admin::v1 as admin;
use imagestore::{ImageStore, Report};

/// The Admin service.
pub struct AdminService {
    collector: Arc<Collector>,
    store: Arc<ImageStore>,
    /// The daemon's own socket, which its pulls are clients of.
    address: PathBuf,
    /// Registries pulled from over plain HTTP.
    insecure_registries: Vec<String>,
}

impl AdminService {
    pub fn new(
        collector: Arc<Collector>,
        store: Arc<ImageStore>,
        address: PathBuf,
        insecure_registries: Vec<String>,
    ) -> Self {
        AdminService {
            collector,
            store,
            address,
            insecure_registries,
        }
    }
}

/// A report as the Admin API lists it.
fn removed(report: Report) -> Vec<admin::Removed> {
    let item = |kind: &str, namespace: String, id: String| admin::Removed {
        kind: kind.into(),
        namespace,
        id,
    };
    let mut out = Vec::new();
    out.extend(
        report
            .leases
            .into_iter()
            .map(|(ns, id)| item("lease", ns, id)),
    );
    out.extend(
        report
            .content
            .into_iter()
            .map(|(ns, d)| item("content", ns, d)),
    );
    out.extend(
        report
            .images
            .into_iter()
            .map(|(ns, name)| item("image", ns, name)),
    );
    out.extend(
        report
            .ingests
            .into_iter()
            .map(|(ns, r)| item("ingest", ns, r)),
    );
    out.extend(
        report
            .snapshots
            .into_iter()
            .map(|(s, k)| item("snapshot", String::new(), format!("{s}/{k}"))),
    );
    out.extend(
        report
            .blobs
            .into_iter()
            .map(|d| item("blob", String::new(), d)),
    );
    out
}

#[tonic::async_trait]
impl admin::admin_server::Admin for AdminService {
    async fn collect_garbage(
        &self,
        request: Request<admin::CollectGarbageRequest>,
    ) -> Result<Response<admin::CollectGarbageResponse>, Status> {
        let dry_run = request.into_inner().dry_run;
        let collector = Arc::clone(&self.collector);
        let report = tokio::task::spawn_blocking(move || collector.collect(dry_run))
            .await
            .map_err(crate::status::join_error)?
            .map_err(crate::status::to_status)?;
        Ok(Response::new(admin::CollectGarbageResponse {
            removed: removed(report),
        }))
    }

    type PullStream = UnboundedReceiverStream<Result<admin::PullProgress, Status>>;

    async fn pull(
        &self,
        request: Request<admin::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let namespace = namespace_of(&request)?;
        let req = request.into_inner();
        if req.reference.is_empty() {
            return Err(Status::invalid_argument("pull needs a reference"));
        }
        if req.snapshotter.is_empty() {
            return Err(Status::invalid_argument("pull needs a snapshotter"));
        }
        let channel = api::channel::connect_lazy(&self.address);
        let mut client = if req.holder.is_empty() {
            Client::new(channel, &namespace, &req.snapshotter)
        } else {
            Client::for_holder(channel, &namespace, &req.snapshotter, &req.holder)
        };
        let registry = crate::unpack::pull::registry_of(&req.reference)
            .map_err(|e| Status::invalid_argument(crate::status::chain(&e)))?;
        let options = PullOptions {
            plain_http: req.plain_http || self.insecure_registries.contains(&registry),
            credentials: (!req.username.is_empty()).then_some((req.username, req.password)),
            platform: (!req.platform.is_empty()).then_some(req.platform),
        };
        let store = Arc::clone(&self.store);
        // Progress is small and comes at most once per MiB of a blob: unbounded is fine.
        let (tx, rx) = mpsc::unbounded_channel();
        let reports = tx.clone();
        let progress: Progress = Arc::new(move |item: &str, state: &str, done, total| {
            let _ = reports.send(Ok(admin::PullProgress {
                item: item.to_string(),
                state: state.to_string(),
                done,
                total,
                summary: None,
            }));
        });
        tokio::spawn(async move {
            let reference = req.reference;
            let pulled = {
                let work = client.pull(store, &reference, &options, progress);
                tokio::select! {
                    pulled = work => Some(pulled),
                    () = tx.closed() => None,
                }
            };
            if !matches!(pulled, Some(Ok(_))) {
                // Cancelled (the client went away: the downloads stopped with the pull) or
                // failed: what only the pull's lease held is collected.
                tracing::info!(reference, cancelled = pulled.is_none(), "pull ended early");
                if let Err(e) = client.release_lease().await {
                    tracing::warn!(error = %crate::status::chain(&e), "could not drop an unfinished pull's lease");
                }
            }
            let Some(pulled) = pulled else {
                return;
            };
            let answer = pulled
                .map_err(crate::status::to_status)
                .map(|p| admin::PullProgress {
                    item: reference.clone(),
                    state: "done".into(),
                    done: 0,
                    total: 0,
                    summary: Some(admin::PullSummary {
                        downloaded: p.downloaded as u64,
                        bytes: p.bytes,
                        present: p.present as u64,
                        applied: p.unpacked.applied as u64,
                        existed: p.unpacked.existed as u64,
                        chain: p.unpacked.chain,
                    }),
                });
            let _ = tx.send(answer);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}
