//! Containers: metadata records (runtime, spec, image, snapshot key) per namespace, with
//! containerd's validation and field-mask updates. Nothing runs here; a container is a
//! garbage-collection root for its image and snapshot.

use std::borrow::Cow;
use std::time::SystemTime;

use snapshotter::Filters;
use snapshotter::filter::Adaptor;

use crate::labels::Fields;

use super::meta::{Kind, Read, key};
use super::{ImageStore, Result, StoreError, labels, timestamp};
use api::services::containers::v1::Container;

impl Adaptor for Fields<'_, Container> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path {
            [f] if f == "id" => Some(self.0.id.as_str().into()),
            [f] if f == "image" => Some(self.0.image.as_str().into()),
            [f, sub] if f == "runtime" && sub == "name" => {
                self.0.runtime.as_ref().map(|r| r.name.as_str().into())
            }
            _ => labels::field(&self.0.labels, path).map(Into::into),
        }
    }
}

/// containerd's checks of a stored container.
fn validate(c: &Container) -> Result<()> {
    super::validate_identifier(&c.id).map_err(|e| match e {
        StoreError::InvalidArgument(m) => StoreError::InvalidArgument(format!("container.ID: {m}")),
        other => other,
    })?;
    if c.extensions.keys().any(String::is_empty) {
        return Err(StoreError::InvalidArgument(
            "container.Extension keys must not be zero-length".into(),
        ));
    }
    labels::validate(&c.labels)?;
    if c.runtime.as_ref().is_none_or(|r| r.name.is_empty()) {
        return Err(StoreError::InvalidArgument(
            "container.Runtime.Name must be set".into(),
        ));
    }
    if c.spec.is_none() {
        return Err(StoreError::InvalidArgument(
            "container.Spec must be set".into(),
        ));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(StoreError::InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set".into(),
        ));
    }
    Ok(())
}

impl ImageStore {
    /// Container `id` of `namespace`.
    pub fn container_get(&self, namespace: &str, id: &str) -> Result<Container> {
        self.meta.read(|r| {
            r.get(Kind::Container, &key(namespace, &[id]))?
                .ok_or_else(|| StoreError::NotFound(format!("container {id:?}")))
        })
    }

    /// The containers of `namespace` that match `filters`, by id.
    pub fn container_list(&self, namespace: &str, filters: &Filters) -> Result<Vec<Container>> {
        let all = self
            .meta
            .read(|r| r.list::<Container>(Kind::Container, namespace))?;
        Ok(all
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| filters.matches(&Fields(c)))
            .collect())
    }

    /// Creates `container`; AlreadyExists if its id is taken.
    pub fn container_create(&self, namespace: &str, mut container: Container) -> Result<Container> {
        validate(&container)?;
        container.labels.retain(|_, v| !v.is_empty());
        let now = Some(timestamp(SystemTime::now()));
        container.created_at = now;
        container.updated_at = now;
        self.meta.write(|w| {
            let k = key(namespace, &[&container.id]);
            if w.get::<Container>(Kind::Container, &k)?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "container {:?}",
                    container.id
                )));
            }
            w.put(Kind::Container, &k, &container)?;
            Ok(container)
        })
    }

    /// Updates `container.id` by field paths (`labels`, `labels.<k>`, `spec`, `extensions`,
    /// `extensions.<k>`, `image`, `snapshotkey`; none: all of those, the snapshotter and
    /// runtime name being immutable).
    pub fn container_update(
        &self,
        namespace: &str,
        container: Container,
        paths: &[String],
    ) -> Result<Container> {
        if container.id.is_empty() {
            return Err(StoreError::InvalidArgument(
                "must specify a container id".into(),
            ));
        }
        self.meta.write(|w| {
            let k = key(namespace, &[&container.id]);
            let current: Container = w
                .get(Kind::Container, &k)?
                .ok_or_else(|| StoreError::NotFound(format!("container {:?}", container.id)))?;
            let mut paths = paths.to_vec();
            if paths.is_empty() {
                if current.snapshotter != container.snapshotter {
                    return Err(StoreError::InvalidArgument(
                        "container.Snapshotter field is immutable".into(),
                    ));
                }
                let name = |c: &Container| c.runtime.as_ref().map(|r| r.name.clone());
                if name(&current) != name(&container) {
                    return Err(StoreError::InvalidArgument(
                        "container.Runtime.Name field is immutable".into(),
                    ));
                }
                paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
                    .map(String::from)
                    .to_vec();
            }
            let mut updated = current.clone();
            for path in &paths {
                if labels::apply_path(&mut updated.labels, &container.labels, path) {
                    continue;
                }
                if let Some(ext) = path.strip_prefix("extensions.") {
                    match container.extensions.get(ext) {
                        Some(v) => {
                            updated.extensions.insert(ext.to_string(), v.clone());
                        }
                        None => {
                            updated.extensions.remove(ext);
                        }
                    }
                    continue;
                }
                match path.as_str() {
                    "spec" => updated.spec = container.spec.clone(),
                    "extensions" => updated.extensions = container.extensions.clone(),
                    "image" => updated.image = container.image.clone(),
                    "snapshotkey" => updated.snapshot_key = container.snapshot_key.clone(),
                    _ => {
                        return Err(StoreError::InvalidArgument(format!(
                            "cannot update {path:?} field on {:?}",
                            container.id
                        )));
                    }
                }
            }
            validate(&updated).map_err(|e| match e {
                StoreError::InvalidArgument(m) => {
                    StoreError::InvalidArgument(format!("update failed validation: {m}"))
                }
                other => other,
            })?;
            updated.updated_at = Some(timestamp(SystemTime::now()));
            w.put(Kind::Container, &k, &updated)?;
            Ok(updated)
        })
    }

    /// Deletes container `id`.
    pub fn container_delete(&self, namespace: &str, id: &str) -> Result<()> {
        self.meta.write(|w| {
            if !w.delete(Kind::Container, &key(namespace, &[id]))? {
                return Err(StoreError::NotFound(format!("container {id:?}")));
            }
            Ok(())
        })
    }
}
