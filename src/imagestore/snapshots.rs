//! Which snapshots belong to this store. The snapshotters also serve containerd, whose
//! snapshots this store must never collect, and the two cannot be told apart by key or by
//! request header (containerd 2.1 forwards its namespace to proxies). A snapshot is this
//! store's when a client made it under one of this store's leases (as `ctr` does for an
//! import, a pull or a mount against Strata's socket): it is recorded with the lease's
//! namespace and added to the lease, as containerd's metadata layer does, and its committed
//! successor inherits that. Records are keyed `<snapshotter>\0<key>` and hold the namespace
//! (a `Resource` whose id is the namespace).

use std::collections::HashMap;

use super::leases::RESOURCE_SNAPSHOTS;
use super::meta::{Kind, Read, key};
use super::{ImageStore, Result};
use crate::api::services::leases::v1::Resource;

impl ImageStore {
    /// Records snapshot `snapshot` of `snapshotter` as made in `namespace` under `lease`, if
    /// that lease is one of this store's; whether it was.
    pub fn snapshot_made(
        &self,
        namespace: &str,
        lease: &str,
        snapshotter: &str,
        snapshot: &str,
    ) -> Result<bool> {
        if !self.lease_exists(namespace, lease)? {
            return Ok(false);
        }
        self.meta.write(|w| {
            let resource = format!("{RESOURCE_SNAPSHOTS}{snapshotter}");
            w.add_resource(namespace, lease, &resource, snapshot)?;
            let record = Resource {
                id: namespace.to_string(),
                r#type: resource,
            };
            w.put(Kind::Snapshot, &key(snapshotter, &[snapshot]), &record)?;
            Ok(true)
        })
    }

    /// Whether snapshot `snapshot` of `snapshotter` is this store's. A read only, cheap
    /// enough to ask on every call about containerd's snapshots.
    pub fn owns_snapshot(&self, snapshotter: &str, snapshot: &str) -> Result<bool> {
        let k = key(snapshotter, &[snapshot]);
        self.meta
            .read(|r| Ok(r.get::<Resource>(Kind::Snapshot, &k)?.is_some()))
    }

    /// Active snapshot `from` was committed as `to`: if it was this store's, so is `to`.
    pub fn snapshot_committed(&self, snapshotter: &str, from: &str, to: &str) -> Result<()> {
        let k = key(snapshotter, &[from]);
        self.meta.write(|w| {
            if let Some(record) = w.get::<Resource>(Kind::Snapshot, &k)? {
                w.delete(Kind::Snapshot, &k)?;
                w.put(Kind::Snapshot, &key(snapshotter, &[to]), &record)?;
            }
            Ok(())
        })
    }

    /// Snapshot `snapshot` is gone, or shared with someone else (containerd adopted it):
    /// it is no longer this store's to collect.
    pub fn snapshot_released(&self, snapshotter: &str, snapshot: &str) -> Result<()> {
        let k = key(snapshotter, &[snapshot]);
        self.meta.write(|w| {
            w.delete(Kind::Snapshot, &k)?;
            Ok(())
        })
    }

    /// This store's snapshots: namespace → (snapshotter, key).
    pub(super) fn snapshots_by_namespace(
        r: &impl Read,
    ) -> Result<HashMap<String, Vec<(String, String)>>> {
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for snapshotter in r.namespaces_of(Kind::Snapshot)? {
            for (snapshot, record) in r.list::<Resource>(Kind::Snapshot, &snapshotter)? {
                out.entry(record.id)
                    .or_default()
                    .push((snapshotter.clone(), snapshot));
            }
        }
        Ok(out)
    }
}
