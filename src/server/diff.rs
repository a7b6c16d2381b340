//! `containerd.services.diff.v1.Diff`: Apply writes a layer into a snapshot, Diff creates one.
//!
//! Mounts that belong to one of this daemon's snapshotters are written or read directly
//! (overlay upper directory or native tree, no mount at all); any other mounts are mounted on
//! a temporary directory. Layer blobs come from a local OCI-layout directory or containerd's
//! Content service; for the latter the namespace is the request's, else the one in the
//! snapshot key (`<ns>/<n>/...`, how containerd names backend snapshots), else the default.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use differ::content::{BlobSink, BlobSource, LocalStore};
use differ::diff::{Changes, DiffOptions};
use differ::{Compression, Digest, WhiteoutMode};
use snapshotter::{Kind, Mount, OwnedSnapshot, WhiteoutStyle};
use tokio::runtime::Handle;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::Instances;
use crate::api::services::diff::v1 as pb;
use crate::api::services::diff::v1::diff_server::Diff;
use crate::api::types::Descriptor;
use crate::config::DifferConfig;
use crate::content::{ContainerdContent, LEASE_HEADER, NAMESPACE_HEADER, containerd_channel};
use crate::convert::mount_from_pb;
use crate::status::{differ_status, join_error, to_status};

/// Label (and annotation) naming a compressed layer's uncompressed digest.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Where blobs are.
enum Content {
    Local(LocalStore),
    Containerd { channel: Channel, namespace: String },
}

/// The Diff service.
pub struct DiffService {
    instances: Arc<Instances>,
    content: Arc<Content>,
    scratch: PathBuf,
    applied: Arc<AtomicU64>,
}

/// Namespace and lease of the incoming request.
struct CallContext {
    namespace: Option<String>,
    lease: Option<String>,
}

impl CallContext {
    fn from(metadata: &MetadataMap) -> Self {
        let get = |k| {
            metadata
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        CallContext {
            namespace: get(NAMESPACE_HEADER),
            lease: get(LEASE_HEADER),
        }
    }
}

/// Where a layer is written or read.
enum Target {
    /// A directory of ours, written in the given style.
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
}

fn whiteout_mode(style: WhiteoutStyle) -> WhiteoutMode {
    match style {
        WhiteoutStyle::Overlay { userxattr } => WhiteoutMode::Overlay { userxattr },
        WhiteoutStyle::Delete => WhiteoutMode::Native,
    }
}

/// The namespace part of a containerd backend key `<ns>/<n>/<key>`.
fn key_namespace(key: &str) -> Option<&str> {
    let mut parts = key.splitn(3, '/');
    let (ns, seq) = (parts.next()?, parts.next()?);
    parts.next()?;
    (!ns.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) && !seq.is_empty()).then_some(ns)
}

