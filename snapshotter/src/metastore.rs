//! The LMDB index of a snapshotter root.
//!
//! Databases (schema version 1):
//! - `snapshots`: key or name → JSON [`Record`];
//! - `children`: `len(parent) as u32 BE ‖ parent ‖ child` → (), the parent→child relation
//!   used to refuse removing a parent;
//! - `ids`: directory id → key or name, to recognise a snapshot from its mounts;
//! - `meta`: `version`, `next_id`.
//!
//! Every mutation is a job ([`MetaStore::write`]) run in a nested transaction of a batch:
//! its changes are kept if it returns `Ok` and dropped if it fails, and it returns once the
//! batch is committed and on disk.
//!
//! Group commit: a writer that finds no batch running leads one. It takes every job queued
//! so far (its own included), runs them one after another in one LMDB write transaction,
//! commits, flushes the file once and hands each job its result; writers arriving meanwhile
//! queue up, and the first of them is woken to lead the next batch (each writer is woken
//! once, for its result or to lead). One client pays what it paid before (a commit and a
//! flush); sixteen share them. A batch whose jobs all failed writes and flushes nothing. LMDB runs with `MDB_NOMETASYNC`: a commit flushes its data pages but
//! not the meta page that makes them current (the previous meta page and its pages stay
//! intact, so the file is consistent whenever it is cut off); the flush after the commit
//! makes the batch durable before anyone is told it succeeded.
//!
//! The map grows: when more than half of it is in use, it is doubled before the next batch,
//! while no transaction of this process is open (the `gate`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64, Unit};
use heed::{Database, RoTxn, RwTxn};
use mountutil::lock::RootLock;

use crate::lmdb::GrowingEnv;
use crate::{Error, Info, Kind, Labels, Result, Usage};

const SCHEMA_VERSION: u64 = 1;
/// The map's initial size (address space, not disk: the file grows as pages are used).
const MAP_SIZE: usize = 1 << 30;

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
    lmdb: GrowingEnv,
    snapshots: Database<Str, Bytes>,
    children: Database<Bytes, Unit>,
    ids: Database<U64<BigEndian>, Str>,
    meta: Database<Str, U64<BigEndian>>,
    writers: Mutex<Writers>,
}

/// Jobs waiting for the next batch, and whether a writer is leading one.
#[derive(Default)]
struct Writers {
    queue: Vec<Box<dyn Job>>,
    leading: bool,
}

/// A mutation waiting in a batch, type-erased.
trait Job: Send {
    /// Runs the mutation in its own nested transaction of the batch's `txn`; whether it
    /// succeeded (its changes are in the batch).
    fn run(&mut self, store: &MetaStore, txn: &mut RwTxn) -> bool;
    /// Delivers the result, given how the batch ended, and wakes the job's writer.
    fn finish(self: Box<Self>, batch: std::result::Result<(), &Error>);
    /// Wakes the job's writer to lead the next batch.
    fn call_to_lead(&self);
}

/// Where a writer waits: for its result, or to be called to lead.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    wake: Condvar,
}

struct SlotState<T> {
    result: Option<Result<T>>,
    lead: bool,
}

