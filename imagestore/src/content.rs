//! Content in namespaces: a blob's record (size, labels, times) per namespace that wrote or
//! committed it, over the one shared blob tree. As containerd's default "shared" policy: a
//! write of a blob already in the tree (from any namespace) needs no data, its commit just
//! records the blob in the writer's namespace. Writes are namespaced by their ref.

use std::collections::HashMap;
use std::fs::File;
use std::time::SystemTime;

use differ::Digest;
use snapshotter::Filters;
use snapshotter::filter::Adaptor;

use crate::labels::Fields;

use super::meta::{Kind, Read, key};
use super::{Blobs, ImageStore, Ingest, IngestStatus, Result, StoreError, labels, timestamp};
use api::services::content::v1 as pb;

/// Lease resource type of a blob.
pub const RESOURCE_CONTENT: &str = "content";
/// Lease resource type of a write in progress.
pub const RESOURCE_INGEST: &str = "ingests";

/// A write in a namespace, by ref.
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
    /// The expected blob is in the tree already: nothing to write.
    Shared {
        digest: Digest,
        size: u64,
    },
    Data(Box<Ingest>),
}

impl ContentWriter {
    /// Where the write stands.
    pub fn status(&self) -> IngestStatus {
        match &self.body {
            Body::Data(ingest) => ingest.status().clone(),
            Body::Shared { digest, size } => IngestStatus {
                reference: String::new(),
                offset: *size,
                total: *size,
                expected: Some(digest.clone()),
                started: self.started,
                updated: self.started,
            },
        }
    }

    /// Writes `data` at `offset` (see [`Ingest::write_at`]). A client that sends the data
    /// of a blob the tree has anyway (from offset 0) gets a real write, checked at commit
    /// like any other.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if let Body::Shared { digest, size } = &self.body {
            if data.is_empty() {
                return Ok(());
            }
            if offset != 0 {
                return Err(StoreError::OutOfRange(format!(
                    "write @{offset} must occur at current offset {size}"
                )));
            }
            let ingest = self
                .blobs
                .writer(&self.tree_ref, *size, Some(digest.clone()))?;
            self.body = Body::Data(Box::new(ingest));
        }
        match &mut self.body {
            Body::Data(ingest) => ingest.write_at(offset, data),
            Body::Shared { .. } => unreachable!("made a real write above"),
        }
    }
}

impl Adaptor for Fields<'_, pb::Info> {
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match path {
            [f] if f == "digest" => Some(self.0.digest.as_str().into()),
            _ => labels::field(&self.0.labels, path).map(Into::into),
        }
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

