//! Namespaces: a namespace exists once it was created or holds anything; it has labels
//! (e.g. `containerd.io/defaults/snapshotter`, which clients read to pick a snapshotter).

use std::collections::HashMap;

use super::ingests::{IngestRecord, tree_ref};
use super::meta::{Kind, Read, key};
use super::{ImageStore, Result, StoreError, labels};
use api::services::leases::v1::Lease;
use api::services::namespaces::v1::Namespace;

/// What keeps a namespace from being deleted (leases and writes do not), with containerd's
/// names for it.
const CONTENTS: [(Kind, &str); 3] = [
    (Kind::Image, "images"),
    (Kind::Content, "blobs"),
    (Kind::Container, "containers"),
];

impl ImageStore {
    /// Namespace `name` with its labels; as containerd, a namespace that does not exist
    /// reads as one without labels.
    pub fn namespace_get(&self, name: &str) -> Result<Namespace> {
        let found = self
            .meta
            .read(|r| r.get::<Namespace>(Kind::Namespace, &key(name, &[""])))?;
        Ok(found.unwrap_or_else(|| Namespace {
            name: name.to_string(),
            labels: HashMap::new(),
        }))
    }

    /// Every namespace, by name.
    pub fn namespace_list(&self) -> Result<Vec<Namespace>> {
        let names = self.meta.read(|r| r.namespaces())?;
        names.iter().map(|n| self.namespace_get(n)).collect()
    }

    /// Creates namespace `ns`; AlreadyExists if it exists.
    pub fn namespace_create(&self, mut ns: Namespace) -> Result<Namespace> {
        super::validate_identifier(&ns.name)?;
        labels::validate(&ns.labels)?;
        ns.labels.retain(|_, v| !v.is_empty());
        self.meta.write(|w| {
            if w.namespaces()?.contains(&ns.name) {
                return Err(StoreError::AlreadyExists(format!(
                    "namespace {:?}",
                    ns.name
                )));
            }
            w.put(Kind::Namespace, &key(&ns.name, &[""]), &ns)?;
            Ok(ns)
        })
    }

    /// Updates the labels of `ns.name` (`labels`, `labels.<k>`; none: all), creating it.
    pub fn namespace_update(&self, ns: Namespace, paths: &[String]) -> Result<Namespace> {
        super::validate_identifier(&ns.name)?;
        labels::validate(&ns.labels)?;
        self.meta.write(|w| {
            let k = key(&ns.name, &[""]);
            let mut current = w
                .get::<Namespace>(Kind::Namespace, &k)?
                .unwrap_or(Namespace {
                    name: ns.name.clone(),
                    labels: HashMap::new(),
                });
            if paths.is_empty() {
                labels::apply_path(&mut current.labels, &ns.labels, "labels");
            }
            for path in paths {
                // Only single labels: containerd refuses a bare `labels` path here.
                if path == "labels" || !labels::apply_path(&mut current.labels, &ns.labels, path) {
                    return Err(StoreError::InvalidArgument(format!(
                        "cannot update {path:?} field on namespace {:?}",
                        ns.name
                    )));
                }
            }
            w.put(Kind::Namespace, &k, &current)?;
            Ok(current)
        })
    }

    /// Deletes namespace `name`, which must hold no images, blobs, containers or snapshots
    /// (`snapshots_in` names a snapshotter still holding snapshots of it); its leases and
    /// writes go with it.
    pub fn namespace_delete(&self, name: &str, snapshots_in: Option<&str>) -> Result<()> {
        let writes = self.meta.write(|w| {
            if !w.namespaces()?.iter().any(|n| n == name) {
                return Err(StoreError::NotFound(format!("namespace {name:?}")));
            }
            let mut held: Vec<String> = Vec::new();
            for (kind, what) in CONTENTS {
                if w.any(kind, name)? {
                    held.push(what.to_string());
                }
            }
            if let Some(snapshotter) = snapshots_in {
                held.push(format!("snapshots on {snapshotter:?} snapshotter"));
            }
            if !held.is_empty() {
                return Err(StoreError::FailedPrecondition(format!(
                    "namespace {name:?} must be empty, but it still has {}",
                    held.join(", ")
                )));
            }
            w.delete(Kind::Namespace, &key(name, &[""]))?;
            // Leases and writes go with it, as with containerd's namespace bucket.
            for (id, _) in w.list::<Lease>(Kind::Lease, name)? {
                w.delete(Kind::Lease, &key(name, &[&id]))?;
                w.clear_resources(name, &id)?;
            }
            let writes = w.list::<IngestRecord>(Kind::Ingest, name)?;
            for (reference, _) in &writes {
                w.delete(Kind::Ingest, &key(name, &[reference]))?;
            }
            Ok(writes)
        })?;
        for (reference, _) in writes {
            match self.blobs().abort(&tree_ref(name, &reference)) {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
