//! `containerd.services.containers.v1.Containers` over the image store.

use std::pin::Pin;
use std::sync::Arc;

use snapshotter::Filters;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{after_delete, blocking, namespace_of};
use crate::collector::Collector;
use api::services::containers::v1 as pb;
use api::services::containers::v1::containers_server::Containers;
use imagestore::ImageStore;

/// The Containers service.
pub struct ContainersService {
    store: Arc<ImageStore>,
    collector: Arc<Collector>,
}

impl ContainersService {
    pub fn new(store: Arc<ImageStore>, collector: Arc<Collector>) -> Self {
        ContainersService { store, collector }
    }

    async fn matching(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Vec<pb::Container>, Status> {
        let ns = namespace_of(&request)?;
        let filters = request.into_inner().filters;
        blocking(&self.store, move |s| {
            s.container_list(&ns, &Filters::parse(&filters)?)
        })
        .await
    }
}

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(
        &self,
        request: Request<pb::GetContainerRequest>,
    ) -> Result<Response<pb::GetContainerResponse>, Status> {
        let ns = namespace_of(&request)?;
        let id = request.into_inner().id;
        let container = blocking(&self.store, move |s| s.container_get(&ns, &id)).await?;
        Ok(Response::new(pb::GetContainerResponse {
            container: Some(container),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let containers = self.matching(request).await?;
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    type ListStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::ListContainerMessage, Status>> + Send>>;

    async fn list_stream(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let containers = self.matching(request).await?;
        let messages: Vec<Result<pb::ListContainerMessage, Status>> = containers
            .into_iter()
            .map(|c| Ok(pb::ListContainerMessage { container: Some(c) }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn create(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let ns = namespace_of(&request)?;
        let container = request.into_inner().container.unwrap_or_default();
        let container = blocking(&self.store, move |s| s.container_create(&ns, container)).await?;
        Ok(Response::new(pb::CreateContainerResponse {
            container: Some(container),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateContainerRequest>,
    ) -> Result<Response<pb::UpdateContainerResponse>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let container = r.container.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let container = blocking(&self.store, move |s| {
            s.container_update(&ns, container, &paths)
        })
        .await?;
        Ok(Response::new(pb::UpdateContainerResponse {
            container: Some(container),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteContainerRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let id = request.into_inner().id;
        blocking(&self.store, move |s| s.container_delete(&ns, &id)).await?;
        after_delete(&self.collector, false).await?;
        Ok(Response::new(()))
    }
}
