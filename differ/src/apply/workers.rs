//! Regular files created on worker threads, so a layer of many small files is not bound by
//! one thread's syscalls (~30 µs of kernel time an entry on ext4).
//!
//! The thread reading the tar stays the only one that decides: it hands a worker a file
//! (path, metadata and its bytes) only where the order of the tar cannot matter, and waits
//! for every worker ([`FileWorkers::settle`]) before anything that could depend on a file
//! still in flight:
//! - a file goes to a worker only into a directory this apply created (so nothing but this
//!   apply's own entries stands in it) and where no directory or symlink of this apply
//!   stands at its name, so a worker only ever replaces a file;
//! - one directory's files go to one worker (the least busy when the directory first comes),
//!   so two entries of one path keep their order and workers do not queue on one
//!   directory's lock;
//! - whiteouts, hard links (their target must be complete), an entry at a path in flight or
//!   above one, creating a missing parent, removing a directory or symlink, emptying the
//!   directory cache (files in flight hold their directories open) and the directory times
//!   at the end wait first.
//!
//! Bytes in flight are bounded ([`MAX_BYTES`], [`MAX_JOBS`]); files larger than
//! [`MAX_FILE`] are written by the reading thread, streamed.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use mountutil::at::Kind;

use super::CachedDir;
use super::entries::Ownership;
use crate::tarstream::Meta;
use crate::{Error, Result};

/// Largest file handed to a worker; larger ones are streamed by the reading thread.
pub(super) const MAX_FILE: u64 = 1 << 20;
/// File bytes queued for the workers at most (one file may exceed it when nothing else is
/// queued).
const MAX_BYTES: usize = 16 << 20;
/// Files queued for the workers at most (empty files weigh nothing in bytes).
const MAX_JOBS: usize = 1024;
/// Buffers kept for reuse at most, and the largest kept: a buffer freed by another thread
/// than the one that allocated it costs glibc's allocator a contended lock.
const SPARE_BUFFERS: usize = 256;
const SPARE_CAPACITY: usize = 64 << 10;

/// One regular file to create.
pub(super) struct FileJob {
    /// Its directory, open.
    pub dir: Arc<CachedDir>,
    /// Its path in the layer (the last component is its name).
    pub rel: PathBuf,
    pub meta: Meta,
    pub data: Vec<u8>,
}

/// What the workers have queued, counted without a lock; the reading thread sleeps only
/// when it is over the bounds, until the workers are down to half of them.
#[derive(Default)]
struct Shared {
    jobs: AtomicUsize,
    bytes: AtomicUsize,
    /// Files queued per worker.
    queued: Vec<AtomicUsize>,
    /// The reading thread sleeps (or is about to) on `lighter`.
    waiting: AtomicBool,
    sleep: Mutex<()>,
    lighter: Condvar,
    /// The first failure; once set, workers skip what is queued.
    error: Mutex<Option<Error>>,
    failed: AtomicBool,
}

impl Shared {
    fn done(&self, bytes: usize) {
        let jobs = self.jobs.fetch_sub(1, Ordering::AcqRel) - 1;
        let bytes = self.bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if (jobs == 0 || (jobs <= MAX_JOBS / 2 && bytes <= MAX_BYTES / 2))
            && self.waiting.load(Ordering::Acquire)
        {
            let _guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.lighter.notify_all();
        }
    }

