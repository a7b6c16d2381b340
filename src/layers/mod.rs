//! The Diff service's work, without gRPC: applying a layer into a snapshot and creating a
//! layer from two sets of mounts.
//!
//! Mounts that belong to one of this daemon's snapshotters are written or read directly
//! (overlay upper directory or native tree, no mount at all); other mounts are mounted on a
//! temporary directory. Blobs come from a local OCI-layout directory or containerd's Content
//! service; for the latter the namespace is the request's, else the one in the snapshot key
//! (`<ns>/<n>/...`, how containerd names backend snapshots), else the configured default.

pub mod content;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use differ::content::{BlobSink, LocalStore};
use differ::diff::{Changes, Created, DiffOptions};
use differ::{Applied, Compression, Digest, WhiteoutMode};
use snapshotter::{Kind, Mount, OwnedSnapshot};
use tokio::runtime::Handle;
use tonic::transport::Channel;

use self::content::{BlobStore, ContainerdContent, OwnContent};
use crate::config::DifferConfig;
use crate::instances::Instances;
use crate::metrics::METRICS;
use imagestore::ImageStore;

/// Label (and annotation) naming a compressed layer's uncompressed digest.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Why an Apply or Diff failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A snapshotter call failed.
    #[error(transparent)]
    Snapshot(#[from] snapshotter::Error),
    /// Applying, creating or storing the layer failed.
    #[error(transparent)]
    Layer(#[from] differ::Error),
    /// Mounting or unmounting foreign mounts failed.
    #[error(transparent)]
    Mount(#[from] mountutil::Error),
    /// The target snapshot cannot take a layer.
    #[error("snapshot {key} is {kind}, layers can only be applied to active snapshots")]
    NotActive {
        /// The snapshot.
        key: String,
        /// Its kind.
        kind: &'static str,
    },
    /// An Apply without mounts.
    #[error("apply needs mounts")]
    NoMounts,
    /// A feature of the request this differ does not have.
    #[error("{0}: not implemented")]
    Unsupported(String),
}

/// Result of a layer operation.
pub type Result<T> = std::result::Result<T, LayerError>;

/// Namespace and lease of the incoming request, and the runtime its content calls run on.
pub struct CallContext {
    /// `containerd-namespace` of the request.
    pub namespace: Option<String>,
    /// `containerd-lease` of the request.
    pub lease: Option<String>,
    /// The daemon's runtime (content calls block on it from the worker thread).
    pub runtime: Handle,
}

/// A layer to apply.
pub struct ApplyLayer {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size; 0 when unknown.
    pub size: u64,
    /// From the media type; `None` means sniff the stream.
    pub compression: Option<Compression>,
    /// The expected diffID (`containerd.io/uncompressed`), if the descriptor names one.
    pub uncompressed: Option<String>,
    /// Where to apply it.
    pub mounts: Vec<Mount>,
    /// Sync the target filesystem before answering.
    pub sync_fs: bool,
    /// The target was prepared without its parent, whose layers are applied meanwhile:
    /// the directories made without the layer declaring them are listed in the result
    /// ([`differ::Lowers::Later`]).
    pub lowers_later: bool,
}

/// A layer to create.
pub struct CreateLayer {
    /// The base.
    pub left: Vec<Mount>,
    /// The changed tree.
    pub right: Vec<Mount>,
    /// Compression and times.
    pub options: DiffOptions,
    /// Labels for the stored blob.
    pub labels: Vec<(String, String)>,
}

/// Where blobs are.
enum Content {
    Local(LocalStore),
    /// The daemon's own content store.
    Own,
    Containerd {
        channel: Channel,
        namespace: String,
        lease_expiry: Duration,
    },
}

/// Applies and creates layers for the daemon's snapshotter instances.
pub struct Layers {
    instances: Arc<Instances>,
    content: Content,
    /// The daemon's own content store: the default, and with containerd's store configured
    /// still where layers its own clients import are, and where their layers go.
    own: Arc<ImageStore>,
    scratch: PathBuf,
    limits: differ::LayerLimits,
    applied: AtomicU64,
}

/// Where a layer is written or read.
enum Target {
    /// A directory of ours.
    Own(OwnedSnapshot),
    /// Someone else's mounts, mounted here.
    Mounted(mountutil::TempMount),
}

impl Target {
    fn path(&self) -> &Path {
        match self {
            Target::Own(o) => &o.fs,
            Target::Mounted(m) => m.path(),
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            Target::Own(o) => Some(&o.key),
            Target::Mounted(_) => None,
        }
    }

    fn release(self) -> Result<()> {
        if let Target::Mounted(m) = self {
            m.release()?;
        }
        Ok(())
    }
}

/// The namespace part of a containerd backend key `<ns>/<n>/<key>`.
fn key_namespace(key: &str) -> Option<&str> {
    let mut parts = key.splitn(3, '/');
    let (ns, seq) = (parts.next()?, parts.next()?);
    parts.next()?;
    (!ns.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) && !seq.is_empty()).then_some(ns)
}

/// The layer directories a set of mounts shows, nearest first, if it is a plain stack:
/// nothing, a bind of one directory, or a read-only overlay. An empty directory (the view
/// containerd makes of "no parent") shows no layers.
fn mounted_layers(mounts: &[Mount]) -> Option<Vec<PathBuf>> {
    match mounts {
        [] => Some(Vec::new()),
        [m] if m.fstype == "bind" || m.fstype == "rbind" => {
            let source = PathBuf::from(&m.source);
            let empty = std::fs::read_dir(&source).is_ok_and(|mut d| d.next().is_none());
            Some(if empty { Vec::new() } else { vec![source] })
        }
        [m] if m.fstype == "overlay" && m.option_value("upperdir").is_none() => {
            Some(m.lowerdirs().into_iter().map(PathBuf::from).collect())
        }
        _ => None,
    }
}

fn mismatch(what: &'static str, expected: impl ToString, actual: impl ToString) -> LayerError {
    LayerError::Layer(differ::Error::Mismatch {
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

impl Layers {
    /// Layers over `instances`, with blobs where `config` says and temporary mounts under
    /// `scratch`.
    pub fn new(
        instances: Arc<Instances>,
        store: Arc<ImageStore>,
        config: &DifferConfig,
        scratch: PathBuf,
    ) -> Self {
        let content = match (&config.content_dir, &config.containerd_address) {
            (Some(dir), _) => Content::Local(LocalStore::new(dir)),
            (None, Some(address)) => Content::Containerd {
                channel: api::channel::connect_lazy(address),
                namespace: config.namespace.clone(),
                lease_expiry: Duration::from_secs(config.lease_expiry_secs),
            },
            (None, None) => Content::Own,
        };
        Layers {
            instances,
            content,
            own: store,
            scratch,
            limits: config.limits,
            applied: AtomicU64::new(0),
        }
    }

    /// The snapshot of ours that `mounts` show, if any.
    fn owner(&self, mounts: &[Mount]) -> Result<Option<OwnedSnapshot>> {
        for inst in self.instances.all() {
            if let Some(owned) = inst.snapshotter.recognize(mounts)? {
                return Ok(Some(owned));
            }
        }
        Ok(None)
    }

    /// The directory to write a layer into, and how.
    fn target(&self, mounts: &[Mount]) -> Result<(Target, WhiteoutMode)> {
        match self.owner(mounts)? {
            Some(o) if o.kind != Kind::Active => Err(LayerError::NotActive {
                key: o.key,
                kind: o.kind.as_str(),
            }),
            Some(o) => {
                let mode = o.whiteouts;
                Ok((Target::Own(o), mode))
            }
            None if mounts.is_empty() => Err(LayerError::NoMounts),
            None => {
                let m = mountutil::TempMount::new(mounts, &self.scratch)?;
                Ok((Target::Mounted(m), WhiteoutMode::Native))
            }
        }
    }

    /// The content store for a call about snapshot `key` (reading `blob`, if given): the
    /// local directory; the daemon's own store; or containerd's Content service in the
    /// call's namespace with its lease, unless the blob is whole in the own store or the call
    /// runs under one of its leases (one of its own clients').
    fn store(&self, ctx: &CallContext, key: Option<&str>, blob: Option<&Digest>) -> BlobStore {
        let namespace = |default: &str| {
            ctx.namespace
                .clone()
                .or_else(|| key.and_then(key_namespace).map(str::to_string))
                .unwrap_or_else(|| default.to_string())
        };
        let own = || {
            BlobStore::Own(OwnContent::new(
                Arc::clone(&self.own),
                namespace("default"),
                ctx.lease.clone(),
            ))
        };
        match &self.content {
            Content::Local(store) => BlobStore::Local(store.clone()),
            Content::Own => own(),
            Content::Containerd {
                channel,
                namespace: default,
                ..
            } => {
                // Only a complete blob: following a write in progress is for the own store's
                // clients (a pull applying as it downloads, under its lease). containerd's
                // Apply has the blob itself, and must not wait on someone else's write of
                // it, which may never finish.
                let in_own =
                    blob.is_some_and(|d| self.own.blobs().size(d).ok().flatten().is_some());
                let own_lease = match (&ctx.namespace, &ctx.lease) {
                    (Some(ns), Some(lease)) => self.own.lease_exists(ns, lease).unwrap_or(false),
                    _ => false,
                };
                if in_own || own_lease {
                    return own();
                }
                let client = ContainerdContent::new(
                    channel.clone(),
                    namespace(default),
                    ctx.lease.clone(),
                    ctx.runtime.clone(),
                );
                let guessed = ctx.namespace.is_none() && key.and_then(key_namespace).is_none();
                BlobStore::Containerd(Box::new(if guessed { client.guessed() } else { client }))
            }
        }
    }

    /// Applies a layer into the snapshot (or foreign mounts) `req.mounts` show, checking
    /// the blob's digest and size and the diffID against the descriptor.
    pub fn apply(&self, req: ApplyLayer, ctx: &CallContext) -> Result<Applied> {
        let started = Instant::now();
        let (target, mode) = self.target(&req.mounts)?;
        let lowers = match &target {
            // Only an overlay upper directory lacks what its parents have; a native
            // snapshot is a full copy, applied like containerd's bind mounts (no parents).
            Target::Own(o) if matches!(mode, WhiteoutMode::Overlay { .. }) => o.parents.clone(),
            Target::Own(_) | Target::Mounted(_) => Vec::new(),
        };
        let key = target.key().map(str::to_string);
        let blob = self
            .store(ctx, key.as_deref(), Some(&req.digest))
            .open_layer(&req.digest)?;
        let applied = differ::apply_layer(
            blob,
            req.compression,
            target.path(),
            mode,
            if req.lowers_later {
                differ::Lowers::Later
            } else {
                differ::Lowers::Present(&lowers)
            },
            &self.limits,
        )?;
        if req.sync_fs {
            mountutil::fs::sync_filesystem(target.path())?;
        }
        target.release()?;
        if applied.blob_digest != req.digest {
            return Err(mismatch("digest", &req.digest, &applied.blob_digest));
        }
        if req.size > 0 && applied.blob_size != req.size {
            return Err(mismatch("size", req.size, applied.blob_size));
        }
        if let Some(want) = &req.uncompressed
            && want != applied.diff_id.as_str()
        {
            return Err(mismatch("uncompressed digest", want, &applied.diff_id));
        }
        let n = self.applied.fetch_add(1, Ordering::Relaxed) + 1;
        let took = started.elapsed();
        METRICS.layer_applied(applied.blob_size, applied.size, took);
        let secs = took.as_secs_f64();
        tracing::info!(
            layer = %req.digest,
            diff_id = %applied.diff_id,
            snapshot = key.as_deref().unwrap_or("(foreign mounts)"),
            mode = ?mode,
            mb_per_s = applied.size as f64 / 1e6 / secs.max(1e-9),
            applied_total = n,
            "applied layer"
        );
        Ok(applied)
    }

    /// Creates the layer of the changes from `req.left` to `req.right` and stores it. When
    /// the right side is an overlay snapshot of ours and the left side shows exactly its
    /// parents, only its upper directory is walked; otherwise both trees are compared.
    pub fn create(&self, req: CreateLayer, ctx: &CallContext) -> Result<Created> {
        let started = Instant::now();
        let owner = self.owner(&req.right)?;
        let mut store = self.store(ctx, owner.as_ref().map(|o| o.key.as_str()), None);
        let lease = self.protect(&mut store)?;
        let mut writer = store.create()?;
        let upper_only = owner.as_ref().filter(|o| {
            matches!(o.whiteouts, WhiteoutMode::Overlay { .. })
                && mounted_layers(&req.left).is_some_and(|shown| shown == o.parents)
        });
        let method = if upper_only.is_some() {
            "overlay upper"
        } else {
            "tree comparison"
        };
        let created = match upper_only {
            Some(o) => {
                differ::diff::write_layer(Changes::OverlayUpper(&o.fs), &mut writer, req.options)?
            }
            None => self.compare_trees(&req.left, &req.right, &mut writer, req.options)?,
        };
        let mut labels = req.labels;
        if req.options.compression != Compression::None {
            labels.push((UNCOMPRESSED_LABEL.into(), created.diff_id.to_string()));
        }
        writer.commit(&created.digest, created.size, &labels)?;
        if let BlobStore::Containerd(c) = &store {
            c.hold(&created.digest)?;
        }
        METRICS.layer_created();
        tracing::info!(
            layer = %created.digest,
            diff_id = %created.diff_id,
            method,
            lease = lease.as_deref().unwrap_or("(caller's)"),
            size = created.size,
            secs = started.elapsed().as_secs_f64(),
            "created layer"
        );
        Ok(created)
    }

    /// Puts a blob about to be written to containerd under a lease of ours when the caller's
    /// lease did not come with the request (containerd's proxies do not forward it), so the
    /// collector keeps it until the client has referenced it. Returns our lease's ID.
    fn protect(&self, store: &mut BlobStore) -> Result<Option<String>> {
        match (store, &self.content) {
            (BlobStore::Containerd(c), Content::Containerd { lease_expiry, .. })
                if !c.has_lease() =>
            {
                Ok(Some(c.lease_for(*lease_expiry)?))
            }
            _ => Ok(None),
        }
    }

    /// Mounts both sides on temporary directories and writes their difference.
    fn compare_trees(
        &self,
        left: &[Mount],
        right: &[Mount],
        writer: &mut impl std::io::Write,
        options: DiffOptions,
    ) -> Result<Created> {
        let empty = tempfile_dir(&self.scratch)?;
        let lower = match left {
            [] => None,
            _ => Some(mountutil::TempMount::new(left, &self.scratch)?),
        };
        let upper = mountutil::TempMount::new(right, &self.scratch)?;
        let changes = Changes::Trees {
            lower: lower.as_ref().map_or(empty.as_path(), |m| m.path()),
            upper: upper.path(),
        };
        let created = differ::diff::write_layer(changes, writer, options);
        upper.release()?;
        if let Some(l) = lower {
            l.release()?;
        }
        let _ = std::fs::remove_dir(&empty);
        Ok(created?)
    }
}

/// An empty directory standing for "no lower layers".
fn tempfile_dir(scratch: &Path) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = scratch.join(format!(
        "empty-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| differ::Error::io("create", &dir, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_from_backend_keys() {
        assert_eq!(
            key_namespace("default/12/extract-123 sha256:abc"),
            Some("default")
        );
        assert_eq!(key_namespace("k8s.io/3/ctr"), Some("k8s.io"));
        assert_eq!(key_namespace("plainkey"), None);
        assert_eq!(key_namespace("a/b/c"), None);
        assert_eq!(key_namespace("/1/x"), None);
    }

    #[test]
    fn an_empty_bind_shows_no_layers() {
        let dir = std::env::temp_dir().join(format!("strata-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bind = |p: &Path| Mount::bind(p, true);
        assert_eq!(mounted_layers(&[bind(&dir)]), Some(Vec::new()));
        std::fs::write(dir.join("f"), "x").unwrap();
        assert_eq!(mounted_layers(&[bind(&dir)]), Some(vec![dir.clone()]));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mounted_layers(&[]), Some(Vec::new()));
    }
}
