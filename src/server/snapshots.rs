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

use super::blocking;
use crate::convert::{info_from_pb, info_to_pb, labels_from_pb, mounts_to_pb};
use crate::instances::Instances;
use crate::metrics::METRICS;
use crate::status::{invalid, join_error, to_status};
use api::services::snapshots::v1 as pb;
use api::services::snapshots::v1::snapshots_server::Snapshots;
use imagestore::{ImageStore, StoreError};

/// List answers are split so each message stays well under containerd's 16 MiB limit.
const LIST_BATCH_BYTES: usize = 4 << 20;

/// The Snapshots service over a set of instances.
pub struct SnapshotsService {
    instances: Arc<Instances>,
    /// Snapshotter calls in flight.
    in_flight: AtomicUsize,
    /// The image store, which owns snapshots made under its leases.
    store: Arc<ImageStore>,
}

/// Counts a call in flight until dropped (also when it panics).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SnapshotsService {
    /// Serves `instances`, telling `store` about snapshots made under its leases.
    pub fn new(instances: Arc<Instances>, store: Arc<ImageStore>) -> Self {
        SnapshotsService {
            instances,
            in_flight: AtomicUsize::new(0),
            store,
        }
    }

    /// Tells the image store that `snapshot` left, if it was the store's (a lookup only for
    /// everyone else's).
    async fn released(&self, snapshotter: &str, snapshot: String) -> Result<(), Status> {
        let inst = self.instance_name(snapshotter)?;
        if !self
            .store
            .owns_snapshot(&inst, &snapshot)
            .map_err(to_status)?
        {
            return Ok(());
        }
        blocking(&self.store, move |s| s.snapshot_released(&inst, &snapshot)).await
    }

    /// The name of the instance `snapshotter` selects.
    fn instance_name(&self, snapshotter: &str) -> Result<String, Status> {
        Ok(self
            .instances
            .get(snapshotter)
            .map_err(to_status)?
            .name
            .clone())
    }

    /// Before the snapshotter makes `snapshot` (Prepare, View, or Commit of `from`): has the
    /// image store record the intent if the result will be the store's (the request's lease
    /// is one of its leases, or `from` one of its snapshots), so that a crash between the
    /// snapshotter's change and the store's record cannot leave it uncollectable; the name
    /// of the instance the intent was recorded under, if one was. A request without a lease,
    /// as containerd's, costs a lookup.
    async fn intend(
        &self,
        lease: Option<(String, String)>,
        snapshotter: &str,
        snapshot: &str,
        from: Option<String>,
    ) -> Result<Option<String>, Status> {
        let instance = self.instances.get(snapshotter).map_err(to_status)?;
        let from_owned = match &from {
            Some(f) => self
                .store
                .owns_snapshot(&instance.name, f)
                .map_err(to_status)?,
            None => false,
        };
        if lease.is_none() && !from_owned {
            return Ok(None);
        }
        let (name, s) = (instance.name.clone(), Arc::clone(&instance.snapshotter));
        let snapshot = snapshot.to_string();
        blocking(&self.store, move |store| {
            let lease = lease.as_ref().map(|(ns, id)| (ns.as_str(), id.as_str()));
            let is_new = || match s.stat(&snapshot) {
                Ok(_) => Ok(false),
                Err(snapshotter::Error::NotFound(_)) => Ok(true),
                Err(e) => Err(StoreError::Open(e)),
            };
            let intended =
                store.intend_snapshot(&name, &snapshot, lease, from.as_deref(), is_new)?;
            Ok(intended.then_some(name))
        })
        .await
    }

    /// After a snapshotter call [`intend`](Self::intend) recorded an intent for under
    /// instance `intended`: the store records `snapshot` as its own if the call made it, and
    /// drops the intent either way. The call's result.
    async fn settle<T>(
        &self,
        intended: Option<String>,
        snapshot: &str,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let Some(name) = intended else {
            return result;
        };
        let (snapshot, made) = (snapshot.to_string(), result.is_ok());
        blocking(&self.store, move |s| {
            if made {
                s.snapshot_intent_done(&name, &snapshot)
            } else {
                s.snapshot_intent_dropped(&name, &snapshot)
            }
        })
        .await?;
        result
    }

    /// The namespace and lease of a request that has both.
    fn lease_of<T>(request: &Request<T>) -> Option<(String, String)> {
        let ns = super::namespace_of(request).ok()?;
        Some((ns, super::lease_of(request)?))
    }

    /// Runs `f` against the selected instance. Snapshotter calls block (each mutation waits
    /// for the disk), so they run on the blocking pool, except a call that finds no other
    /// in flight: that one runs on the runtime thread that received it, since handing it to
    /// the pool and back costs two thread wake-ups, about as much as a metadata call itself
    /// (one client's Stat: 170 µs inline, 275 µs through the pool). Calls arriving meanwhile
    /// go to the pool, so at most one runtime thread is ever busy this way and the others
    /// (the runtime has at least two) keep serving.
    async fn call<T, F>(&self, snapshotter: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Snapshotter) -> snapshotter::Result<T> + Send + 'static,
    {
        let s = Arc::clone(
            &self
                .instances
                .get(snapshotter)
                .map_err(to_status)?
                .snapshotter,
        );
        let alone = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        let _in_flight = InFlight(&self.in_flight);
        if alone {
            return catch_unwind(AssertUnwindSafe(|| f(s.as_ref())))
                .map_err(|_| Status::internal("snapshotter call panicked"))?
                .map_err(to_status);
        }
        tokio::task::spawn_blocking(move || f(s.as_ref()))
            .await
            .map_err(join_error)?
            .map_err(to_status)
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
        let lease = Self::lease_of(&request);
        let r = request.into_inner();
        let labels = labels_from_pb(r.labels);
        let (snapshotter, key) = (r.snapshotter.clone(), r.key.clone());
        let intended = self.intend(lease.clone(), &snapshotter, &key, None).await?;
        let reused: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let result = self
            .call(&r.snapshotter, {
                let reused = Arc::clone(&reused);
                move |s| {
                    s.prepare(&r.key, &r.parent, labels).inspect_err(|e| {
                        if let snapshotter::Error::LayerCommitted { name, .. } = e {
                            *reused.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.clone());
                        }
                    })
                }
            })
            .await;
        let reused = reused.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(name) = reused {
            METRICS.layer_reused();
            // A lookup only for everyone else's layers.
            let inst = self.instance_name(&snapshotter)?;
            if self.store.owns_snapshot(&inst, &name).map_err(to_status)? {
                blocking(&self.store, move |s| {
                    let lease = lease.as_ref().map(|(ns, id)| (ns.as_str(), id.as_str()));
                    s.snapshot_reused(&inst, &name, lease)
                })
                .await?;
            }
        }
        let mounts = self.settle(intended, &key, result).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let lease = Self::lease_of(&request);
        let r = request.into_inner();
        let labels = labels_from_pb(r.labels);
        let (snapshotter, key) = (r.snapshotter.clone(), r.key.clone());
        let intended = self.intend(lease, &snapshotter, &key, None).await?;
        let result = self
            .call(&r.snapshotter, move |s| s.view(&r.key, &r.parent, labels))
            .await;
        let mounts = self.settle(intended, &key, result).await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = request.into_inner();
        let mounts = self.call(&r.snapshotter, move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let lease = Self::lease_of(&request);
        let r = request.into_inner();
        let labels = labels_from_pb(r.labels);
        let (snapshotter, key, name) = (r.snapshotter.clone(), r.key.clone(), r.name.clone());
        let intended = self.intend(lease, &snapshotter, &name, Some(key)).await?;
        let result = self
            .call(&r.snapshotter, move |s| {
                s.commit(&r.name, &r.key, labels, &r.parent)
            })
            .await;
        self.settle(intended, &name, result).await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let (snapshotter, key) = (r.snapshotter.clone(), r.key.clone());
        self.call(&r.snapshotter, move |s| s.remove(&r.key)).await?;
        self.released(&snapshotter, key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self.call(&r.snapshotter, move |s| s.stat(&r.key)).await?;
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
            .call(&r.snapshotter, move |s| s.update(info, &paths))
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
        let infos = self.call(&r.snapshotter, move |s| s.list(&filters)).await?;
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
        let u = self.call(&r.snapshotter, move |s| s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.call(&r.snapshotter, |s| s.cleanup()).await?;
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
