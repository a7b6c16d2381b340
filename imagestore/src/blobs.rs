//! The content store's files. Blobs live at `<root>/blobs/sha256/<hex>` (an OCI layout's
//! blob directory, so the Diff service reads and writes the same tree), writes in progress
//! under `<root>/ingest/<sha256 of the ref>/`: `data`, and `ref`, `started`, `total`,
//! `expected` describing it. A write is resumed by its ref after a disconnect or a crash
//! (its data is re-hashed); its size and digest are checked before it is committed, and a
//! blob reaches its name only by a rename of complete, flushed data, so nobody ever sees a
//! partial blob under a digest.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use differ::Digest;
use differ::digest::Hasher;
use sha2::{Digest as _, Sha256};

use super::live::{Live, LiveReader, LiveWrites};
use super::{Result, StoreError};

/// The blob and ingest directories of a content store.
#[derive(Clone)]
pub struct Blobs {
    root: PathBuf,
    /// Refs with a writer open: a second writer of one ref is refused.
    locked: Arc<Mutex<HashSet<String>>>,
    /// Writes with an expected digest, readable while they run.
    live: LiveWrites,
    /// Held shared by whoever records a blob it found present, from finding it to the
    /// record; exclusively by whoever deletes blobs, from deciding nothing records them to
    /// the deletion. Without it a blob found present could be deleted by a collection that
    /// had just seen no record of it, leaving the new record without its blob.
    retention: Arc<RwLock<()>>,
}

