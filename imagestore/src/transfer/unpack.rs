//! Unpacking an image into snapshots as containerd's unpacker does, so that `ctr` and Strata
//! see the same thing: the image's target (an index picks a platform's manifest) gives the
//! manifest and its config, the config's diff IDs the layers' chain IDs, and for each layer
//! whose chain ID is not a committed snapshot yet: Prepare `extract-<time>-<n> <chain>` on
//! the previous chain, apply the blob, Commit as the chain ID (labelled
//! `containerd.io/snapshot.ref`), label the blob `containerd.io/uncompressed`. Then the
//! config is labelled `containerd.io/gc.ref.snapshot.<snapshotter>` with the top chain ID,
//! which keeps the snapshots while the image lives. Asked again, every chain exists:
//! nothing is applied. A pull unpacks a layer as soon as its blob's write is open
//! ([`Arrivals`]): the apply follows the write.
//!
//! Where the snapshotter allows it ([`parallel_unpack`]), as containerd 2.2's parallel
//! unpack: the layers above the first missing one are applied at once, each into a
//! snapshot prepared without a parent, and committed in order onto the layer below
//! (rebased), once the directories each made without declaring them took their metadata
//! from the layers below ([`differ::inherit_implicit_dirs`]), so the tree is the one
//! applying them one after the other gives; a layer whose tree that cannot mend is applied
//! again on its parent.
//!
//! [`parallel_unpack`]: snapshotter::Snapshotter::parallel_unpack

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::oneshot;

use super::download::Fetched;
use super::{Below, Pending, Result, Transfer, TransferError};
use crate::StoreError;
use crate::oci::{self, Descriptor, Manifest};
use crate::unique_suffix;

/// What an unpack did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Layers applied now.
    pub applied: usize,
    /// Layers already committed.
    pub existed: usize,
    /// The top chain ID (the snapshot a root filesystem is prepared on).
    pub chain: String,
}

/// Blobs still on their way into the store (a pull's downloads), by digest: each says once
/// its write is open (readable as it comes), and then its size once stored, or why it
/// failed.
#[derive(Default)]
pub struct Arrivals {
    pending: HashMap<String, oneshot::Receiver<Result<Fetched>>>,
    opening: HashMap<String, oneshot::Receiver<()>>,
    /// Blobs whose first write was dropped (a peer's bytes failed the digest) and that
    /// came again: whoever followed the first write read an error.
    restarted: HashSet<String>,
    /// Blobs arrived, and their bytes.
    pub count: usize,
    pub bytes: u64,
}

impl Arrivals {
    /// Expects blob `digest`: its download says on the first sender when its write is open,
    /// and on the second when it is done.
    pub fn expect(
        &mut self,
        digest: &str,
    ) -> (oneshot::Sender<()>, oneshot::Sender<Result<Fetched>>) {
        let (opened, opening) = oneshot::channel();
        self.opening.insert(digest.to_string(), opening);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(digest.to_string(), rx);
        (opened, tx)
    }

    /// Waits until blob `digest` can be read, as it comes if its write is open (or, if the
    /// write never opened, until it is done).
    pub async fn wait_readable(&mut self, digest: &str) -> Result<()> {
        match self.opening.remove(digest) {
            None => Ok(()),
            Some(opening) => match opening.await {
                Ok(()) => Ok(()),
                Err(_) => self.wait(digest).await,
            },
        }
    }

    /// Waits for blob `digest` if it is expected (at once otherwise).
    pub async fn wait(&mut self, digest: &str) -> Result<()> {
        let Some(rx) = self.pending.remove(digest) else {
            return Ok(());
        };
        let fetched = rx
            .await
            .map_err(|_| TransferError::Invalid(format!("download of {digest} vanished")))??;
        self.count += 1;
        self.bytes += fetched.bytes;
        if fetched.restarted {
            self.restarted.insert(digest.to_string());
        }
        Ok(())
    }

    /// Waits for blob `digest`; whether it came again after its first write was dropped
    /// (an apply that followed that write failed for it, not for the layer).
    pub async fn came_again(&mut self, digest: &str) -> Result<bool> {
        self.wait(digest).await?;
        Ok(self.restarted.contains(digest))
    }

