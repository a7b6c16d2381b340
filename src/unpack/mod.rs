//! Images in and out of the daemon, as a client of its own services: importing an OCI
//! layout (directory or archive) into the content store, and unpacking an image into
//! snapshots the way containerd's client does, so `ctr` and Strata see the same thing.
//!
//! Unpacking resolves the image's target (an index picks this machine's platform) to its
//! manifest and config, walks the layers' chain IDs, and for each layer whose chain ID is
//! not a committed snapshot yet: Prepare `extract-<time>-<n> <chain>` on the previous
//! chain, Diff Apply the blob, Commit as the chain ID (labelled `containerd.io/snapshot.ref`),
//! label the blob `containerd.io/uncompressed`. Then the config is labelled
//! `containerd.io/gc.ref.snapshot.<snapshotter>` with the top chain ID, which keeps the
//! snapshots while the image lives. Asked again, every chain exists: nothing is applied.
//! All of it runs under a lease of its own, dropped at the end.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use tonic::transport::Channel;
use tonic::{Request, Status};

use api::headers::{LEASE as LEASE_HEADER, NAMESPACE as NAMESPACE_HEADER};
use api::labels::GC_EXPIRE as GC_EXPIRE_LABEL;
use api::services::content::v1 as content;
use api::services::content::v1::content_client::ContentClient;
use api::services::diff::v1 as diff;
use api::services::diff::v1::diff_client::DiffClient;
use api::services::images::v1 as images;
use api::services::images::v1::images_client::ImagesClient;
use api::services::leases::v1 as leases;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::snapshots::v1 as snapshots;
use api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use api::types::Descriptor;

/// Why an import or unpack failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The daemon refused a call.
    #[error("{what}")]
    Call {
        what: String,
        #[source]
        status: Status,
    },
    /// The image's JSON is not what OCI says.
    #[error("{0}")]
    Invalid(String),
    /// The registry refused, failed, or could not be reached.
    #[error("{0}")]
    Registry(String),
    /// The content store refused a write (a pull writes into it directly).
    #[error(transparent)]
    Store(#[from] imagestore::StoreError),
    /// Reading the layout failed.
    #[error("read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, UnpackError>;

fn call(what: impl Into<String>) -> impl FnOnce(Status) -> UnpackError {
    let what = what.into();
    move |status| UnpackError::Call { what, status }
}

/// An OCI (or Docker) descriptor as JSON has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonDescriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<JsonPlatform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl JsonPlatform {
    /// Whether this is platform `wanted`, `os/arch` or `os/arch/variant` (a variant is
    /// compared only when `wanted` names one).
    pub fn is(&self, wanted: &str) -> bool {
        let mut name = format!("{}/{}", self.os, self.architecture);
        if let Some(v) = &self.variant
            && wanted.matches('/').count() == 2
        {
            name = format!("{name}/{v}");
        }
        name == wanted
    }
}

#[derive(Debug, Deserialize)]
struct JsonIndex {
    #[serde(default)]
    manifests: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
struct JsonManifest {
    config: JsonDescriptor,
    #[serde(default)]
    layers: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
struct JsonConfig {
    rootfs: JsonRootfs,
}

#[derive(Debug, Deserialize)]
struct JsonRootfs {
    diff_ids: Vec<String>,
}

impl JsonDescriptor {
    fn to_pb(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone(),
        }
    }

    fn is_index(&self) -> bool {
        self.media_type.ends_with("image.index.v1+json")
            || self.media_type.ends_with("manifest.list.v2+json")
    }
}

/// This machine's OCI architecture.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The OCI chain IDs of layers with `diff_ids`, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => snapshotter::chain_id(parent, d),
        };
        out.push(next);
    }
    out
}

/// What an unpack did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Layers applied now.
    pub applied: usize,
    /// Layers already committed.
    pub existed: usize,
    /// The top chain ID (the snapshot a rootfs is prepared on).
    pub chain: String,
}

