//! Images into the store, in process: pulls from a registry ([`pull`]), imports of an OCI
//! layout or a docker archive ([`import`]), and unpacking into snapshots ([`unpack`]), run
//! by the daemon for its clients as containerd's transfer service and unpacker
//! (`core/unpack`) run in containerd. A [`Transfer`] is one such operation's view of the
//! store: its namespace, its lease (which keeps what it writes until the images it records
//! do), the snapshots (through [`StoreSnapshots`], so the store owns what it unpacks) and
//! the [`Applier`] that writes a layer into a snapshot.
//!
//! Store calls block (they wait for the disk): each runs on the blocking pool.

pub mod clients;
mod download;
pub mod events;
pub mod export;
pub mod fleet;
pub mod import;
pub mod naming;
pub mod pull;
pub mod push;
pub mod registry;
pub mod source;
pub mod unpack;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use differ::ImplicitDirs;
use snapshotter::Mount;

use self::naming::ImageDestination;
use crate::oci::{self, Descriptor};
use crate::{Caller, ImageStore, StoreError, StoreSnapshots, unique_suffix};

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The store (or the applier, whose errors carry their class the same way) refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry refused, failed, or could not be reached.
    #[error("{0}")]
    Registry(String),
    /// The registry has no such image (or blob).
    #[error("{0}: not found")]
    NotFound(String),
    /// The registry wanted credentials the client did not have, or refused them.
    #[error("{0}")]
    Unauthenticated(String),
    /// The image's JSON is not what OCI says, or it lacks what was asked.
    #[error("{0}")]
    Invalid(String),
    /// Reading a layout failed.
    #[error("read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, TransferError>;

/// What writes a layer blob of the store into a snapshot: the daemon's Diff logic.
pub trait Applier: Send + Sync {
    /// Applies blob `layer` (of `caller`'s namespace, read as `caller` may read it) onto
    /// `mounts`, checking its digest and size, and its uncompressed digest against the
    /// descriptor's `containerd.io/uncompressed` annotation. Blocks. With the layers
    /// below there [`Later`](Below::Later), the directories it made without the layer
    /// declaring them, for [`differ::inherit_implicit_dirs`] once they are.
    fn apply(
        &self,
        layer: &Descriptor,
        mounts: Vec<Mount>,
        caller: &Caller,
        below: Below,
    ) -> std::result::Result<ImplicitDirs, StoreError>;
}

/// A store call running on the blocking pool ([`Transfer::spawn_blocking`]).
type Pending<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

/// Whether the layers below a snapshot are there when a layer is applied into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Below {
    /// Its mounts show them (a snapshot prepared on its parent, or a first layer).
    Present,
    /// Not yet: it was prepared without its parent, which is being applied meanwhile.
    Later,
}

/// Lease label naming the process a lease is held for, `<boot id>/<pid>` ([`this_process`]):
/// a transfer's own, and the lease Strata's CLI makes for a transfer. A transfer beginning
/// deletes those of processes that are gone.
pub const HOLDER_LABEL: &str = "strata.io/client";
/// How long a transfer's lease lives if nobody releases it (containerd's clients: a day).
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// What transfers are made of: the store, its snapshots and the applier. Each
/// [`Transfers::begin`] is one transfer.
#[derive(Clone)]
pub struct Transfers {
    pub store: Arc<ImageStore>,
    pub snapshots: StoreSnapshots,
    pub applier: Arc<dyn Applier>,
    /// The fleet this node shares blobs with, if any.
    pub fleet: Option<Arc<fleet::Fleet>>,
}

impl Transfers {
    /// A transfer in `namespace` unpacking into `snapshotter`, under a lease of its own
    /// labelled with this process (leases of processes that died holding them go first).
    pub async fn begin(&self, namespace: &str, snapshotter: &str) -> Result<Transfer> {
        Transfer::begin(
            Arc::clone(&self.store),
            self.snapshots.clone(),
            Arc::clone(&self.applier),
            self.fleet.clone(),
            namespace,
            snapshotter,
        )
        .await
    }
}

