//! Where layer blobs come from and go to. [`LocalStore`] is a directory in the OCI image
//! layout (`blobs/sha256/<hex>`), which is also the layout of containerd's content root;
//! the daemon adds a source and sink over containerd's Content API.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Digest, Error, Result};

/// Something blobs can be read from.
pub trait BlobSource: Send + Sync {
    /// Opens blob `digest` for streaming.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>>;
}

/// A blob being written; committed under its digest once complete.
pub trait BlobWriter: Write + Send {
    /// Stores what was written as blob `digest` of `size` bytes with `labels` (where the
    /// store keeps labels). A blob that already exists is success.
    fn commit(
        self: Box<Self>,
        digest: &Digest,
        size: u64,
        labels: &[(String, String)],
    ) -> Result<()>;
}

/// Something blobs can be written to.
pub trait BlobSink: Send + Sync {
    /// Starts a new blob.
    fn create(&self) -> Result<Box<dyn BlobWriter>>;
}

/// An OCI-layout directory: `blobs/sha256/<hex>`, with `ingest/` for blobs being written.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// The path of blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }
}

impl BlobSource for LocalStore {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::NotFound(digest.to_string()))
            }
            Err(e) => Err(Error::io("open", path, e)),
        }
    }
}

impl BlobSink for LocalStore {
    fn create(&self) -> Result<Box<dyn BlobWriter>> {
        let ingest = self.root.join("ingest");
        fs::create_dir_all(&ingest).map_err(|e| Error::io("create", &ingest, e))?;
        let path = ingest.join(format!(
            "{}-{}",
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        Ok(Box::new(LocalWriter {
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            path,
            store: self.clone(),
        }))
    }
}

struct LocalWriter {
    /// `None` once committed.
    file: Option<io::BufWriter<File>>,
    path: PathBuf,
    store: LocalStore,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl BlobWriter for LocalWriter {
    fn commit(
        mut self: Box<Self>,
        digest: &Digest,
        _size: u64,
        _labels: &[(String, String)],
    ) -> Result<()> {
        let path = self.path.clone();
        let file = self.file.take().expect("committed once");
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write", &path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("sync", &path, e))?;
        let dest = self.store.blob_path(digest);
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        if dest.exists() {
            let _ = fs::remove_file(&path);
            return Ok(());
        }
        fs::rename(&path, &dest).map_err(|e| Error::io("rename", &dest, e))?;
        // The rename is durable before anyone records the blob (a record without its file
        // after a power loss otherwise).
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync", parent, e))
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
