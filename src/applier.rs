//! The daemon's [`Layers`] as the image store's transfers apply layers with: a layer of the
//! store applied into the mounts of the snapshot an unpack prepared, the Diff service's own
//! path (own mounts written directly, the blob followed while it downloads).

use std::sync::Arc;

use differ::{Compression, Digest, ImplicitDirs};
use imagestore::oci::Descriptor;
use imagestore::transfer::{Applier, Below};
use imagestore::{Caller, StoreError};
use snapshotter::Mount;

use crate::layers::{ApplyLayer, CallContext, LayerError, Layers};

/// [`Layers`] as an [`Applier`].
pub struct DaemonApplier(pub Arc<Layers>);

impl Applier for DaemonApplier {
    fn apply(
        &self,
        layer: &Descriptor,
        mounts: Vec<Mount>,
        caller: &Caller,
        below: Below,
    ) -> Result<ImplicitDirs, StoreError> {
        let invalid = |e: differ::Error| StoreError::Applier(Box::new(LayerError::from(e)));
        let req = ApplyLayer {
            digest: Digest::parse(&layer.digest).map_err(invalid)?,
            size: layer.size.max(0) as u64,
            compression: Compression::from_media_type(&layer.media_type).map_err(invalid)?,
            uncompressed: layer.annotations.get(api::labels::UNCOMPRESSED).cloned(),
            mounts,
            sync_fs: false,
            lowers_later: below == Below::Later,
        };
        let ctx = CallContext {
            namespace: caller.namespace.clone(),
            lease: caller.lease.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        self.0
            .apply(req, &ctx)
            .map(|applied| applied.implicit_dirs)
            .map_err(|e| StoreError::Applier(Box::new(e)))
    }
}