/// One transfer's view of the store (see the module doc). Its lease goes when it is
/// finished or dropped (a client that went away cancels its transfer).
pub struct Transfer {
    store: Arc<ImageStore>,
    snapshots: StoreSnapshots,
    applier: Arc<dyn Applier>,
    fleet: Option<Arc<fleet::Fleet>>,
    namespace: String,
    snapshotter: String,
    lease: Option<String>,
    /// Held by every piece of the transfer's work on the blocking pool: a cancelled
    /// transfer's lease goes only once none is left (work under a lease already gone would
    /// leave what no lease or collection accounts for, such as a snapshot prepared or a
    /// write still open).
    busy: Arc<()>,
}

impl Transfer {
    /// See [`Transfers::begin`].
    async fn begin(
        store: Arc<ImageStore>,
        snapshots: StoreSnapshots,
        applier: Arc<dyn Applier>,
        fleet: Option<Arc<fleet::Fleet>>,
        namespace: &str,
        snapshotter: &str,
    ) -> Result<Self> {
        let mut t = Transfer {
            store,
            snapshots,
            applier,
            fleet,
            namespace: namespace.to_string(),
            snapshotter: snapshotter.to_string(),
            lease: None,
            busy: Arc::default(),
        };
        t.drop_stale_leases().await?;
        let id = format!("strata-{}", unique_suffix());
        let labels: HashMap<String, String> = [
            (
                api::labels::GC_EXPIRE.to_string(),
                api::time::rfc3339_utc(SystemTime::now() + LEASE_EXPIRY),
            ),
            (HOLDER_LABEL.to_string(), this_process()),
        ]
        .into();
        let (ns, lease) = (t.namespace.clone(), id.clone());
        t.blocking(move |s| s.lease_create(&ns, &lease, labels))
            .await?;
        t.lease = Some(id);
        Ok(t)
    }

    /// The namespace and lease, as a store caller.
    pub fn caller(&self) -> Caller {
        Caller {
            namespace: Some(self.namespace.clone()),
            lease: self.lease.clone(),
        }
    }

    /// Ends the transfer: its lease goes (what it held is kept by the images it recorded,
    /// or collected).
    pub async fn finish(mut self) -> Result<()> {
        if let Some(id) = self.lease.take() {
            let ns = self.namespace.clone();
            self.blocking(move |s| s.lease_delete(&ns, &id)).await?;
        }
        Ok(())
    }

    /// Runs store call `f` on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> std::result::Result<T, StoreError> + Send + 'static,
    {
        self.spawn_blocking(f).await
    }

