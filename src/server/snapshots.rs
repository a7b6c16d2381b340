//! `containerd.services.snapshots.v1.Snapshots`: protobuf in, snapshotter call on a blocking
//! thread, protobuf out.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use snapshotter::{Filters, Snapshotter};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::convert::{info_from_pb, info_to_pb, labels_from_pb, mounts_to_pb};
use crate::metrics::METRICS;
use crate::status::{invalid, join_error, to_status};
use api::services::snapshots::v1 as pb;
use api::services::snapshots::v1::snapshots_server::Snapshots;
use imagestore::{Caller, StoreError, StoreSnapshots};

/// List answers are split so each message stays well under containerd's 16 MiB limit.
const LIST_BATCH_BYTES: usize = 4 << 20;

/// The Snapshots service over a set of instances, seen through the image store (which owns
/// the snapshots made under its leases).
pub struct SnapshotsService {
    snapshots: StoreSnapshots,
    /// Snapshotter calls in flight.
    in_flight: Arc<AtomicUsize>,
}

/// Counts a call in flight until dropped (also when it panics).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SnapshotsService {
    /// Serves `snapshots`.
    pub fn new(snapshots: StoreSnapshots) -> Self {
        SnapshotsService {
            snapshots,
            in_flight: Arc::default(),
        }
    }

    /// Who a request comes from: its namespace and lease.
    fn caller<T>(request: &Request<T>) -> Caller {
        Caller {
            namespace: super::namespace_of(request).ok(),
            lease: super::lease_of(request),
        }
    }

    /// Runs `f` on the store's view of the snapshotters. Snapshotter calls block (each
    /// mutation waits for the disk), so they run on the blocking pool, except a call that
    /// finds no other in flight: that one runs on the runtime thread that received it, since
    /// handing it to the pool and back costs two thread wake-ups, about as much as a
    /// metadata call itself (one client's Stat: 170 µs inline, 275 µs through the pool).
    /// Calls arriving meanwhile go to the pool, so at most one runtime thread is ever busy
    /// this way and the others (the runtime has at least two) keep serving.
    async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&StoreSnapshots) -> imagestore::Result<T> + Send + 'static,
    {
        let alone = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        let in_flight = InFlight(Arc::clone(&self.in_flight));
        if alone {
            let result = catch_unwind(AssertUnwindSafe(|| f(&self.snapshots)))
                .map_err(|_| Status::internal("snapshotter call panicked"))?;
            drop(in_flight);
            return result.map_err(to_status);
        }
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            let _in_flight = in_flight;
            f(&snapshots)
        })
        .await
        .map_err(join_error)?
        .map_err(to_status)
    }

    /// Runs `f` against the snapshotter `name` selects (a call the store has no part in).
    async fn plain<T, F>(&self, name: String, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Snapshotter) -> snapshotter::Result<T> + Send + 'static,
    {
        self.call(move |s| {
            let (_, snapshotter) = s.snapshotter(&name)?;
            Ok(f(snapshotter.as_ref())?)
        })
        .await
    }
}

/// Splits infos into List messages of bounded encoded size.
fn batch_infos(infos: Vec<pb::Info>) -> Vec<pb::ListSnapshotsResponse> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for info in infos {
        let len = info.encoded_len() + 8;
        if size + len > LIST_BATCH_BYTES && !batch.is_empty() {
            out.push(pb::ListSnapshotsResponse {
                info: std::mem::take(&mut batch),
            });
            size = 0;
        }
        size += len;
        batch.push(info);
    }
    if !batch.is_empty() {
        out.push(pb::ListSnapshotsResponse { info: batch });
    }
    out
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let caller = Self::caller(&request);
        let r = request.into_inner();
        let labels = labels_from_pb(r.labels);
        let mounts = self
            .call(move |s| {
                let result = s.prepare(&caller, &r.snapshotter, &r.key, &r.parent, labels);
                if let Err(StoreError::Snapshot(snapshotter::Error::LayerCommitted { .. })) =
                    &result
                {
                    METRICS.layer_reused();
                }
                result
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let caller = Self::caller(&request);
        let r = request.into_inner();
        let labels = labels_from_pb(r.labels);
        let mounts = self
            .call(move |s| s.view(&caller, &r.snapshotter, &r.key, &r.parent, labels))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = request.into_inner();
        let mounts = self.plain(r.snapshotter, move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = Self::caller(&request);
        let r = request.into_inner();
        let labels = labels_from_pb(r.labels);
        self.call(move |s| s.commit(&caller, &r.snapshotter, &r.name, &r.key, labels, &r.parent))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.call(move |s| s.remove(&r.snapshotter, &r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self.plain(r.snapshotter, move |s| s.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = info_from_pb(r.info.ok_or_else(|| invalid("update needs info"))?)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .plain(r.snapshotter, move |s| s.update(info, &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let filters = Filters::parse(&r.filters).map_err(to_status)?;
        let infos = self.plain(r.snapshotter, move |s| s.list(&filters)).await?;
        let batches = batch_infos(infos.into_iter().map(info_to_pb).collect());
        Ok(Response::new(Box::pin(tokio_stream::iter(
            batches.into_iter().map(Ok),
        ))))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = request.into_inner();
        let u = self.plain(r.snapshotter, move |s| s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.plain(r.snapshotter, |s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_batches_stay_under_the_limit() {
        let big = "x".repeat(3000);
        let infos: Vec<pb::Info> = (0..5000)
            .map(|i| pb::Info {
                name: format!("snap-{i}"),
                labels: [("l".to_string(), big.clone())].into(),
                ..Default::default()
            })
            .collect();
        let batches = batch_infos(infos);
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(|b| b.info.len()).sum::<usize>(), 5000);
        for b in &batches {
            assert!(b.encoded_len() < api::headers::MAX_MESSAGE_SIZE / 2);
        }
    }
}
