//! [`DirSnapshotter`]: the snapshot lifecycle shared by the native and overlay snapshotters.
//!
//! Layout: `<root>/metadata/` (LMDB), `<root>/snapshots/<id>/fs` (and `work` for overlay
//! active snapshots), `<root>/lock`. A new snapshot's directory is built as
//! `snapshots/new-<n>` and renamed to `snapshots/<id>` inside the write transaction that adds
//! its index entry; removal deletes the index entry first. A crash therefore leaves at worst
//! an orphan directory, which [`Snapshotter::cleanup`] (also run at open) renames to
//! `rm-<name>` and deletes.
//!
//! One file, past the usual size, because it is one idea: every operation follows the same
//! ordering (a directory built aside, renamed in the transaction that records it; records
//! removed before directories) through the same few helpers, and the invariant is read
//! whole here rather than across files.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use heed::{RoTxn, RwTxn};
use mountutil::idmap::IdMapping;
use mountutil::lock::RootLock;

use crate::copy::copy_tree;
use crate::metastore::{MetaStore, Record, from_time};
use crate::quota::{self, Quotas};
use crate::reuse::{self, LayerClaim};
use crate::userns::{self, IdmappedTrees, REMAPPED_COPY};
use crate::{
    Error, Filters, Info, Kind, Labels, Mount, OwnedSnapshot, Result, SNAPSHOT_REF, Snapshotter,
    Usage, WhiteoutMode, disk_usage,
};