impl<T> Slot<T> {
    fn new() -> Self {
        Slot {
            state: Mutex::new(SlotState {
                result: None,
                lead: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Waits until the result is in (`Some`) or this writer is to lead (`None`).
    fn wait(&self) -> Option<Result<T>> {
        let mut state = lock(&self.state);
        loop {
            if let Some(result) = state.result.take() {
                return Some(result);
            }
            if std::mem::take(&mut state.lead) {
                return None;
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct Mutation<T, F> {
    f: Option<F>,
    result: Option<Result<T>>,
    slot: Arc<Slot<T>>,
}

impl<T, F> Job for Mutation<T, F>
where
    T: Send + 'static,
    F: FnOnce(&MetaStore, &mut RwTxn) -> Result<T> + Send + 'static,
{
    fn run(&mut self, store: &MetaStore, txn: &mut RwTxn) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        // A panicking job fails alone: its nested transaction is dropped (aborted) while
        // unwinding, and the batch goes on.
        let ran = catch_unwind(AssertUnwindSafe(|| -> Result<T> {
            let mut nested = store.lmdb.env().nested_write_txn(txn)?;
            let out = f(store, &mut nested)?;
            nested.commit()?;
            Ok(out)
        }));
        self.result = Some(ran.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Panicked(what))
        }));
        matches!(self.result, Some(Ok(_)))
    }

    fn finish(self: Box<Self>, batch: std::result::Result<(), &Error>) {
        let result = match (self.result, batch) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(e.replica()),
            (None, Ok(())) => Err(Error::Panicked("job never ran".into())),
        };
        lock(&self.slot.state).result = Some(result);
        self.slot.wake.notify_one();
    }

    fn call_to_lead(&self) {
        lock(&self.slot.state).lead = true;
        self.slot.wake.notify_one();
    }
}

/// Locks `m`, also after a panic elsewhere (what it guards stays consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

impl MetaStore {
    pub fn open(lock: &RootLock, dir: &Path) -> Result<Self> {
        Self::open_sized(lock, dir, MAP_SIZE)
    }

    /// Opens with an initial map of `map_size` bytes (a larger existing file wins).
    pub fn open_sized(lock: &RootLock, dir: &Path, map_size: usize) -> Result<Self> {
        let lmdb = GrowingEnv::open(lock, dir, map_size)?;
        let env = lmdb.env();
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
        env.force_sync()?;
        Ok(MetaStore {
            lmdb,
            snapshots,
            children,
            ids,
            meta,
            writers: Mutex::new(Writers::default()),
        })
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&RoTxn) -> Result<T>) -> Result<T> {
        let _gate = self.lmdb.gate();
        let txn = self.lmdb.env().read_txn()?;
        f(&txn)
    }

    /// Runs `f` as one mutation (see the module doc): its changes are committed if it
    /// returns `Ok`, dropped if not, and on disk when this returns `Ok`. `f` may run on
    /// another writer's thread, in a transaction with other mutations before and after it.
    pub fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&MetaStore, &mut RwTxn) -> Result<T> + Send + 'static,
    {
        let slot = Arc::new(Slot::new());
        let lead = {
            let mut writers = lock(&self.writers);
            writers.queue.push(Box::new(Mutation {
                f: Some(f),
                result: None,
                slot: Arc::clone(&slot),
            }));
            !std::mem::replace(&mut writers.leading, true)
        };
        if !lead && let Some(result) = slot.wait() {
            return result;
        }
        // Leading: this writer's job is in the queue, so in the batch.
        let jobs = std::mem::take(&mut lock(&self.writers).queue);
        self.run_batch(jobs);
        {
            let mut writers = lock(&self.writers);
            match writers.queue.first() {
                // Leadership passes to a writer already waiting: no one else wakes.
                Some(next) => next.call_to_lead(),
                None => writers.leading = false,
            }
        }
        slot.wait()
            .unwrap_or_else(|| Err(Error::Panicked("led without a result".into())))
    }

    /// Runs `jobs` in one transaction, commits and flushes it, and delivers the results.
    fn run_batch(&self, mut jobs: Vec<Box<dyn Job>>) {
        let outcome = (|| -> Result<()> {
            self.lmdb.ensure_headroom()?;
            let _gate = self.lmdb.gate();
            let mut txn = self.lmdb.env().write_txn()?;
            let mut wrote = false;
            for job in &mut jobs {
                wrote |= job.run(self, &mut txn);
            }
            if wrote {
                txn.commit()?;
                self.lmdb.env().force_sync()?;
            }
            Ok(())
        })();
        for job in jobs {
            job.finish(outcome.as_ref().map(drop));
        }
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

    /// Every directory id in the index.
    pub fn ids(&self, txn: &RoTxn) -> Result<std::collections::HashSet<u64>> {
        let mut out = std::collections::HashSet::new();
        for item in self.ids.iter(txn)? {
            out.insert(item?.0);
        }
        Ok(out)
    }

    /// Every directory id in the index as last committed, for a mutation that must not act
    /// on what its own batch has not committed yet. Only for use inside a [`Self::write`]
    /// job: the batch holds the `gate`, which this therefore does not take again.
    pub fn committed_ids(&self) -> Result<std::collections::HashSet<u64>> {
        let txn = self.lmdb.env().read_txn()?;
        self.ids(&txn)
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

    /// The keys and names of the snapshots whose parent is `parent` (not empty).
    pub fn children(&self, txn: &RoTxn, parent: &str) -> Result<Vec<String>> {
        let prefix = child_prefix(parent);
        let mut out = Vec::new();
        for item in self.children.prefix_iter(txn, &prefix)? {
            let (key, ()) = item?;
            let child =
                std::str::from_utf8(&key[prefix.len()..]).map_err(|e| Error::CorruptRecord {
                    key: parent.to_string(),
                    source: serde::de::Error::custom(format!("child name: {e}")),
                })?;
            out.push(child.to_string());
        }
        Ok(out)
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
            .write(|store, txn| Ok(store.meta.put(txn, "version", &(SCHEMA_VERSION + 1))?))
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

    /// A record of `n` bytes of labels.
    fn record(id: u64, n: usize) -> Record {
        Record {
            id,
            kind: Kind::Committed,
            parent: String::new(),
            created: (0, 0),
            updated: (0, 0),
            labels: [("l".to_string(), "x".repeat(n))].into(),
            usage: None,
        }
    }

    #[test]
    fn the_map_grows_instead_of_filling_up() {
        let root = std::env::temp_dir().join(format!("strata-grow-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let lock = RootLock::acquire(&root).unwrap();
        let store =
            Arc::new(MetaStore::open_sized(&lock, &root.join("metadata"), 1 << 20).unwrap());
        // 16 MiB of records into a 1 MiB map, from several threads at once.
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..256u64 {
                        let key = format!("k{t}-{i}");
                        store
                            .write(move |store, txn| {
                                store.put(txn, &key, &record(t * 1000 + i, 16 << 10))
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            store.lmdb.env().info().map_size >= 16 << 20,
            "{}",
            store.lmdb.env().info().map_size
        );
        let all = store.read(|txn| store.all(txn)).unwrap();
        assert_eq!(all.len(), 1024);
        drop(store);
        drop(lock);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failing_or_panicking_mutation_fails_alone() {
        let root = std::env::temp_dir().join(format!("strata-batch-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let lock = RootLock::acquire(&root).unwrap();
        let store = Arc::new(MetaStore::open(&lock, &root.join("metadata")).unwrap());
        let threads: Vec<_> = (0..24u64)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    store.write(move |store, txn| {
                        store.put(txn, &format!("k{i}"), &record(i, 10))?;
                        match i % 3 {
                            0 => Ok(()),
                            1 => Err(Error::InvalidArgument("no".into())),
                            _ => panic!("job {i}"),
                        }
                    })
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            let result = t.join().unwrap();
            match i % 3 {
                0 => assert!(result.is_ok(), "{i}: {result:?}"),
                1 => assert!(matches!(result, Err(Error::InvalidArgument(_))), "{i}"),
                _ => assert!(matches!(result, Err(Error::Panicked(_))), "{i}"),
            }
        }
        let keys: Vec<String> = store
            .read(|txn| store.all(txn))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut want: Vec<String> = (0..24)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("k{i}"))
            .collect();
        want.sort();
        assert_eq!(keys, want, "only the successful mutations are kept");
        // Nothing is left locked or poisoned by the panics.
        store
            .write(|store, txn| store.put(txn, "after", &record(99, 1)))
            .unwrap();
        drop(store);
        drop(lock);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn child_keys_do_not_collide_across_parents() {
        assert!(!child_key("ab", "c").starts_with(&child_prefix("a")));
        assert!(child_key("a", "bc").starts_with(&child_prefix("a")));
    }
}
