//! Writes in progress (containerd's ingests): a write is namespaced by its ref and recorded
//! in the index while it runs (kept by a lease, or for a day after it was last opened or
//! written), holds its ref's lock while open, and ends in a commit that checks size and
//! digest before the blob takes its name and the namespace records it; or in an abort.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use differ::Digest;
use snapshotter::Filters;
use snapshotter::filter::Adaptor;

use crate::labels::Fields;
use crate::parse_digest;

use super::blobs::RefLock;
use super::meta::{Kind, Read, Writer, key};
use super::{Blobs, ImageStore, Ingest, IngestStatus, Result, StoreError, labels, timestamp};
use api::services::content::v1 as pb;

use api::resources::{CONTENT as RESOURCE_CONTENT, INGESTS as RESOURCE_INGEST};

/// How long a write made without a lease is kept after it was last opened or written.
pub const INGEST_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// A write's record in the index: containerd's `Status` fields (what a client set at the
/// start), and how the write is kept: by a lease, or until a time refreshed whenever it is
/// opened (and, at collection, whenever its data was last written). Records written before
/// `leased` and `expires_at` existed read as kept for a day after they started.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IngestRecord {
    #[prost(message, optional, tag = "1")]
    pub started_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "2")]
    pub updated_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "3")]
    pub r#ref: String,
    #[prost(int64, tag = "5")]
    pub total: i64,
    #[prost(string, tag = "6")]
    pub expected: String,
    /// Opened under a lease: kept only while a lease holds it.
    #[prost(bool, tag = "16")]
    pub leased: bool,
    /// Opened without a lease: kept until then (unless written since).
    #[prost(message, optional, tag = "17")]
    pub expires_at: Option<prost_types::Timestamp>,
}

impl IngestRecord {
    /// Until when the write is kept without a lease, its data last `written` then; `None`
    /// if only a lease keeps it.
    pub fn expires(&self, written: Option<SystemTime>) -> Option<SystemTime> {
        let from_write = written.map(|t| t + INGEST_EXPIRY);
        let recorded = match (&self.expires_at, self.leased) {
            (Some(t), _) => Some(time_of(t)),
            (None, true) => return None,
            (None, false) => self.started_at.as_ref().map(|t| time_of(t) + INGEST_EXPIRY),
        };
        recorded.max(from_write)
    }
}

fn time_of(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

/// A write in a namespace, by ref. Holds the ref's lock until dropped.
pub struct ContentWriter {
    namespace: String,
    lease: Option<String>,
    started: SystemTime,
    body: Body,
    blobs: Blobs,
    /// The write's name in the blob tree.
    tree_ref: String,
}

enum Body {
    /// The expected blob is in the tree already: nothing to write (unless the client
    /// writes anyway). Holds the ref's lock.
    Shared {
        digest: Digest,
        size: u64,
        /// `None` only after a failed switch to a real write.
        lock: Option<RefLock>,
    },
    Data(Box<Ingest>),
}

impl ContentWriter {
    /// Where the write stands.
    pub fn status(&self) -> IngestStatus {
        match &self.body {
            Body::Data(ingest) => ingest.status().clone(),
            Body::Shared { digest, size, .. } => IngestStatus {
                reference: String::new(),
                offset: *size,
                total: *size,
                expected: Some(digest.clone()),
                started: self.started,
                updated: self.started,
            },
        }
    }

    /// The digest of the bytes written so far (for a write that needs no data, the blob's).
    pub fn digest(&self) -> Digest {
        match &self.body {
            Body::Data(ingest) => ingest.digest(),
            Body::Shared { digest, .. } => digest.clone(),
        }
    }

    /// Writes `data` at `offset` (see [`Ingest::write_at`]). A write that needed no data
    /// becomes a real one when a client writes anyway, as containerd's does: at offset 0 a
    /// fresh one, at the blob's end one holding the blob's bytes, appended to.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if let Body::Shared { size, .. } = &self.body {
            let size = *size;
            if data.is_empty() && (offset == 0 || offset == size) {
                return Ok(());
            }
            if offset != 0 && offset != size {
                return Err(StoreError::OutOfRange(format!(
                    "write @{offset} must occur at current offset {size}"
                )));
            }
            self.unshare(offset == size)?;
        }
        match &mut self.body {
            Body::Data(ingest) => ingest.write_at(offset, data),
            Body::Shared { .. } => unreachable!("unshared above"),
        }
    }

    /// Starts the write over at offset 0.
    pub fn truncate(&mut self) -> Result<()> {
        match &mut self.body {
            Body::Data(ingest) => ingest.write_at(0, &[]),
            Body::Shared { .. } => self.unshare(false),
        }
    }

    /// Turns a write that needed no data into a real one, holding the blob's bytes if
    /// `copy`. It no longer promises the blob (its bytes will be others), so nobody
    /// follows it as that blob.
    fn unshare(&mut self, copy: bool) -> Result<()> {
        let Body::Shared { digest, lock, .. } = &mut self.body else {
            return Ok(());
        };
        let digest = digest.clone();
        let lock = lock.take().ok_or_else(|| {
            StoreError::Unavailable(format!("ref {} lost its lock", self.tree_ref))
        })?;
        let mut ingest = self.blobs.writer(lock, 0, None)?;
        ingest.write_at(0, &[])?;
        if copy {
            let mut blob = self.blobs.open_blob(&digest)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n =
                    std::io::Read::read(&mut blob, &mut buf).map_err(|source| StoreError::Io {
                        op: "read",
                        path: self.blobs.path(&digest),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                let at = ingest.status().offset;
                ingest.write_at(at, &buf[..n])?;
            }
        }
        self.body = Body::Data(Box::new(ingest));
        Ok(())
    }
}

