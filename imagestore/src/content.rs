//! Content in namespaces: a blob's record (size, labels, times) per namespace that wrote or
//! committed it, over the one shared blob tree. As containerd's default "shared" policy: a
//! write of a blob already in the tree (from any namespace) needs no data, its commit just
//! records the blob in the writer's namespace. The writes themselves (ingests, by ref, and
//! their commits) are in [`crate::ingests`].

use std::fs::File;
use std::time::SystemTime;

use differ::Digest;
use snapshotter::Filters;
use snapshotter::filter::Adaptor;

use crate::ingests::IngestRecord;
use crate::labels::Fields;

use super::meta::{Kind, Read, key};
use super::{ImageStore, Result, StoreError, labels, parse_digest, timestamp};
use api::services::content::v1 as pb;

impl Adaptor for Fields<'_, pb::Info> {
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match path {
            [f] if f == "digest" => Some(self.0.digest.as_str().into()),
            _ => labels::field(&self.0.labels, path).map(Into::into),
        }
    }
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

    /// Whether any namespace holds a record of `digest`, or a write expects it (a write that
    /// needed no data because the blob was there counts on it staying).
    pub(super) fn blob_referenced(&self, r: &impl Read, digest: &Digest) -> Result<bool> {
        for ns in r.namespaces_of(Kind::Content)? {
            if r.get::<pb::Info>(Kind::Content, &key(&ns, &[digest.as_str()]))?
                .is_some()
            {
                return Ok(true);
            }
        }
        for ns in r.namespaces_of(Kind::Ingest)? {
            for (_, record) in r.list::<IngestRecord>(Kind::Ingest, &ns)? {
                if record.expected == digest.as_str() {
                    return Ok(true);
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
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

    /// Opening a write reads its files (resuming hashes its data again), which a slow disk
    /// can make slow: other calls of the store go on meanwhile, as no index transaction is
    /// held over that reading. The slow disk is a FIFO in place of the write's `total`
    /// file, which blocks the resuming writer until the test writes to it.
    #[test]
    fn resuming_a_write_on_a_slow_disk_stalls_no_other_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ImageStore::open(dir.path()).unwrap());
        let mut w = store.content_writer("ns", "slow", 0, None, None).unwrap();
        w.write_at(0, b"some bytes").unwrap();
        drop(w);
        let ingest = std::fs::read_dir(dir.path().join("content/ingest"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let total = ingest.join("total");
        let _ = std::fs::remove_file(&total);
        let made = std::process::Command::new("mkfifo")
            .arg(&total)
            .status()
            .unwrap();
        assert!(made.success());
        let resuming = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.content_writer("ns", "slow", 0, None, None).map(drop))
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!resuming.is_finished(), "the FIFO did not hold the resume");
        let (tx, rx) = std::sync::mpsc::channel();
        let other = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                tx.send(store.lease_create("other", "l", HashMap::new()).is_ok())
                    .unwrap()
            })
        };
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        // Let the resume go on either way, so that the test ends.
        std::fs::write(&total, b"0").unwrap();
        assert_eq!(
            done,
            Ok(true),
            "another namespace's call waited for the slow resume"
        );
        other.join().unwrap();
        resuming.join().unwrap().unwrap();
    }
}
