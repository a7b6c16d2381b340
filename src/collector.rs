//! Runs the image store's garbage collection against the daemon's snapshotters: right away
//! for a sync delete or `strata gc`, else soon after any delete, in the background, one
//! collection at a time (deletes during one ask for another after it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::instances::Instances;
use imagestore::{ImageStore, Report, Result};

/// The daemon's collector.
pub struct Collector {
    store: Arc<ImageStore>,
    instances: Arc<Instances>,
    /// Held by the collection running.
    running: Mutex<()>,
    /// A collection was asked for while one ran.
    again: AtomicBool,
}

impl Collector {
    pub fn new(store: Arc<ImageStore>, instances: Arc<Instances>) -> Arc<Self> {
        Arc::new(Collector {
            store,
            instances,
            running: Mutex::new(()),
            again: AtomicBool::new(false),
        })
    }

    /// The store it collects.
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// Collects now (blocking), or with `dry_run` says what would go.
    pub fn collect(&self, dry_run: bool) -> Result<Report> {
        let _running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let report = self.store.collect(self.instances.as_ref(), dry_run)?;
        if !dry_run && !report.is_empty() {
            tracing::info!(
                leases = report.leases.len(),
                images = report.images.len(),
                content = report.content.len(),
                blobs = report.blobs.len(),
                ingests = report.ingests.len(),
                snapshots = report.snapshots.len(),
                "garbage collected"
            );
        }
        Ok(report)
    }

    /// Asks for a collection soon, in the background.
    pub fn schedule(self: &Arc<Self>) {
        if self.again.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            while this.again.swap(false, Ordering::AcqRel) {
                if let Err(e) = this.collect(false) {
                    tracing::warn!(error = %crate::status::chain(&e), "garbage collection failed");
                }
            }
        });
    }
}