impl Adaptor for Fields<'_, IngestStatus> {
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match path {
            [f] if f == "ref" => Some(self.0.reference.as_str().into()),
            _ => None,
        }
    }
}

/// The tree key of `reference` in `namespace`: writes of one ref in two namespaces are two
/// writes.
pub(crate) fn tree_ref(namespace: &str, reference: &str) -> String {
    format!("{namespace}/{reference}")
}

/// What opening a write found.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    /// The write is recorded.
    Recorded,
    /// The namespace has the blob: nothing to write.
    Exists,
}

/// The records a write's opening makes.
struct Open<'a> {
    namespace: &'a str,
    reference: &'a str,
    total: u64,
    expected: Option<&'a Digest>,
    lease: Option<&'a str>,
    now: SystemTime,
}

impl Open<'_> {
    /// The refusals: a lease that does not exist (NotFound, as containerd), a blob the
    /// namespace has (AlreadyExists).
    fn check(&self, r: &impl Read) -> Result<()> {
        if let Some(lease) = self.lease
            && !r.lease_exists(self.namespace, lease)?
        {
            return Err(StoreError::NotFound(format!(
                "lease {lease:?} does not exist"
            )));
        }
        if let Some(digest) = self.expected
            && r.get::<pb::Info>(Kind::Content, &key(self.namespace, &[digest.as_str()]))?
                .is_some()
        {
            return Err(StoreError::AlreadyExists(format!("content {digest}")));
        }
        Ok(())
    }

    /// Records the write (or refreshes its record) and adds it to the lease; a blob the
    /// namespace has is added to the lease instead, and the write not recorded.
    fn record(&self, w: &mut Writer) -> Result<Opened> {
        match self.check(w) {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                if let (Some(lease), Some(digest)) = (self.lease, self.expected) {
                    w.add_resource(self.namespace, lease, RESOURCE_CONTENT, digest.as_str())?;
                }
                return Ok(Opened::Exists);
            }
            Err(e) => return Err(e),
        }
        let k = key(self.namespace, &[self.reference]);
        let mut record = w
            .get::<IngestRecord>(Kind::Ingest, &k)?
            .unwrap_or_else(|| IngestRecord {
                r#ref: self.reference.to_string(),
                started_at: Some(timestamp(self.now)),
                ..Default::default()
            });
        if self.total > 0 {
            record.total = self.total as i64;
        }
        if let Some(digest) = self.expected {
            record.expected = digest.to_string();
        }
        record.updated_at = Some(timestamp(self.now));
        match self.lease {
            Some(lease) => {
                record.leased = true;
                w.add_resource(self.namespace, lease, RESOURCE_INGEST, self.reference)?;
            }
            None => record.expires_at = Some(timestamp(self.now + INGEST_EXPIRY)),
        }
        w.put(Kind::Ingest, &k, &record)?;
        Ok(Opened::Recorded)
    }
}

