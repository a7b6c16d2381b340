//! Namespaces: a namespace exists once it was created or holds anything; it has labels
//! (e.g. `containerd.io/defaults/snapshotter`, which clients read to pick a snapshotter).

use std::collections::HashMap;

use super::meta::{Kind, Read, key};
use super::{ImageStore, Result, StoreError, labels};
use crate::api::services::namespaces::v1::Namespace;

/// What may keep a namespace from being deleted, with containerd's names for it.
const CONTENTS: [(Kind, &str); 5] = [
    (Kind::Image, "images"),
    (Kind::Content, "blobs"),
    (Kind::Container, "containers"),
    (Kind::Lease, "leases"),
    (Kind::Ingest, "ingests"),
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
                if !labels::apply_path(&mut current.labels, &ns.labels, path) {
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

    /// Deletes namespace `name`, which must hold nothing (`snapshots_in_use` says whether
    /// the daemon's snapshotters still hold snapshots of it).
    pub fn namespace_delete(&self, name: &str, snapshots_in_use: bool) -> Result<()> {
        self.meta.write(|w| {
            if !w.namespaces()?.iter().any(|n| n == name) {
                return Err(StoreError::NotFound(format!("namespace {name:?}")));
            }
            let mut held: Vec<&str> = Vec::new();
            for (kind, what) in CONTENTS {
                if w.any(kind, name)? {
                    held.push(what);
                }
            }
            if snapshots_in_use {
                held.push("snapshots");
            }
            if !held.is_empty() {
                return Err(StoreError::FailedPrecondition(format!(
                    "namespace {name:?} must be empty, but it still has {}",
                    held.join(", ")
                )));
            }
            w.delete(Kind::Namespace, &key(name, &[""]))?;
            Ok(())
        })
    }
}
