//! `strata.admin.v1.Admin`: Strata's own calls. Garbage collection on demand (`strata gc`),
//! and image transfers run in the daemon, in process (`strata image pull|import|unpack`):
//! the request becomes an [`imagestore::transfer::Transfer`], whose progress is streamed
//! back; a client that goes away cancels it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::namespace_of;
use crate::collector::Collector;
use crate::status::{join_error, to_status};
use api::admin::v1 as admin;
use imagestore::transfer::pull::{Progress, PullOptions};
use imagestore::transfer::unpack::Unpacked;
use imagestore::transfer::{Applier, Transfer};
use imagestore::{ImageStore, Report, StoreSnapshots};

/// The Admin service.
pub struct AdminService {
    collector: Arc<Collector>,
    store: Arc<ImageStore>,
    snapshots: StoreSnapshots,
    applier: Arc<dyn Applier>,
    /// Registries pulled from over plain HTTP.
    insecure_registries: Vec<String>,
    /// Where imported archives are kept while they are imported.
    scratch: PathBuf,
}

impl AdminService {
    pub fn new(
        collector: Arc<Collector>,
        snapshots: StoreSnapshots,
        applier: Arc<dyn Applier>,
        insecure_registries: Vec<String>,
        scratch: PathBuf,
    ) -> Self {
        AdminService {
            store: Arc::clone(collector.store()),
            collector,
            snapshots,
            applier,
            insecure_registries,
            scratch,
        }
    }

    /// A transfer in `namespace` into `snapshotter`.
    async fn begin(&self, namespace: &str, snapshotter: &str) -> Result<Transfer, Status> {
        if snapshotter.is_empty() {
            return Err(Status::invalid_argument("a transfer needs a snapshotter"));
        }
        Transfer::begin(
            Arc::clone(&self.store),
            self.snapshots.clone(),
            Arc::clone(&self.applier),
            namespace,
            snapshotter,
        )
        .await
        .map_err(to_status)
    }
}

/// A report as the Admin API lists it.
fn removed(report: Report) -> Vec<admin::Removed> {
    let item = |kind: &str, namespace: String, id: String| admin::Removed {
        kind: kind.into(),
        namespace,
        id,
    };
    let namespaced = [
        ("lease", report.leases),
        ("content", report.content),
        ("image", report.images),
        ("ingest", report.ingests),
    ];
    let mut out: Vec<admin::Removed> = namespaced
        .into_iter()
        .flat_map(|(kind, items)| items.into_iter().map(move |(ns, id)| item(kind, ns, id)))
        .collect();
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

/// An unpack's result as the Admin API has it.
fn unpacked(name: &str, u: Unpacked, layers: Vec<(String, String)>) -> admin::Unpacked {
    admin::Unpacked {
        name: name.to_string(),
        applied: u.applied as u64,
        existed: u.existed as u64,
        chain: u.chain,
        layers: layers
            .into_iter()
            .map(|(digest, state)| admin::LayerState { digest, state })
            .collect(),
    }
}

/// Unpacks image `name` in `transfer`, noting each layer's state.
async fn unpack(transfer: &Transfer, name: &str) -> Result<admin::Unpacked, Status> {
    let mut layers = Vec::new();
    let u = transfer
        .unpack(name, None, |layer, state| {
            layers.push((layer.to_string(), state.to_string()))
        })
        .await
        .map_err(to_status)?;
    Ok(unpacked(name, u, layers))
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
            .map_err(join_error)?
            .map_err(to_status)?;
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
        let registry = oci_client::Reference::try_from(req.reference.as_str())
            .map_err(|e| Status::invalid_argument(format!("reference {:?}: {e}", req.reference)))?
            .resolve_registry()
            .to_string();
        let options = PullOptions {
            plain_http: req.plain_http || self.insecure_registries.contains(&registry),
            credentials: (!req.username.is_empty()).then_some((req.username, req.password)),
            platform: (!req.platform.is_empty()).then_some(req.platform),
        };
        let transfer = self.begin(&namespace, &req.snapshotter).await?;
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
            let pulled = tokio::select! {
                pulled = transfer.pull(&reference, &options, progress) => pulled,
                // The client went away: the pull stops (its downloads with it) and the
                // transfer's lease goes with it.
                () = tx.closed() => {
                    tracing::info!(reference, "pull cancelled");
                    return;
                }
            };
            let answer = match pulled {
                Ok(p) => transfer.finish().await.map_err(to_status).map(|()| p),
                Err(e) => {
                    tracing::info!(reference, error = %crate::status::chain(&e), "pull failed");
                    Err(to_status(e))
                }
            };
            let answer = answer.map(|p| admin::PullProgress {
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

    async fn import(
        &self,
        request: Request<Streaming<admin::ImportRequest>>,
    ) -> Result<Response<admin::ImportResponse>, Status> {
        let namespace = namespace_of(&request)?;
        let mut incoming = request.into_inner();
        let Some(first) = incoming.message().await? else {
            return Err(Status::invalid_argument("import stream without a request"));
        };
        // The archive, kept while it is imported (read in place, by offsets).
        let path = self.scratch.join(format!(
            "import-{}.tar",
            imagestore::transfer::unique_suffix()
        ));
        let archive = Scratch(path.clone());
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Status::internal(format!("create {}: {e}", path.display())))?;
        let mut next = Some(first.data.clone());
        while let Some(data) = next.take() {
            file.write_all(&data)
                .await
                .map_err(|e| Status::internal(format!("write {}: {e}", path.display())))?;
            next = incoming.message().await?.map(|m| m.data);
        }
        file.sync_all()
            .await
            .map_err(|e| Status::internal(format!("sync {}: {e}", path.display())))?;
        let transfer = self.begin(&namespace, &first.snapshotter).await?;
        let names = transfer.import(&path).await.map_err(to_status)?;
        drop(archive);
        let mut images = Vec::new();
        for name in names {
            if first.no_unpack {
                images.push(unpacked(&name, Unpacked::default(), Vec::new()));
            } else {
                images.push(unpack(&transfer, &name).await?);
            }
        }
        transfer.finish().await.map_err(to_status)?;
        Ok(Response::new(admin::ImportResponse { images }))
    }

    async fn unpack(
        &self,
        request: Request<admin::UnpackRequest>,
    ) -> Result<Response<admin::UnpackResponse>, Status> {
        let namespace = namespace_of(&request)?;
        let req = request.into_inner();
        let transfer = self.begin(&namespace, &req.snapshotter).await?;
        let image = unpack(&transfer, &req.name).await?;
        transfer.finish().await.map_err(to_status)?;
        Ok(Response::new(admin::UnpackResponse { image: Some(image) }))
    }
}

/// A scratch file, removed when dropped (also when the import fails or is cancelled).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
