//! Leases: named holds, per namespace, on content, writes in progress and snapshots, so the
//! collector leaves them alone while a client works (a pull, an unpack, a layer creation).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::SystemTime;

use snapshotter::Filters;
use snapshotter::filter::Adaptor;

use crate::labels::Fields;

use super::meta::{Kind, Read, key};
use super::{ImageStore, Result, StoreError, labels, timestamp};
use api::resources::{CONTENT as RESOURCE_CONTENT, INGESTS as RESOURCE_INGEST};
use api::services::leases::v1::{Lease, Resource};

use api::resources::{IMAGES as RESOURCE_IMAGES, SNAPSHOTS as RESOURCE_SNAPSHOTS};

impl Adaptor for Fields<'_, Lease> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path {
            [f] if f == "id" => Some(self.0.id.as_str().into()),
            _ => labels::field(&self.0.labels, path).map(Into::into),
        }
    }
}

/// containerd's check of a resource's type and id.
fn validate_resource(r: &Resource) -> Result<()> {
    match r.r#type.as_str() {
        RESOURCE_CONTENT => {
            differ::Digest::parse(&r.id)
                .map_err(|e| StoreError::InvalidArgument(format!("content resource: {e}")))?;
        }
        RESOURCE_INGEST | RESOURCE_IMAGES => {}
        t if t.starts_with(RESOURCE_SNAPSHOTS) => {
            let snapshotter = &t[RESOURCE_SNAPSHOTS.len()..];
            if snapshotter.is_empty() || snapshotter.contains('/') {
                return Err(StoreError::InvalidArgument(
                    "invalid snapshot resource type".into(),
                ));
            }
        }
        t => {
            return Err(StoreError::Unimplemented(format!(
                "resource type {t} not supported yet"
            )));
        }
    }
    if r.id.is_empty() {
        return Err(StoreError::InvalidArgument(
            "resource id must not be empty".into(),
        ));
    }
    Ok(())
}

impl ImageStore {
    /// Creates lease `id` with `labels`.
    pub fn lease_create(
        &self,
        namespace: &str,
        id: &str,
        labels_in: HashMap<String, String>,
    ) -> Result<Lease> {
        if id.is_empty() {
            return Err(StoreError::InvalidArgument(
                "lease id must be provided".into(),
            ));
        }
        labels::validate(&labels_in)?;
        let lease = Lease {
            id: id.to_string(),
            created_at: Some(timestamp(SystemTime::now())),
            labels: labels_in,
        };
        self.meta.write(|w| {
            let k = key(namespace, &[id]);
            if w.get::<Lease>(Kind::Lease, &k)?.is_some() {
                return Err(StoreError::AlreadyExists(format!("lease {id:?}")));
            }
            w.put(Kind::Lease, &k, &lease)?;
            Ok(lease)
        })
    }

    /// Whether lease `id` exists in `namespace`.
    pub fn lease_exists(&self, namespace: &str, id: &str) -> Result<bool> {
        self.meta.read(|r| {
            Ok(r.get::<Lease>(Kind::Lease, &key(namespace, &[id]))?
                .is_some())
        })
    }

    /// Deletes lease `id` (what it held is then up to the collector).
    pub fn lease_delete(&self, namespace: &str, id: &str) -> Result<()> {
        self.meta.write(|w| {
            if !w.delete(Kind::Lease, &key(namespace, &[id]))? {
                return Err(StoreError::NotFound(format!("lease {id:?}")));
            }
            w.clear_resources(namespace, id)
        })
    }

    /// The leases of `namespace` that match `filters`.
    pub fn lease_list(&self, namespace: &str, filters: &Filters) -> Result<Vec<Lease>> {
        let all = self
            .meta
            .read(|r| r.list::<Lease>(Kind::Lease, namespace))?;
        Ok(all
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| filters.matches(&Fields(l)))
            .collect())
    }

    /// Adds `resource` to lease `id`.
    pub fn lease_add_resource(&self, namespace: &str, id: &str, resource: &Resource) -> Result<()> {
        validate_resource(resource)?;
        self.meta.write(|w| {
            if w.get::<Lease>(Kind::Lease, &key(namespace, &[id]))?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("lease {id:?}")));
            }
            w.add_resource(namespace, id, &resource.r#type, &resource.id)
        })
    }

    /// Removes `resource` from lease `id`.
    pub fn lease_delete_resource(
        &self,
        namespace: &str,
        id: &str,
        resource: &Resource,
    ) -> Result<()> {
        validate_resource(resource)?;
        self.meta.write(|w| {
            if w.get::<Lease>(Kind::Lease, &key(namespace, &[id]))?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("lease {id:?}")));
            }
            w.delete_resource(namespace, id, &resource.r#type, &resource.id)
        })
    }

    /// The resources of lease `id`.
    pub fn lease_resources(&self, namespace: &str, id: &str) -> Result<Vec<Resource>> {
        self.meta.read(|r| {
            if r.get::<Lease>(Kind::Lease, &key(namespace, &[id]))?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("lease {id:?}")));
            }
            Ok(r.resources(namespace, id)?
                .into_iter()
                .map(|(r#type, id)| Resource { id, r#type })
                .collect())
        })
    }
}
