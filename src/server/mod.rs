//! The daemon: opens the configured snapshotter instances and serves containerd's gRPC APIs
//! for them on a unix socket until shut down.

mod admin;
mod authority;
mod collector;
mod containers;
mod content;
mod diff;
mod images;
mod introspection;
mod leases;
mod namespaces;
mod namespaces_checked;
mod snapshots;

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::{Config, ConfigError};
use crate::instances::Instances;
use crate::layers::Layers;
use crate::status::chain;
use api::admin::v1::admin_server::AdminServer;
use api::services::containers::v1::containers_server::ContainersServer;
use api::services::content::v1::content_server::ContentServer;
use api::services::diff::v1::diff_server::DiffServer;
use api::services::images::v1::images_server::ImagesServer;
use api::services::introspection::v1::introspection_server::IntrospectionServer;
use api::services::leases::v1::leases_server::LeasesServer;
use api::services::namespaces::v1::namespaces_server::NamespacesServer;
use api::services::snapshots::v1::snapshots_server::SnapshotsServer;
use api::services::version::v1::version_server::VersionServer;
use imagestore::ImageStore;

pub use diff::DiffService;
pub use snapshots::SnapshotsService;

/// How long a shutdown waits for the calls in flight.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A snapshotter instance could not be opened.
    #[error("open snapshotter {name} at {root}")]
    Open {
        /// Instance name.
        name: String,
        /// Its root.
        root: PathBuf,
        /// Why.
        #[source]
        source: snapshotter::Error,
    },
    /// The image store could not be opened.
    #[error("open the image store under {root}")]
    ImageStore {
        /// The daemon root.
        root: PathBuf,
        /// Why.
        #[source]
        source: imagestore::StoreError,
    },
    /// The socket could not be set up.
    #[error("socket {0}")]
    Socket(PathBuf, #[source] io::Error),
    /// The metrics endpoint could not be set up.
    #[error("metrics address {0}")]
    Metrics(String, #[source] io::Error),
    /// The gRPC server failed.
    #[error("grpc server")]
    Serve(#[from] tonic::transport::Error),
}

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
    collector: &Arc<collector::Collector>,
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

/// Binds the daemon's socket: parent directory created, a stale socket (no one answering)
/// replaced, a live one refused, and the socket made 0600.
pub async fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |e| DaemonError::Socket(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another daemon is serving on this socket",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// What the daemon serves.
pub struct Services {
    pub instances: Arc<Instances>,
    pub differ: DiffService,
    pub store: Arc<ImageStore>,
    /// The daemon's root (the server's identity is kept there).
    pub root: PathBuf,
    /// The socket it serves on (its own pulls are clients of it).
    pub address: PathBuf,
    /// Registries pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
}

/// Sets containerd's message size limits (16 MiB both ways) on a generated server.
macro_rules! limited {
    ($server:ident, $service:expr) => {
        $server::new($service)
            .max_decoding_message_size(api::headers::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(api::headers::MAX_MESSAGE_SIZE)
    };
}

/// Serves every gRPC service on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: UnixListener,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Services {
        instances,
        differ,
        store,
        root,
        address,
        insecure_registries,
    } = services;
    let collector = collector::Collector::new(Arc::clone(&store), Arc::clone(&instances));
    let introspection =
        introspection::IntrospectionService::new(&instances, &root).map_err(|source| {
            DaemonError::ImageStore {
                root: root.clone(),
                source: imagestore::StoreError::Io {
                    op: "make the server's uuid",
                    path: root.join("uuid"),
                    source,
                },
            }
        })?;
    tonic::transport::Server::builder()
        .layer(crate::metrics::GrpcMetricsLayer)
        .layer(namespaces_checked::NamespaceCheckLayer)
        .add_service(limited!(
            NamespacesServer,
            namespaces::NamespacesService::new(Arc::clone(&store), Arc::clone(&instances))
        ))
        .add_service(limited!(
            SnapshotsServer,
            SnapshotsService::new(imagestore::StoreSnapshots::new(
                Arc::clone(&store),
                Arc::clone(&instances) as Arc<dyn imagestore::Snapshotters>
            ))
        ))
        .add_service(limited!(DiffServer, differ))
        .add_service(limited!(
            ContentServer,
            content::ContentService::new(Arc::clone(&store), Arc::clone(&collector))
        ))
        .add_service(limited!(
            ImagesServer,
            images::ImagesService::new(Arc::clone(&store), Arc::clone(&collector))
        ))
        .add_service(limited!(
            ContainersServer,
            containers::ContainersService::new(Arc::clone(&store), Arc::clone(&collector))
        ))
        .add_service(limited!(
            LeasesServer,
            leases::LeasesService::new(Arc::clone(&store), Arc::clone(&collector))
        ))
        .add_service(limited!(
            AdminServer,
            admin::AdminService::new(
                Arc::clone(&collector),
                Arc::clone(&store),
                address,
                insecure_registries
            )
        ))
        .add_service(limited!(IntrospectionServer, introspection))
        .add_service(limited!(VersionServer, introspection::VersionService))
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(UnixListenerStream::new(listener), |accepted| {
                accepted.map(authority::AuthorityFix::new)
            }),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Runs the daemon with `config` until SIGINT or SIGTERM, on `activated` (the socket
/// systemd passed) if given, else on a socket it binds at the configured address. Tells
/// systemd when it serves and when it stops.
pub async fn run(
    config: Config,
    activated: Option<std::os::unix::net::UnixListener>,
) -> Result<(), DaemonError> {
    let instances = tokio::task::block_in_place(|| Instances::open(&config))?;
    let store =
        tokio::task::block_in_place(|| ImageStore::open(&config.root)).map_err(|source| {
            DaemonError::ImageStore {
                root: config.root.clone(),
                source,
            }
        })?;
    let settled = tokio::task::block_in_place(|| store.settle_snapshot_intents(&instances))
        .map_err(|source| DaemonError::ImageStore {
            root: config.root.clone(),
            source,
        })?;
    if settled > 0 {
        tracing::info!(
            settled,
            "snapshots made before a crash recorded as the image store's"
        );
    }
    let store = Arc::new(store);
    let (listener, owns_socket) = match activated {
        Some(l) => (
            UnixListener::from_std(l)
                .map_err(|e| DaemonError::Socket(config.address.clone(), e))?,
            false,
        ),
        None => (bind_socket(&config.address).await?, true),
    };
    tracing::info!(
        address = %config.address.display(),
        socket_activated = !owns_socket,
        "serving"
    );
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        crate::systemd::notify_stopping();
        let _ = stopping.send(());
    };
    let instances = Arc::new(instances);
    let scratch = config.root.join("tmp");
    std::fs::create_dir_all(&scratch).map_err(|e| DaemonError::Socket(scratch.clone(), e))?;
    if let Err(e) = mountutil::mount::reclaim_temp_mounts(&scratch) {
        tracing::warn!(error = %chain(&e), "could not reclaim temporary mounts");
    }
    let differ = DiffService::new(Layers::new(
        Arc::clone(&instances),
        Arc::clone(&store),
        &config.differ,
        scratch,
    ));
    if let Some(address) = &config.metrics_address {
        let bound = crate::metrics::serve(address, Arc::clone(&instances))
            .await
            .map_err(|e| DaemonError::Metrics(address.clone(), e))?;
        tracing::info!(address = %bound, "serving metrics");
    }
    // The socket is listening: connections queue until the server accepts them.
    crate::systemd::notify_ready();
    // Shutting down lets the calls in flight finish, but an idle client may keep its
    // connection open (containerd does): once no call is in flight, or after DRAIN, the
    // daemon exits without waiting for connections to close.
    let services = Services {
        instances,
        differ,
        store,
        root: config.root.clone(),
        address: config.address.clone(),
        insecure_registries: config.insecure_registries.clone(),
    };
    let serving = serve(listener, services, shutdown);
    let drained = async {
        if stopped.await.is_err() {
            return std::future::pending::<bool>().await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN;
        while tokio::time::Instant::now() < deadline {
            if crate::metrics::calls_in_flight() == 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    let result = tokio::select! {
        result = serving => result,
        idle = drained => {
            if !idle {
                tracing::warn!(after = ?DRAIN, "calls still in flight: stopping without them");
            }
            Ok(())
        }
    };
    // An activated socket is systemd's: it stays for the next start.
    if owns_socket {
        let _ = std::fs::remove_file(&config.address);
    }
    result
}