    /// Waits for every blob still expected, all of them even if one fails (a failed pull
    /// has then stored every blob it could, and its retry fetches only what failed); the
    /// first failure.
    pub async fn wait_all(&mut self) -> Result<()> {
        let digests: Vec<String> = self.pending.keys().cloned().collect();
        let mut first = Ok(());
        for d in digests {
            let waited = self.wait(&d).await;
            if first.is_ok() {
                first = waited;
            }
        }
        first
    }
}

impl Transfer {
    /// Unpacks image `name` for `platform` (this machine's if `None`); `progress` hears of
    /// each layer's state (exists, unpacking, applied).
    pub async fn unpack(
        &self,
        name: &str,
        platform: Option<&str>,
        progress: impl FnMut(&str, &str),
    ) -> Result<Unpacked> {
        let target = self.image_target(name).await?;
        let manifest_desc = self.platform_manifest(&target, platform).await?;
        let document: oci::Document = oci::parse(
            &self.read_blob(&manifest_desc.digest).await?,
            &manifest_desc.digest,
        )
        .map_err(TransferError::Invalid)?;
        let manifest = document.manifest().ok_or_else(|| {
            TransferError::Invalid(format!("{} has no config", manifest_desc.digest))
        })?;
        self.unpack_manifest(
            &manifest_desc.digest,
            &manifest,
            &mut Arrivals::default(),
            progress,
        )
        .await
    }

