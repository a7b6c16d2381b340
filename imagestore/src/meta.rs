//! The image store's LMDB index: one database per kind of object, keyed by namespace and
//! the object's own key (`<namespace>\0<key>`), holding containerd's API message for it
//! protobuf-encoded (the wire schema is the storage schema; protobuf keeps old records
//! readable as fields are added). Lease resources are keys only:
//! `<namespace>\0<lease>\0<type>\0<id>`.
//!
//! Every write is one transaction, committed and flushed before the call returns. The map
//! grows as the snapshotters' does (`snapshotter::lmdb`).

use std::path::Path;

use heed::types::{Bytes, Unit};
use heed::{Database, RoTxn, RwTxn, WithoutTls};
use mountutil::lock::RootLock;
use prost::Message;
use snapshotter::lmdb::GrowingEnv;

use super::{Result, StoreError};

/// The map's initial size (address space; the file grows as pages are used, and the map
/// doubles when half of it is). Image metadata is small: a container's spec is the largest
/// record, a few KiB.
const MAP_SIZE: usize = 1 << 30;

/// Object kinds, each a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Namespace,
    Image,
    Container,
    Lease,
    /// A blob's record in a namespace (size, labels, times).
    Content,
    /// A write in progress in a namespace (its ref).
    Ingest,
    /// A snapshot a client of this store made under one of its leases, which the collector
    /// may therefore remove: `<snapshotter>\0<key>` (not namespaced: a snapshotter's keys
    /// are one space) → its namespace.
    Snapshot,
    /// A snapshot a client of this store is making, recorded before the snapshotter makes
    /// it: `<snapshotter>\0<key>` → what it is made from and under which lease.
    SnapshotIntent,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Image,
        Kind::Container,
        Kind::Lease,
        Kind::Content,
        Kind::Ingest,
        Kind::Snapshot,
        Kind::SnapshotIntent,
    ];

    fn db_name(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Image => "images",
            Kind::Container => "containers",
            Kind::Lease => "leases",
            Kind::Content => "content",
            Kind::Ingest => "ingests",
            Kind::Snapshot => "snapshots",
            Kind::SnapshotIntent => "snapshot_intents",
        }
    }
}

pub struct Meta {
    lmdb: GrowingEnv,
    dbs: Vec<Database<Bytes, Bytes>>,
    resources: Database<Bytes, Unit>,
    _lock: RootLock,
}

/// `<namespace>\0<parts joined by \0>`.
pub fn key(namespace: &str, parts: &[&str]) -> Vec<u8> {
    let mut k = namespace.as_bytes().to_vec();
    for p in parts {
        k.push(0);
        k.extend_from_slice(p.as_bytes());
    }
    k
}

impl Meta {
    /// Opens (creating) the index in `dir`, taking `dir`'s lock.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_sized(dir, MAP_SIZE)
    }

    /// Opens with an initial map of `map_size` bytes (a larger existing file wins).
    pub fn open_sized(dir: &Path, map_size: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = RootLock::acquire(dir).map_err(StoreError::Lock)?;
        let lmdb = GrowingEnv::open(&lock, dir, map_size)?;
        let env = lmdb.env();
        let mut txn = env.write_txn()?;
        let mut dbs = Vec::new();
        for kind in Kind::ALL {
            dbs.push(env.create_database(&mut txn, Some(kind.db_name()))?);
        }
        let resources = env.create_database(&mut txn, Some("lease_resources"))?;
        txn.commit()?;
        env.force_sync()?;
        Ok(Meta {
            lmdb,
            dbs,
            resources,
            _lock: lock,
        })
    }

    fn db(&self, kind: Kind) -> Database<Bytes, Bytes> {
        self.dbs[Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind has a db")]
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&Reader) -> Result<T>) -> Result<T> {
        let _gate = self.lmdb.gate();
        let txn = self.lmdb.env().read_txn()?;
        f(&Reader {
            meta: self,
            txn: &txn,
        })
    }

    /// Runs `f` in a write transaction, committed and flushed if it returns `Ok`.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        self.lmdb.ensure_headroom()?;
        let _gate = self.lmdb.gate();
        let mut txn = self.lmdb.env().write_txn()?;
        let out = f(&mut Writer {
            meta: self,
            txn: &mut txn,
        })?;
        txn.commit()?;
        self.lmdb.env().force_sync()?;
        Ok(out)
    }
}

/// Reads shared by read and write transactions.
pub trait Read {
    fn meta(&self) -> &Meta;
    fn txn(&self) -> &RoTxn<'_, WithoutTls>;

