//! The gRPC adapters: one module per service, each converting protobuf to the call of a
//! domain crate (the image store, the snapshotters, the daemon's layers) and the answer
//! back; no service logic of its own. [`routes`] puts them together for the daemon.

mod admin;
mod containers;
mod content;
mod diff;
mod images;
mod introspection;
mod leases;
mod namespaces;
mod snapshots;
mod streaming;
mod transfer;

use std::path::PathBuf;
use std::sync::Arc;

use tonic::service::Routes;

use crate::collector::Collector;
use crate::instances::Instances;
use crate::layers::Layers;
use api::admin::v1::admin_server::AdminServer;
use api::services::containers::v1::containers_server::ContainersServer;
use api::services::content::v1::content_server::ContentServer;
use api::services::diff::v1::diff_server::DiffServer;
use api::services::images::v1::images_server::ImagesServer;
use api::services::introspection::v1::introspection_server::IntrospectionServer;
use api::services::leases::v1::leases_server::LeasesServer;
use api::services::namespaces::v1::namespaces_server::NamespacesServer;
use api::services::snapshots::v1::snapshots_server::SnapshotsServer;
use api::services::streaming::v1::streaming_server::StreamingServer;
use api::services::transfer::v1::transfer_server::TransferServer;
use api::services::version::v1::version_server::VersionServer;
use imagestore::{ImageStore, StoreSnapshots};

/// The containerd namespace a request names (`containerd-namespace`), or containerd's
/// error for a call that needs one.
pub(crate) fn namespace_of<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
    let ns = request
        .metadata()
        .get(api::headers::NAMESPACE)
        .and_then(|v| v.to_str().ok());
    imagestore::require_namespace(ns)
        .map(str::to_string)
        .map_err(crate::status::to_status)
}

/// The lease a request is made under (`containerd-lease`), if any.
pub(crate) fn lease_of<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(api::headers::LEASE)
        .and_then(|v| v.to_str().ok())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// After a delete: collects garbage before answering if the caller asked (`sync`), else
/// soon in the background.
pub(crate) async fn after_delete(
    collector: &Arc<Collector>,
    sync: bool,
) -> Result<(), tonic::Status> {
    if !sync {
        collector.schedule();
        return Ok(());
    }
    let collector = Arc::clone(collector);
    tokio::task::spawn_blocking(move || collector.collect(false))
        .await
        .map_err(crate::status::join_error)?
        .map_err(crate::status::to_status)?;
    Ok(())
}

/// Runs an image store call on the blocking pool (it waits for the disk).
pub(crate) async fn blocking<T, F>(
    store: &Arc<imagestore::ImageStore>,
    f: F,
) -> Result<T, tonic::Status>
where
    T: Send + 'static,
    F: FnOnce(&imagestore::ImageStore) -> imagestore::Result<T> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(crate::status::join_error)?
        .map_err(crate::status::to_status)
}

/// What the services work on.
pub struct Services {
    pub instances: Arc<Instances>,
    pub layers: Arc<Layers>,
    pub store: Arc<ImageStore>,
    pub collector: Arc<Collector>,
    /// The daemon's root (the server's identity is kept there).
    pub root: PathBuf,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The fleet this node shares blobs with, if any.
    pub fleet: Option<Arc<imagestore::transfer::fleet::Fleet>>,
}

/// Sets containerd's message size limits (16 MiB both ways) on a generated server.
macro_rules! limited {
    ($server:ident, $service:expr) => {
        $server::new($service)
            .max_decoding_message_size(api::headers::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(api::headers::MAX_MESSAGE_SIZE)
    };
}

/// Every service, routed by name; fails only if the server's identity cannot be kept.
pub fn routes(s: Services) -> std::io::Result<Routes> {
    let introspection = introspection::IntrospectionService::new(&s.instances, &s.root)?;
    let snapshots = StoreSnapshots::new(
        Arc::clone(&s.store),
        Arc::clone(&s.instances) as Arc<dyn imagestore::Snapshotters>,
    );
    let applier: Arc<dyn imagestore::transfer::Applier> =
        Arc::new(crate::applier::DaemonApplier(Arc::clone(&s.layers)));
    let (store, collector) = (&s.store, &s.collector);
    let streams = Arc::new(streaming::Streams::default());
    let transfers = imagestore::transfer::Transfers {
        store: Arc::clone(store),
        snapshots: snapshots.clone(),
        applier,
        fleet: s.fleet.clone(),
    };
    let routes = Routes::new(limited!(
        NamespacesServer,
        namespaces::NamespacesService::new(Arc::clone(store), Arc::clone(&s.instances))
    ))
    .add_service(limited!(
        SnapshotsServer,
        snapshots::SnapshotsService::new(snapshots.clone())
    ))
    .add_service(limited!(
        DiffServer,
        diff::DiffService::new(Arc::clone(&s.layers))
    ))
    .add_service(limited!(
        ContentServer,
        content::ContentService::new(Arc::clone(store), Arc::clone(collector))
    ))
    .add_service(limited!(
        ImagesServer,
        images::ImagesService::new(Arc::clone(store), Arc::clone(collector))
    ))
    .add_service(limited!(
        ContainersServer,
        containers::ContainersService::new(Arc::clone(store), Arc::clone(collector))
    ))
    .add_service(limited!(
        LeasesServer,
        leases::LeasesService::new(Arc::clone(store), Arc::clone(collector))
    ))
    .add_service(limited!(
        TransferServer,
        transfer::TransferService::new(
            transfers.clone(),
            Arc::clone(&s.instances) as Arc<dyn imagestore::Snapshotters>,
            Arc::clone(&streams),
            s.insecure_registries,
            s.instances.default_name().to_string(),
        )
    ))
    .add_service(limited!(
        StreamingServer,
        streaming::StreamingService::new(streams)
    ))
    .add_service(limited!(
        AdminServer,
        admin::AdminService::new(Arc::clone(collector), transfers)
    ))
    .add_service(limited!(IntrospectionServer, introspection))
    .add_service(limited!(VersionServer, introspection::VersionService));
    Ok(routes)
}
