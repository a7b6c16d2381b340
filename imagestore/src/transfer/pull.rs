//! Pulling an image from an OCI registry into the image store, then unpacking it, in the
//! daemon: blob bytes go from the registry straight into the content store, and a layer is
//! applied while it downloads.
//!
//! The reference is resolved to its root (an index or a manifest); an index picks the
//! requested platform's manifest. Only the blobs the namespace lacks are downloaded, several
//! at a time, each written into the content store as it streams; the store checks size and
//! digest before committing it. A transfer that breaks is resumed where it stopped (a ranged
//! request), so a layer being applied as it downloads does not notice. Blobs are labelled as
//! containerd labels them (gc references from index to manifests and from a manifest to its
//! config and layers, `containerd.io/distribution.source.<host>`), the image is recorded
//! under the reference, and unpacked: layers already committed are not applied again.
//!
//! Credentials are the client's to find and give; bearer tokens are negotiated by the
//! registry client with them. Plain HTTP when asked and for loopback registries.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use oci_client::Reference;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use super::unpack::{Arrivals, Unpacked};
use super::{Result, Transfer, TransferError, lock_wait};
use crate::oci::{self, Descriptor, Document};
use crate::{ContentWriter, ImageStore, StoreError};

/// Downloads in flight at once (containerd's default).
const DOWNLOADS: usize = 3;
/// Attempts in a row that bring no byte before a blob (or the resolve) is given up.
const ATTEMPTS: usize = 3;
/// Bytes gathered from the network before one write into the store.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes between two "downloading" progress reports of a blob.
const REPORT_EVERY: u64 = 1 << 20;

const ACCEPTED: &[&str] = api::media_types::MANIFESTS;

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Plain HTTP even for a registry that is not on loopback.
    pub plain_http: bool,
    /// User and password, if not anonymous.
    pub credentials: Option<(String, String)>,
    /// `os/arch[/variant]`; this machine's if unset.
    pub platform: Option<String>,
}

/// Hears of each blob's state as (digest, state, bytes done, bytes in all).
pub type Progress = Arc<dyn Fn(&str, &str, u64, u64) + Send + Sync>;

/// What a pull did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Blobs downloaded (manifests included) and their bytes.
    pub downloaded: usize,
    pub bytes: u64,
    /// Blobs the namespace had.
    pub present: usize,
    pub unpacked: Unpacked,
}

fn registry_error(
    what: String,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> TransferError {
    move |e| TransferError::Registry(format!("{what}: {e}"))
}

/// Runs `attempt` until it succeeds or has failed [`ATTEMPTS`] times, waiting a little
/// longer after each failure (transient registry and network errors).
async fn retried<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    return Err(e);
                }
                tracing::debug!(error = %e, failures, "retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

fn backoff(failures: usize) -> Duration {
    Duration::from_millis(200 << failures.min(5))
}

/// Whether `registry` (`host[:port]`) is on this machine.
fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Where a pull's downloads write: the store, the namespace and the pull's lease.
#[derive(Clone)]
struct Destination {
    store: Arc<ImageStore>,
    namespace: String,
    lease: String,
}

/// Starts `work` on the blocking pool at once; its result, awaited.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    let task = tokio::task::spawn_blocking(work);
    async move {
        task.await
            .map_err(|e| TransferError::Invalid(format!("store task: {e}")))?
            .map_err(TransferError::Store)
    }
}

/// A registry blob to download.
struct Download {
    remote: Arc<oci_client::Client>,
    image: Reference,
    desc: Descriptor,
    progress: Progress,
}

