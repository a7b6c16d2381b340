//! `containerd.services.namespaces.v1.Namespaces` over the image store (a namespace's
//! snapshots, held by the snapshotters, also keep it from being deleted).

use std::sync::Arc;

use snapshotter::Filters;
use tonic::{Request, Response, Status};

use super::blocking;
use crate::instances::Instances;
use api::services::namespaces::v1 as pb;
use api::services::namespaces::v1::namespaces_server::Namespaces;
use imagestore::ImageStore;

/// The Namespaces service.
pub struct NamespacesService {
    store: Arc<ImageStore>,
    instances: Arc<Instances>,
}

impl NamespacesService {
    pub fn new(store: Arc<ImageStore>, instances: Arc<Instances>) -> Self {
        NamespacesService { store, instances }
    }
}

/// A snapshotter holding snapshots of namespace `ns` made through containerd's metadata
/// layer (keys `<ns>/<seq>/...`), if any.
fn snapshots_in(instances: &Instances, ns: &str) -> snapshotter::Result<Option<String>> {
    for inst in instances.all() {
        let all = inst.snapshotter.list(&Filters::default())?;
        let held = all.iter().any(|i| {
            let mut parts = i.name.splitn(3, '/');
            parts.next() == Some(ns)
                && parts
                    .next()
                    .is_some_and(|seq| seq.bytes().all(|b| b.is_ascii_digit()))
        });
        if held {
            return Ok(Some(inst.name.clone()));
        }
    }
    Ok(None)
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(
        &self,
        request: Request<pb::GetNamespaceRequest>,
    ) -> Result<Response<pb::GetNamespaceResponse>, Status> {
        let name = request.into_inner().name;
        let namespace = blocking(&self.store, move |s| s.namespace_get(&name)).await?;
        Ok(Response::new(pb::GetNamespaceResponse {
            namespace: Some(namespace),
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let namespaces = blocking(&self.store, |s| s.namespace_list()).await?;
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        let namespace = request.into_inner().namespace.unwrap_or_default();
        let namespace = blocking(&self.store, move |s| s.namespace_create(namespace)).await?;
        Ok(Response::new(pb::CreateNamespaceResponse {
            namespace: Some(namespace),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateNamespaceRequest>,
    ) -> Result<Response<pb::UpdateNamespaceResponse>, Status> {
        let r = request.into_inner();
        let namespace = r.namespace.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let namespace =
            blocking(&self.store, move |s| s.namespace_update(namespace, &paths)).await?;
        Ok(Response::new(pb::UpdateNamespaceResponse {
            namespace: Some(namespace),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        let instances = Arc::clone(&self.instances);
        blocking(&self.store, move |s| {
            let in_use =
                snapshots_in(&instances, &name).map_err(imagestore::StoreError::Snapshot)?;
            s.namespace_delete(&name, in_use.as_deref())
        })
        .await?;
        Ok(Response::new(()))
    }
}