    /// Sleeps until `ready` holds (checked again under the lock, so no wake-up is lost).
    fn wait_until(&self, ready: impl Fn(usize, usize) -> bool) {
        let now = || {
            ready(
                self.jobs.load(Ordering::Acquire),
                self.bytes.load(Ordering::Acquire),
            )
        };
        if now() {
            return;
        }
        let mut guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiting.store(true, Ordering::Release);
        while !now() {
            guard = self
                .lighter
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.waiting.store(false, Ordering::Release);
    }

    fn fail(&self, e: Error) {
        let mut first = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The worker threads of one apply (started at the first file handed out) and what they
/// have in flight since the last [`FileWorkers::settle`].
pub(super) struct FileWorkers {
    own: Ownership,
    shared: Arc<Shared>,
    queues: Vec<Sender<FileJob>>,
    threads: Vec<JoinHandle<()>>,
    /// Buffers the workers are done with.
    spare: Option<Receiver<Vec<u8>>>,
    hasher: RandomState,
    /// Hashes of the paths of the files in flight, of their directories and of every
    /// directory above them (a collision only makes the reading thread wait needlessly).
    busy: HashSet<u64>,
    /// The directory of the last file handed out, whose ancestors are all in `busy`.
    last_parent: Option<PathBuf>,
    /// The worker of each directory with files in flight (by hash): one directory's files
    /// go to one worker, so two files of one path keep their order and workers do not queue
    /// on one directory's lock; a new directory goes to the least busy worker.
    worker_of: HashMap<u64, usize>,
    /// The worker of `last_parent`.
    last_worker: usize,
}

impl FileWorkers {
    pub(super) fn new(own: Ownership) -> Self {
        FileWorkers {
            own,
            shared: Arc::default(),
            queues: Vec::new(),
            threads: Vec::new(),
            spare: None,
            hasher: RandomState::new(),
            busy: HashSet::new(),
            last_parent: None,
            worker_of: HashMap::new(),
            last_worker: 0,
        }
    }

    /// Whether a file in flight is at `rel` or below it.
    pub(super) fn is_busy(&self, rel: &Path) -> bool {
        !self.busy.is_empty() && self.busy.contains(&self.hasher.hash_one(rel.as_os_str()))
    }

    /// A buffer for `len` bytes of a file's data.
    pub(super) fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .spare
            .as_ref()
            .and_then(|s| s.try_recv().ok())
            .unwrap_or_default();
        buf.clear();
        buf.reserve_exact(len);
        buf
    }

    /// Hands `job` to a worker, after waiting for room.
    pub(super) fn dispatch(&mut self, job: FileJob) -> Result<()> {
        if self.queues.is_empty() {
            self.start()?;
        }
        let bytes = job.data.len();
        if self.shared.jobs.load(Ordering::Acquire) >= MAX_JOBS
            || self.shared.bytes.load(Ordering::Acquire) + bytes > MAX_BYTES
        {
            self.shared.wait_until(|jobs, queued| {
                jobs == 0 || (jobs <= MAX_JOBS / 2 && queued + bytes <= MAX_BYTES / 2)
            });
        }
        self.check()?;
        self.busy.insert(self.hasher.hash_one(job.rel.as_os_str()));
        let parent = job.rel.parent().unwrap_or(Path::new(""));
        if self.last_parent.as_deref() != Some(parent) {
            for dir in parent.ancestors() {
                self.busy.insert(self.hasher.hash_one(dir.as_os_str()));
            }
            let least_busy = (0..self.queues.len())
                .min_by_key(|&w| self.shared.queued[w].load(Ordering::Relaxed))
                .unwrap_or(0);
            self.last_worker = *self
                .worker_of
                .entry(self.hasher.hash_one(parent.as_os_str()))
                .or_insert(least_busy);
            self.last_parent = Some(parent.to_path_buf());
        }
        let worker = self.last_worker;
        self.shared.queued[worker].fetch_add(1, Ordering::Relaxed);
        self.shared.jobs.fetch_add(1, Ordering::AcqRel);
        self.shared.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.queues[worker]
            .send(job)
            .map_err(|_| Error::io("write", "", io::Error::other("file worker gone")))
    }

    /// Waits until every file handed out is written; the first failure, if any.
    pub(super) fn settle(&mut self) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        self.shared.wait_until(|jobs, _| jobs == 0);
        self.busy.clear();
        self.last_parent = None;
        self.worker_of.clear();
        self.check()
    }

    fn check(&self) -> Result<()> {
        if !self.shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let e = self
            .shared
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Err(e.unwrap_or_else(|| Error::io("write", "", io::Error::other("a file worker failed"))))
    }

    fn start(&mut self) -> Result<()> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        self.shared = Arc::new(Shared {
            queued: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            ..Shared::default()
        });
        let (give_back, spare) = sync_channel(SPARE_BUFFERS);
        self.spare = Some(spare);
        for i in 0..n {
            let (tx, rx) = channel();
            let (shared, own, give_back) = (Arc::clone(&self.shared), self.own, give_back.clone());
            let thread = std::thread::Builder::new()
                .name(format!("layer-files-{i}"))
                .spawn(move || work(i, &rx, &shared, own, &give_back))
                .map_err(|e| Error::io("start thread", "layer-files", e))?;
            self.queues.push(tx);
            self.threads.push(thread);
        }
        Ok(())
    }
}

/// On every way out (a failed apply too) the workers skip what is queued and are joined, so
/// none writes into the target once the apply has returned.
impl Drop for FileWorkers {
    fn drop(&mut self) {
        self.shared.failed.store(true, Ordering::Relaxed);
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn work(
    me: usize,
    jobs: &Receiver<FileJob>,
    shared: &Shared,
    own: Ownership,
    give_back: &SyncSender<Vec<u8>>,
) {
    for job in jobs {
        let bytes = job.data.len();
        if !shared.failed.load(Ordering::Relaxed)
            && let Err(e) = write_file(&job, own)
        {
            shared.fail(e);
        }
        if job.data.capacity() <= SPARE_CAPACITY {
            let _ = give_back.try_send(job.data);
        }
        shared.queued[me].fetch_sub(1, Ordering::Relaxed);
        shared.done(bytes);
    }
}

/// Creates the file, replacing a file of the same name (an earlier entry of this apply),
/// writes its bytes and sets its owner, mode, xattrs and times.
fn write_file(job: &FileJob, own: Ownership) -> Result<()> {
    let FileJob {
        dir,
        rel,
        meta,
        data,
    } = job;
    let name = rel.file_name().expect("a file entry has a name");
    let file = match dir.dir.create_file(name, meta.mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Only a file can stand here (see the module's comment); anything else would
            // need the reading thread's directory cache, so it is refused, not removed.
            match dir.dir.kind(name).map_err(|e| Error::io("stat", rel, e))? {
                Some(Kind::Dir | Kind::Symlink) => return Err(Error::io("create", rel, e)),
                _ => dir
                    .dir
                    .unlink(name)
                    .map_err(|e| Error::io("remove", rel, e))?,
            }
            dir.dir.create_file(name, meta.mode)
        }
        r => r,
    }
    .map_err(|e| Error::io("create", rel, e))?;
    (&file)
        .write_all(data)
        .map_err(|e| Error::io("write", rel, e))?;
    own.finish_fd(&file, rel, meta, dir.setgid)
}
