//! An LMDB environment whose map grows, shared by the snapshotters' index and the image
//! store's: the one place an environment is mapped and resized.
//!
//! The map is doubled when more than half of it is in use, before a write transaction
//! begins, while no transaction of this process is open: every transaction holds the
//! environment's gate shared for its whole life ([`GrowingEnv::gate`]), the resize holds it
//! exclusively.

use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use heed::{Env, EnvFlags, WithoutTls};
use mountutil::lock::RootLock;

use crate::{Error, Result};

/// An LMDB environment with a gate for growing its map (see the module doc).
pub struct GrowingEnv {
    env: Env<WithoutTls>,
    gate: RwLock<()>,
    page_size: usize,
}

impl GrowingEnv {
    /// Opens (creating if needed) the environment in `dir`, inside the root `_lock` holds,
    /// with an initial map of `map_size` bytes (a larger existing file wins). The lock is
    /// the argument's point: it is what makes mapping the file sound.
    #[allow(unsafe_code)]
    pub fn open(_lock: &RootLock, dir: &Path, map_size: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut options = heed::EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(16);
        // SAFETY: LMDB maps the file into memory, which is unsound only if the file is
        // modified behind its back. This process holds the root's exclusive flock (`_lock`),
        // so no other Strata process opens this environment, and within the process heed
        // allows repeated opens of one path. NO_META_SYNC keeps the file consistent (the
        // commit flushes data pages; the meta page that makes them current is flushed by the
        // caller's force_sync before anything is acknowledged).
        let env = unsafe {
            options.flags(EnvFlags::NO_META_SYNC);
            options.open(dir)?
        };
        let page_size = env.stat().page_size as usize;
        Ok(GrowingEnv {
            env,
            gate: RwLock::new(()),
            page_size,
        })
    }

    /// The environment. Hold [`gate`](Self::gate) for as long as a transaction of it lives.
    pub fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }

    /// Held shared by every transaction and flush.
    pub fn gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Doubles the map when more than half of it is in use, so that a write never finds it
    /// full. Call before taking the gate for a write transaction.
    pub fn ensure_headroom(&self) -> Result<()> {
        if !self.half_full() {
            return Ok(());
        }
        self.grow()
    }

    fn half_full(&self) -> bool {
        let info = self.env.info();
        (info.last_page_number + 1) * self.page_size * 2 > info.map_size
    }

    #[allow(unsafe_code)]
    fn grow(&self) -> Result<()> {
        let _all = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        if !self.half_full() {
            return Ok(());
        }
        let size = self.env.info().map_size * 2;
        // SAFETY: LMDB allows resizing the map only while this process has no transaction
        // open. Every transaction and flush on this environment holds `gate` shared for its
        // whole life (the type gives out the environment only with that rule), and this
        // thread holds it exclusively; the root lock keeps other processes out.
        unsafe { self.env.resize(size) }?;
        tracing::info!(bytes = size, "index map grown");
        Ok(())
    }
}
