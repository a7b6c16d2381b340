//! `containerd.services.diff.v1.Diff`: protobuf in, [`Layers`] call on a blocking thread,
//! protobuf out.

use std::collections::HashMap;
use std::sync::Arc;

use differ::{Compression, Digest};
use tokio::runtime::Handle;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::convert::mount_from_pb;
use crate::layers::{ApplyLayer, CallContext, CreateLayer, LayerError, Layers, UNCOMPRESSED_LABEL};
use crate::status::{invalid, join_error, to_status};
use api::headers::{LEASE as LEASE_HEADER, NAMESPACE as NAMESPACE_HEADER};
use api::services::diff::v1 as pb;
use api::services::diff::v1::diff_server::Diff;
use api::types::Descriptor;

/// The Diff service.
pub struct DiffService {
    layers: Arc<Layers>,
}

impl DiffService {
    /// Serves `layers`.
    pub fn new(layers: Arc<Layers>) -> Self {
        DiffService { layers }
    }

    /// Runs `f` on a blocking thread with the request's namespace and lease.
    async fn call<T, F>(&self, metadata: &MetadataMap, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Layers, &CallContext) -> Result<T, LayerError> + Send + 'static,
    {
        let get = |k| {
            metadata
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let ctx = CallContext {
            namespace: get(NAMESPACE_HEADER),
            lease: get(LEASE_HEADER),
            runtime: Handle::current(),
        };
        let layers = Arc::clone(&self.layers);
        tokio::task::spawn_blocking(move || f(&layers, &ctx))
            .await
            .map_err(join_error)?
            .map_err(to_status)
    }
}

/// The compression a media type names (`None`: sniff), as a status on error.
fn compression(media_type: &str) -> Result<Option<Compression>, Status> {
    Compression::from_media_type(media_type).map_err(|e| to_status(LayerError::from(e)))
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let metadata = request.metadata().clone();
        let r = request.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| invalid("apply needs a diff descriptor"))?;
        let compression = compression(&desc.media_type)?;
        // Payloads are for stream processors, which containerd runs only for media types it
        // cannot apply itself (encrypted ones, refused above). Its 1.7 CRI plugin sends a
        // decryption payload with every layer (`image_decryption.key_model = "node"`, the
        // default): refusing those sent every Kubernetes pull to the walking differ.
        if !r.payloads.is_empty() && compression.is_none() {
            return Err(to_status(LayerError::Unsupported(format!(
                "stream processor payloads for media type {:?}",
                desc.media_type
            ))));
        }
        let layer = ApplyLayer {
            digest: Digest::parse(&desc.digest).map_err(|e| to_status(LayerError::from(e)))?,
            size: desc.size.max(0) as u64,
            compression,
            uncompressed: desc.annotations.get(UNCOMPRESSED_LABEL).cloned(),
            mounts: r.mounts.into_iter().map(mount_from_pb).collect(),
            sync_fs: r.sync_fs,
            lowers_later: false,
        };
        let applied = self
            .call(&metadata, move |layers, ctx| layers.apply(layer, ctx))
            .await?;
        Ok(Response::new(pb::ApplyResponse {
            applied: Some(Descriptor {
                media_type: differ::compression::MEDIA_TYPE_TAR.into(),
                digest: applied.diff_id.to_string(),
                size: applied.size as i64,
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let metadata = request.metadata().clone();
        let r = request.into_inner();
        let media_type = if r.media_type.is_empty() {
            differ::compression::MEDIA_TYPE_TAR_GZIP.to_string()
        } else {
            r.media_type
        };
        let compression = match compression(&media_type)? {
            Some(c) if media_type.starts_with("application/vnd.oci.image.layer.v1.tar") => c,
            _ => {
                return Err(to_status(LayerError::Unsupported(format!(
                    "media type {media_type}"
                ))));
            }
        };
        let layer = CreateLayer {
            left: r.left.into_iter().map(mount_from_pb).collect(),
            right: r.right.into_iter().map(mount_from_pb).collect(),
            options: differ::diff::DiffOptions {
                compression,
                source_date_epoch: r.source_date_epoch.map(|t| t.seconds),
            },
            labels: r.labels.into_iter().collect(),
        };
        let created = self
            .call(&metadata, move |layers, ctx| layers.create(layer, ctx))
            .await?;
        let annotations =
            HashMap::from([(UNCOMPRESSED_LABEL.to_string(), created.diff_id.to_string())]);
        Ok(Response::new(pb::DiffResponse {
            diff: Some(Descriptor {
                media_type: created.media_type.into(),
                digest: created.digest.to_string(),
                size: created.size as i64,
                annotations,
            }),
        }))
    }
}