    /// Starts store call `f` on the blocking pool now; its result once awaited.
    fn spawn_blocking<T, F>(&self, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> std::result::Result<T, StoreError> + Send + 'static,
    {
        let (store, busy) = (Arc::clone(&self.store), Arc::clone(&self.busy));
        let running = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            f(&store)
        });
        Box::pin(async move {
            running
                .await
                .map_err(|e| TransferError::Invalid(format!("store task: {e}")))?
                .map_err(TransferError::Store)
        })
    }

    /// Deletes the leases of transfers whose process died holding them (a daemon killed
    /// during a pull, a CLI killed during its transfer): what only they held (a half-written
    /// blob, a half-applied layer) is then collected, instead of lingering until the leases
    /// expire a day later.
    async fn drop_stale_leases(&self) -> Result<()> {
        let ns = self.namespace.clone();
        self.blocking(move |s| {
            let filter = format!("labels.\"{HOLDER_LABEL}\"");
            let filters = snapshotter::Filters::parse(&[filter])?;
            for lease in s.lease_list(&ns, &filters)? {
                let holder = lease.labels.get(HOLDER_LABEL).map_or("", String::as_str);
                if process_alive(holder) {
                    continue;
                }
                match s.lease_delete(&ns, &lease.id) {
                    Ok(()) => {
                        tracing::info!(lease = lease.id, holder, "dropped a dead transfer's lease")
                    }
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
    }

    /// Whether the namespace has blob `digest`.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        let (ns, digest) = (self.namespace.clone(), digest.to_string());
        match self.blocking(move |s| s.content_info(&ns, &digest)).await {
            Ok(_) => Ok(true),
            Err(TransferError::Store(StoreError::NotFound(_))) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Blob `digest` read whole (for the small JSON documents of an image).
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let (ns, d) = (self.namespace.clone(), digest.to_string());
        self.blocking(move |s| {
            let (mut file, size) = s.content_open(&ns, &d)?;
            let mut out = Vec::with_capacity(size as usize);
            file.read_to_end(&mut out)
                .map_err(|source| StoreError::Io {
                    op: "read",
                    path: format!("blob {d}").into(),
                    source,
                })?;
            Ok(out)
        })
        .await
    }

    /// Writes blob `desc` from `reader` under ref `import-<digest>` (skipped if the
    /// namespace has it), checked against its size and digest; whether it was written.
    /// While another transfer writes the same blob, this waits for it, as containerd's
    /// clients do, and is done if that one commits it.
    pub async fn write_blob(
        &self,
        desc: &Descriptor,
        reader: impl Read + Send + 'static,
    ) -> Result<bool> {
        let reference = format!("import-{}", desc.digest);
        let (size, digest) = (desc.size.max(0) as u64, desc.digest.clone());
        let mut attempt = 0;
        let writer = loop {
            let (ns, lease, r, d) = (
                self.namespace.clone(),
                self.lease.clone(),
                reference.clone(),
                digest.clone(),
            );
            let opened = self
                .blocking(move |s| s.content_writer(&ns, &r, size, Some(&d), lease.as_deref()))
                .await;
            match opened {
                Ok(w) => break w,
                Err(TransferError::Store(StoreError::AlreadyExists(_))) => return Ok(false),
                Err(TransferError::Store(StoreError::Unavailable(_))) => {
                    tokio::time::sleep(lock_wait(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut reader = reader;
        let (ns, r) = (self.namespace.clone(), reference.clone());
        let written = self
            .blocking(move |s| {
                let mut writer = writer;
                let mut buf = vec![0u8; 1 << 20];
                let mut offset = 0u64;
                loop {
                    let n = reader.read(&mut buf).map_err(|source| StoreError::Io {
                        op: "read",
                        path: format!("blob {digest}").into(),
                        source,
                    })?;
                    if n == 0 {
                        break;
                    }
                    writer.write_at(offset, &buf[..n])?;
                    offset += n as u64;
                }
                let committed = s.content_commit(writer, &r, size, Some(&digest), HashMap::new());
                if let Err(StoreError::FailedPrecondition(_)) = &committed {
                    // Bytes that fail their digest or size are never resumed.
                    match s.ingest_abort(&ns, &r) {
                        Ok(()) | Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                committed
            })
            .await;
        match written {
            Ok(_) | Err(TransferError::Store(StoreError::AlreadyExists(_))) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Adds `labels` to blob `digest`.
    pub async fn label_blob(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let ns = self.namespace.clone();
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = api::services::content::v1::Info {
            digest: digest.to_string(),
            labels,
            ..Default::default()
        };
        self.blocking(move |s| s.content_update(&ns, info, &paths))
            .await?;
        Ok(())
    }

    /// Records image `target` in `destination` under every name it gets there
    /// ([`naming::names`]), each created or pointed again at it with the destination's labels
    /// (replacing the record's, as containerd's transfers do); the names. NotFound if it
    /// gets none.
    pub async fn store_image(
        &self,
        target: &Descriptor,
        destination: &ImageDestination,
    ) -> Result<Vec<String>> {
        let names = naming::names(target, destination);
        if names.is_empty() {
            return Err(TransferError::Store(StoreError::NotFound(
                "no image name found".into(),
            )));
        }
        let mut target = target.clone();
        target.annotations.remove(naming::REF_SOURCE);
        for name in &names {
            let image = api::services::images::v1::Image {
                name: name.clone(),
                target: Some(target.to_pb()),
                labels: destination.labels.clone(),
                ..Default::default()
            };
            let (ns, lease) = (self.namespace.clone(), self.lease.clone());
            self.blocking(
                move |s| match s.image_create(&ns, image.clone(), lease.as_deref()) {
                    Err(StoreError::AlreadyExists(_)) => {
                        s.image_update(&ns, image, &[], lease.as_deref())
                    }
                    other => other,
                },
            )
            .await?;
        }
        Ok(names)
    }

    /// Records image `src`'s target in `destination` (with the destination's labels, not
    /// `src`'s), as containerd's tag transfer does; the names.
    pub async fn tag(&self, src: &str, destination: &ImageDestination) -> Result<Vec<String>> {
        let target = self.image_target(src).await?;
        self.store_image(&target, destination).await
    }

    /// The target of image `name`.
    pub async fn image_target(&self, name: &str) -> Result<Descriptor> {
        let (ns, name) = (self.namespace.clone(), name.to_string());
        let image = self.blocking(move |s| s.image_get(&ns, &name)).await?;
        Ok(Descriptor::from_pb(image.target.unwrap_or_default()))
    }

    /// The manifest for `platform` (this machine's if `None`) of `target`: itself, or one
    /// picked from an index.
    pub async fn platform_manifest(
        &self,
        target: &Descriptor,
        platform: Option<&str>,
    ) -> Result<Descriptor> {
        if !target.is_index() {
            return Ok(target.clone());
        }
        let index: oci::Document =
            oci::parse(&self.read_blob(&target.digest).await?, &target.digest)
                .map_err(TransferError::Invalid)?;
        let wanted = platform.map_or_else(oci::this_platform, str::to_string);
        index
            .manifests
            .into_iter()
            .find(|m| m.platform.as_ref().is_none_or(|p| p.is(&wanted)))
            .ok_or_else(|| {
                TransferError::Invalid(format!("{} has no manifest for {wanted}", target.digest))
            })
    }
}

impl Drop for Transfer {
    /// A transfer dropped unfinished (cancelled) lets go of its lease, once the work it
    /// left on the blocking pool has ended (see `Transfer::busy`; a minute at most).
    fn drop(&mut self) {
        let Some(id) = self.lease.take() else {
            return;
        };
        let (store, ns) = (Arc::clone(&self.store), self.namespace.clone());
        let release = move || {
            if let Err(e) = store.lease_delete(&ns, &id) {
                tracing::warn!(lease = id, error = %e, "a cancelled transfer's lease stays");
            }
        };
        let busy = std::mem::take(&mut self.busy);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while Arc::strong_count(&busy) > 1 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = tokio::task::spawn_blocking(release).await;
            })),
            Err(_) => release(),
        }
    }
}

/// How long to wait before trying again for a blob's ref another write holds: 10 ms,
/// doubling up to a second.
fn lock_wait(attempt: u32) -> Duration {
    Duration::from_millis((10u64 << attempt.min(7)).min(1000))
}

/// This process, as [`HOLDER_LABEL`] names it.
pub fn this_process() -> String {
    format!("{}/{}", boot_id(), std::process::id())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the process `holder` names still runs: this one, or one of the same boot whose
/// pid is a `strata`.
fn process_alive(holder: &str) -> bool {
    let Some((boot, pid)) = holder.rsplit_once('/') else {
        return false;
    };
    boot == boot_id()
        && (pid == std::process::id().to_string()
            || std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "strata"))
}
