//! One blob from its sources (the registry; peers of the fleet first when there is one)
//! into the content store: its write opened (resumed if an earlier pull left one), the
//! bytes written as they arrive (a layer being applied follows them), a broken transfer
//! resumed where it stopped (a ranged request, to the same source or the next), and the
//! store's check of size and digest at the commit; bytes that fail it are dropped, never
//! resumed (those a peer sent are fetched again from the sources left).

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::oneshot;
use tokio_stream::StreamExt;

use super::events::{Event, Progress};
use super::registry::{ATTEMPTS, backoff};
use super::source::Source;
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

/// A blob to download, and where from: the first source, then the next when one fails
/// (a peer at once, the registry after [`ATTEMPTS`] failures in a row).
pub(super) struct Download {
    pub sources: Vec<Source>,
    pub desc: Descriptor,
    /// The name of the node its progress is shown under.
    pub parent: String,
    pub progress: Progress,
}

/// What a download did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes downloaded.
    pub bytes: u64,
    /// The first write's bytes failed the digest (a peer's, or left by an earlier transfer)
    /// and the blob was downloaded again: whoever followed the first write read an error.
    pub restarted: bool,
}

/// How long a peer may send nothing before another source is asked.
const PEER_STALL: Duration = Duration::from_secs(3);

impl Download {
    /// Downloads the blob into `to` (see the module doc): says on `opened` once its write
    /// is open in the store (readable as it comes), and returns what it downloaded.
    pub async fn run(self, to: Destination, opened: oneshot::Sender<()>) -> Result<Fetched> {
        let Download {
            mut sources,
            desc,
            parent,
            progress,
        } = self;
        let event = |event: &str, done: u64| progress(Event::blob(event, &desc, &parent, done));
        let size = desc.size as u64;
        let reference = format!("pull-{}", desc.digest);
        let mut opened = Some(opened);
        let mut restarted = false;
        loop {
            let Some(writer) = open_writer(&to, &reference, &desc, &event).await? else {
                return Ok(Fetched {
                    bytes: 0,
                    restarted,
                });
            };
            // A write an earlier pull left (its lease still held) goes on from where it is.
            let start = writer.status().offset;
            if let Some(opened) = opened.take() {
                let _ = opened.send(());
            }
            let (writer, peers) = transfer(&sources, &desc, writer, &to, &event).await?;
            let digest = desc.digest.clone();
            let (store, namespace, at) = (
                Arc::clone(&to.store),
                to.namespace.clone(),
                reference.clone(),
            );
            let committed = blocking(&to.busy, move || {
                let committed =
                    store.content_commit(writer, &at, size, Some(&digest), HashMap::new());
                if let Err(StoreError::FailedPrecondition(_)) = &committed {
                    // Bytes that fail their digest or size are never resumed: the next pull
                    // starts the blob afresh.
                    match store.ingest_abort(&namespace, &at) {
                        Ok(()) | Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                committed
            })
            .await;
            match committed {
                Ok(_) | Err(TransferError::Store(StoreError::AlreadyExists(_))) => {}
                // Bytes an earlier transfer left (resumed here, from whatever source) fail:
                // once more from the start.
                Err(TransferError::Store(StoreError::FailedPrecondition(why)))
                    if start > 0 && peers.is_empty() && !restarted =>
                {
                    tracing::warn!(
                        digest = desc.digest,
                        error = why,
                        "a resumed write failed the digest; downloading the blob again"
                    );
                    restarted = true;
                    continue;
                }
                Err(TransferError::Store(StoreError::FailedPrecondition(why)))
                    if !peers.is_empty() && sources.iter().any(|s| s.peer().is_none()) =>
                {
                    // A peer sent wrong bytes: it is asked for this blob no more, and the
                    // blob comes again, from its start, from the sources left.
                    tracing::warn!(
                        digest = desc.digest,
                        peers = ?peers,
                        error = why,
                        "bytes from a peer failed the digest; downloading the blob again"
                    );
                    sources.retain(|s| s.peer().is_none_or(|p| !peers.iter().any(|q| q == p)));
                    restarted = true;
                    continue;
                }
                Err(TransferError::Store(StoreError::FailedPrecondition(why))) => {
                    return Err(TransferError::Store(StoreError::FailedPrecondition(
                        format!("blob {} from the registry: {why}", desc.digest),
                    )));
                }
                Err(e) => return Err(e),
            }
            event("complete", size);
            return Ok(Fetched {
                bytes: size - start,
                restarted,
            });
        }
    }
}

/// Opens (or resumes) the store's write of `desc` under `reference`: `None` if the
/// namespace has the blob already (stored meanwhile by another pull).
async fn open_writer(
    to: &Destination,
    reference: &str,
    desc: &Descriptor,
    event: &impl Fn(&str, u64),
) -> Result<Option<ContentWriter>> {
    let size = desc.size as u64;
    let mut attempt = 0;
    loop {
        let writer = blocking(&to.busy, {
            let (to, reference, digest) = (to.clone(), reference.to_string(), desc.digest.clone());
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
            Ok(w) => return Ok(Some(w)),
            Err(TransferError::Store(StoreError::AlreadyExists(_))) => {
                event("already exists", size);
                return Ok(None);
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
    }
}

/// Feeds `writer` the blob's bytes from its offset to the end, from `sources` in turn; the
/// writer, to commit, and the peers whose bytes it holds.
async fn transfer(
    sources: &[Source],
    desc: &Descriptor,
    writer: ContentWriter,
    to: &Destination,
    event: &impl Fn(&str, u64),
) -> Result<(ContentWriter, Vec<String>)> {
    let size = desc.size as u64;
    let start = writer.status().offset;
    let (chunks, received) = tokio::sync::mpsc::channel(16);
    let writing = blocking(&to.busy, move || write_chunks(writer, start, received));
    let mut offset = start;
    let mut failures = 0;
    let mut reported = 0;
    let mut at = 0;
    let mut peers = Vec::new();
    while offset < size {
        let before = offset;
        let source = &sources[at];
        // A peer that failed another transfer since this one's sources were chosen.
        if source.is_down() && at + 1 < sources.len() {
            at += 1;
            continue;
        }
        let fetched = fetch_from(
            source,
            desc,
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
        if let Some(peer) = source.peer()
            && offset > before
            && !peers.iter().any(|p| p == peer)
        {
            peers.push(peer.to_string());
        }
        match fetched {
            Ok(()) if offset == size => {}
            // The store's writer stopped: its error says why.
            Err(FetchError::Store) => break,
            outcome => {
                let why = match outcome {
                    Err(FetchError::Source(e)) => e,
                    _ => format!("{}: the transfer ended early", desc.digest),
                };
                // A peer that fails is left at once, the registry after ATTEMPTS failures in
                // a row: the next source goes on from the same offset.
                failures = match source.peer() {
                    Some(_) => ATTEMPTS,
                    None if offset == before => failures + 1,
                    None => 1,
                };
                if failures >= ATTEMPTS && at + 1 < sources.len() {
                    at += 1;
                    failures = 0;
                    tracing::info!(
                        digest = desc.digest,
                        offset,
                        error = why,
                        next = sources[at].describe(),
                        "{} failed; going on from the next source",
                        source.describe()
                    );
                    continue;
                }
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
    Ok((writing.await?, peers))
}

/// Why one transfer of a blob stopped.
enum FetchError {
    /// The source or the network failed.
    Source(String),
    /// The store's writer is gone.
    Store,
}

/// One transfer of blob `desc` from `source`, from `*offset` on: its bytes go to `chunks`,
/// `*offset` follows them and `advanced` hears of each step. A peer that sends nothing for
/// [`PEER_STALL`] is given up (and passed over for a while).
async fn fetch_from(
    source: &Source,
    desc: &Descriptor,
    offset: &mut u64,
    mut advanced: impl FnMut(u64),
    chunks: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> std::result::Result<(), FetchError> {
    let failed = |e: &dyn std::fmt::Display| {
        FetchError::Source(format!(
            "fetch {} from {}: {e}",
            desc.digest,
            source.describe()
        ))
    };
    let stall = source.peer().map(|_| PEER_STALL);
    // A peer silent for PEER_STALL (before its answer or within it) is passed over.
    let stalled = || {
        source.stalled();
        failed(&"it sent nothing for a while")
    };
    let opening = source.open(&desc.digest, desc.size as u64, *offset);
    let opened = match stall {
        Some(stall) => tokio::time::timeout(stall, opening)
            .await
            .map_err(|_| stalled())?,
        None => opening.await,
    };
    let (mut stream, mut skip) = opened.map_err(|e| failed(&e))?;
    loop {
        let next = match stall {
            Some(stall) => tokio::time::timeout(stall, stream.next())
                .await
                .map_err(|_| stalled())?,
            None => stream.next().await,
        };
        let Some(chunk) = next else { break };
        let mut chunk = chunk.map_err(|e| failed(&e))?;
        if skip > 0 {
            let n = skip.min(chunk.len() as u64);
            skip -= n;
            let _ = chunk.split_to(n as usize);
            if chunk.is_empty() {
                continue;
            }
        }
        // Never more than the blob's size: what a source sends beyond it is not written.
        let room = (desc.size as u64).saturating_sub(*offset);
        let over = chunk.len() as u64 > room;
        if over {
            chunk.truncate(room as usize);
        }
        let n = chunk.len() as u64;
        chunks.send(chunk).await.map_err(|_| FetchError::Store)?;
        *offset += n;
        advanced(*offset);
        if over {
            return Err(failed(&"it sent more than the blob's size"));
        }
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