impl ImageStore {
    /// Opens (or resumes) the write of `reference` in `namespace`, taking its ref's lock
    /// (Unavailable while another writer holds it). With an `expected` digest the namespace
    /// already has: AlreadyExists. With one the tree has: a write that needs no data.
    /// `lease` (the caller's, which must exist) protects the write and, once committed, the
    /// blob; without one the write is kept for a day after it was last opened or written.
    pub fn content_writer(
        &self,
        namespace: &str,
        reference: &str,
        total: u64,
        expected: Option<&str>,
        lease: Option<&str>,
    ) -> Result<ContentWriter> {
        if reference.is_empty() {
            return Err(StoreError::InvalidArgument("ref must not be empty".into()));
        }
        let expected = expected
            .filter(|e| !e.is_empty())
            .map(parse_digest)
            .transpose()?;
        let started = SystemTime::now();
        let tree = tree_ref(namespace, reference);
        let lock = self.blobs.lock(&tree)?;
        let open = Open {
            namespace,
            reference,
            total,
            expected: expected.as_ref(),
            lease,
            now: started,
        };
        let body = {
            // Held from finding the blob present to the record that keeps it.
            let _kept = expected.as_ref().map(|_| self.blobs.keep());
            let present = match &expected {
                Some(digest) => self
                    .blobs
                    .size(digest)?
                    .filter(|s| total == 0 || total == *s),
                None => None,
            };
            if self.meta.write(|w| open.record(w))? == Opened::Exists {
                let digest = expected.as_ref().expect("only an expected blob exists");
                return Err(StoreError::AlreadyExists(format!("content {digest}")));
            }
            match (present, &expected) {
                (Some(size), Some(digest)) => Body::Shared {
                    digest: digest.clone(),
                    size,
                    lock: Some(lock),
                },
                _ => {
                    drop(_kept);
                    // Resuming hashes the data again: outside any lock or transaction.
                    Body::Data(Box::new(self.blobs.writer(
                        lock,
                        total,
                        expected.clone(),
                    )?))
                }
            }
        };
        Ok(ContentWriter {
            namespace: namespace.to_string(),
            lease: lease.map(str::to_string),
            started,
            body,
            blobs: self.blobs.clone(),
            tree_ref: tree,
        })
    }

