//! What the image store's tests share: real snapshotters in temporary directories, seen as
//! the store sees a daemon's instances.

use std::path::Path;
use std::sync::Arc;

use snapshotter::Snapshotter;
use snapshotter::native::{Native, NativeSnapshotter};

use crate::Snapshotters;

/// A native snapshotter rooted at `root` (no mounts, no root needed).
pub fn native(root: &Path) -> Arc<dyn Snapshotter> {
    Arc::new(NativeSnapshotter::open(root, Native, Default::default()).expect("open snapshotter"))
}

/// One instance, selected by any name, as a daemon with one instance selects it.
pub struct OneSnapshotter {
    name: String,
    snapshotter: Arc<dyn Snapshotter>,
}

impl OneSnapshotter {
    pub fn new(name: &str, snapshotter: Arc<dyn Snapshotter>) -> Self {
        OneSnapshotter {
            name: name.to_string(),
            snapshotter,
        }
    }
}

impl Snapshotters for OneSnapshotter {
    fn resolve(&self, _: &str) -> Option<(String, Arc<dyn Snapshotter>)> {
        Some((self.name.clone(), Arc::clone(&self.snapshotter)))
    }
}

/// A store and one native snapshotter instance named `strata`, in temporary directories,
/// with the calls the tests make in a few words.
pub struct Fixture {
    pub store: Arc<crate::ImageStore>,
    pub snapshots: crate::StoreSnapshots,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    pub fn new() -> Self {
        let (sdir, snap) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Arc::new(crate::ImageStore::open(sdir.path()).unwrap());
        let instances = Arc::new(OneSnapshotter::new("strata", native(snap.path())));
        let snapshots = crate::StoreSnapshots::new(Arc::clone(&store), instances);
        Fixture {
            store,
            snapshots,
            _dirs: (sdir, snap),
        }
    }

    /// Writes `data` as a blob into `ns` under `lease`, labelled; its digest.
    pub fn blob(
        &self,
        ns: &str,
        data: &[u8],
        labels: &[(&str, &str)],
        lease: Option<&str>,
    ) -> String {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reference = format!("write-{n}");
        let mut w = self
            .store
            .content_writer(ns, &reference, data.len() as u64, None, lease)
            .unwrap();
        w.write_at(0, data).unwrap();
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.store
            .content_commit(w, &reference, data.len() as u64, None, labels)
            .unwrap()
            .to_string()
    }

    /// Creates image `name` in `ns` pointing at blob `digest`.
    pub fn image(&self, ns: &str, name: &str, digest: &str, labels: &[(&str, &str)]) {
        let image = api::services::images::v1::Image {
            name: name.to_string(),
            target: Some(api::types::Descriptor {
                media_type: api::media_types::OCI_MANIFEST.to_string(),
                digest: digest.to_string(),
                size: 1,
                ..Default::default()
            }),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        self.store.image_create(ns, image, None).unwrap();
    }

    /// Creates lease `id` in `ns` with labels.
    pub fn lease(&self, ns: &str, id: &str, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.store.lease_create(ns, id, labels).unwrap();
    }

    /// Prepares and commits `name` on `parent` through the store, as `ns`'s unpack under
    /// `lease` does, naming the snapshotter `snapshotter`.
    pub fn layer(&self, ns: &str, lease: &str, snapshotter: &str, name: &str, parent: &str) {
        let caller = crate::Caller {
            namespace: Some(ns.to_string()),
            lease: Some(lease.to_string()),
        };
        let key = format!("extract {name}");
        self.snapshots
            .prepare(&caller, snapshotter, &key, parent, Default::default())
            .unwrap();
        self.snapshots
            .commit(&caller, snapshotter, name, &key, Default::default(), "")
            .unwrap();
    }

    /// The snapshot keys the snapshotter holds.
    pub fn snapshot_keys(&self) -> Vec<String> {
        let (_, s) = self.snapshots.snapshotter("strata").unwrap();
        let mut keys: Vec<String> = s
            .list(&snapshotter::Filters::default())
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        keys.sort();
        keys
    }

    /// The digests `ns` records.
    pub fn digests(&self, ns: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .store
            .content_list(ns, &snapshotter::Filters::default())
            .unwrap()
            .into_iter()
            .map(|i| i.digest)
            .collect();
        all.sort();
        all
    }

    /// Collects; what went.
    pub fn collect(&self) -> crate::Report {
        self.store
            .collect(self.snapshots.snapshotters(), false)
            .unwrap()
    }
}