/// What differs between snapshotters that keep a directory per snapshot.
pub trait Driver: Send + Sync + 'static {
    /// Fills `dir` (a fresh, empty directory) for a new snapshot of `kind` whose parent
    /// chain's `fs` directories are `parents`, nearest first. It must create `dir/fs`.
    fn populate(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Result<()>;

    /// The mounts through which an active snapshot or view in `dir` is used.
    fn mounts(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Vec<Mount>;

    /// Prepares a snapshot created without a parent to be committed onto `parents`.
    fn rebase(&self, dir: &SnapshotDir, parents: &[PathBuf]) -> Result<()>;

    /// How layers are written into a snapshot's `fs` directory.
    fn whiteouts(&self) -> WhiteoutMode;

    /// Whether [`rebase`](Driver::rebase) costs nothing (see
    /// [`Snapshotter::parallel_unpack`]).
    fn rebase_is_free(&self) -> bool;

    /// Labels the driver adds to every Info it reports (never stored).
    fn info_labels(&self, _dir: &SnapshotDir) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A snapshot's directory, `<root>/snapshots/<id>` (or its temporary name while built).
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    path: PathBuf,
}

impl SnapshotDir {
    /// `<snapshots>/<id>`.
    fn of(snapshots: &Path, id: u64) -> Self {
        SnapshotDir {
            path: snapshots.join(id.to_string()),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fs`: the snapshot's contents (the overlay upper directory).
    pub fn fs(&self) -> PathBuf {
        self.path.join("fs")
    }

    /// `work`: overlayfs's work directory.
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }
}

/// Options common to directory snapshotters.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Delete a removed snapshot's directory at once instead of at the next cleanup.
    pub sync_remove: bool,
    /// Size limit of active snapshots that ask for none (layer extractions excepted),
    /// enforced with project quotas; `None` or 0 for none.
    pub max_size: Option<u64>,
    /// Give user-namespaced snapshots shifted copies of their parents even where layers
    /// could be idmapped.
    pub shifted_copies: bool,
}

/// Space kept in `<root>/reserve` so that on a full filesystem a Remove can still record
/// itself in the index (LMDB needs room to write) and so free the space; released when an
/// index write of a removal finds the filesystem full, made again by Cleanup.
const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: usize = 2 << 20;

/// A snapshotter keeping one directory per snapshot under a root, indexed in LMDB.
pub struct DirSnapshotter<D: Driver> {
    root: PathBuf,
    store: MetaStore,
    driver: D,
    options: Options,
    /// Idmapped views of the layers for user-namespaced snapshots.
    idmapped: IdmappedTrees,
    /// Size limits of active snapshots.
    quotas: Quotas,
    /// Temporary directories of creations in flight, which cleanup must leave alone.
    building: Arc<Mutex<HashSet<String>>>,
    /// Serialises a removed snapshot's rename to `rm-<id>` against cleanup's renames.
    /// (Creations rename into `snapshots/` inside index mutations, which cleanup's scan is
    /// one of, so they never race it.)
    layout: Arc<Mutex<()>>,
    temp_seq: AtomicU64,
    _lock: RootLock,
}

fn now() -> (i64, u32) {
    from_time(SystemTime::now())
}

/// Labels as stored: empty values mean "absent".
fn clean_labels(mut labels: Labels) -> Labels {
    labels.retain(|_, v| !v.is_empty());
    labels
}

/// Locks `m` even if a thread panicked while holding it: what these locks guard (the
/// directory layout, the set of directories being built) stays consistent at every step, so
/// one panicking request must not make every later one panic too.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<D: Driver> DirSnapshotter<D> {
    /// Opens (creating if needed) the snapshotter at `root`, taking its exclusive lock and
    /// reclaiming orphan directories left by a crash.
    pub fn open(root: &Path, driver: D, options: Options) -> Result<Self> {
        fs::create_dir_all(root.join("snapshots"))
            .map_err(|e| Error::io("create", root.join("snapshots"), e))?;
        let lock = RootLock::acquire(root)?;
        let store = MetaStore::open(&lock, &root.join("metadata"))?;
        let snapshotter = DirSnapshotter {
            root: root.to_path_buf(),
            store,
            driver,
            idmapped: IdmappedTrees::new(root, !options.shifted_copies),
            quotas: Quotas::new(&root.join("snapshots"), options.max_size)?,
            options,
            building: Arc::new(Mutex::new(HashSet::new())),
            layout: Arc::new(Mutex::new(())),
            temp_seq: AtomicU64::new(0),
            _lock: lock,
        };
        snapshotter.cleanup()?;
        Ok(snapshotter)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Keeps [`RESERVE_BYTES`] of the filesystem in `<root>/reserve` when there is room.
    fn ensure_reserve(&self) {
        let path = self.root.join(RESERVE_FILE);
        if path.exists() {
            return;
        }
        let tmp = self.root.join(format!("{RESERVE_FILE}.tmp"));
        let written =
            fs::write(&tmp, vec![0u8; RESERVE_BYTES]).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(error = %e, "no room for the index reserve yet");
        }
    }

    /// Frees the reserve so an index write can go through on a full filesystem; whether
    /// there was one.
    fn release_reserve(&self) -> bool {
        let released = fs::remove_file(self.root.join(RESERVE_FILE)).is_ok();
        if released {
            tracing::warn!("filesystem full: released the index reserve for a removal");
        }
        released
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The directory of snapshot id `id`.
    pub fn dir(&self, id: u64) -> SnapshotDir {
        SnapshotDir::of(&self.snapshots_dir(), id)
    }

    /// The `fs` directories of the parent chain `parent_ids` as `mapping` (if any) shows
    /// them: through its idmapped tree, where there is one.
    fn layer_dirs(&self, parent_ids: &[u64], mapping: Option<&IdMapping>) -> Vec<PathBuf> {
        let base = mapping
            .and_then(|m| self.idmapped.tree(m))
            .unwrap_or_else(|| self.snapshots_dir());
        parent_ids
            .iter()
            .map(|id| SnapshotDir::of(&base, *id).fs())
            .collect()
    }

    /// The mounts of snapshot `dir` of `kind` on `parents` (its [`layer_dirs`](Self::layer_dirs)).
    fn mounts_of(&self, dir: &SnapshotDir, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        if kind == Kind::View && dir.path().join(REMAPPED_COPY).exists() {
            return vec![Mount::bind(&dir.fs(), true)];
        }
        self.driver.mounts(dir, kind, parents)
    }

    /// Fills new snapshot `dir` through the driver, on `parents` (its
    /// [`layer_dirs`](Self::layer_dirs)); for a user-namespaced snapshot, with its parents seen
    /// through the idmapped tree, or where they are not, as a copy with owners shifted.
    fn populate(
        &self,
        key: &str,
        dir: &SnapshotDir,
        kind: Kind,
        parents: &[PathBuf],
        mapping: Option<&IdMapping>,
    ) -> Result<()> {
        self.driver.populate(dir, kind, parents)?;
        let Some(mapping) = mapping else {
            return Ok(());
        };
        let fs = dir.fs();
        let idmapped = parents.is_empty() || !parents[0].starts_with(self.snapshots_dir());
        if idmapped {
            tracing::info!(key, %mapping, "user-namespaced snapshot: idmapped layers");
            let (uid, gid) = mapping.to_host(0, 0);
            return std::os::unix::fs::lchown(&fs, uid, gid)
                .map_err(|e| Error::io("chown", &fs, e));
        }
        tracing::warn!(
            key,
            %mapping,
            "user-namespaced snapshot: shifted copy of its parents (idmapped layers off or unsupported here)"
        );
        let copied = fs::read_dir(&fs)
            .map_err(|e| Error::io("read", &fs, e))?
            .next()
            .is_some();
        if !copied {
            let view = self.driver.mounts(dir, Kind::View, parents);
            mountutil::mount::with_temp_mount(&view, dir.path(), |merged| copy_tree(merged, &fs))??;
        }
        userns::shift_owners(&fs, mapping)?;
        let marker = dir.path().join(REMAPPED_COPY);
        fs::write(&marker, mapping.to_string()).map_err(|e| Error::io("create", &marker, e))
    }

    /// The directory of an active snapshot or view, with the kind: lets the daemon recognise
    /// mounts that are its own.
    pub fn lookup_dir(&self, key: &str) -> Result<(SnapshotDir, Kind, Vec<PathBuf>)> {
        self.store.read(|txn| {
            let rec = self.store.require(txn, key)?;
            let parents = self.parent_dirs(txn, &rec.parent)?;
            Ok((self.dir(rec.id), rec.kind, parents))
        })
    }

    fn parent_dirs(&self, txn: &RoTxn, parent: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .store
            .parent_ids(txn, parent)?
            .into_iter()
            .map(|id| self.dir(id).fs())
            .collect())
    }

    fn info(&self, name: &str, rec: &Record) -> Info {
        let mut info = rec.info(name);
        info.labels
            .extend(self.driver.info_labels(&self.dir(rec.id)));
        info
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let parent_ids = self.store.read(|txn| {
            let parent_ids = check_new(&self.store, txn, key, parent)?;
            if let Some(claim) = LayerClaim::of(&labels)
                && let Some(committed) = reuse::committed_layer(&self.store, txn, &claim, parent)?
            {
                tracing::info!(
                    key,
                    parent,
                    committed,
                    "layer already committed; not creating"
                );
                return Err(Error::LayerCommitted {
                    chain: labels[SNAPSHOT_REF].clone(),
                    parent: parent.to_string(),
                    name: committed,
                });
            }
            Ok(parent_ids)
        })?;
        let mapping = userns::mapping_of(&labels)?;
        let limit = self.quotas.limit_for(key, kind, &labels)?;
        let _pin = mapping.as_ref().map(|m| self.idmapped.pin(m));
        let temp = self.temp_dir()?;
        // A limited snapshot's id is taken now: it is the project id everything created in
        // its directory must carry from the start.
        let reserved_id = match limit {
            Some(limit) => {
                let id = self.store.write(|store, txn| store.next_id(txn))?;
                self.quotas.apply(temp.dir.path(), id, limit)?;
                Some(id)
            }
            None => None,
        };
        let parents = self.layer_dirs(&parent_ids, mapping.as_ref());
        let populated = self.populate(key, &temp.dir, kind, &parents, mapping.as_ref());
        if let Err(e) = populated {
            // A parent removed while it was being copied is the Remove winning the race, as
            // if it had come first: NotFound, not the copy's I/O error.
            self.store
                .read(|txn| check_unchanged(&self.store, txn, key, parent, &parent_ids))?;
            return Err(e);
        }

        let time = now();
        let mut record = Record {
            id: 0,
            kind,
            parent: parent.to_string(),
            created: time,
            updated: time,
            labels: clean_labels(labels),
            usage: None,
        };
        let placed: Arc<Mutex<Option<(u64, SnapshotDir)>>> = Arc::default();
        let result = self.store.write({
            let parent_ids = parent_ids.clone();
            let (key, parent, temp) = (key.to_string(), parent.to_string(), temp.dir.clone());
            let (snapshots, placed) = (self.snapshots_dir(), Arc::clone(&placed));
            move |store, txn| {
                check_unchanged(store, txn, &key, &parent, &parent_ids)?;
                record.id = match reserved_id {
                    Some(id) => id,
                    None => store.next_id(txn)?,
                };
                store.put(txn, &key, &record)?;
                store.add_child(txn, &parent, &key)?;
                let dir = SnapshotDir::of(&snapshots, record.id);
                if dir.path().exists() {
                    // An id not yet in the index: a crash left this directory behind.
                    remove_tree(dir.path())?;
                }
                fs::rename(temp.path(), dir.path())
                    .map_err(|e| Error::io("rename", dir.path(), e))?;
                *lock(&placed) = Some((record.id, dir.clone()));
                Ok(dir)
            }
        });
        match result {
            Ok(dir) => Ok(self.mounts_of(&dir, kind, &parents)),
            Err(e) => {
                // Placed but not indexed (the batch failed): take the directory back. If the
                // index has it (only the flush failed), it stays, for Remove to reclaim.
                let placed = lock(&placed).take();
                if let Some((id, dir)) = placed
                    && matches!(self.store.read(|txn| self.store.key_of(txn, id)), Ok(None))
                {
                    let _ = remove_tree(dir.path());
                }
                Err(e)
            }
        }
    }

    fn temp_dir(&self) -> Result<TempDir<'_>> {
        let name = format!("new-{}", self.temp_seq.fetch_add(1, Ordering::Relaxed));
        lock(&self.building).insert(name.clone());
        let temp = TempDir {
            dir: SnapshotDir {
                path: self.snapshots_dir().join(&name),
            },
            name,
            owner: &self.building,
        };
        if temp.dir.path().exists() {
            remove_tree(temp.dir.path())?;
        }
        fs::create_dir(temp.dir.path()).map_err(|e| Error::io("create", temp.dir.path(), e))?;
        Ok(temp)
    }

    /// `result` of work on active snapshot `key`'s directory (record `id`) done outside the
    /// index. If it failed because a Remove (and a Cleanup) took the directory from under it,
    /// the error is the Remove's winning the race, NotFound, as if it had come first.
    fn unless_removed<T>(&self, key: &str, id: u64, result: Result<T>) -> Result<T> {
        let Err(e) = result else { return result };
        match self.store.read(|txn| self.store.get(txn, key))? {
            Some(rec) if rec.id == id => Err(e),
            _ => Err(Error::NotFound(format!("snapshot {key}"))),
        }
    }

    /// Measures committed snapshot `key` (id `id`) and keeps the result in its record: a
    /// committed tree no longer changes, so it is walked once, and only if asked.
    fn measure_committed(&self, key: &str, id: u64) -> Result<Usage> {
        let usage = self.unless_removed(key, id, disk_usage(&self.dir(id).fs()))?;
        let key = key.to_string();
        self.store
            .write(move |store, txn| match store.get(txn, &key)? {
                Some(mut rec) if rec.id == id && rec.usage.is_none() => {
                    rec.usage = Some(usage);
                    store.put(txn, &key, &rec)
                }
                _ => Ok(()),
            })?;
        Ok(usage)
    }

    /// Deletes a directory that has left the index: renamed out of the way first, so a crash
    /// mid-delete leaves an `rm-` orphan rather than a half-deleted snapshot id.
    fn discard_dir(&self, name: &str) -> Result<()> {
        let from = self.snapshots_dir().join(name);
        let to = self.snapshots_dir().join(format!("rm-{name}"));
        {
            let _layout = lock(&self.layout);
            if !from.exists() {
                return Ok(());
            }
            fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))?;
        }
        remove_tree(&to)
    }
}

/// A directory a creation is building; removed on drop unless renamed into place.
struct TempDir<'a> {
    dir: SnapshotDir,
    name: String,
    owner: &'a Mutex<HashSet<String>>,
}

impl Drop for TempDir<'_> {
    fn drop(&mut self) {
        if self.dir.path().exists() {
            let _ = remove_tree(self.dir.path());
        }
        lock(self.owner).remove(&self.name);
    }
}

/// Checks that `key` is free and `parent` (if any) is a committed snapshot; the parent's
/// chain of ids.
fn check_new(store: &MetaStore, txn: &RoTxn, key: &str, parent: &str) -> Result<Vec<u64>> {
    if store.get(txn, key)?.is_some() {
        return Err(Error::AlreadyExists(format!("snapshot {key}")));
    }
    if parent.is_empty() {
        return Ok(Vec::new());
    }
    match store.get(txn, parent)? {
        None => Err(Error::NotFound(format!("parent snapshot {parent}"))),
        Some(p) if p.kind != Kind::Committed => Err(Error::InvalidArgument(format!(
            "parent {parent} is not a committed snapshot"
        ))),
        Some(_) => store.parent_ids(txn, parent),
    }
}

/// [`check_new`] again after the slow part of a creation: `key` still free, and `parent`
/// still committed with the chain `parent_ids` found before.
fn check_unchanged(
    store: &MetaStore,
    txn: &RoTxn,
    key: &str,
    parent: &str,
    parent_ids: &[u64],
) -> Result<()> {
    if check_new(store, txn, key, parent)? != parent_ids {
        return Err(Error::FailedPrecondition(format!(
            "parent {parent} changed while {key} was being created"
        )));
    }
    Ok(())
}

/// Checks that active snapshot `key` can be committed as `name` (onto `parent`, if given and
/// not already its parent); its record and, for a rebase, the new parent chain.
fn check_commit(
    store: &MetaStore,
    txn: &RoTxn,
    key: &str,
    name: &str,
    parent: &str,
) -> Result<(Record, Option<Vec<u64>>)> {
    let rec = store.require(txn, key)?;
    if rec.kind != Kind::Active {
        return Err(Error::FailedPrecondition(format!(
            "snapshot {key} is a {}, only active snapshots can be committed",
            rec.kind.as_str()
        )));
    }
    if store.get(txn, name)?.is_some() {
        return Err(Error::AlreadyExists(format!("snapshot {name}")));
    }
    if parent.is_empty() || parent == rec.parent {
        return Ok((rec, None));
    }
    if !rec.parent.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "snapshot {key} has parent {}, cannot commit it onto {parent}",
            rec.parent
        )));
    }
    match store.get(txn, parent)? {
        None => Err(Error::NotFound(format!("parent snapshot {parent}"))),
        Some(p) if p.kind != Kind::Committed => Err(Error::FailedPrecondition(format!(
            "parent {parent} is not a committed snapshot"
        ))),
        Some(_) => Ok((rec, Some(store.parent_ids(txn, parent)?))),
    }
}

/// Takes `key` out of the index, refused while it has children; its record.
fn remove_entry(store: &MetaStore, txn: &mut RwTxn, key: &str) -> Result<Record> {
    let rec = store.require(txn, key)?;
    if store.has_children(txn, key)? {
        return Err(Error::FailedPrecondition(format!(
            "cannot remove snapshot {key} with child"
        )));
    }
    store.delete(txn, key, &rec)?;
    store.remove_child(txn, &rec.parent, key)?;
    Ok(rec)
}

/// `labels` as `fieldpaths` (`labels`, `labels.<k>`, or none: all) update `current`.
fn updated_labels(mut current: Labels, labels: &Labels, fieldpaths: &[String]) -> Labels {
    if fieldpaths.is_empty() {
        return clean_labels(labels.clone());
    }
    for path in fieldpaths {
        match path.strip_prefix("labels.") {
            None => current = clean_labels(labels.clone()),
            Some(key) => match labels.get(key).filter(|v| !v.is_empty()) {
                Some(v) => {
                    current.insert(key.to_string(), v.clone());
                }
                None => {
                    current.remove(key);
                }
            },
        }
    }
    current
}

/// `<id>/fs` → `<id>`.
trait StripFs {
    fn strip_suffix_fs(&self) -> Option<&str>;
}

impl StripFs for Path {
    fn strip_suffix_fs(&self) -> Option<&str> {
        let mut parts = self.components();
        let id = parts.next()?.as_os_str().to_str()?;
        (parts.next()?.as_os_str() == "fs" && parts.next().is_none()).then_some(id)
    }
}

/// Deletes snapshot directory `path` and all in it (gone already is fine); a limited
/// snapshot's btrfs subvolume is deleted with it, and its qgroup seen to go.
fn remove_tree(path: &Path) -> Result<()> {
    let subvolume = quota::subvolume_of(path);
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("remove", path, e)),
    }
    if let Some((on, id)) = subvolume {
        quota::reap_qgroup(on, id);
    }
    Ok(())
}

/// Whether `e` is a full filesystem or quota.
fn is_out_of_space(e: &Error) -> bool {
    matches!(e, Error::Io(io) if matches!(
        io.source.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ))
}

/// Creates directory `path` with exactly `mode`, whatever the umask.
pub(crate) fn create_dir_mode(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir(path).map_err(|e| Error::io("create", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

impl<D: Driver> Snapshotter for DirSnapshotter<D> {
    fn stat(&self, key: &str) -> Result<Info> {
        let rec = self.store.read(|txn| self.store.require(txn, key))?;
        Ok(self.info(key, &rec))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        for path in fieldpaths {
            if path != "labels" && !path.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {path:?} field on snapshot {}",
                    info.name
                )));
            }
        }
        let name = info.name.clone();
        let (labels, fieldpaths) = (info.labels, fieldpaths.to_vec());
        let rec = self.store.write(move |store, txn| {
            let mut rec = store.require(txn, &name)?;
            rec.labels = updated_labels(rec.labels, &labels, &fieldpaths);
            rec.updated = now();
            store.put(txn, &name, &rec)?;
            Ok(rec)
        })?;
        Ok(self.info(&info.name, &rec))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.store.read(|txn| self.store.require(txn, key))?;
        match rec.kind {
            Kind::Active => self.unless_removed(key, rec.id, disk_usage(&self.dir(rec.id).fs())),
            Kind::Committed => match rec.usage {
                Some(usage) => Ok(usage),
                None => self.measure_committed(key, rec.id),
            },
            Kind::View => Ok(Usage::default()),
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (rec, parent_ids) = self.store.read(|txn| {
            let rec = self.store.require(txn, key)?;
            let parent_ids = self.store.parent_ids(txn, &rec.parent)?;
            Ok((rec, parent_ids))
        })?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed and has no mounts"
            )));
        }
        let mapping = userns::mapping_of(&rec.labels)?;
        let parents = self.layer_dirs(&parent_ids, mapping.as_ref());
        Ok(self.mounts_of(&self.dir(rec.id), rec.kind, &parents))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels, parent: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        let (rec, rebase) = self
            .store
            .read(|txn| check_commit(&self.store, txn, key, name, parent))?;
        let dir = self.dir(rec.id);
        let rebased = match &rebase {
            Some(ids) => {
                let parents: Vec<PathBuf> = ids.iter().map(|id| self.dir(*id).fs()).collect();
                self.driver.rebase(&dir, &parents)
            }
            None => Ok(()),
        };
        self.unless_removed(key, rec.id, rebased)?;
        let labels = clean_labels(labels);
        let (key, name, parent) = (key.to_string(), name.to_string(), parent.to_string());
        self.store.write(move |store, txn| {
            let (again, rebase_again) = check_commit(store, txn, &key, &name, &parent)?;
            if again.id != rec.id || rebase_again != rebase {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key} changed while being committed"
                )));
            }
            let new_parent = if rebase.is_some() {
                parent
            } else {
                rec.parent.clone()
            };
            let time = now();
            let committed = Record {
                id: rec.id,
                kind: Kind::Committed,
                parent: new_parent.clone(),
                created: time,
                updated: time,
                labels,
                // Measured when first asked for (`usage`): a walk of the whole tree here
                // would lengthen every commit, the last step of each layer's unpack.
                usage: None,
            };
            store.delete(txn, &key, &rec)?;
            store.remove_child(txn, &rec.parent, &key)?;
            store.put(txn, &name, &committed)?;
            store.add_child(txn, &new_parent, &name)
        })
    }

    fn remove(&self, key: &str) -> Result<()> {
        let remove = || {
            let key = key.to_string();
            move |store: &MetaStore, txn: &mut RwTxn| remove_entry(store, txn, &key)
        };
        // On a full filesystem the index may need room to record the very removal that
        // would free space: that is what the reserve is for.
        let rec = match self.store.write(remove()) {
            Err(e) if is_out_of_space(&e) && self.release_reserve() => self.store.write(remove())?,
            result => result?,
        };
        if let Err(e) = self.quotas.release(self.dir(rec.id).path(), rec.id) {
            tracing::warn!(key, error = %e, "could not lift the removed snapshot's size limit");
        }
        if self.options.sync_remove {
            self.discard_dir(&rec.id.to_string())?;
        }
        Ok(())
    }

    fn list(&self, filters: &Filters) -> Result<Vec<Info>> {
        let all = self.store.read(|txn| self.store.all(txn))?;
        Ok(all
            .iter()
            .map(|(name, rec)| self.info(name, rec))
            .filter(|info| filters.matches(info))
            .collect())
    }

    fn recognize(&self, mounts: &[Mount]) -> Result<Option<OwnedSnapshot>> {
        let [m] = mounts else { return Ok(None) };
        let fs = match m.fstype.as_str() {
            "bind" | "rbind" => m.source.as_str(),
            "overlay" => match m.option_value("upperdir") {
                Some(upper) => upper,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let fs = Path::new(fs);
        let Some(id) = fs
            .strip_prefix(self.snapshots_dir())
            .ok()
            .and_then(|rest| rest.strip_suffix_fs())
            .and_then(|id| id.parse::<u64>().ok())
        else {
            return Ok(None);
        };
        self.store.read(|txn| {
            let Some(key) = self.store.key_of(txn, id)? else {
                return Ok(None);
            };
            let rec = self.store.require(txn, &key)?;
            Ok(Some(OwnedSnapshot {
                key,
                kind: rec.kind,
                fs: self.dir(id).fs(),
                parents: self.parent_dirs(txn, &rec.parent)?,
                whiteouts: self.driver.whiteouts(),
            }))
        })
    }

    fn parallel_unpack(&self) -> bool {
        self.driver.rebase_is_free()
    }

    fn layer_dirs(&self, name: &str) -> Result<Vec<PathBuf>> {
        self.store.read(|txn| {
            let rec = self.store.require(txn, name)?;
            if rec.kind != Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {name} is not committed"
                )));
            }
            self.parent_dirs(txn, name)
        })
    }

    fn cleanup(&self) -> Result<()> {
        // The scan is an index mutation (that writes nothing): it sees every creation
        // before or in its batch, whose directories were renamed into place there.
        let doomed = self.store.write({
            let (dir, building, layout) = (
                self.snapshots_dir(),
                Arc::clone(&self.building),
                Arc::clone(&self.layout),
            );
            move |store, txn| {
                let _layout = lock(&layout);
                // An id this batch removed is still in the committed index, which readers
                // see until the batch commits (and keeps if the batch fails): its directory
                // waits for the next Cleanup. (Renaming it away here made a Usage, Commit or
                // View that had read the committed record find no directory, or a batch
                // that then failed keep a record without one; found by the load test.)
                let ids = store.ids(txn)?;
                let committed = store.committed_ids()?;
                // Held through the scan, not copied: a creation registers its directory here
                // before making it, so one that starts during the scan is never taken for
                // an orphan (a copy taken first missed it; found by the crash loop).
                let building = lock(&building);
                let mut doomed = Vec::new();
                for entry in fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))? {
                    let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let indexed = name
                        .parse::<u64>()
                        .is_ok_and(|id| ids.contains(&id) || committed.contains(&id));
                    if indexed || building.contains(&name) {
                        continue;
                    }
                    let target = if name.starts_with("rm-") {
                        entry.path()
                    } else {
                        let to = dir.join(format!("rm-{name}"));
                        fs::rename(entry.path(), &to)
                            .map_err(|e| Error::io("rename", entry.path(), e))?;
                        to
                    };
                    doomed.push(target);
                }
                Ok(doomed)
            }
        })?;
        for path in doomed {
            tracing::info!(path = %path.display(), "reclaiming orphan snapshot directory");
            remove_tree(&path)?;
        }
        self.idmapped.release_unused(|| {
            let all = self.store.read(|txn| self.store.all(txn))?;
            Ok(all
                .iter()
                .filter_map(|(_, rec)| userns::mapping_of(&rec.labels).ok().flatten())
                .collect())
        })?;
        self.ensure_reserve();
        Ok(())
    }
}