    /// [`content_writer`](Self::content_writer), waiting a little while another writer
    /// holds the ref, as containerd's store does (ten tries, a random pause of up to 1, 2,
    /// 4, ... 512 ms between them): a client that closes a stream and opens the ref again at
    /// once finds it free even if the first stream's end is still being processed.
    pub fn content_writer_waiting(
        &self,
        namespace: &str,
        reference: &str,
        total: u64,
        expected: Option<&str>,
        lease: Option<&str>,
    ) -> Result<ContentWriter> {
        let mut attempt = 0u32;
        loop {
            match self.content_writer(namespace, reference, total, expected, lease) {
                Err(StoreError::Unavailable(_)) if attempt < 9 => {
                    let most = 1u64 << attempt;
                    let pause = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::from(d.subsec_nanos()))
                        % (most * 1000);
                    std::thread::sleep(std::time::Duration::from_micros(pause));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Commits `writer`: checks `size` and `expected` and flushes the data, then places the
    /// blob and records it in the writer's namespace with `labels` (and in its lease); the
    /// digest. A write that fails its checks stays, for its client to finish or abort.
    /// AlreadyExists if the namespace had the blob already (the write is gone then, and the
    /// blob in the writer's lease all the same).
    pub fn content_commit(
        &self,
        writer: ContentWriter,
        reference: &str,
        size: u64,
        expected: Option<&str>,
        labels_in: HashMap<String, String>,
    ) -> Result<Digest> {
        labels::validate(&labels_in)?;
        let expected = expected
            .filter(|e| !e.is_empty())
            .map(parse_digest)
            .transpose()?;
        let ContentWriter {
            namespace,
            lease,
            body,
            ..
        } = writer;
        // Checked and flushed before the retention lock: a slow disk delays this commit,
        // not every other one.
        let verified = match body {
            Body::Data(mut ingest) => {
                let digest = ingest.verify(size, expected.clone())?;
                let written = ingest.status().offset;
                Ok((ingest, digest, written))
            }
            shared => Err(shared),
        };
        let _kept = self.blobs.keep();
        let (digest, size) = match verified {
            Ok((ingest, digest, written)) => match ingest.place(digest) {
                Ok(digest) | Err(StoreError::BlobExists(digest)) => (digest, written),
                Err(e) => return Err(e),
            },
            Err(Body::Shared {
                digest, size: have, ..
            }) => {
                if self.blobs.size(&digest)?.is_none() {
                    return Err(StoreError::Unavailable(format!(
                        "{reference:?}: blob {digest} was collected before the commit; write it again"
                    )));
                }
                if size != 0 && size != have {
                    return Err(StoreError::FailedPrecondition(format!(
                        "{reference:?} failed size validation: {have} != {size}"
                    )));
                }
                if expected.as_ref().is_some_and(|e| *e != digest) {
                    return Err(StoreError::FailedPrecondition(format!(
                        "{reference:?} unexpected digest"
                    )));
                }
                (digest, have)
            }
            Err(Body::Data(_)) => unreachable!("data bodies are verified"),
        };
        let now = Some(timestamp(SystemTime::now()));
        let existed = self.meta.write(|w| {
            w.delete(Kind::Ingest, &key(&namespace, &[reference]))?;
            if let Some(lease) = &lease {
                w.delete_resource(&namespace, lease, RESOURCE_INGEST, reference)?;
                if w.lease_exists(&namespace, lease)? {
                    w.add_resource(&namespace, lease, RESOURCE_CONTENT, digest.as_str())?;
                }
            }
            let k = key(&namespace, &[digest.as_str()]);
            if w.get::<pb::Info>(Kind::Content, &k)?.is_some() {
                return Ok(true);
            }
            let info = pb::Info {
                digest: digest.to_string(),
                size: size as i64,
                created_at: now,
                updated_at: now,
                labels: labels_in,
            };
            w.put(Kind::Content, &k, &info)?;
            Ok(false)
        })?;
        if existed {
            return Err(StoreError::AlreadyExists(format!("content {digest}")));
        }
        Ok(digest)
    }

    /// Records blob `digest` (already in the tree) in `namespace` with `labels` added, and
    /// in `lease`: how a layer the Diff service created joins the store.
    pub fn content_record(
        &self,
        namespace: &str,
        digest: &Digest,
        labels_in: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<()> {
        labels::validate(&labels_in)?;
        let _kept = self.blobs.keep();
        let size = self
            .blobs
            .size(digest)?
            .ok_or_else(|| StoreError::NotFound(format!("content {digest}")))?;
        let now = Some(timestamp(SystemTime::now()));
        self.meta.write(|w| {
            let k = key(namespace, &[digest.as_str()]);
            let mut info = w.get::<pb::Info>(Kind::Content, &k)?.unwrap_or(pb::Info {
                digest: digest.to_string(),
                size: size as i64,
                created_at: now,
                ..Default::default()
            });
            info.labels.extend(labels_in);
            info.updated_at = now;
            w.put(Kind::Content, &k, &info)?;
            if let Some(lease) = lease {
                w.add_resource(namespace, lease, RESOURCE_CONTENT, digest.as_str())?;
            }
            Ok(())
        })
    }

    /// The write of `reference` in `namespace`, if any.
    pub fn ingest_status(&self, namespace: &str, reference: &str) -> Result<IngestStatus> {
        let known = self
            .meta
            .read(|r| r.get::<IngestRecord>(Kind::Ingest, &key(namespace, &[reference])))?;
        let Some(known) = known else {
            return Err(StoreError::NotFound(format!("ingest ref {reference}")));
        };
        let mut status = match self.blobs.status(&tree_ref(namespace, reference))? {
            Some(s) => s,
            None => {
                // A write that needed no data: it stands at the end of the blob it expects.
                let expected = Digest::parse(&known.expected).ok();
                let size = match &expected {
                    Some(d) => self.blobs.size(d)?,
                    None => None,
                };
                let started = known.started_at.as_ref().map_or(SystemTime::now(), time_of);
                IngestStatus {
                    reference: String::new(),
                    offset: size.unwrap_or(0),
                    total: size.unwrap_or(known.total.max(0) as u64),
                    expected,
                    started,
                    updated: known.updated_at.as_ref().map_or(started, time_of),
                }
            }
        };
        status.reference = reference.to_string();
        // What the client said to expect, as the record keeps it (and the collector keeps
        // that blob for): a write that needed no data still expects it after a client
        // wrote into it anyway.
        status.expected = Digest::parse(&known.expected).ok();
        Ok(status)
    }

    /// The writes in `namespace` that match `filters`.
    pub fn ingest_list(&self, namespace: &str, filters: &Filters) -> Result<Vec<IngestStatus>> {
        let refs = self
            .meta
            .read(|r| r.list::<IngestRecord>(Kind::Ingest, namespace))?;
        let mut out = Vec::new();
        for (reference, _) in refs {
            let status = self.ingest_status(namespace, &reference)?;
            if filters.matches(&Fields(&status)) {
                out.push(status);
            }
        }
        Ok(out)
    }

    /// Drops the write of `reference` in `namespace`: its record, then its data (a crash
    /// between the two leaves a directory the collector removes). A blob the write expected
    /// and nothing else names goes with it.
    pub fn ingest_abort(&self, namespace: &str, reference: &str) -> Result<()> {
        let _collecting = self.blobs.collect();
        let released = self.meta.write(|w| {
            let k = key(namespace, &[reference]);
            let Some(record) = w.get::<IngestRecord>(Kind::Ingest, &k)? else {
                return Err(StoreError::NotFound(format!("ingest ref {reference}")));
            };
            w.delete(Kind::Ingest, &k)?;
            let expected = match Digest::parse(&record.expected) {
                Ok(d) if !self.blob_referenced(w, &d)? => Some(d),
                _ => None,
            };
            Ok(expected)
        })?;
        match self.blobs.abort(&tree_ref(namespace, reference)) {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some(digest) = released {
            self.blobs.delete(&digest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl ImageStore {
    /// Drops the record of a write and leaves its directory: what a crash between the two
    /// steps of an abort leaves.
    pub(crate) fn ingest_abort_record_only(&self, namespace: &str, reference: &str) {
        self.meta
            .write(|w| w.delete(Kind::Ingest, &key(namespace, &[reference])))
            .unwrap();
    }
}
