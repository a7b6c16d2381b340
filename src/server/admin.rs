//! `strata.admin.v1.Admin`: Strata's own calls, which containerd's API has no equivalent
//! of: garbage collection on demand (`strata gc`), and unpacking an image already in the
//! store (`strata image unpack`), in process as an [`imagestore::transfer::Transfer`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::namespace_of;
use crate::collector::Collector;
use crate::status::{join_error, to_status};
use api::admin::v1 as admin;
use imagestore::Report;
use imagestore::transfer::unpack::Unpacked;
use imagestore::transfer::{Transfer, Transfers};

/// The Admin service.
pub struct AdminService {
    collector: Arc<Collector>,
    transfers: Transfers,
}

impl AdminService {
    pub fn new(collector: Arc<Collector>, transfers: Transfers) -> Self {
        AdminService {
            collector,
            transfers,
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

/// Unpacks image `name` in `transfer`, noting each layer's state.
async fn unpack(transfer: &Transfer, name: &str) -> Result<admin::Unpacked, Status> {
    let mut layers = Vec::new();
    let u: Unpacked = transfer
        .unpack(name, None, |layer, state| {
            layers.push(admin::LayerState {
                digest: layer.to_string(),
                state: state.to_string(),
            })
        })
        .await
        .map_err(to_status)?;
    Ok(admin::Unpacked {
        name: name.to_string(),
        applied: u.applied as u64,
        existed: u.existed as u64,
        chain: u.chain,
        layers,
    })
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

    async fn unpack(
        &self,
        request: Request<admin::UnpackRequest>,
    ) -> Result<Response<admin::UnpackResponse>, Status> {
        let namespace = namespace_of(&request)?;
        let req = request.into_inner();
        if req.snapshotter.is_empty() {
            return Err(Status::invalid_argument("an unpack needs a snapshotter"));
        }
        let transfer = self
            .transfers
            .begin(&namespace, &req.snapshotter)
            .await
            .map_err(to_status)?;
        let image = unpack(&transfer, &req.name).await?;
        transfer.finish().await.map_err(to_status)?;
        Ok(Response::new(admin::UnpackResponse { image: Some(image) }))
    }
}