impl Download {
    /// Downloads the blob into `to` (see the module doc): says on `opened` once its write
    /// is open in the store (readable as it comes), and returns the bytes downloaded.
    async fn run(self, to: Destination, opened: oneshot::Sender<()>) -> Result<u64> {
        let Download {
            remote,
            image,
            desc,
            progress,
        } = self;
        let size = desc.size as u64;
        let reference = format!("pull-{}", desc.digest);
        let mut attempt = 0;
        let writer = loop {
            let writer = blocking({
                let (to, reference, digest) = (to.clone(), reference.clone(), desc.digest.clone());
                move || {
                    to.store.content_writer(
                        &to.namespace,
                        &reference,
                        size,
                        Some(&digest),
                        Some(&to.lease),
                    )
                }
            })
            .await;
            match writer {
                Ok(w) => break w,
                // Stored meanwhile (another pull of the namespace).
                Err(TransferError::Store(StoreError::AlreadyExists(_))) => return Ok(0),
                // Another pull is downloading it: wait until that one has committed it (the
                // next try says AlreadyExists) or is gone (the next try resumes its write).
                Err(TransferError::Store(StoreError::Unavailable(_))) => {
                    if attempt == 0 {
                        progress(&desc.digest, "waiting", 0, size);
                    }
                    tokio::time::sleep(lock_wait(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // A write an earlier pull left (its lease still held) goes on from where it is.
        let start = writer.status().offset;
        let _ = opened.send(());
        let (chunks, received) = tokio::sync::mpsc::channel(16);
        let writing = blocking(move || write_chunks(writer, start, received));
        let mut offset = start;
        let mut failures = 0;
        let mut reported = 0;
        while offset < size {
            let before = offset;
            let fetched = fetch_from(
                &remote,
                &image,
                &desc,
                &mut offset,
                |offset| {
                    if offset - reported >= REPORT_EVERY || offset == size {
                        reported = offset;
                        progress(&desc.digest, "downloading", offset, size);
                    }
                },
                &chunks,
            )
            .await;
            match fetched {
                Ok(()) if offset == size => {}
                Ok(()) if offset > size => {
                    return Err(TransferError::Registry(format!(
                        "{}: the registry sent more than its {size} bytes",
                        desc.digest
                    )));
                }
                // The store's writer stopped: its error says why.
                Err(FetchError::Store) => break,
                outcome => {
                    if offset == before {
                        failures += 1;
                    } else {
                        failures = 1;
                    }
                    let why = match outcome {
                        Err(FetchError::Registry(e)) => e,
                        _ => format!("{}: the transfer ended early", desc.digest),
                    };
                    if failures >= ATTEMPTS {
                        drop(chunks);
                        let _ = writing.await;
                        return Err(TransferError::Registry(why));
                    }
                    tracing::info!(
                        digest = desc.digest,
                        offset,
                        error = why,
                        "resuming a download"
                    );
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
        drop(chunks);
        let writer = writing.await?;
        let digest = desc.digest.clone();
        let committed = blocking(move || {
            let committed =
                to.store
                    .content_commit(writer, &reference, size, Some(&digest), HashMap::new());
            if let Err(StoreError::FailedPrecondition(_)) = &committed {
                // Bytes that fail their digest or size are never resumed: the next pull
                // starts the blob afresh.
                match to.store.ingest_abort(&to.namespace, &reference) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            committed
        })
        .await;
        match committed {
            Ok(_) | Err(TransferError::Store(StoreError::AlreadyExists(_))) => {}
            Err(TransferError::Store(StoreError::FailedPrecondition(why))) => {
                return Err(TransferError::Store(StoreError::FailedPrecondition(
                    format!("blob {} from the registry: {why}", desc.digest),
                )));
            }
            Err(e) => return Err(e),
        }
        progress(&desc.digest, "downloaded", size, size);
        Ok(size - start)
    }
}

/// Why one transfer of a blob stopped.
enum FetchError {
    /// The registry or the network failed.
    Registry(String),
    /// The store's writer is gone.
    Store,
}

/// One transfer of blob `desc` from `*offset` on: its bytes go to `chunks`, `*offset`
/// follows them and `advanced` hears of each step.
async fn fetch_from(
    remote: &oci_client::Client,
    image: &Reference,
    desc: &Descriptor,
    offset: &mut u64,
    mut advanced: impl FnMut(u64),
    chunks: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> std::result::Result<(), FetchError> {
    let failed =
        |e: &dyn std::fmt::Display| FetchError::Registry(format!("fetch {}: {e}", desc.digest));
    // From the start too: a ranged answer is not hashed by the registry client, and the
    // store checks the digest anyway.
    let response = remote
        .pull_blob_stream_partial(image, desc.digest.as_str(), *offset, None)
        .await
        .map_err(|e| failed(&e))?;
    let (mut stream, mut skip) = match response {
        BlobResponse::Partial(s) => (s.stream, 0),
        // The registry ignored the range: what we have comes again.
        BlobResponse::Full(s) => (s.stream, *offset),
    };
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| failed(&e))?;
        if skip > 0 {
            let n = skip.min(chunk.len() as u64);
            skip -= n;
            let _ = chunk.split_to(n as usize);
            if chunk.is_empty() {
                continue;
            }
        }
        let n = chunk.len() as u64;
        chunks.send(chunk).await.map_err(|_| FetchError::Store)?;
        *offset += n;
        advanced(*offset);
    }
    Ok(())
}

/// The store side of a download: writes what `received` brings at `offset` on, gathered
/// into writes of about [`WRITE_BATCH`] bytes; the writer, to commit, once it ends.
fn write_chunks(
    mut writer: ContentWriter,
    mut offset: u64,
    mut received: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> std::result::Result<ContentWriter, StoreError> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(chunk) = received.blocking_recv() {
        batch.extend_from_slice(&chunk);
        // Write when the batch is full or nothing more is waiting: readers of the blob
        // (a layer applied as it downloads) see bytes without delay.
        if batch.len() >= WRITE_BATCH || received.is_empty() {
            writer.write_at(offset, &batch)?;
            offset += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        writer.write_at(offset, &batch)?;
    }
    Ok(writer)
}

impl Transfer {
    /// Pulls `reference` (see the module doc); `progress` hears of each blob's
    /// state: resolving, exists, waiting, downloading (as bytes arrive), downloaded, unpacking,
    /// applied.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: Progress,
    ) -> Result<Pulled> {
        let image = Reference::from_str(reference)
            .map_err(|e| TransferError::Invalid(format!("reference {reference:?}: {e}")))?;
        let registry = image.resolve_registry().to_string();
        let protocol = if options.plain_http || loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let remote = Arc::new(oci_client::Client::new(ClientConfig {
            protocol,
            ..Default::default()
        }));
        let auth = match &options.credentials {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let mut pulled = Pulled::default();
        let source_label = format!(
            "{}{}",
            api::labels::DISTRIBUTION_SOURCE,
            registry
                .rsplit_once(':')
                .map_or(registry.as_str(), |(h, _)| h)
        );
        let source: HashMap<String, String> =
            [(source_label, image.repository().to_string())].into();

        let destination = Destination {
            store: Arc::clone(&self.store),
            namespace: self.namespace.clone(),
            lease: self.lease.clone().unwrap_or_default(),
        };
        progress(reference, "resolving", 0, 0);
        let fetch_manifest = |image: Reference, what: String| {
            let (remote, auth) = (Arc::clone(&remote), auth.clone());
            retried(move || {
                let (remote, auth, image, what) = (
                    Arc::clone(&remote),
                    auth.clone(),
                    image.clone(),
                    what.clone(),
                );
                async move {
                    remote
                        .pull_manifest_raw(&image, &auth, ACCEPTED)
                        .await
                        .map_err(registry_error(what))
                }
            })
        };
        let (bytes, digest) = fetch_manifest(image.clone(), format!("resolve {reference}")).await?;
        let root: Document = oci::parse(&bytes, &digest).map_err(TransferError::Invalid)?;
        let root_desc = Descriptor {
            media_type: if root.media_type.is_empty() {
                ACCEPTED[1].to_string()
            } else {
                root.media_type.clone()
            },
            digest: digest.clone(),
            size: bytes.len() as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        let (manifest, manifest_desc) = if root_desc.is_index() {
            let mut labels = HashMap::new();
            for (i, m) in root.manifests.iter().enumerate() {
                labels.insert(api::labels::ref_manifest(i), m.digest.clone());
            }
            self.store_bytes(&root_desc, bytes.to_vec(), &mut pulled)
                .await?;
            labels.extend(source.clone());
            self.label_blob(&root_desc.digest, labels).await?;
            let wanted = options.platform.clone().unwrap_or_else(oci::this_platform);
            let chosen = root
                .manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.is(&wanted)))
                .cloned()
                .ok_or_else(|| {
                    TransferError::Invalid(format!("{reference} has no manifest for {wanted}"))
                })?;
            let by_digest = image.clone_with_digest(chosen.digest.clone());
            let (bytes, _) = fetch_manifest(by_digest, format!("fetch {}", chosen.digest)).await?;
            self.store_bytes(&chosen, bytes.to_vec(), &mut pulled)
                .await?;
            let document =
                oci::parse::<Document>(&bytes, &chosen.digest).map_err(TransferError::Invalid)?;
            (document, chosen)
        } else {
            self.store_bytes(&root_desc, bytes.to_vec(), &mut pulled)
                .await?;
            (root, root_desc.clone())
        };
        let manifest = manifest.manifest().ok_or_else(|| {
            TransferError::Invalid(format!("{} has no config", manifest_desc.digest))
        })?;
        let config = manifest.config.clone();
        let mut labels: HashMap<String, String> =
            [(api::labels::ref_config(), config.digest.clone())].into();
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(api::labels::ref_layer(i), l.digest.clone());
        }
        labels.extend(source.clone());
        self.label_blob(&manifest_desc.digest, labels).await?;

        // Config and layers: the missing ones, several at a time; each layer is unpacked
        // as soon as it and the layers below it are in.
        let limit = Arc::new(Semaphore::new(DOWNLOADS));
        let mut arrivals = Arrivals::default();
        // Dropped with the pull (a cancelled pull stops its downloads).
        let mut downloads = JoinSet::new();
        for desc in std::iter::once(config).chain(manifest.layers.iter().cloned()) {
            if self.has_blob(&desc.digest).await? {
                pulled.present += 1;
                progress(&desc.digest, "exists", desc.size as u64, desc.size as u64);
                continue;
            }
            let (opened, arrived) = arrivals.expect(&desc.digest);
            let limit = Arc::clone(&limit);
            let download = Download {
                remote: Arc::clone(&remote),
                image: image.clone(),
                desc,
                progress: Arc::clone(&progress),
            };
            let to = destination.clone();
            // Queued behind the downloads in flight.
            progress(
                &download.desc.digest,
                "waiting",
                0,
                download.desc.size as u64,
            );
            downloads.spawn(async move {
                let _slot = limit.acquire_owned().await.expect("semaphore open");
                (download.progress)(
                    &download.desc.digest,
                    "downloading",
                    0,
                    download.desc.size as u64,
                );
                let _ = arrived.send(download.run(to, opened).await);
            });
        }
        let progress_unpack = Arc::clone(&progress);
        let unpacked = self
            .unpack_manifest(
                &manifest_desc.digest,
                &manifest,
                &mut arrivals,
                move |layer: &str, state: &str| progress_unpack(layer, state, 0, 0),
            )
            .await;
        // Whatever happened, no download is left running unwatched; a download's failure
        // is the cause of an unpack's that read it, and is the one reported.
        arrivals.wait_all().await?;
        pulled.unpacked = unpacked?;
        pulled.downloaded += arrivals.count;
        pulled.bytes += arrivals.bytes;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.label_blob(&desc.digest, source.clone()).await?;
        }
        self.put_image(reference, &root_desc).await?;
        Ok(pulled)
    }

    /// Stores a small blob already in memory, counting it.
    async fn store_bytes(
        &self,
        desc: &Descriptor,
        bytes: Vec<u8>,
        pulled: &mut Pulled,
    ) -> Result<()> {
        let size = bytes.len() as u64;
        if self.write_blob(desc, std::io::Cursor::new(bytes)).await? {
            pulled.downloaded += 1;
            pulled.bytes += size;
        } else {
            pulled.present += 1;
        }
        Ok(())
    }
}