/// Blobs still on their way into the store (a pull's downloads), by digest: each sends
/// its size once stored, or why it failed.
#[derive(Default)]
pub struct Arrivals {
    pending: HashMap<String, tokio::sync::oneshot::Receiver<Result<u64>>>,
    /// Blobs whose write is open in the store, readable as they come.
    opening: HashMap<String, tokio::sync::oneshot::Receiver<()>>,
    /// Blobs arrived, and their bytes.
    pub count: usize,
    pub bytes: u64,
}

impl Arrivals {
    /// Expects blob `digest`: its download says on the first sender when its write is open
    /// in the store, and on the second when it is done.
    pub fn expect(
        &mut self,
        digest: &str,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Sender<Result<u64>>,
    ) {
        let (opened, opening) = tokio::sync::oneshot::channel();
        self.opening.insert(digest.to_string(), opening);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.insert(digest.to_string(), rx);
        (opened, tx)
    }

    /// Waits until blob `digest` can be read, as it comes if its write is open (or, if the
    /// write never opened, until it is done).
    pub async fn wait_readable(&mut self, digest: &str) -> Result<()> {
        match self.opening.remove(digest) {
            None => Ok(()),
            Some(opening) => match opening.await {
                Ok(()) => Ok(()),
                Err(_) => self.wait(digest).await,
            },
        }
    }

    /// Waits for blob `digest` if it is expected (at once otherwise).
    pub async fn wait(&mut self, digest: &str) -> Result<()> {
        let Some(rx) = self.pending.remove(digest) else {
            return Ok(());
        };
        let bytes = rx
            .await
            .map_err(|_| UnpackError::Invalid(format!("download of {digest} vanished")))??;
        self.count += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Waits for every blob still expected.
    pub async fn wait_all(&mut self) -> Result<()> {
        let digests: Vec<String> = self.pending.keys().cloned().collect();
        for d in digests {
            self.wait(&d).await?;
        }
        Ok(())
    }
}

/// The daemon's services for one namespace, under a lease once one is taken.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
    snapshotter: String,
    /// The process its lease is held for, as [`CLIENT_LABEL`] names it.
    holder: String,
}

impl Client {
    pub fn new(channel: Channel, namespace: &str, snapshotter: &str) -> Self {
        Client {
            channel,
            namespace: namespace.to_string(),
            lease: None,
            snapshotter: snapshotter.to_string(),
            holder: this_client(),
        }
    }

    /// The same, holding its lease for process `holder` (`<boot id>/<pid>`, see
    /// [`this_client`]) rather than this one: the daemon pulling for a client.
    pub fn for_holder(channel: Channel, namespace: &str, snapshotter: &str, holder: &str) -> Self {
        Client {
            holder: holder.to_string(),
            ..Client::new(channel, namespace, snapshotter)
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        let md = r.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace.parse().expect("namespace"));
        if let Some(lease) = &self.lease {
            md.insert(LEASE_HEADER, lease.parse().expect("lease id"));
        }
        r
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(api::headers::MAX_MESSAGE_SIZE)
    }

    /// Takes a lease of our own (expiring in a day, as containerd's clients do) for the
    /// calls that follow, labelled with this process so that a later client can tell it
    /// was left behind (see [`Client::drop_stale_leases`]).
    pub async fn take_lease(&mut self) -> Result<()> {
        self.drop_stale_leases().await?;
        let expires =
            api::time::rfc3339_utc(SystemTime::now() + std::time::Duration::from_secs(86_400));
        let id = format!("strata-{}", crate::content::unique_suffix());
        let r = self.request(leases::CreateRequest {
            id: id.clone(),
            labels: [
                (GC_EXPIRE_LABEL.to_string(), expires),
                (CLIENT_LABEL.to_string(), self.holder.clone()),
            ]
            .into(),
        });
        LeasesClient::new(self.channel.clone())
            .create(r)
            .await
            .map_err(call("create a lease"))?;
        self.lease = Some(id);
        Ok(())
    }

