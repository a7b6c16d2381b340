//! The LMDB index of a snapshotter root.
//!
//! Databases (schema version 1):
//! - `snapshots`: key or name → JSON [`Record`];
//! - `children`: `len(parent) as u32 BE ‖ parent ‖ child` → (), the parent→child relation
//!   used to refuse removing a parent;
//! - `ids`: directory id → key or name, to recognise a snapshot from its mounts;
//! - `meta`: `version`, `next_id`.
//!
//! Every mutation is one write transaction ([`MetaStore::write`]): committed on `Ok`, aborted
//! on `Err`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64, Unit};
use heed::{Database, Env, RoTxn, RwTxn, WithoutTls};
use mountutil::lock::RootLock;

use crate::{Error, Info, Kind, Labels, Result, Usage};

const SCHEMA_VERSION: u64 = 1;
const MAP_SIZE: usize = 4 << 30;

/// A stored snapshot, as JSON with fixed field names (schema version 1): renaming a Rust
/// field, type or variant must not change what is on disk, so every name is spelled out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    /// Directory id: `<root>/snapshots/<id>`.
    #[serde(rename = "id")]
    pub id: u64,
    #[serde(rename = "kind")]
    pub kind: Kind,
    #[serde(rename = "parent")]
    pub parent: String,
    /// Seconds and nanoseconds since the epoch.
    #[serde(rename = "created")]
    pub created: (i64, u32),
    #[serde(rename = "updated")]
    pub updated: (i64, u32),
    #[serde(rename = "labels")]
    pub labels: Labels,
    /// Measured at commit; `None` for active snapshots and views.
    #[serde(rename = "usage")]
    pub usage: Option<Usage>,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            created: to_time(self.created),
            updated: to_time(self.updated),
            labels: self.labels.clone(),
        }
    }
}

/// Seconds and nanoseconds since the epoch, exactly.
pub(crate) fn from_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

fn to_time((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

pub(crate) struct MetaStore {
    env: Env<WithoutTls>,
    snapshots: Database<Str, Bytes>,
    children: Database<Bytes, Unit>,
    ids: Database<U64<BigEndian>, Str>,
    meta: Database<Str, U64<BigEndian>>,
}

fn child_key(parent: &str, child: &str) -> Vec<u8> {
    let mut k = child_prefix(parent);
    k.extend_from_slice(child.as_bytes());
    k
}

fn child_prefix(parent: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + parent.len());
    k.extend_from_slice(&(parent.len() as u32).to_be_bytes());
    k.extend_from_slice(parent.as_bytes());
    k
}

/// Opens (creating if needed) the LMDB environment in `dir`, inside the root `_lock` holds.
/// The lock is the argument's point: it is what makes mapping the file sound.
#[allow(unsafe_code)]
fn open_env(_lock: &RootLock, dir: &Path) -> Result<Env<WithoutTls>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let mut options = heed::EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(MAP_SIZE).max_dbs(8);
    // SAFETY: LMDB maps the file into memory, which is unsound only if the file is modified
    // behind its back. This process holds the root's exclusive flock (`_lock`), so no other
    // Strata process opens this environment, and within the process heed allows repeated
    // opens of one path.
    Ok(unsafe { options.open(dir) }?)
}

