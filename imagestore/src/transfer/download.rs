//! One blob from the registry into the content store: its write opened (resumed if an
//! earlier pull left one), the registry's bytes written as they arrive (a layer being
//! applied follows them), a broken transfer resumed where it stopped (a ranged request),
//! and the store's check of size and digest at the commit; bytes that fail it are dropped,
//! never resumed.

use std::collections::HashMap;
use std::sync::Arc;

use oci_client::Reference;
use oci_client::client::BlobResponse;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;

use super::events::{Event, Progress};
use super::registry::{ATTEMPTS, backoff};
use super::{Result, TransferError, lock_wait};
use crate::oci::Descriptor;
use crate::{ContentWriter, ImageStore, StoreError};

/// Bytes gathered from the network before one write into the store.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes between two "downloading" progress reports of a blob.
const REPORT_EVERY: u64 = 1 << 20;

/// Where a pull's downloads write: the store, the namespace and the pull's lease, and the
/// pull's token of work in progress (`Transfer::busy`).
#[derive(Clone)]
pub(super) struct Destination {
    pub store: Arc<ImageStore>,
    pub namespace: String,
    pub lease: String,
    pub busy: Arc<()>,
}

/// Starts `work` on the blocking pool at once, holding the pull's token `busy`; its result,
/// awaited.
fn blocking<T, F>(
    busy: &Arc<()>,
    work: F,
) -> impl std::future::Future<Output = Result<T>> + use<T, F>
where
    T: Send + 'static,
    F: FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
{
    let busy = Arc::clone(busy);
    let task = tokio::task::spawn_blocking(move || {
        let _busy = busy;
        work()
    });
    async move {
        task.await
            .map_err(|e| TransferError::Invalid(format!("store task: {e}")))?
            .map_err(TransferError::Store)
    }
}

/// A registry blob to download.
pub(super) struct Download {
    pub remote: Arc<oci_client::Client>,
    pub image: Reference,
    pub desc: Descriptor,
    /// The name of the node its progress is shown under.
    pub parent: String,
    pub progress: Progress,
}

impl Download {
    /// Downloads the blob into `to` (see the module doc): says on `opened` once its write
    /// is open in the store (readable as it comes), and returns the bytes downloaded.
    pub async fn run(self, to: Destination, opened: oneshot::Sender<()>) -> Result<u64> {
        let Download {
            remote,
            image,
            desc,
            parent,
            progress,
        } = self;
        let event = |event: &str, done: u64| progress(Event::blob(event, &desc, &parent, done));
        let size = desc.size as u64;
        let reference = format!("pull-{}", desc.digest);
        let mut attempt = 0;
        let writer = loop {
            let writer = blocking(&to.busy, {
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
                Err(TransferError::Store(StoreError::AlreadyExists(_))) => {
                    event("already exists", size);
                    return Ok(0);
                }
                // Another pull is downloading it: wait until that one has committed it (the
                // next try says AlreadyExists) or is gone (the next try resumes its write).
                Err(TransferError::Store(StoreError::Unavailable(_))) => {
                    if attempt == 0 {
                        event("waiting", 0);
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
        let writing = blocking(&to.busy, move || write_chunks(writer, start, received));
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
                        event("downloading", offset);
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
        let committed = blocking(&to.busy, move || {
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
        event("complete", size);
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
