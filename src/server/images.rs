//! `containerd.services.images.v1.Images` over the image store.

use std::sync::Arc;

use snapshotter::Filters;
use tonic::{Request, Response, Status};

use super::{after_delete, blocking, lease_of, namespace_of};
use crate::collector::Collector;
use api::services::images::v1 as pb;
use api::services::images::v1::images_server::Images;
use imagestore::ImageStore;

/// The Images service.
pub struct ImagesService {
    store: Arc<ImageStore>,
    collector: Arc<Collector>,
}

impl ImagesService {
    pub fn new(store: Arc<ImageStore>, collector: Arc<Collector>) -> Self {
        ImagesService { store, collector }
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let ns = namespace_of(&request)?;
        let name = request.into_inner().name;
        let image = blocking(&self.store, move |s| s.image_get(&ns, &name)).await?;
        Ok(Response::new(pb::GetImageResponse { image: Some(image) }))
    }

    async fn list(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let ns = namespace_of(&request)?;
        let filters = request.into_inner().filters;
        let images = blocking(&self.store, move |s| {
            s.image_list(&ns, &Filters::parse(&filters)?)
        })
        .await?;
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::CreateImageResponse>, Status> {
        let ns = namespace_of(&request)?;
        let lease = lease_of(&request);
        let image = request.into_inner().image.unwrap_or_default();
        let image = blocking(&self.store, move |s| {
            s.image_create(&ns, image, lease.as_deref())
        })
        .await?;
        Ok(Response::new(pb::CreateImageResponse {
            image: Some(image),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::UpdateImageResponse>, Status> {
        let ns = namespace_of(&request)?;
        let lease = lease_of(&request);
        let r = request.into_inner();
        let image = r.image.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let image = blocking(&self.store, move |s| {
            s.image_update(&ns, image, &paths, lease.as_deref())
        })
        .await?;
        Ok(Response::new(pb::UpdateImageResponse {
            image: Some(image),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let lease = lease_of(&request);
        let r = request.into_inner();
        let sync = r.sync;
        blocking(&self.store, move |s| {
            s.image_delete(&ns, &r.name, r.target.as_ref(), lease.as_deref())
        })
        .await?;
        after_delete(&self.collector, sync).await?;
        Ok(Response::new(()))
    }
}
