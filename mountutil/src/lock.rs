//! Exclusive ownership of a snapshotter root and its LMDB index.
//!
//! LMDB maps its file into memory; modifying it behind the map is undefined behaviour. The
//! root lock (an `flock` held for the life of the process) makes sure only one process ever
//! opens a root's index, which is what makes opening it here safe.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::{Error, Result};

/// An exclusive lock on a root directory, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
    path: PathBuf,
}

impl RootLock {
    /// Takes `<root>/lock` exclusively without waiting; fails with [`Error::Locked`] if another
    /// process holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(RootLock { _file: file, path }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked { path }),
            Err(e) => Err(Error::io("flock", &path, e.into())),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if needed) the LMDB environment in `dir`, which must lie inside the
    /// locked root.
    pub fn open_index(
        &self,
        dir: &Path,
        map_size: usize,
        max_dbs: u32,
    ) -> Result<heed::Env<heed::WithoutTls>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut options = heed::EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(max_dbs);
        // SAFETY: the map is only unsound if the file is modified behind LMDB's back. This
        // process holds the root's exclusive flock (`self`), so no other Strata process opens
        // this environment, and within the process heed allows repeated opens of one path.
        unsafe { options.open(dir) }.map_err(|source| Error::Index {
            path: dir.to_path_buf(),
            source,
        })
    }
}