impl DiffService {
    /// A Diff service over `instances`, with blobs where `config` says and temporary mounts
    /// under `scratch`.
    pub fn new(instances: Arc<Instances>, config: &DifferConfig, scratch: PathBuf) -> Self {
        let content = match &config.content_dir {
            Some(dir) => Content::Local(LocalStore::new(dir)),
            None => Content::Containerd {
                channel: containerd_channel(config.containerd_address.clone()),
                namespace: config.namespace.clone(),
            },
        };
        DiffService {
            instances,
            content: Arc::new(content),
            scratch,
            applied: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl DiffService {
    fn job(&self, metadata: &MetadataMap) -> Job {
        Job {
            instances: Arc::clone(&self.instances),
            content: Arc::clone(&self.content),
            scratch: self.scratch.clone(),
            ctx: CallContext::from(metadata),
            runtime: Handle::current(),
        }
    }
}

/// Everything a blocking Apply or Diff needs, moved onto its thread.
struct Job {
    instances: Arc<Instances>,
    content: Arc<Content>,
    scratch: PathBuf,
    ctx: CallContext,
    runtime: Handle,
}

impl Job {
    fn owner(&self, mounts: &[Mount]) -> Result<Option<OwnedSnapshot>, Status> {
        for inst in self.instances.all() {
            if let Some(owned) = inst.snapshotter.recognize(mounts).map_err(to_status)? {
                return Ok(Some(owned));
            }
        }
        Ok(None)
    }

    /// The directory to write a layer into, and how.
    fn target(&self, mounts: &[Mount]) -> Result<(Target, WhiteoutMode), Status> {
        match self.owner(mounts)? {
            Some(o) if o.kind != Kind::Active => Err(Status::failed_precondition(format!(
                "snapshot {} is {}, layers can only be applied to active snapshots",
                o.key,
                o.kind.as_str()
            ))),
            Some(o) => {
                let mode = whiteout_mode(o.whiteouts);
                Ok((Target::Own(o), mode))
            }
            None if mounts.is_empty() => Err(Status::invalid_argument("apply needs mounts")),
            None => {
                let m = mountutil::TempMount::new(mounts, &self.scratch)
                    .map_err(|e| differ_status(e.into()))?;
                Ok((Target::Mounted(m), WhiteoutMode::Native))
            }
        }
    }

    fn namespace(&self, key: Option<&str>) -> String {
        let fallback = match &*self.content {
            Content::Containerd { namespace, .. } => namespace.as_str(),
            Content::Local(_) => "",
        };
        self.ctx
            .namespace
            .clone()
            .or_else(|| key.and_then(key_namespace).map(str::to_string))
            .unwrap_or_else(|| fallback.to_string())
    }

    /// The content store for this call: the local directory, or containerd's Content
    /// service in the right namespace with the caller's lease.
    fn store(&self, key: Option<&str>) -> Store {
        match &*self.content {
            Content::Local(store) => Store::Local(store.clone()),
            Content::Containerd { channel, .. } => {
                Store::Containerd(Box::new(ContainerdContent::new(
                    channel.clone(),
                    self.namespace(key),
                    self.ctx.lease.clone(),
                    self.runtime.clone(),
                )))
            }
        }
    }
}

/// A content store resolved for one call.
enum Store {
    Local(LocalStore),
    Containerd(Box<ContainerdContent>),
}

impl Store {
    fn open(&self, digest: &Digest) -> differ::Result<Box<dyn std::io::Read + Send>> {
        match self {
            Store::Local(s) => s.open(digest),
            Store::Containerd(s) => s.open(digest),
        }
    }

    fn create(&self) -> differ::Result<Box<dyn differ::content::BlobWriter>> {
        match self {
            Store::Local(s) => s.create(),
            Store::Containerd(s) => s.create(),
        }
    }
}

fn mismatch(what: &'static str, expected: impl ToString, actual: impl ToString) -> Status {
    differ_status(differ::Error::Mismatch {
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

/// The layer paths a set of mounts shows, lowest priority last, if it is a plain stack.
fn mounted_layers(mounts: &[Mount]) -> Option<Vec<String>> {
    match mounts {
        [] => Some(Vec::new()),
        [m] if m.fstype == "bind" => Some(vec![m.source.clone()]),
        [m] if m.fstype == "overlay" && m.option_value("upperdir").is_none() => {
            Some(m.lowerdirs().into_iter().map(str::to_string).collect())
        }
        _ => None,
    }
}

impl Instances {
    /// Every instance.
    pub fn all(&self) -> impl Iterator<Item = &super::Instance> {
        self.by_name.values()
    }
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let job = self.job(request.metadata());
        let r = request.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Status::invalid_argument("apply needs a diff descriptor"))?;
        if !r.payloads.is_empty() {
            return Err(Status::unimplemented(
                "stream processor payloads are not supported",
            ));
        }
        let digest = Digest::parse(&desc.digest).map_err(differ_status)?;
        let compression = Compression::from_media_type(&desc.media_type).map_err(differ_status)?;
        let mounts: Vec<Mount> = r.mounts.into_iter().map(mount_from_pb).collect();
        let applied_count = Arc::clone(&self.applied);
        let sync_fs = r.sync_fs;
        let applied = tokio::task::spawn_blocking(move || -> Result<differ::Applied, Status> {
            let started = Instant::now();
            let (target, mode) = job.target(&mounts)?;
            let (key, lowers) = match &target {
                // Only an overlay upper directory lacks what its parents have; a native
                // snapshot is a full copy, applied like containerd's bind mounts (no parents).
                Target::Own(o) if matches!(mode, WhiteoutMode::Overlay { .. }) => {
                    (Some(o.key.clone()), o.parents.clone())
                }
                Target::Own(o) => (Some(o.key.clone()), Vec::new()),
                Target::Mounted(_) => (None, Vec::new()),
            };
            let blob = job
                .store(key.as_deref())
                .open(&digest)
                .map_err(differ_status)?;
            let applied = differ::apply_layer(blob, compression, target.path(), mode, &lowers)
                .map_err(differ_status)?;
            if sync_fs {
                mountutil::fs::sync_filesystem(target.path())
                    .map_err(|e| differ_status(e.into()))?;
            }
            if let Target::Mounted(m) = target {
                m.release().map_err(|e| differ_status(e.into()))?;
            }
            if applied.blob_digest != digest {
                return Err(mismatch("digest", &digest, &applied.blob_digest));
            }
            if desc.size > 0 && applied.blob_size != desc.size as u64 {
                return Err(mismatch("size", desc.size, applied.blob_size));
            }
            if let Some(want) = desc.annotations.get(UNCOMPRESSED_LABEL)
                && want != applied.diff_id.as_str()
            {
                return Err(mismatch("uncompressed digest", want, &applied.diff_id));
            }
            let n = applied_count.fetch_add(1, Ordering::Relaxed) + 1;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                layer = %digest,
                diff_id = %applied.diff_id,
                snapshot = key.as_deref().unwrap_or("(foreign mounts)"),
                mode = ?mode,
                mb_per_s = applied.size as f64 / 1e6 / secs.max(1e-9),
                applied_total = n,
                "applied layer"
            );
            Ok(applied)
        })
        .await
        .map_err(join_error)??;
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
        let job = self.job(request.metadata());
        let r = request.into_inner();
        let media_type = if r.media_type.is_empty() {
            differ::compression::MEDIA_TYPE_TAR_GZIP.to_string()
        } else {
            r.media_type
        };
        let compression = match Compression::from_media_type(&media_type).map_err(differ_status)? {
            Some(c) if media_type.starts_with("application/vnd.oci.image.layer.v1.tar") => c,
            _ => {
                return Err(Status::unimplemented(format!(
                    "media type {media_type} is not supported"
                )));
            }
        };
        let options = DiffOptions {
            compression,
            source_date_epoch: r.source_date_epoch.map(|t| t.seconds),
        };
        let left: Vec<Mount> = r.left.into_iter().map(mount_from_pb).collect();
        let right: Vec<Mount> = r.right.into_iter().map(mount_from_pb).collect();
        let mut labels: Vec<(String, String)> = r.labels.into_iter().collect();
        let created = tokio::task::spawn_blocking(move || -> Result<differ::diff::Created, Status> {
            let owner = job.owner(&right)?;
            let key = owner.as_ref().map(|o| o.key.clone());
            let sink = job.store(key.as_deref());
            let mut writer = sink.create().map_err(differ_status)?;
            let fast = owner.as_ref().filter(|o| {
                matches!(o.whiteouts, WhiteoutStyle::Overlay { .. })
                    && mounted_layers(&left).is_some_and(|l| {
                        l == o.parents.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>()
                    })
            });
            let method = if fast.is_some() { "overlay upper" } else { "tree comparison" };
            let created = match fast {
                Some(o) => differ::diff::write_layer(Changes::OverlayUpper(&o.fs), &mut writer, options),
                None => {
                    let lower_dir = tempfile_dir(&job.scratch)?;
                    let lower = if left.is_empty() {
                        None
                    } else {
                        Some(mountutil::TempMount::new(&left, &job.scratch).map_err(|e| differ_status(e.into()))?)
                    };
                    let upper = mountutil::TempMount::new(&right, &job.scratch).map_err(|e| differ_status(e.into()))?;
                    let lower_path = lower.as_ref().map_or(lower_dir.as_path(), |m| m.path());
                    let out = differ::diff::write_layer(
                        Changes::Trees {
                            lower: lower_path,
                            upper: upper.path(),
                        },
                        &mut writer,
                        options,
                    );
                    upper.release().map_err(|e| differ_status(e.into()))?;
                    if let Some(l) = lower {
                        l.release().map_err(|e| differ_status(e.into()))?;
                    }
                    let _ = std::fs::remove_dir(&lower_dir);
                    out
                }
            }
            .map_err(differ_status)?;
            if compression != Compression::None {
                labels.push((UNCOMPRESSED_LABEL.into(), created.diff_id.to_string()));
            }
            writer.commit(&created.digest, created.size, &labels).map_err(differ_status)?;
            tracing::info!(layer = %created.digest, diff_id = %created.diff_id, method, "created layer");
            Ok(created)
        })
        .await
        .map_err(join_error)??;
        let mut annotations = std::collections::HashMap::new();
        annotations.insert(UNCOMPRESSED_LABEL.to_string(), created.diff_id.to_string());
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

/// An empty directory standing for "no lower layers".
fn tempfile_dir(scratch: &Path) -> Result<PathBuf, Status> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = scratch.join(format!(
        "empty-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
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
}
