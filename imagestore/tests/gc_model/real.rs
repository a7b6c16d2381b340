//! The real side: a store over a native snapshotter in temporary directories, what it holds
//! read back as a model, and the comparison of the two after a collection.

use std::collections::BTreeSet;
use std::sync::Arc;

use imagestore::{ImageStore, Snapshotters, StoreSnapshots};
use snapshotter::native::{Native, NativeSnapshotter};
use snapshotter::{Filters, Snapshotter};

use crate::model::{Model, ModelNs, ModelSnapshot, snapshotter_known};
use crate::{Labels, NAMESPACES};

/// The one native snapshotter, named `strata`, selected by any name.
pub(crate) struct One(Arc<dyn Snapshotter>);

impl Snapshotters for One {
    fn resolve(&self, name: &str) -> Option<(String, Arc<dyn Snapshotter>)> {
        snapshotter_known(name).then(|| ("strata".to_string(), Arc::clone(&self.0)))
    }
}

/// A store and its snapshotter in temporary directories.
pub(crate) struct Real {
    pub(crate) store: Arc<ImageStore>,
    pub(crate) snapshots: StoreSnapshots,
    pub(crate) snapshotter: Arc<dyn Snapshotter>,
    pub(crate) _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Real {
    pub(crate) fn new() -> Self {
        // tmpfs where there is one: the test is about the collector, not the disk's flushes.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let sdir = tempfile::tempdir_in(&base).unwrap();
        let snap = tempfile::tempdir_in(&base).unwrap();
        let store = Arc::new(ImageStore::open(sdir.path()).unwrap());
        let snapshotter: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(snap.path(), Native, Default::default()).unwrap());
        let snapshots =
            StoreSnapshots::new(Arc::clone(&store), Arc::new(One(Arc::clone(&snapshotter))));
        Real {
            store,
            snapshots,
            snapshotter,
            _dirs: (sdir, snap),
        }
    }
}

pub(crate) fn labels_of(pairs: &[(String, String)]) -> Labels {
    pairs.iter().cloned().collect()
}

pub(crate) fn hash(labels: &Labels) -> std::collections::HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The store's state in the model's terms.
pub(crate) fn observed(real: &Real) -> Model {
    let mut m = Model::default();
    let all = Filters::default();
    for ns in real.store.namespace_list().unwrap() {
        let name = ns.name;
        let mut n = ModelNs::default();
        for info in real.store.content_list(&name, &all).unwrap() {
            n.content
                .insert(info.digest, info.labels.into_iter().collect());
        }
        for image in real.store.image_list(&name, &all).unwrap() {
            let target = image.target.unwrap_or_default().digest;
            n.images
                .insert(image.name, (target, image.labels.into_iter().collect()));
        }
        for c in real.store.container_list(&name, &all).unwrap() {
            n.containers.insert(
                c.id,
                (
                    c.snapshotter,
                    c.snapshot_key,
                    c.labels.into_iter().collect(),
                ),
            );
        }
        for lease in real.store.lease_list(&name, &all).unwrap() {
            let held = real.store.lease_resources(&name, &lease.id).unwrap();
            let held = held.into_iter().map(|r| (r.r#type, r.id)).collect();
            n.leases
                .insert(lease.id, (lease.labels.into_iter().collect(), held));
        }
        for s in real.store.ingest_list(&name, &all).unwrap() {
            n.ingests
                .insert(s.reference, (s.expected.map(|d| d.to_string()), false));
        }
        m.ns.insert(name, n);
    }
    for info in real.snapshotter.list(&all).unwrap() {
        if info.name.starts_with("active-") {
            continue;
        }
        m.snapshots.insert(
            info.name,
            ModelSnapshot {
                parent: info.parent,
                labels: info.labels.into_iter().collect(),
                namespace: String::new(),
            },
        );
    }
    m
}

/// Compares what the store holds with what the model says.
pub(crate) fn compare(model: &Model, real: &Real) -> Result<(), String> {
    let seen = observed(real);
    for name in NAMESPACES {
        let empty = ModelNs::default();
        let want = model.ns.get(name).unwrap_or(&empty);
        let got = seen.ns.get(name).unwrap_or(&empty);
        let pairs: [(&str, Vec<String>, Vec<String>); 5] = [
            (
                "content",
                want.content.keys().cloned().collect(),
                got.content.keys().cloned().collect(),
            ),
            (
                "images",
                want.images.keys().cloned().collect(),
                got.images.keys().cloned().collect(),
            ),
            (
                "containers",
                want.containers.keys().cloned().collect(),
                got.containers.keys().cloned().collect(),
            ),
            (
                "leases",
                want.leases.keys().cloned().collect(),
                got.leases.keys().cloned().collect(),
            ),
            (
                "writes",
                want.ingests.keys().cloned().collect(),
                got.ingests.keys().cloned().collect(),
            ),
        ];
        for (what, w, g) in pairs {
            if w != g {
                return Err(format!("namespace {name} {what}: model {w:?}, store {g:?}"));
            }
        }
    }
    let w: Vec<&String> = model.snapshots.keys().collect();
    let g: Vec<&String> = seen.snapshots.keys().collect();
    if w != g {
        return Err(format!("snapshots: model {w:?}, store {g:?}"));
    }
    // Every record has its blob file; every blob file is recorded or expected.
    let files: BTreeSet<String> = real
        .store
        .blobs()
        .digests()
        .unwrap()
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    let mut recorded = BTreeSet::new();
    let mut expected = BTreeSet::new();
    for n in seen.ns.values() {
        recorded.extend(n.content.keys().cloned());
        expected.extend(n.ingests.values().filter_map(|(e, _)| e.clone()));
    }
    if let Some(d) = recorded.iter().find(|d| !files.contains(*d)) {
        return Err(format!("blob {d} recorded without its file"));
    }
    if let Some(d) = files
        .iter()
        .find(|d| !recorded.contains(*d) && !expected.contains(*d))
    {
        return Err(format!(
            "blob file {d} kept with no record and no write expecting it"
        ));
    }
    Ok(())
}