/// What is known about a write in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Expected size, 0 if not given.
    pub total: u64,
    /// Expected digest, if given.
    pub expected: Option<Digest>,
    pub started: SystemTime,
    pub updated: SystemTime,
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Blobs {
    /// Opens (creating) the store at `root`; drops temporary files a crash left.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "ingest"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let blobs = root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("read", &blobs))? {
            let entry = entry.map_err(io_err("read", &blobs))?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        // Layers the Diff service was creating when the daemon stopped (plain files next to
        // the writes' directories; only this process uses this root, so none is in use).
        let ingest = root.join("ingest");
        for entry in fs::read_dir(&ingest).map_err(io_err("read", &ingest))? {
            let entry = entry.map_err(io_err("read", &ingest))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Blobs {
            root: root.to_path_buf(),
            locked: Arc::default(),
            live: LiveWrites::default(),
            retention: Arc::default(),
        })
    }

    /// Keeps every present blob present while held (see `retention`): taken by a commit
    /// or record of a blob, before it looks for the blob, until its record is written.
    pub fn keep(&self) -> RwLockReadGuard<'_, ()> {
        self.retention
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets the holder delete blobs no record names (see `retention`): taken before
    /// deciding which, until they are deleted.
    pub fn collect(&self) -> RwLockWriteGuard<'_, ()> {
        self.retention
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's root (an OCI layout's blob tree lives under it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` is, present or not.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The size of blob `digest`, if present.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(md) => Ok(Some(md.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// Blob `digest` opened for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(format!("content {digest}")),
            _ => io_err("open", &path)(e),
        })
    }

    /// A reader of blob `digest` while it is still being written, if it is (a live write:
    /// bytes as they arrive, to the end once committed).
    pub fn open_live(&self, digest: &Digest) -> Result<Option<LiveReader>> {
        let path = self.path(digest);
        self.live.reader(digest).map_err(io_err("open", &path))
    }

    /// Deletes blob `digest` (nothing if absent).
    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Every blob's digest.
    pub fn digests(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(digest) = Digest::parse(&format!("sha256:{name}")) {
                out.push(digest);
            }
        }
        Ok(out)
    }

    fn ingest_dir(&self, reference: &str) -> PathBuf {
        let hash = Sha256::digest(reference.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.root.join("ingest").join(hex)
    }

    /// Takes the writer lock of `reference`: Unavailable while another writer holds it.
    pub fn lock(&self, reference: &str) -> Result<RefLock> {
        if reference.is_empty() {
            return Err(StoreError::InvalidArgument("write needs a ref".into()));
        }
        if !self
            .locked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reference.to_string())
        {
            return Err(StoreError::Unavailable(format!("ref {reference} locked")));
        }
        Ok(RefLock {
            reference: reference.to_string(),
            locked: Arc::clone(&self.locked),
        })
    }

    /// Whether a writer holds `reference`'s lock.
    pub(crate) fn is_locked(&self, reference: &str) -> bool {
        self.locked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(reference)
    }

    /// Opens the write of `lock`'s ref, resuming what an earlier writer left (its data is
    /// hashed again: call it outside any index transaction). `total` and `expected` (when
    /// given) are recorded, and must agree with what was recorded before.
    pub fn writer(&self, lock: RefLock, total: u64, expected: Option<Digest>) -> Result<Ingest> {
        let reference = lock.reference.as_str();
        let dir = self.ingest_dir(reference);
        let data = dir.join("data");
        let fresh = !data.exists();
        if fresh {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            write_small(&dir.join("ref"), reference)?;
            let now = nanos(SystemTime::now()).to_string();
            write_small(&dir.join("started"), &now)?;
            write_small(&dir.join("updated"), &now)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&data)
            .map_err(io_err("open", &data))?;
        let mut status = self.status_of(&dir)?;
        if total > 0 {
            if status.total > 0 && status.total != total {
                return Err(StoreError::FailedPrecondition(format!(
                    "ref {reference}: total {total} differs from the {} it was started with",
                    status.total
                )));
            }
            write_small(&dir.join("total"), &total.to_string())?;
            status.total = total;
        }
        if let Some(expected) = expected {
            write_small(&dir.join("expected"), expected.as_str())?;
            status.expected = Some(expected);
        }
        // Resuming: hash what is there already.
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io_err("read", &data))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let live = status
            .expected
            .clone()
            .map(|d| (d.clone(), self.live.start(&d, data.clone(), status.offset)));
        Ok(Ingest {
            blobs: self.clone(),
            dir,
            file,
            hasher,
            status,
            live,
            _lock: lock,
        })
    }

    /// The status of the write of `reference`, if one exists.
    pub fn status(&self, reference: &str) -> Result<Option<IngestStatus>> {
        let dir = self.ingest_dir(reference);
        if !dir.join("data").exists() {
            return Ok(None);
        }
        self.status_of(&dir).map(Some)
    }

    /// Every write in progress.
    pub fn statuses(&self) -> Result<Vec<IngestStatus>> {
        let root = self.root.join("ingest");
        let mut out = Vec::new();
        for entry in fs::read_dir(&root).map_err(io_err("read", &root))? {
            let dir = entry.map_err(io_err("read", &root))?.path();
            if dir.is_dir() && dir.join("data").exists() && dir.join("ref").exists() {
                out.push(self.status_of(&dir)?);
            }
        }
        Ok(out)
    }

    /// When the data of the write of `reference` was last written, if it exists.
    pub fn written(&self, reference: &str) -> Option<SystemTime> {
        fs::metadata(self.ingest_dir(reference).join("data"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Removes the write directories whose ref is not in `kept`, unless a writer holds
    /// them or they changed within `age` (a write being opened has its directory before its
    /// record): what a crash between a record's removal and its directory's left.
    pub fn remove_unrecorded_ingests(&self, kept: &HashSet<String>, age: Duration) -> Result<()> {
        let root = self.root.join("ingest");
        let now = SystemTime::now();
        for entry in fs::read_dir(&root).map_err(io_err("read", &root))? {
            let entry = entry.map_err(io_err("read", &root))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                // A layer the Diff service is creating: not a write of this store's.
                continue;
            }
            let dir = entry.path();
            let reference = fs::read_to_string(dir.join("ref")).unwrap_or_default();
            if kept.contains(&reference) || self.is_locked(&reference) {
                continue;
            }
            let recent = [dir.join("data"), dir.clone()].iter().any(|p| {
                fs::metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t + age > now)
            });
            if !recent {
                tracing::info!(reference, "write without a record removed");
                fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
            }
        }
        Ok(())
    }

    /// Drops the write of `reference`.
    pub fn abort(&self, reference: &str) -> Result<()> {
        let dir = self.ingest_dir(reference);
        if !dir.exists() {
            return Err(StoreError::NotFound(format!("ingest ref {reference}")));
        }
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))
    }

    fn status_of(&self, dir: &Path) -> Result<IngestStatus> {
        let read = |name: &str| -> Result<Option<String>> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err("read", &path)(e)),
            }
        };
        let data = dir.join("data");
        let md = fs::metadata(&data).map_err(io_err("stat", &data))?;
        let number = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        Ok(IngestStatus {
            reference: read("ref")?.unwrap_or_default(),
            offset: md.len(),
            total: number(read("total")?).unwrap_or(0),
            expected: read("expected")?.and_then(|s| Digest::parse(s.trim()).ok()),
            started: number(read("started")?).map_or(UNIX_EPOCH, from_nanos),
            // The time of the last write as the writer saw it (the file's own is coarser).
            updated: number(read("updated")?)
                .map(from_nanos)
                .unwrap_or_else(|| md.modified().unwrap_or(UNIX_EPOCH)),
        })
    }
}

/// An open write: data is appended at its offset, and Commit checks and places the blob.
pub struct Ingest {
    blobs: Blobs,
    dir: PathBuf,
    file: File,
    hasher: Hasher,
    status: IngestStatus,
    /// Registered as live under its expected digest, until it ends.
    live: Option<(Digest, Arc<Live>)>,
    _lock: RefLock,
}

impl Ingest {
    /// Where the write stands.
    pub fn status(&self) -> &IngestStatus {
        &self.status
    }

    /// Writes `data` at `offset`, as containerd: at the current offset it appends, at 0 it
    /// starts the write over; anywhere else is OutOfRange.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let path = self.dir.join("data");
        if offset != 0 && offset != self.status.offset {
            return Err(StoreError::OutOfRange(format!(
                "write @{offset} must occur at current offset {}",
                self.status.offset
            )));
        }
        if offset < self.status.offset {
            // Whoever read the old bytes must not mix them with the new ones.
            if let Some((digest, live)) = self.live.take() {
                self.end_live(&digest, &live, Err("the write restarted".into()));
                let again = self.blobs.live.start(&digest, path.clone(), 0);
                self.live = Some((digest, again));
            }
            self.file
                .set_len(offset)
                .map_err(io_err("truncate", &path))?;
            self.file
                .seek(SeekFrom::Start(0))
                .map_err(io_err("seek", &path))?;
            self.hasher = Hasher::default();
            let mut left = offset;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let n = (left as usize).min(buf.len());
                self.file
                    .read_exact(&mut buf[..n])
                    .map_err(io_err("read", &path))?;
                self.hasher.update(&buf[..n]);
                left -= n as u64;
            }
            self.status.offset = offset;
        }
        self.file
            .seek(SeekFrom::End(0))
            .map_err(io_err("seek", &path))?;
        self.file.write_all(data).map_err(io_err("write", &path))?;
        self.hasher.update(data);
        self.status.offset += data.len() as u64;
        self.status.updated = SystemTime::now();
        if let Some((_, live)) = &self.live {
            live.wrote(self.status.offset);
        }
        Ok(())
    }

    /// The digest of the bytes written so far.
    pub fn digest(&self) -> Digest {
        self.hasher.clone().finish().0
    }

    /// Checks the data against `size` (if > 0, else the total given at the start) and
    /// `expected` (if given, else the digest recorded at the start) and flushes it to disk;
    /// the digest it will be committed as. Nothing moves: a write that fails stays as it
    /// is, for its client to finish or abort. Readers following the write reach its end as
    /// soon as its bytes are checked to be the blob they were promised, before the flush and
    /// the rename: what they read is what the digest vouches for (a pull's apply does not
    /// wait for the blob's two flushes), and a failure to place the bytes fails the write,
    /// not what was read from it.
    pub fn verify(&mut self, size: u64, expected: Option<Digest>) -> Result<Digest> {
        let (digest, written) = self.hasher.clone().finish();
        let reference = &self.status.reference;
        let size = if size > 0 { size } else { self.status.total };
        if size > 0 && size != written {
            return Err(StoreError::FailedPrecondition(format!(
                "ref {reference}: unexpected commit size {written}, expected {size}"
            )));
        }
        if let Some(expected) = expected.or_else(|| self.status.expected.clone())
            && expected != digest
        {
            return Err(StoreError::FailedPrecondition(format!(
                "ref {reference}: unexpected commit digest {digest}, expected {expected}"
            )));
        }
        if let Some((promised, live)) = &self.live
            && *promised == digest
        {
            live.end(Ok(()));
        }
        let data = self.dir.join("data");
        self.file.sync_all().map_err(io_err("sync", &data))?;
        Ok(digest)
    }

    /// Moves data [`verify`](Self::verify) checked as `digest` to its blob name, flushing
    /// the directory; the write is gone afterwards. If the blob already exists the data is
    /// dropped and BlobExists returned. Readers following the write reach the end only if
    /// this is the blob they were promised.
    pub fn place(mut self, digest: Digest) -> Result<Digest> {
        let result = self.rename_into_place(digest);
        if let Some((promised, live)) = self.live.take() {
            let how = match &result {
                Ok(d) | Err(StoreError::BlobExists(d)) if *d == promised => Ok(()),
                Ok(d) | Err(StoreError::BlobExists(d)) => {
                    Err(format!("the write was committed as {d}, not {promised}"))
                }
                Err(e) => Err(e.to_string()),
            };
            self.end_live(&promised, &live, how);
        }
        result
    }

    /// [`verify`](Self::verify), then [`place`](Self::place).
    pub fn commit(mut self, size: u64, expected: Option<Digest>) -> Result<Digest> {
        let digest = self.verify(size, expected)?;
        self.place(digest)
    }

    fn end_live(&self, digest: &Digest, live: &Arc<Live>, how: std::result::Result<(), String>) {
        live.end(how);
        self.blobs.live.finish(digest, live);
    }

    fn rename_into_place(&mut self, digest: Digest) -> Result<Digest> {
        let data = self.dir.join("data");
        let target = self.blobs.path(&digest);
        if target.exists() {
            fs::remove_dir_all(&self.dir).map_err(io_err("remove", &self.dir))?;
            return Err(StoreError::BlobExists(digest));
        }
        fs::rename(&data, &target).map_err(io_err("rename", &target))?;
        let parent = target.parent().expect("blob dir");
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", parent))?;
        fs::remove_dir_all(&self.dir).map_err(io_err("remove", &self.dir))?;
        Ok(digest)
    }
}

impl Drop for Ingest {
    /// A write dropped before it committed (its stream ended, its client died) ends its
    /// readers with an error; the data stays, for a later write of the ref to resume.
    fn drop(&mut self) {
        // For a later writer resuming it (fails, harmlessly, if the write was placed or
        // aborted: its directory is gone).
        let _ = fs::write(
            self.dir.join("updated"),
            nanos(self.status.updated).to_string(),
        );
        if let Some((digest, live)) = self.live.take() {
            self.end_live(
                &digest,
                &live,
                Err("the write ended before its commit".into()),
            );
        }
    }
}

/// Holds a ref's writer lock; releases it on drop.
pub struct RefLock {
    reference: String,
    locked: Arc<Mutex<HashSet<String>>>,
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.locked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.reference);
    }
}

fn write_small(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(io_err("write", path))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().try_into().unwrap_or(u64::MAX))
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_nanos(n)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sha256(data: &[u8]) -> Digest {
        let mut h = Hasher::default();
        h.update(data);
        h.finish().0
    }

    /// A layer file the Diff service left when the daemon stopped goes when the store opens
    /// again; a collection meanwhile leaves such files (in use) alone and does not fail on
    /// them.
    #[test]
    fn layer_files_left_by_a_crash_go_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(tmp.path()).unwrap();
        let left = tmp.path().join("ingest/1234-0");
        fs::write(&left, b"half a layer").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::open(&left).unwrap().set_modified(old).unwrap();
        blobs
            .remove_unrecorded_ingests(&HashSet::new(), Duration::from_secs(1))
            .unwrap();
        assert!(left.exists(), "in use while the daemon runs");
        drop(blobs);
        Blobs::open(tmp.path()).unwrap();
        assert!(!left.exists());
    }

    /// A reader following a write reaches the end only if the write is committed as the
    /// blob it was promised: a verified commit, yes; a failed one, or one committed under
    /// another digest (the commit's own `expected`), no.
    #[test]
    fn live_readers_end_only_on_the_promised_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(tmp.path()).unwrap();
        let (good, bad) = (b"the promised bytes".as_slice(), b"other bytes".as_slice());
        let read_all = |reader: LiveReader| {
            std::thread::spawn(move || {
                let mut reader = reader;
                let mut all = Vec::new();
                reader.read_to_end(&mut all).map(|_| all)
            })
        };
        let cases: [(&str, &[u8], Option<Digest>, bool); 3] = [
            ("verified", good, None, true),
            ("wrong data", bad, None, false),
            ("committed as another blob", bad, Some(sha256(bad)), false),
        ];
        for (what, data, commit_as, ends) in cases {
            let promised = sha256(good);
            let lock = blobs.lock(&format!("ref {what}")).unwrap();
            let mut ingest = blobs.writer(lock, 0, Some(promised.clone())).unwrap();
            let reader = read_all(blobs.open_live(&promised).unwrap().unwrap());
            ingest.write_at(0, data).unwrap();
            let committed = ingest.commit(0, commit_as);
            let read = reader.join().unwrap();
            assert_eq!(read.is_ok(), ends, "{what}: {read:?} after {committed:?}");
            if ends {
                assert_eq!(read.unwrap(), good);
            }
            let _ = blobs.delete(&sha256(bad));
        }
    }

    /// A reader following a write reaches its end once the write is verified as the promised
    /// blob, before the bytes are placed under the blob's name.
    #[test]
    fn live_readers_end_at_verification() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(tmp.path()).unwrap();
        let data = b"checked bytes".as_slice();
        let promised = sha256(data);
        let lock = blobs.lock("ref early").unwrap();
        let mut ingest = blobs.writer(lock, 0, Some(promised.clone())).unwrap();
        let mut reader = blobs.open_live(&promised).unwrap().unwrap();
        ingest.write_at(0, data).unwrap();
        assert_eq!(ingest.verify(0, None).unwrap(), promised);
        let (done, read) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = done.send(reader.read_to_end(&mut all).map(|_| all));
        });
        let read = read.recv_timeout(Duration::from_secs(10));
        assert_eq!(read.expect("the end before the rename").unwrap(), data);
        assert!(blobs.size(&promised).unwrap().is_none(), "not placed yet");
        ingest.place(promised.clone()).unwrap();
        assert!(blobs.size(&promised).unwrap().is_some());
    }
}