impl MetaStore {
    pub fn open(lock: &RootLock, dir: &Path) -> Result<Self> {
        let env = open_env(lock, dir)?;
        let mut txn = env.write_txn()?;
        let snapshots = env.create_database(&mut txn, Some("snapshots"))?;
        let children = env.create_database(&mut txn, Some("children"))?;
        let ids = env.create_database(&mut txn, Some("ids"))?;
        let meta: Database<Str, U64<BigEndian>> = env.create_database(&mut txn, Some("meta"))?;
        match meta.get(&txn, "version")? {
            None => meta.put(&mut txn, "version", &SCHEMA_VERSION)?,
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(Error::FailedPrecondition(format!(
                    "index schema version {v} is not supported (want {SCHEMA_VERSION})"
                )));
            }
        }
        txn.commit()?;
        Ok(MetaStore {
            env,
            snapshots,
            children,
            ids,
            meta,
        })
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&RoTxn) -> Result<T>) -> Result<T> {
        let txn = self.env.read_txn()?;
        f(&txn)
    }

    /// Runs `f` in a write transaction, committed if `f` succeeds and aborted otherwise.
    pub fn write<T>(&self, f: impl FnOnce(&mut RwTxn) -> Result<T>) -> Result<T> {
        let mut txn = self.env.write_txn()?;
        let out = f(&mut txn)?;
        txn.commit()?;
        Ok(out)
    }

    pub fn get(&self, txn: &RoTxn, key: &str) -> Result<Option<Record>> {
        match self.snapshots.get(txn, key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(bytes)
                    .map(Some)
                    .map_err(|source| Error::CorruptRecord {
                        key: key.to_string(),
                        source,
                    })
            }
        }
    }

    /// The record of `key`, or NotFound.
    pub fn require(&self, txn: &RoTxn, key: &str) -> Result<Record> {
        self.get(txn, key)?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key}")))
    }

    pub fn put(&self, txn: &mut RwTxn, key: &str, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(record).expect("records always serialize");
        self.ids.put(txn, &record.id, key)?;
        Ok(self.snapshots.put(txn, key, &bytes)?)
    }

    pub fn delete(&self, txn: &mut RwTxn, key: &str, record: &Record) -> Result<()> {
        self.ids.delete(txn, &record.id)?;
        self.snapshots.delete(txn, key)?;
        Ok(())
    }

    /// The key or name of the snapshot with directory id `id`.
    pub fn key_of(&self, txn: &RoTxn, id: u64) -> Result<Option<String>> {
        Ok(self.ids.get(txn, &id)?.map(str::to_string))
    }

    pub fn add_child(&self, txn: &mut RwTxn, parent: &str, child: &str) -> Result<()> {
        if !parent.is_empty() {
            self.children.put(txn, &child_key(parent, child), &())?;
        }
        Ok(())
    }

    pub fn remove_child(&self, txn: &mut RwTxn, parent: &str, child: &str) -> Result<()> {
        if !parent.is_empty() {
            self.children.delete(txn, &child_key(parent, child))?;
        }
        Ok(())
    }

    pub fn has_children(&self, txn: &RoTxn, parent: &str) -> Result<bool> {
        let prefix = child_prefix(parent);
        Ok(self
            .children
            .prefix_iter(txn, &prefix)?
            .next()
            .transpose()?
            .is_some())
    }

    /// Allocates the next directory id.
    pub fn next_id(&self, txn: &mut RwTxn) -> Result<u64> {
        let id = self.meta.get(txn, "next_id")?.unwrap_or(1);
        self.meta.put(txn, "next_id", &(id + 1))?;
        Ok(id)
    }

    /// Every (key, record), in key order.
    pub fn all(&self, txn: &RoTxn) -> Result<Vec<(String, Record)>> {
        let mut out = Vec::new();
        for item in self.snapshots.iter(txn)? {
            let (key, bytes) = item?;
            let record = serde_json::from_slice(bytes).map_err(|source| Error::CorruptRecord {
                key: key.to_string(),
                source,
            })?;
            out.push((key.to_string(), record));
        }
        Ok(out)
    }

    /// The ids of the chain from `parent` (nearest first) down to the base layer.
    pub fn parent_ids(&self, txn: &RoTxn, parent: &str) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let record = self.get(txn, &next)?.ok_or_else(|| Error::CorruptRecord {
                key: next.clone(),
                source: serde::de::Error::custom("parent chain is broken"),
            })?;
            ids.push(record.id);
            next = record.parent;
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_with_nanoseconds() {
        for t in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 1),
            UNIX_EPOCH,
        ] {
            assert_eq!(to_time(from_time(t)), t);
        }
    }

    #[test]
    fn records_encode_as_schema_1_json() {
        let record = Record {
            id: 7,
            kind: Kind::Committed,
            parent: "p".into(),
            created: (1, 2),
            updated: (3, 4),
            labels: [("k".to_string(), "v".to_string())].into(),
            usage: Some(Usage {
                size: 4096,
                inodes: 2,
            }),
        };
        let json = r#"{"id":7,"kind":"Committed","parent":"p","created":[1,2],"updated":[3,4],"labels":{"k":"v"},"usage":{"size":4096,"inodes":2}}"#;
        assert_eq!(serde_json::to_string(&record).unwrap(), json);
        let back: Record = serde_json::from_str(json).unwrap();
        assert_eq!(
            (back.id, back.kind, back.usage),
            (7, Kind::Committed, record.usage)
        );
    }

    #[test]
    fn an_index_of_a_newer_schema_is_refused() {
        let root = std::env::temp_dir().join(format!("strata-meta-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let lock = RootLock::acquire(&root).unwrap();
        let dir = root.join("metadata");
        let store = MetaStore::open(&lock, &dir).unwrap();
        store
            .write(|txn| Ok(store.meta.put(txn, "version", &(SCHEMA_VERSION + 1))?))
            .unwrap();
        drop(store);
        let err = MetaStore::open(&lock, &dir).err().expect("refused");
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("version 2")),
            "{err}"
        );
        drop(lock);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn child_keys_do_not_collide_across_parents() {
        assert!(!child_key("ab", "c").starts_with(&child_prefix("a")));
        assert!(child_key("a", "bc").starts_with(&child_prefix("a")));
    }
}
