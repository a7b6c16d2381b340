//! `containerd.services.leases.v1.Leases` over the image store.

use std::sync::Arc;

use snapshotter::Filters;
use tonic::{Request, Response, Status};

use super::{after_delete, blocking, namespace_of};
use crate::collector::Collector;
use api::services::leases::v1 as pb;
use api::services::leases::v1::leases_server::Leases;
use imagestore::ImageStore;

/// The Leases service.
pub struct LeasesService {
    store: Arc<ImageStore>,
    collector: Arc<Collector>,
}

impl LeasesService {
    pub fn new(store: Arc<ImageStore>, collector: Arc<Collector>) -> Self {
        LeasesService { store, collector }
    }
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let id = if r.id.is_empty() {
            imagestore::unique_suffix()
        } else {
            r.id
        };
        let lease = blocking(&self.store, move |s| s.lease_create(&ns, &id, r.labels)).await?;
        Ok(Response::new(pb::CreateResponse { lease: Some(lease) }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let (id, sync) = (r.id, r.sync);
        blocking(&self.store, move |s| s.lease_delete(&ns, &id)).await?;
        after_delete(&self.collector, sync).await?;
        Ok(Response::new(()))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let ns = namespace_of(&request)?;
        let filters = request.into_inner().filters;
        let leases = blocking(&self.store, move |s| {
            s.lease_list(&ns, &Filters::parse(&filters)?)
        })
        .await?;
        Ok(Response::new(pb::ListResponse { leases }))
    }

    async fn add_resource(
        &self,
        request: Request<pb::AddResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let resource = r.resource.unwrap_or_default();
        blocking(&self.store, move |s| {
            s.lease_add_resource(&ns, &r.id, &resource)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        request: Request<pb::DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let resource = r.resource.unwrap_or_default();
        blocking(&self.store, move |s| {
            s.lease_delete_resource(&ns, &r.id, &resource)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let ns = namespace_of(&request)?;
        let id = request.into_inner().id;
        let resources = blocking(&self.store, move |s| s.lease_resources(&ns, &id)).await?;
        Ok(Response::new(pb::ListResourcesResponse { resources }))
    }
}