fn parse_digest(digest: &str) -> Result<Digest> {
    Digest::parse(digest).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// The tree key of `reference` in `namespace`: writes of one ref in two namespaces are two
/// writes.
fn tree_ref(namespace: &str, reference: &str) -> String {
    format!("{namespace}/{reference}")
}

impl ImageStore {
    /// The record of `digest` in `namespace`.
    pub fn content_info(&self, namespace: &str, digest: &str) -> Result<pb::Info> {
        let digest = parse_digest(digest)?;
        self.meta.read(|r| {
            r.get(Kind::Content, &key(namespace, &[digest.as_str()]))?
                .ok_or_else(|| StoreError::NotFound(format!("content digest {digest}")))
        })
    }

    /// The records of `namespace` that match `filters`.
    pub fn content_list(&self, namespace: &str, filters: &Filters) -> Result<Vec<pb::Info>> {
        let all = self
            .meta
            .read(|r| r.list::<pb::Info>(Kind::Content, namespace))?;
        Ok(all
            .into_iter()
            .map(|(_, info)| info)
            .filter(|info| filters.matches(&Fields(info)))
            .collect())
    }

    /// Updates labels (`labels`, `labels.<key>`; no paths: all labels) of `info.digest`.
    pub fn content_update(
        &self,
        namespace: &str,
        info: pb::Info,
        paths: &[String],
    ) -> Result<pb::Info> {
        let digest = parse_digest(&info.digest)?;
        labels::validate(&info.labels)?;
        self.meta.write(|w| {
            let k = key(namespace, &[digest.as_str()]);
            let mut current: pb::Info = w
                .get(Kind::Content, &k)?
                .ok_or_else(|| StoreError::NotFound(format!("content digest {digest}")))?;
            if paths.is_empty() {
                labels::apply_path(&mut current.labels, &info.labels, "labels");
            }
            for path in paths {
                if !labels::apply_path(&mut current.labels, &info.labels, path) {
                    return Err(StoreError::InvalidArgument(format!(
                        "cannot update {path:?} field on content info {digest}"
                    )));
                }
            }
            current.updated_at = Some(timestamp(SystemTime::now()));
            w.put(Kind::Content, &k, &current)?;
            Ok(current)
        })
    }

    /// Removes `digest` from `namespace`; the blob goes once no namespace has it.
    pub fn content_delete(&self, namespace: &str, digest: &str) -> Result<()> {
        let digest = parse_digest(digest)?;
        let _collecting = self.blobs.collect();
        let orphan = self.meta.write(|w| {
            if !w.delete(Kind::Content, &key(namespace, &[digest.as_str()]))? {
                return Err(StoreError::NotFound(format!("content digest {digest}")));
            }
            Ok(!self.blob_referenced(w, &digest)?)
        })?;
        if orphan {
            self.blobs.delete(&digest)?;
        }
        Ok(())
    }

    /// Whether any namespace holds a record of `digest`.
    pub(super) fn blob_referenced(&self, r: &impl Read, digest: &Digest) -> Result<bool> {
        for ns in r.namespaces_of(Kind::Content)? {
            if r.get::<pb::Info>(Kind::Content, &key(&ns, &[digest.as_str()]))?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Blob `digest` opened for reading, with its size, if `namespace` has it.
    pub fn content_open(&self, namespace: &str, digest: &str) -> Result<(File, u64)> {
        let info = self.content_info(namespace, digest)?;
        let digest = parse_digest(&info.digest)?;
        Ok((self.blobs.open_blob(&digest)?, info.size as u64))
    }

    /// Opens (or resumes) the write of `reference` in `namespace`. With an `expected` digest
    /// the namespace already has: AlreadyExists. With one the tree has: a write that needs
    /// no data. `lease` (the caller's) protects the write and, once committed, the blob.
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
        let body = self.meta.write(|w| {
            if let Some(digest) = &expected {
                let k = key(namespace, &[digest.as_str()]);
                if w.get::<pb::Info>(Kind::Content, &k)?.is_some() {
                    if let Some(lease) = lease {
                        w.add_resource(namespace, lease, RESOURCE_CONTENT, digest.as_str())?;
                    }
                    return Ok(None);
                }
            }
            let status = pb::Status {
                r#ref: reference.to_string(),
                started_at: Some(timestamp(started)),
                total: total as i64,
                expected: expected.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                ..Default::default()
            };
            let k = key(namespace, &[reference]);
            if w.get::<pb::Status>(Kind::Ingest, &k)?.is_none() {
                w.put(Kind::Ingest, &k, &status)?;
            }
            if let Some(lease) = lease {
                w.add_resource(namespace, lease, RESOURCE_INGEST, reference)?;
            }
            if let Some(digest) = &expected
                && let Some(size) = self.blobs.size(digest)?
                && (total == 0 || total == size)
            {
                return Ok(Some(Body::Shared {
                    digest: digest.clone(),
                    size,
                }));
            }
            let ingest =
                self.blobs
                    .writer(&tree_ref(namespace, reference), total, expected.clone())?;
            Ok(Some(Body::Data(Box::new(ingest))))
        })?;
        let Some(body) = body else {
            let digest = expected.expect("only an expected blob exists");
            return Err(StoreError::AlreadyExists(format!("content {digest}")));
        };
        Ok(ContentWriter {
            namespace: namespace.to_string(),
            lease: lease.map(str::to_string),
            started,
            body,
            blobs: self.blobs.clone(),
            tree_ref: tree_ref(namespace, reference),
        })
    }

    /// Commits `writer`: checks `size` and `expected`, places the blob, records it in the
    /// writer's namespace with `labels` (and in its lease). AlreadyExists only if the
    /// namespace had the blob already; the digest otherwise.
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
        let _kept = self.blobs.keep();
        let (digest, size) = match body {
            Body::Shared { digest, size: have } => {
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
            Body::Data(ingest) => {
                let written = ingest.status().offset;
                match ingest.commit(size, expected) {
                    Ok(digest) => (digest, written),
                    Err(StoreError::BlobExists(digest)) => (digest, written),
                    Err(e) => return Err(e),
                }
            }
        };
        let now = Some(timestamp(SystemTime::now()));
        self.meta.write(|w| {
            w.delete(Kind::Ingest, &key(&namespace, &[reference]))?;
            if let Some(lease) = &lease {
                w.delete_resource(&namespace, lease, RESOURCE_INGEST, reference)?;
                w.add_resource(&namespace, lease, RESOURCE_CONTENT, digest.as_str())?;
            }
            let k = key(&namespace, &[digest.as_str()]);
            if w.get::<pb::Info>(Kind::Content, &k)?.is_some() {
                return Err(StoreError::AlreadyExists(format!("content {digest}")));
            }
            let info = pb::Info {
                digest: digest.to_string(),
                size: size as i64,
                created_at: now,
                updated_at: now,
                labels: labels_in,
            };
            w.put(Kind::Content, &k, &info)
        })?;
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
            .read(|r| r.get::<pb::Status>(Kind::Ingest, &key(namespace, &[reference])))?;
        let Some(known) = known else {
            return Err(StoreError::NotFound(format!("ingest ref {reference}")));
        };
        let mut status = match self.blobs.status(&tree_ref(namespace, reference))? {
            Some(s) => s,
            None => IngestStatus {
                reference: String::new(),
                offset: 0,
                total: known.total as u64,
                expected: Digest::parse(&known.expected).ok(),
                started: SystemTime::now(),
                updated: SystemTime::now(),
            },
        };
        status.reference = reference.to_string();
        Ok(status)
    }

    /// The writes in `namespace` that match `filters`.
    pub fn ingest_list(&self, namespace: &str, filters: &Filters) -> Result<Vec<IngestStatus>> {
        let refs = self
            .meta
            .read(|r| r.list::<pb::Status>(Kind::Ingest, namespace))?;
        let mut out = Vec::new();
        for (reference, _) in refs {
            let status = self.ingest_status(namespace, &reference)?;
            if filters.matches(&Fields(&status)) {
                out.push(status);
            }
        }
        Ok(out)
    }

    /// Drops the write of `reference` in `namespace`.
    pub fn ingest_abort(&self, namespace: &str, reference: &str) -> Result<()> {
        self.meta.write(|w| {
            if !w.delete(Kind::Ingest, &key(namespace, &[reference]))? {
                return Err(StoreError::NotFound(format!("ingest ref {reference}")));
            }
            Ok(())
        })?;
        match self.blobs.abort(&tree_ref(namespace, reference)) {
            Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::sync::Arc;

    /// Writes `data` into `namespace` as one blob; its digest.
    fn ingest(store: &ImageStore, namespace: &str, reference: &str, data: &[u8]) -> Digest {
        let mut writer = store
            .content_writer(namespace, reference, data.len() as u64, None, None)
            .unwrap();
        writer.write_at(0, data).unwrap();
        store
            .content_commit(writer, reference, data.len() as u64, None, HashMap::new())
            .unwrap()
    }

    /// Two namespaces take in and delete the same blob over and over: a namespace whose
    /// commit went through reads the blob whole until it deletes it itself, even when the
    /// other's delete found no other record a moment before.
    #[test]
    fn a_blob_committed_while_another_namespace_deletes_it_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ImageStore::open(dir.path()).unwrap());
        let data: Arc<Vec<u8>> = Arc::new((0..64 * 1024).map(|i| i as u8).collect());
        let workers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|namespace| {
                let (store, data) = (Arc::clone(&store), Arc::clone(&data));
                std::thread::spawn(move || {
                    for round in 0..300 {
                        let digest = ingest(&store, namespace, &format!("w{round}"), &data);
                        let (mut file, size) = store
                            .content_open(namespace, digest.as_str())
                            .unwrap_or_else(|e| panic!("{namespace} round {round}: {e}"));
                        let mut read = Vec::new();
                        file.read_to_end(&mut read).unwrap();
                        assert_eq!((size, &read), (data.len() as u64, &*data));
                        store.content_delete(namespace, digest.as_str()).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
}
