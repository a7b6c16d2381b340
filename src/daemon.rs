//! The daemon's life: opening the configured snapshotter instances and the image store,
//! settling what a crash left, binding (or taking) the socket, serving every service until
//! SIGINT or SIGTERM, then draining the calls in flight.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::collector::Collector;
use crate::config::{Config, ConfigError};
use crate::instances::{InstanceError, Instances};
use crate::layers::Layers;
use crate::server::Services;
use crate::status::chain;
use imagestore::ImageStore;

/// How long a shutdown waits for the calls in flight.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A snapshotter instance could not be opened.
    #[error(transparent)]
    Instance(#[from] InstanceError),
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
    /// The fleet's peer API could not be set up.
    #[error("fleet: {0}")]
    Fleet(String),
    /// The gRPC server failed.
    #[error("grpc server")]
    Serve(#[from] tonic::transport::Error),
}

/// Joins the fleet `settings` describe: its peers found, its peer API served.
async fn start_fleet(
    settings: &crate::config::FleetSettings,
    insecure_registries: &[String],
    store: Arc<ImageStore>,
) -> Result<Arc<imagestore::transfer::fleet::Fleet>, DaemonError> {
    use imagestore::transfer::fleet::{Fleet, FleetConfig, membership};
    let path = settings.secret_file.display();
    let secret = std::fs::read_to_string(&settings.secret_file)
        .map_err(|e| DaemonError::Fleet(format!("read the secret {path}: {e}")))?;
    let secret = secret.trim().to_string();
    if secret.len() < 16 {
        return Err(DaemonError::Fleet(format!(
            "the secret in {path} is shorter than 16 characters"
        )));
    }
    let membership: Arc<dyn membership::Membership> = match &settings.peers_dns {
        Some(name) => {
            let every = std::time::Duration::from_secs(settings.refresh_secs.max(1));
            membership::DnsNodes::start(name, every).await
        }
        None => Arc::new(membership::StaticNodes(settings.peers.clone())),
    };
    let advertise = settings
        .advertise
        .clone()
        .unwrap_or_else(|| settings.listen.clone());
    // Every node ranks the nodes by their addresses: this one must be named as the others
    // name it, not by a wildcard.
    let host = advertise.rsplit_once(':').map_or("", |(h, _)| h);
    if ["0.0.0.0", "[::]", "::", ""].contains(&host) {
        return Err(DaemonError::Fleet(format!(
            "advertise {advertise:?} is not an address peers can reach: set [fleet].advertise \
             or --fleet-advertise"
        )));
    }
    if settings.peers_dns.is_none() && !settings.peers.contains(&advertise) {
        tracing::warn!(
            advertise,
            "fleet: this node is not in the peers list; the others rank without it"
        );
    }
    let config = FleetConfig {
        advertise,
        secret,
        membership,
        // At least ten minutes: the lease also protects a download in progress.
        keep_for: std::time::Duration::from_secs(settings.keep_secs.max(600)),
        insecure_registries: insecure_registries.to_vec(),
    };
    let fleet = Fleet::new(config, store).map_err(|e| DaemonError::Fleet(e.to_string()))?;
    let bound = crate::fleet::serve(&settings.listen, Arc::clone(&fleet))
        .await
        .map_err(|e| DaemonError::Fleet(format!("listen on {}: {e}", settings.listen)))?;
    tracing::info!(address = %bound, "serving the fleet's peer API");
    Ok(fleet)
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
    let instances = Arc::new(instances);
    // The first pull need not wait for a registry client to be built.
    imagestore::transfer::clients::warm();
    // Metrics are served before the socket exists, so whoever sees the socket finds them.
    if let Some(address) = &config.metrics_address {
        let bound = crate::metrics::serve(address, Arc::clone(&instances))
            .await
            .map_err(|e| DaemonError::Metrics(address.clone(), e))?;
        tracing::info!(address = %bound, "serving metrics");
    }
    let fleet = match &config.fleet {
        Some(settings) => {
            Some(start_fleet(settings, &config.insecure_registries, Arc::clone(&store)).await?)
        }
        None => None,
    };
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
    let scratch = config.root.join("tmp");
    std::fs::create_dir_all(&scratch).map_err(|e| DaemonError::Socket(scratch.clone(), e))?;
    if let Err(e) = mountutil::mount::reclaim_temp_mounts(&scratch) {
        tracing::warn!(error = %chain(&e), "could not reclaim temporary mounts");
    }
    let layers = Arc::new(Layers::new(
        Arc::clone(&instances),
        Arc::clone(&store),
        &config.differ,
        scratch,
    ));
    let collector = Collector::new(Arc::clone(&store), Arc::clone(&instances));
    // The socket is listening: connections queue until the server accepts them.
    crate::systemd::notify_ready();
    // Shutting down lets the calls in flight finish, but an idle client may keep its
    // connection open (containerd does): once no call is in flight, or after DRAIN, the
    // daemon exits without waiting for connections to close.
    let routes = crate::server::routes(Services {
        instances,
        layers,
        store,
        collector,
        root: config.root.clone(),
        insecure_registries: config.insecure_registries.clone(),
        fleet,
    })
    .map_err(|source| DaemonError::ImageStore {
        root: config.root.clone(),
        source: imagestore::StoreError::Io {
            op: "make the server's uuid",
            path: config.root.join("uuid"),
            source,
        },
    })?;
    let serving = async {
        tonic::transport::Server::builder()
            .layer(crate::metrics::GrpcMetricsLayer)
            .layer(crate::transport::NamespaceCheckLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(crate::transport::incoming(listener), shutdown)
            .await
            .map_err(DaemonError::from)
    };
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
