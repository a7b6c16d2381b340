//! What the store's tests share: a store in temporary directories with a native
//! snapshotter beside it (for collections and the store's snapshots; no mounts, no root),
//! blobs written in one call, label maps and field masks, Write requests, a bare container,
//! and an error's class, so that table rows can say which error they expect.

use std::collections::HashMap;
use std::io::Read as _;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use imagestore::{ImageStore, Report, Snapshotters, StoreError, StoreSnapshots};
use imagestore::{WriteAction, WriteRequest};
use snapshotter::native::{Native, NativeSnapshotter};
use snapshotter::{Filters, Snapshotter};

/// The name of the one snapshotter instance (any name a request gives selects it).
pub const SNAPSHOTTER: &str = "strata";

/// A manifest's media type, for image targets.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A valid container `c` without a snapshot (runc's runtime, an empty spec).
pub fn bare_container() -> api::services::containers::v1::Container {
    api::services::containers::v1::Container {
        id: "c".into(),
        runtime: Some(api::services::containers::v1::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(Default::default()),
        ..Default::default()
    }
}

/// A row of a labels-by-field-mask table: what it tries, the labels sent, the field mask,
/// and the labels stored after it (or the error's class).
pub type LabelUpdateRow<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<&'a str>,
    Result<Vec<(&'a str, &'a str)>, Class>,
);

/// containerd's error classes, as the gRPC adapter maps the store's errors to codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unimplemented,
    Unavailable,
    OutOfRange,
    /// Anything else (I/O, index, corruption): never expected by a test.
    Other,
}

/// The class of `e` (a committed blob that was there already is AlreadyExists; a
/// snapshotter's or filter's error keeps its own class).
pub fn class(e: &StoreError) -> Class {
    match e {
        StoreError::NotFound(_) => Class::NotFound,
        StoreError::AlreadyExists(_) | StoreError::BlobExists(_) => Class::AlreadyExists,
        StoreError::InvalidArgument(_) => Class::InvalidArgument,
        StoreError::FailedPrecondition(_) => Class::FailedPrecondition,
        StoreError::Unimplemented(_) => Class::Unimplemented,
        StoreError::Unavailable(_) => Class::Unavailable,
        StoreError::OutOfRange(_) => Class::OutOfRange,
        StoreError::Snapshot(s) => match s {
            snapshotter::Error::NotFound(_) => Class::NotFound,
            snapshotter::Error::AlreadyExists(_) => Class::AlreadyExists,
            snapshotter::Error::InvalidArgument(_) => Class::InvalidArgument,
            snapshotter::Error::FailedPrecondition(_) => Class::FailedPrecondition,
            _ => Class::Other,
        },
        _ => Class::Other,
    }
}

/// `Ok` with the value, or the error's class: what a table row compares.
pub fn outcome<T>(r: imagestore::Result<T>) -> Result<T, Class> {
    r.map_err(|e| class(&e))
}

/// The class of the error `r` must be.
pub fn error_class<T: std::fmt::Debug>(r: imagestore::Result<T>) -> Class {
    class(&r.expect_err("expected an error"))
}

/// A label map of `pairs`.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A field mask's paths.
pub fn paths(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// Parsed List filters; a filter the language refuses is the store call's error, as the
/// gRPC adapter reports it.
pub fn filters(f: &[&str]) -> imagestore::Result<Filters> {
    Filters::parse(f).map_err(StoreError::Snapshot)
}

/// The sha256 digest of `data`, as containerd writes it.
pub fn sha256(data: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(data);
    h.finish().0.to_string()
}

/// A Write request with nothing but its action and ref set.
pub fn request(action: WriteAction, reference: &str) -> WriteRequest {
    WriteRequest {
        action,
        reference: reference.to_string(),
        offset: 0,
        total: 0,
        expected: String::new(),
        data: Vec::new(),
        labels: HashMap::new(),
    }
}

/// The native snapshotter, selected by any name as a daemon with one instance selects it.
struct OneNative(Arc<dyn Snapshotter>);

impl Snapshotters for OneNative {
    fn resolve(&self, _: &str) -> Option<(String, Arc<dyn Snapshotter>)> {
        Some((SNAPSHOTTER.to_string(), Arc::clone(&self.0)))
    }
}

/// A store and a native snapshotter in temporary directories. Derefs to the store.
pub struct Store {
    pub store: Arc<ImageStore>,
    pub snapshots: StoreSnapshots,
    dir: tempfile::TempDir,
    snap: tempfile::TempDir,
}

impl Store {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let snap = tempfile::tempdir().unwrap();
        Self::open(dir, snap)
    }

    fn open(dir: tempfile::TempDir, snap: tempfile::TempDir) -> Self {
        let store = Arc::new(ImageStore::open(dir.path()).unwrap());
        let native: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(snap.path(), Native, Default::default()).unwrap());
        let snapshots = StoreSnapshots::new(Arc::clone(&store), Arc::new(OneNative(native)));
        Store {
            store,
            snapshots,
            dir,
            snap,
        }
    }

    /// The same directories opened again, as a restarted daemon opens them.
    pub fn reopen(self) -> Self {
        let Store {
            store,
            snapshots,
            dir,
            snap,
        } = self;
        drop(snapshots);
        drop(store);
        Self::open(dir, snap)
    }

    /// Writes `data` as a blob in `ns` with `labels_in`, in one write; its digest.
    pub fn blob(&self, ns: &str, data: &[u8], labels_in: &[(&str, &str)]) -> String {
        self.blob_under(ns, data, labels_in, None)
    }

    /// [`blob`](Self::blob) under `lease`.
    pub fn blob_under(
        &self,
        ns: &str,
        data: &[u8],
        labels_in: &[(&str, &str)],
        lease: Option<&str>,
    ) -> String {
        let reference = format!("put-{}", sha256(data));
        let mut w = self
            .store
            .content_writer(ns, &reference, data.len() as u64, None, lease)
            .unwrap();
        w.write_at(0, data).unwrap();
        self.store
            .content_commit(w, &reference, data.len() as u64, None, labels(labels_in))
            .unwrap()
            .to_string()
    }

    /// Blob `digest` as `ns` reads it.
    pub fn read(&self, ns: &str, digest: &str) -> Vec<u8> {
        let (mut file, size) = self.store.content_open(ns, digest).unwrap();
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, size, "the size content_open reports");
        data
    }

    /// Where blob `digest`'s file is, present or not.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("content/blobs/sha256").join(hex)
    }

    /// The directories of writes in progress.
    pub fn ingest_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("content/ingest"))
            .unwrap()
            .count()
    }

    /// The digests `ns` records, sorted.
    pub fn digests(&self, ns: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .store
            .content_list(ns, &Filters::default())
            .unwrap()
            .into_iter()
            .map(|i| i.digest)
            .collect();
        all.sort();
        all
    }

    /// Collects (or, `dry_run`, only reports) over the native snapshotter.
    pub fn collect(&self, dry_run: bool) -> Report {
        self.store
            .collect(self.snapshots.snapshotters(), dry_run)
            .unwrap()
    }
}

impl Deref for Store {
    type Target = ImageStore;

    fn deref(&self) -> &ImageStore {
        &self.store
    }
}

/// `v` sorted.
pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}