    /// Deletes the leases of Strata clients that died holding them (killed during a pull or
    /// an import): what only they held (a half-written blob, a half-applied layer) is then
    /// collected, instead of lingering until the leases expire a day later.
    pub async fn drop_stale_leases(&self) -> Result<()> {
        let r = self.request(leases::ListRequest {
            filters: vec![format!("labels.\"{CLIENT_LABEL}\"")],
        });
        let mut client = LeasesClient::new(self.channel.clone());
        let found = client
            .list(r)
            .await
            .map_err(call("list leases"))?
            .into_inner()
            .leases;
        for lease in found {
            let holder = lease
                .labels
                .get(CLIENT_LABEL)
                .map(String::as_str)
                .unwrap_or("");
            if client_alive(holder) {
                continue;
            }
            let r = self.request(leases::DeleteRequest {
                id: lease.id.clone(),
                sync: true,
            });
            match client.delete(r).await {
                Ok(_) => tracing::info!(lease = lease.id, holder, "dropped a dead client's lease"),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(call(format!("delete lease {}", lease.id))(s)),
            }
        }
        Ok(())
    }

    /// Drops the lease taken (what it held is then kept by the image, or collected).
    pub async fn release_lease(&mut self) -> Result<()> {
        if let Some(id) = self.lease.take() {
            let r = self.request(leases::DeleteRequest { id, sync: false });
            LeasesClient::new(self.channel.clone())
                .delete(r)
                .await
                .map_err(call("delete the lease"))?;
        }
        Ok(())
    }