    /// The record of `kind` at `key`.
    fn get<M: Message + Default>(&self, kind: Kind, key: &[u8]) -> Result<Option<M>> {
        match self.meta().db(kind).get(self.txn(), key)? {
            None => Ok(None),
            Some(bytes) => M::decode(bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{kind:?} record: {e}"))),
        }
    }

    /// Every record of `kind` in `namespace`, in key order, with its key (namespace and
    /// separator stripped).
    fn list<M: Message + Default>(&self, kind: Kind, namespace: &str) -> Result<Vec<(String, M)>> {
        let prefix = key(namespace, &[""]);
        let mut out = Vec::new();
        for item in self.meta().db(kind).prefix_iter(self.txn(), &prefix)? {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let m = M::decode(v).map_err(|e| StoreError::Corrupt(format!("{kind:?} {id}: {e}")))?;
            out.push((id, m));
        }
        Ok(out)
    }

    /// Whether `namespace` holds any object of `kind`.
    fn any(&self, kind: Kind, namespace: &str) -> Result<bool> {
        let prefix = key(namespace, &[""]);
        Ok(self
            .meta()
            .db(kind)
            .prefix_iter(self.txn(), &prefix)?
            .next()
            .transpose()?
            .is_some())
    }

    /// The namespaces with a record (of any namespaced kind).
    fn namespaces(&self) -> Result<Vec<String>> {
        let mut names = std::collections::BTreeSet::new();
        for kind in Kind::ALL {
            if !matches!(kind, Kind::Snapshot | Kind::SnapshotIntent) {
                names.extend(self.namespaces_of(kind)?);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The namespaces with a record of `kind`.
    fn namespaces_of(&self, kind: Kind) -> Result<std::collections::BTreeSet<String>> {
        let mut names = std::collections::BTreeSet::new();
        for item in self.meta().db(kind).iter(self.txn())? {
            let (k, _) = item?;
            let ns = k.split(|b| *b == 0).next().unwrap_or_default();
            names.insert(String::from_utf8_lossy(ns).into_owned());
        }
        Ok(names)
    }

    /// Whether lease `id` exists in `namespace`.
    fn lease_exists(&self, namespace: &str, id: &str) -> Result<bool> {
        Ok(self
            .meta()
            .db(Kind::Lease)
            .get(self.txn(), &key(namespace, &[id]))?
            .is_some())
    }

    /// The resources of lease `lease` in `namespace`: (type, id).
    fn resources(&self, namespace: &str, lease: &str) -> Result<Vec<(String, String)>> {
        let prefix = key(namespace, &[lease, ""]);
        let mut out = Vec::new();
        for item in self.meta().resources.prefix_iter(self.txn(), &prefix)? {
            let (k, ()) = item?;
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some((kind, id)) = rest.split_once('\0') {
                out.push((kind.to_string(), id.to_string()));
            }
        }
        Ok(out)
    }
}

pub struct Reader<'a> {
    meta: &'a Meta,
    txn: &'a RoTxn<'a, WithoutTls>,
}

impl Read for Reader<'_> {
    fn meta(&self) -> &Meta {
        self.meta
    }
    fn txn(&self) -> &RoTxn<'_, WithoutTls> {
        self.txn
    }
}

pub struct Writer<'a, 'e> {
    meta: &'a Meta,
    txn: &'a mut RwTxn<'e>,
}

impl Read for Writer<'_, '_> {
    fn meta(&self) -> &Meta {
        self.meta
    }
    fn txn(&self) -> &RoTxn<'_, WithoutTls> {
        self.txn
    }
}

impl Writer<'_, '_> {
    /// Stores `record` of `kind` at `key`.
    pub fn put<M: Message>(&mut self, kind: Kind, key: &[u8], record: &M) -> Result<()> {
        Ok(self
            .meta
            .db(kind)
            .put(self.txn, key, &record.encode_to_vec())?)
    }

    /// Deletes the record of `kind` at `key`; whether there was one.
    pub fn delete(&mut self, kind: Kind, key: &[u8]) -> Result<bool> {
        Ok(self.meta.db(kind).delete(self.txn, key)?)
    }

    /// Adds resource (`kind`, `id`) to lease `lease`.
    pub fn add_resource(
        &mut self,
        namespace: &str,
        lease: &str,
        kind: &str,
        id: &str,
    ) -> Result<()> {
        let k = key(namespace, &[lease, kind, id]);
        Ok(self.meta.resources.put(self.txn, &k, &())?)
    }

    /// Removes resource (`kind`, `id`) from lease `lease`.
    pub fn delete_resource(
        &mut self,
        namespace: &str,
        lease: &str,
        kind: &str,
        id: &str,
    ) -> Result<()> {
        let k = key(namespace, &[lease, kind, id]);
        self.meta.resources.delete(self.txn, &k)?;
        Ok(())
    }

    /// Removes every resource of lease `lease`.
    pub fn clear_resources(&mut self, namespace: &str, lease: &str) -> Result<()> {
        for (kind, id) in self.resources(namespace, lease)? {
            self.delete_resource(namespace, lease, &kind, &id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::services::leases::v1::Lease;

    /// 16 MiB of records into an index opened with a 1 MiB map: it grows instead of
    /// failing with a full map.
    #[test]
    fn the_map_grows_instead_of_filling_up() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open_sized(dir.path(), 1 << 20).unwrap();
        for i in 0..1024 {
            let lease = Lease {
                id: format!("l{i}"),
                labels: [("l".to_string(), "x".repeat(16 << 10))].into(),
                ..Default::default()
            };
            meta.write(|w| w.put(Kind::Lease, &key("ns", &[&lease.id]), &lease))
                .unwrap_or_else(|e| panic!("record {i}: {e}"));
        }
        let all = meta.read(|r| r.list::<Lease>(Kind::Lease, "ns")).unwrap();
        assert_eq!(all.len(), 1024);
    }
}