    /// Unpacks the layers of `manifest` (named `what` in errors), each once `arrivals` says
    /// its blob can be read.
    pub async fn unpack_manifest(
        &self,
        what: &str,
        manifest: &Manifest,
        arrivals: &mut Arrivals,
        mut progress: impl FnMut(&str, &str),
    ) -> Result<Unpacked> {
        arrivals.wait(&manifest.config.digest).await?;
        let config: oci::Config = oci::parse(
            &self.read_blob(&manifest.config.digest).await?,
            &manifest.config.digest,
        )
        .map_err(TransferError::Invalid)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(TransferError::Invalid(format!(
                "{what}: {} layers but {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = oci::chain_ids(diff_ids);
        let mut done = Unpacked::default();
        // The layers already there, from the bottom up, held by this transfer's lease.
        let mut first = 0;
        while first < chains.len() && self.hold_snapshot(&chains[first]).await? {
            done.existed += 1;
            progress(&manifest.layers[first].digest, "exists");
            first += 1;
        }
        let parallel = chains.len() - first >= 2
            && self
                .snapshots
                .snapshotter(&self.snapshotter)?
                .1
                .parallel_unpack();
        // Whether layer `i` is applied before the one below it is committed: prepared
        // without a parent, rebased at its commit.
        let apart = |i: usize| parallel && i > first;
        let mut in_flight: VecDeque<(usize, Option<&str>, Pending<Staged>)> = VecDeque::new();
        let mut next = first;
        let applied = async {
            while next < chains.len() || !in_flight.is_empty() {
                // The bottom layer on its parent; with `parallel`, those above at once,
                // each without its parent until it is committed onto it.
                while next < chains.len()
                    && (in_flight.is_empty() || parallel && in_flight.len() < applies_at_once())
                {
                    let layer = &manifest.layers[next];
                    // Committed meanwhile by another pull (the one below was missing).
                    if next > first && self.hold_snapshot(&chains[next]).await? {
                        progress(&layer.digest, "exists");
                        let existed = Box::pin(std::future::ready(Ok(Staged::Existed)));
                        in_flight.push_back((next, None, existed));
                        next += 1;
                        continue;
                    }
                    // Applied as it downloads: the apply reads the write in progress, which
                    // checks the digest before it lets the reader reach the end.
                    arrivals.wait_readable(&layer.digest).await?;
                    progress(&layer.digest, "unpacking");
                    let onto = (!apart(next))
                        .then(|| next.checked_sub(1).map_or("", |p| chains[p].as_str()));
                    let staging = self.stage_layer(layer, &diff_ids[next], &chains[next], onto);
                    in_flight.push_back((next, onto, staging));
                    next += 1;
                }
                let Some((i, onto, staging)) = in_flight.pop_front() else {
                    break;
                };
                let layer = &manifest.layers[i];
                let rebase = if apart(i) { chains[i - 1].as_str() } else { "" };
                let staged = match staging.await {
                    Ok(staged) => staged,
                    // It read a write that was dropped (a peer's wrong bytes); the blob came
                    // again from elsewhere, and is applied again.
                    Err(e) if arrivals.came_again(&layer.digest).await? => {
                        tracing::info!(layer = layer.digest, error = %e, "applying a layer again");
                        self.stage_layer(layer, &diff_ids[i], &chains[i], onto)
                            .await?
                    }
                    Err(e) => return Err(e),
                };
                match self
                    .commit_layer(layer, &diff_ids[i], staged, &chains[i], rebase)
                    .await?
                {
                    Applied::New => done.applied += 1,
                    Applied::Existed => done.existed += 1,
                }
                arrivals.wait(&layer.digest).await?;
                let uncompressed = [(api::labels::UNCOMPRESSED.to_string(), diff_ids[i].clone())];
                self.label_blob(&layer.digest, uncompressed.into()).await?;
                progress(&layer.digest, "applied");
            }
            Ok(())
        }
        .await;
        if let Err(e) = applied {
            // Those applied meanwhile go: nothing is committed above a failed layer.
            for (_, _, staging) in in_flight {
                if let Ok(Staged::Applied { key, .. }) = staging.await {
                    let (snapshots, snapshotter) =
                        (self.snapshots.clone(), self.snapshotter.clone());
                    let _ = self
                        .blocking(move |_| snapshots.remove(&snapshotter, &key))
                        .await;
                }
            }
            return Err(e);
        }
        if let Some(top) = chains.last() {
            let label = api::labels::ref_snapshot(&self.snapshotter);
            self.label_blob(&manifest.config.digest, [(label, top.clone())].into())
                .await?;
            done.chain = top.clone();
        }
        Ok(done)
    }

    /// Whether snapshot `key` exists; if it does, the transfer's lease holds it from now on
    /// (see [`StoreSnapshots::hold`](crate::snapshots::StoreSnapshots::hold)).
    async fn hold_snapshot(&self, key: &str) -> Result<bool> {
        let (snapshots, snapshotter, caller, key) = (
            self.snapshots.clone(),
            self.snapshotter.clone(),
            self.caller(),
            key.to_string(),
        );
        self.blocking(move |_| snapshots.hold(&caller, &snapshotter, &key))
            .await
    }

    /// Starts preparing a snapshot for `layer` (chain ID `chain`) and applying the layer
    /// into it: on committed snapshot `onto` (empty for none), or, with `None`, without a
    /// parent (the layers below are being applied meanwhile; [`commit_layer`] rebases it).
    ///
    /// [`commit_layer`]: Transfer::commit_layer
    fn stage_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        chain: &str,
        onto: Option<&str>,
    ) -> Pending<Staged> {
        let (snapshots, applier, caller) =
            (self.snapshots.clone(), self.applier.clone(), self.caller());
        let snapshotter = self.snapshotter.clone();
        let (chain, parent) = (chain.to_string(), onto.unwrap_or_default().to_string());
        let below = if onto.is_some() {
            Below::Present
        } else {
            Below::Later
        };
        let mut layer = layer.clone();
        layer
            .annotations
            .insert(api::labels::UNCOMPRESSED.to_string(), diff_id.to_string());
        self.spawn_blocking(move |_| {
            let key = format!("extract-{} {chain}", unique_suffix());
            let labels: snapshotter::Labels =
                [(api::labels::SNAPSHOT_REF.to_string(), chain.clone())].into();
            let mounts = match snapshots.prepare(&caller, &snapshotter, &key, &parent, labels) {
                Ok(m) => m,
                // Committed meanwhile by the snapshotter's layer reuse: taken as it is, and
                // the Prepare put it in this transfer's lease already.
                Err(StoreError::Snapshot(snapshotter::Error::LayerCommitted { .. })) => {
                    return Ok(Staged::Existed);
                }
                // Committed meanwhile by another unpack: taken as it is, held by this
                // transfer's lease.
                Err(StoreError::Snapshot(snapshotter::Error::AlreadyExists(_))) => {
                    snapshots.hold(&caller, &snapshotter, &chain)?;
                    return Ok(Staged::Existed);
                }
                Err(e) => return Err(e),
            };
            match applier.apply(&layer, mounts.clone(), &caller, below) {
                Ok(implicit_dirs) => Ok(Staged::Applied {
                    key,
                    mounts,
                    implicit_dirs,
                }),
                Err(e) => {
                    let _ = snapshots.remove(&snapshotter, &key);
                    Err(e)
                }
            }
        })
    }

    /// Commits a staged layer (`layer`, `diff_id`) as `chain`, rebased onto committed
    /// `rebase` if it was prepared without its parent, once the directories it made without
    /// declaring them took their lower layers' metadata; where that cannot be done after
    /// the fact, the layer is applied again, on its parent.
    async fn commit_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        staged: Staged,
        chain: &str,
        rebase: &str,
    ) -> Result<Applied> {
        if let Some(applied) = self.commit_staged(staged, chain, rebase).await? {
            return Ok(applied);
        }
        tracing::debug!(layer = layer.digest, "applied again on its parent");
        let staged = self
            .stage_layer(layer, diff_id, chain, Some(rebase))
            .await?;
        self.commit_staged(staged, chain, "")
            .await?
            .ok_or_else(|| TransferError::Invalid(format!("{}: not applied", layer.digest)))
    }

    /// [`commit_layer`](Transfer::commit_layer)'s commit; `None` if the layer must be
    /// applied again on its parent (its staged snapshot is gone then).
    async fn commit_staged(
        &self,
        staged: Staged,
        chain: &str,
        rebase: &str,
    ) -> Result<Option<Applied>> {
        let Staged::Applied {
            key,
            mounts,
            implicit_dirs,
        } = staged
        else {
            return Ok(Some(Applied::Existed));
        };
        let (snapshots, caller) = (self.snapshots.clone(), self.caller());
        let snapshotter = self.snapshotter.clone();
        let (chain, rebase) = (chain.to_string(), rebase.to_string());
        self.blocking(move |_| {
            if !rebase.is_empty() {
                let inherited = (|| {
                    let (_, s) = snapshots.snapshotter(&snapshotter)?;
                    let upper = s.recognize(&mounts)?.ok_or_else(|| {
                        StoreError::FailedPrecondition(format!(
                            "snapshot {key}: mounts not its own"
                        ))
                    })?;
                    let lowers = s.layer_dirs(&rebase)?;
                    differ::inherit_implicit_dirs(&upper.fs, &lowers, &implicit_dirs)
                        .map_err(|e| StoreError::Applier(Box::new(e)))
                })();
                match inherited {
                    Ok(differ::Inherited::Done) => {}
                    Ok(differ::Inherited::ApplyAgain) => {
                        snapshots.remove(&snapshotter, &key)?;
                        return Ok(None);
                    }
                    Err(e) => {
                        let _ = snapshots.remove(&snapshotter, &key);
                        return Err(e);
                    }
                }
            }
            let labels: snapshotter::Labels =
                [(api::labels::SNAPSHOT_REF.to_string(), chain.clone())].into();
            match snapshots.commit(&caller, &snapshotter, &chain, &key, labels, &rebase) {
                Ok(()) => Ok(Some(Applied::New)),
                Err(StoreError::Snapshot(snapshotter::Error::AlreadyExists(_))) => {
                    let _ = snapshots.remove(&snapshotter, &key);
                    snapshots.hold(&caller, &snapshotter, &chain)?;
                    Ok(Some(Applied::Existed))
                }
                Err(e) => {
                    let _ = snapshots.remove(&snapshotter, &key);
                    Err(e)
                }
            }
        })
        .await
    }
}

/// Layers applied at once where the snapshotter allows it: each apply keeps about two
/// cores busy (inflating; hashing and creating files), so half the cores, at least two.
fn applies_at_once() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).max(2)
}

/// A layer prepared and applied ([`Transfer::stage_layer`]), not committed yet.
enum Staged {
    Applied {
        key: String,
        mounts: Vec<snapshotter::Mount>,
        /// Directories made without the layer declaring them, its parent not there yet.
        implicit_dirs: differ::ImplicitDirs,
    },
    /// Its chain ID was committed meanwhile (held by the transfer's lease).
    Existed,
}

/// What applying one layer came to.
enum Applied {
    New,
    /// Another unpack committed the layer first.
    Existed,
}