    /// Whether the store has blob `digest` in this namespace.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        let r = self.request(content::InfoRequest {
            digest: digest.into(),
        });
        match self.content().info(r).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(call(format!("content info {digest}"))(s)),
        }
    }

    /// Blob `digest` read whole (for the small JSON documents of an image).
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let r = self.request(content::ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        });
        let what = format!("read {digest}");
        let mut stream = self
            .content()
            .read(r)
            .await
            .map_err(call(what.clone()))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(call(what.clone()))? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Writes blob `desc` from `reader` (skipping it if the namespace has it); whether it
    /// was written.
    pub async fn write_blob(
        &self,
        desc: &JsonDescriptor,
        mut reader: impl Read + Send + 'static,
    ) -> Result<bool> {
        if self.has_blob(&desc.digest).await? {
            return Ok(false);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let what = desc.digest.clone();
        let feeder = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0;
                while n < buf.len() {
                    let got = reader.read(&mut buf[n..])?;
                    if got == 0 {
                        break;
                    }
                    n += got;
                }
                buf.truncate(n);
                if n == 0 || tx.blocking_send(buf).is_err() {
                    return Ok(());
                }
            }
        });
        self.write_chunks(desc, rx).await?;
        feeder
            .await
            .map_err(|e| UnpackError::Invalid(format!("blob feeder: {e}")))?
            .map_err(|source| UnpackError::Io { path: what, source })?;
        Ok(true)
    }

    /// One Write stream for blob `desc` under ref `import-<digest>` (a retry resumes it
    /// from the start): a STAT, then a WRITE per chunk from `chunks`, then COMMIT with the
    /// expected size and digest, which the store checks. AlreadyExists counts as written.
    /// The chunks follow the STAT only once the store has given this stream the ref: while
    /// another client writes the same blob (Unavailable, "locked"), this waits, with the
    /// chunks untouched, until that write is committed (done) or gone (write it here), as
    /// containerd's clients wait.
    async fn write_chunks(
        &self,
        desc: &JsonDescriptor,
        chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<()> {
        let what = format!("write {}", desc.digest);
        let mut attempt = 0;
        let mut answers = loop {
            let (go, chunks_given) = tokio::sync::oneshot::channel();
            let requests = write_requests(desc, chunks_given);
            match self.content().write(self.request(requests)).await {
                Ok(a) => {
                    let _ = go.send(chunks);
                    break a.into_inner();
                }
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    tracing::debug!(blob = desc.digest, "waiting for another write of the blob");
                    tokio::time::sleep(lock_wait(attempt)).await;
                    attempt += 1;
                    if self.has_blob(&desc.digest).await? {
                        return Ok(());
                    }
                }
                Err(s) => return Err(call(what)(s)),
            }
        };
        loop {
            match answers.message().await {
                Ok(Some(a)) if a.action == content::WriteAction::Commit as i32 => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(UnpackError::Invalid(format!(
                        "{}: not committed",
                        desc.digest
                    )));
                }
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(call(what)(s)),
            }
        }
    }

    /// Adds `labels` to blob `digest` (field paths `labels.<key>`, as containerd's clients).
    pub async fn label_blob(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let r = self.request(content::UpdateRequest {
            info: Some(content::Info {
                digest: digest.into(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        self.content()
            .update(r)
            .await
            .map_err(call(format!("label {digest}")))?;
        Ok(())
    }

    /// Creates (or points again) image `name` at `target`.
    pub async fn put_image(&self, name: &str, target: &JsonDescriptor) -> Result<()> {
        let image = images::Image {
            name: name.into(),
            target: Some(target.to_pb()),
            ..Default::default()
        };
        let mut client = ImagesClient::new(self.channel.clone());
        let r = self.request(images::CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        });
        match client.create(r).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let r = self.request(images::UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                });
                client
                    .update(r)
                    .await
                    .map_err(call(format!("update image {name}")))?;
                Ok(())
            }
            Err(s) => Err(call(format!("create image {name}"))(s)),
        }
    }

    /// The target of image `name`.
    pub async fn image_target(&self, name: &str) -> Result<JsonDescriptor> {
        let r = self.request(images::GetImageRequest { name: name.into() });
        let image = ImagesClient::new(self.channel.clone())
            .get(r)
            .await
            .map_err(call(format!("image {name}")))?
            .into_inner()
            .image
            .unwrap_or_default();
        let t = image.target.unwrap_or_default();
        Ok(JsonDescriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            platform: None,
            annotations: t.annotations,
        })
    }

    /// The manifest for this machine of `target` (itself, or picked from an index).
    pub async fn platform_manifest(&self, target: &JsonDescriptor) -> Result<JsonDescriptor> {
        if !target.is_index() {
            return Ok(target.clone());
        }
        let index: JsonIndex = parse(&self.read_blob(&target.digest).await?, &target.digest)?;
        index
            .manifests
            .into_iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_none_or(|p| p.is(&format!("linux/{}", architecture())))
            })
            .ok_or_else(|| {
                UnpackError::Invalid(format!(
                    "{} has no manifest for linux/{}",
                    target.digest,
                    architecture()
                ))
            })
    }

    /// Unpacks image `name` into snapshots (see the module doc).
    pub async fn unpack(
        &mut self,
        name: &str,
        progress: impl FnMut(&str, &str),
    ) -> Result<Unpacked> {
        let target = self.image_target(name).await?;
        let manifest_desc = self.platform_manifest(&target).await?;
        let manifest: JsonManifest = parse(
            &self.read_blob(&manifest_desc.digest).await?,
            &manifest_desc.digest,
        )?;
        self.unpack_manifest(
            &manifest_desc.digest,
            &manifest,
            &mut Arrivals::default(),
            progress,
        )
        .await
    }

    /// Unpacks the layers of `manifest` (named `what` in errors), each once `arrivals` says
    /// its blob is in the store: a pull applies a layer while later ones still download.
    async fn unpack_manifest(
        &mut self,
        what: &str,
        manifest: &JsonManifest,
        arrivals: &mut Arrivals,
        mut progress: impl FnMut(&str, &str),
    ) -> Result<Unpacked> {
        arrivals.wait(&manifest.config.digest).await?;
        let config: JsonConfig = parse(
            &self.read_blob(&manifest.config.digest).await?,
            &manifest.config.digest,
        )?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(UnpackError::Invalid(format!(
                "{}: {} layers but {} diff IDs",
                what,
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(diff_ids);
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mut differ = DiffClient::new(self.channel.clone());
        let mut done = Unpacked::default();
        let mut parent = String::new();
        for ((layer, diff_id), chain) in manifest.layers.iter().zip(diff_ids).zip(&chains) {
            let stat = self.request(snapshots::StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: chain.clone(),
            });
            match snaps.stat(stat).await {
                Ok(_) => {
                    done.existed += 1;
                    progress(&layer.digest, "exists");
                    parent = chain.clone();
                    continue;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(call(format!("stat {chain}"))(s)),
            }
            // Applied as it downloads: the Apply reads the write in progress and checks the
            // digest at the end.
            arrivals.wait_readable(&layer.digest).await?;
            progress(&layer.digest, "unpacking");
            let key = format!("extract-{} {chain}", crate::content::unique_suffix());
            let labels: HashMap<String, String> =
                [("containerd.io/snapshot.ref".to_string(), chain.clone())].into();
            let prepare = self.request(snapshots::PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.clone(),
                parent: parent.clone(),
                labels: labels.clone(),
            });
            let mounts = match snaps.prepare(prepare).await {
                Ok(r) => r.into_inner().mounts,
                // Committed meanwhile (another unpack, or adopted): take it as it is.
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    done.existed += 1;
                    progress(&layer.digest, "exists");
                    parent = chain.clone();
                    continue;
                }
                Err(s) => return Err(call(format!("prepare {key}"))(s)),
            };
            let mut desc = layer.to_pb();
            desc.annotations
                .insert("containerd.io/uncompressed".into(), diff_id.clone());
            let apply = self.request(diff::ApplyRequest {
                diff: Some(desc),
                mounts,
                ..Default::default()
            });
            if let Err(s) = differ.apply(apply).await {
                let remove = self.request(snapshots::RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.clone(),
                });
                let _ = snaps.remove(remove).await;
                return Err(call(format!("apply {}", layer.digest))(s));
            }
            let commit = self.request(snapshots::CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: chain.clone(),
                key: key.clone(),
                labels,
                parent: String::new(),
            });
            arrivals.wait(&layer.digest).await?;
            match snaps.commit(commit).await {
                Ok(_) => done.applied += 1,
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let remove = self.request(snapshots::RemoveSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key,
                    });
                    let _ = snaps.remove(remove).await;
                    done.existed += 1;
                }
                Err(s) => return Err(call(format!("commit {chain}"))(s)),
            }
            self.label_blob(
                &layer.digest,
                [("containerd.io/uncompressed".to_string(), diff_id.clone())].into(),
            )
            .await?;
            progress(&layer.digest, "applied");
            parent = chain.clone();
        }
        if let Some(top) = chains.last() {
            let label = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
            self.label_blob(&manifest.config.digest, [(label, top.clone())].into())
                .await?;
            done.chain = top.clone();
        }
        Ok(done)
    }

    /// Imports the OCI layout in `path` (a directory, or a tar archive of one): every blob
    /// the namespace lacks, an image per manifest named by its
    /// `org.opencontainers.image.ref.name` annotation, with containerd's gc.ref labels
    /// from index to manifests and from manifests to config and layers. The images' names.
    pub async fn import(&self, path: &Path) -> Result<Vec<String>> {
        let layout = layout::Layout::open(path)?;
        if !layout.has("index.json") && layout.has("manifest.json") {
            return self.import_docker(&layout).await;
        }
        let index: JsonIndex = parse(&layout.read("index.json")?, "index.json")?;
        let mut names = Vec::new();
        for desc in &index.manifests {
            self.import_tree(&layout, desc).await?;
            if let Some(name) = desc.annotations.get("org.opencontainers.image.ref.name") {
                self.put_image(name, desc).await?;
                names.push(name.clone());
            }
        }
        Ok(names)
    }

    /// Imports a docker archive (`docker save`): for each image of its `manifest.json`, the
    /// config and layers as they are, and a Docker schema 2 manifest made for them, named
    /// by each of its tags as containerd names them (`docker.io/library/busybox:1`).
    async fn import_docker(&self, layout: &layout::Layout) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = parse(&layout.read("manifest.json")?, "manifest.json")?;
        let mut names = Vec::new();
        for entry in entries {
            let config = self
                .import_file(
                    layout,
                    &entry.config,
                    "application/vnd.docker.container.image.v1+json",
                )
                .await?;
            let mut layers = Vec::new();
            for file in &entry.layers {
                let mut magic = [0u8; 2];
                let gzip =
                    layout.file(file)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
                let media_type = if gzip {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    "application/vnd.docker.image.rootfs.diff.tar"
                };
                layers.push(self.import_file(layout, file, media_type).await?);
            }
            let json = |d: &JsonDescriptor| serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": json(&config),
                "layers": layers.iter().map(json).collect::<Vec<_>>(),
            }))
            .expect("JSON");
            let desc = JsonDescriptor {
                media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
                digest: {
                    let mut h = differ::digest::Hasher::default();
                    h.update(&manifest);
                    h.finish().0.to_string()
                },
                size: manifest.len() as i64,
                platform: None,
                annotations: HashMap::new(),
            };
            self.write_blob(&desc, std::io::Cursor::new(manifest))
                .await?;
            let mut labels: HashMap<String, String> = [(
                "containerd.io/gc.ref.content.config".to_string(),
                config.digest.clone(),
            )]
            .into();
            for (i, l) in layers.iter().enumerate() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    l.digest.clone(),
                );
            }
            self.label_blob(&desc.digest, labels).await?;
            for tag in &entry.repo_tags {
                let name = docker_name(tag);
                self.put_image(&name, &desc).await?;
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Stores file `name` of `layout` as a blob of `media_type` (hashed first, then written
    /// and checked against that digest); its descriptor.
    async fn import_file(
        &self,
        layout: &layout::Layout,
        name: &str,
        media_type: &str,
    ) -> Result<JsonDescriptor> {
        let mut hasher = differ::digest::Hasher::default();
        let mut file = layout.file(name)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|source| UnpackError::Io {
                path: name.to_string(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let (digest, size) = hasher.finish();
        let desc = JsonDescriptor {
            media_type: media_type.into(),
            digest: digest.to_string(),
            size: size as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        self.write_blob(&desc, layout.file(name)?).await?;
        Ok(desc)
    }

    /// Writes `desc` and what it references, children first, labelling parents.
    async fn import_tree(&self, layout: &layout::Layout, desc: &JsonDescriptor) -> Result<()> {
        let mut todo = vec![desc.clone()];
        let mut order = Vec::new();
        while let Some(d) = todo.pop() {
            let mut labels = HashMap::new();
            if d.is_index() {
                let index: JsonIndex = parse(&layout.blob(&d.digest)?, &d.digest)?;
                for (i, m) in index.manifests.iter().enumerate() {
                    labels.insert(
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        m.digest.clone(),
                    );
                    todo.push(m.clone());
                }
            } else if d.media_type.contains("manifest") {
                let manifest: JsonManifest = parse(&layout.blob(&d.digest)?, &d.digest)?;
                labels.insert(
                    "containerd.io/gc.ref.content.config".into(),
                    manifest.config.digest.clone(),
                );
                order.push((manifest.config.clone(), HashMap::new()));
                for (i, l) in manifest.layers.iter().enumerate() {
                    labels.insert(
                        format!("containerd.io/gc.ref.content.l.{i}"),
                        l.digest.clone(),
                    );
                    order.push((l.clone(), HashMap::new()));
                }
            }
            order.push((d, labels));
        }
        for (d, labels) in order {
            let file = layout.open_blob(&d.digest)?;
            self.write_blob(&d, file).await?;
            if !labels.is_empty() {
                self.label_blob(&d.digest, labels).await?;
            }
        }
        Ok(())
    }
}

/// A docker image name as containerd normalizes it: `busybox:1` →
/// `docker.io/library/busybox:1`, `user/app:2` → `docker.io/user/app:2`; names with a
/// registry host (a dot, a port, or `localhost`) stay.
fn docker_name(tag: &str) -> String {
    let first = tag.split('/').next().unwrap_or(tag);
    let has_host =
        tag.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        tag.to_string()
    } else if tag.contains('/') {
        format!("docker.io/{tag}")
    } else {
        format!("docker.io/library/{tag}")
    }
}

/// A stream of the values `produce` sends (a task feeding a channel).
fn async_stream<T, F, Fut>(produce: F) -> tokio_stream::wrappers::ReceiverStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The requests of [`Client::write_chunks`]'s stream for blob `desc`: a STAT, then, once
/// `chunks_given` brings them, a WRITE per chunk and the COMMIT.
fn write_requests(
    desc: &JsonDescriptor,
    chunks_given: tokio::sync::oneshot::Receiver<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) -> tokio_stream::wrappers::ReceiverStream<content::WriteContentRequest> {
    let reference = format!("import-{}", desc.digest);
    let (digest, size) = (desc.digest.clone(), desc.size);
    let request = move |action: content::WriteAction, offset: i64, data: Vec<u8>| {
        content::WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total: size,
            expected: digest.clone(),
            offset,
            data,
            labels: HashMap::new(),
        }
    };
    async_stream(move |tx| async move {
        if tx
            .send(request(content::WriteAction::Stat, 0, Vec::new()))
            .await
            .is_err()
        {
            return;
        }
        let Ok(mut chunks) = chunks_given.await else {
            return;
        };
        let mut offset = 0i64;
        while let Some(data) = chunks.recv().await {
            let n = data.len() as i64;
            if tx
                .send(request(content::WriteAction::Write, offset, data))
                .await
                .is_err()
            {
                return;
            }
            offset += n;
        }
        let _ = tx
            .send(request(content::WriteAction::Commit, offset, Vec::new()))
            .await;
    })
}

/// How long to wait before trying again for a blob's ref another write holds: 10 ms,
/// doubling up to a second.
pub(crate) fn lock_wait(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((10u64 << attempt.min(7)).min(1000))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| UnpackError::Invalid(format!("{what}: {e}")))
}

/// Lease label naming the Strata client holding the lease: `<boot id>/<pid>`.
const CLIENT_LABEL: &str = "strata.io/client";

/// This process, as the `strata.io/client` lease label names it: `<boot id>/<pid>`.
pub fn this_client() -> String {
    format!("{}/{}", boot_id(), std::process::id())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the client `holder` names still runs: same boot, and its pid is a `strata`.
fn client_alive(holder: &str) -> bool {
    let Some((boot, pid)) = holder.rsplit_once('/') else {
        return false;
    };
    boot == boot_id()
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "strata")
}

pub mod layout;
pub mod pull;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_are_normalized() {
        assert_eq!(docker_name("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(docker_name("user/app:2"), "docker.io/user/app:2");
        assert_eq!(docker_name("127.0.0.1:5000/a/b:3"), "127.0.0.1:5000/a/b:3");
        assert_eq!(docker_name("localhost/x:1"), "localhost/x:1");
        assert_eq!(docker_name("quay.io/a/b:1"), "quay.io/a/b:1");
    }

    #[test]
    fn chain_ids_follow_oci() {
        let ids = chain_ids(&["sha256:aa".into(), "sha256:bb".into()]);
        assert_eq!(ids[0], "sha256:aa");
        // sha256 of "sha256:aa sha256:bb", computed with sha256sum.
        assert_eq!(
            ids[1],
            "sha256:b68ad689d6d1ec110ea1c13617437ad6f3766d4b3b309f6a603a222e07a0164f"
        );
    }
}
