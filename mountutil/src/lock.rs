//! Exclusive ownership of a snapshotter root: an `flock` on `<root>/lock`, held for the
//! life of the process. The snapshotter relies on it to map its LMDB index safely.

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
}
