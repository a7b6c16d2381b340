//! The crash loop's clients: each drives the mixed snapshot workload (Prepare on committed
//! parents, layers applied through the Diff service, writes through the mounts, Commit,
//! View, label Update, Remove, Cleanup, user-namespaced snapshots) and records in the shared
//! model what the daemon acknowledged, and the one call in flight when it died.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api::services::diff::v1 as dpb;
use api::services::diff::v1::diff_client::DiffClient;
use api::services::snapshots::v1 as pb;
use api::types::Descriptor;
use tonic::Code;
use tonic::transport::Channel;

use super::{
    Committed, InFlight, KEEP, KEEP_MAPPED, MAPPING_BASES, MAPPING_SIZE, MAX_DEPTH, Mapped,
    SEQ_LABEL, Shared, UPDATE_LABEL, mapped_tree, model, mounted_tree, own_labels,
};
use crate::userns::mapped;
use crate::util::{Labels, Rng, Snap, try_with_mounted, with_mounted};

/// Why a client stops.
pub(super) struct Stop;

/// A client of the workload.
pub(super) struct Worker {
    pub(super) id: usize,
    pub(super) rng: Rng,
    pub(super) s: Snap,
    pub(super) d: DiffClient<Channel>,
    pub(super) model: Shared,
    pub(super) killed: Arc<AtomicBool>,
    pub(super) mnt: PathBuf,
    pub(super) layers: Arc<Vec<Descriptor>>,
}

impl Worker {
    /// The result of a call: `Ok(Some)` done, `Ok(None)` refused with an error the API
    /// promises (the call changed nothing), `Err(Stop)` the daemon is gone, with `op`
    /// recorded as in flight. An error before the kill is a violation.
    fn outcome<T>(
        &self,
        op: &'static str,
        in_flight: InFlight,
        r: Result<T, tonic::Status>,
    ) -> Result<Option<T>, Stop> {
        let mut m = model(&self.model);
        match r {
            Ok(v) => {
                *m.counts.acknowledged.entry(op).or_default() += 1;
                Ok(Some(v))
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition
                ) =>
            {
                Ok(None)
            }
            Err(s) => {
                if !self.killed.load(Ordering::SeqCst) {
                    m.violations.push(format!(
                        "client {}: {op} failed before any kill: {s:?}",
                        self.id
                    ));
                }
                m.counts.in_flight += 1;
                m.in_flight[self.id] = Some(in_flight);
                Err(Stop)
            }
        }
    }

    fn next_seq(&self) -> u64 {
        let mut m = model(&self.model);
        m.seq += 1;
        m.seq
    }

    fn hold(&self, key: &str) {
        model(&self.model).held[self.id].push(key.to_string());
    }

    fn release(&self, key: &str) {
        model(&self.model).held[self.id].retain(|k| k != key);
    }

    /// A random committed snapshot: any client's, or only this one's.
    fn pick(&mut self, own: bool) -> Option<(String, Committed)> {
        let m = model(&self.model);
        let candidates: Vec<_> = m
            .committed
            .iter()
            .filter(|(_, c)| !own || c.owner == self.id)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (name, c) = candidates[self.rng.below(candidates.len() as u64) as usize];
        Some((name.clone(), c.clone()))
    }

    fn own_count(&self) -> usize {
        let m = model(&self.model);
        m.committed.values().filter(|c| c.owner == self.id).count()
    }

    pub(super) async fn run(mut self) {
        loop {
            let step = if self.own_count() > KEEP {
                6
            } else {
                self.rng.below(11)
            };
            let r = match step {
                0..=3 => self.build().await,
                4 => self.check_view().await,
                5 => self.update().await,
                6 | 7 => self.remove().await,
                8 => self.cleanup().await,
                9 => self.mapped().await,
                _ => self.stat().await,
            };
            if r.is_err() {
                return;
            }
        }
    }

    /// Prepare on a random committed parent (or none), apply a layer and/or write through
    /// the mounts, hash the tree, Commit.
    async fn build(&mut self) -> Result<(), Stop> {
        let (parent, depth) = match self.pick(false) {
            Some((name, c)) if c.depth < MAX_DEPTH && self.rng.below(4) != 0 => (name, c.depth),
            _ => (String::new(), 0),
        };
        let seq = self.next_seq();
        let (key, name) = (
            format!("w{}-k{seq}", self.id),
            format!("w{}-n{seq}", self.id),
        );
        // Held before the call: a Prepare cut off by the kill may still have taken effect.
        self.hold(&key);
        let r = self.s.prepare(&key, &parent).await;
        let Some(mounts) = self.outcome("prepare", InFlight::Discardable, r)? else {
            return Ok(());
        };
        let apply_layer = self.rng.below(10) < 6;
        if apply_layer {
            let layer = self.layers[self.rng.below(self.layers.len() as u64) as usize].clone();
            let r = self
                .d
                .apply(dpb::ApplyRequest {
                    diff: Some(layer),
                    mounts: mounts.clone(),
                    ..Default::default()
                })
                .await;
            if self.outcome("apply", InFlight::Discardable, r)?.is_none() {
                return Ok(());
            }
        }
        if !apply_layer || self.rng.below(2) == 0 {
            let (mounts, mnt, id, pick) =
                (mounts.clone(), self.mnt.clone(), self.id, self.rng.next());
            tokio::task::spawn_blocking(move || {
                with_mounted(&mounts, &mnt, |root| write_files(root, id, seq, pick))
            })
            .await
            .unwrap();
        }
        let tree = match mounted_tree(&mounts, &self.mnt).await {
            Ok(tree) => tree,
            Err(e) => {
                model(&self.model).violations.push(format!("{key}: {e}"));
                return Ok(());
            }
        };
        let labels: Labels = [(SEQ_LABEL.to_string(), seq.to_string())].into();
        let expect = Committed {
            parent: parent.clone(),
            depth: depth + 1,
            tree,
            labels: labels.clone(),
            owner: self.id,
        };
        let r = self.s.commit_full(&name, &key, labels, "").await;
        let in_flight = InFlight::Commit {
            name: name.clone(),
            key: key.clone(),
            expect: expect.clone(),
        };
        if self.outcome("commit", in_flight, r)?.is_some() {
            self.release(&key);
            model(&self.model).committed.insert(name, expect);
        }
        Ok(())
    }

    /// A view of any committed snapshot shows the recorded tree.
    async fn check_view(&mut self) -> Result<(), Stop> {
        let Some((name, c)) = self.pick(false) else {
            return Ok(());
        };
        let key = format!("w{}-v{}", self.id, self.next_seq());
        self.hold(&key);
        let r = self.s.view(&key, &name).await;
        let Some(mounts) = self.outcome("view", InFlight::Discardable, r)? else {
            return Ok(());
        };
        match mounted_tree(&mounts, &self.mnt).await {
            Ok(tree) if tree == c.tree => {}
            Ok(_) => model(&self.model).violations.push(format!(
                "a view of {name} shows another tree than its Commit's"
            )),
            Err(e) => model(&self.model)
                .violations
                .push(format!("a view of {name}: {e}")),
        }
        let r = self.s.remove(&key).await;
        if self.outcome("remove", InFlight::Discardable, r)?.is_some() {
            self.release(&key);
        }
        Ok(())
    }

    /// A user-namespaced active snapshot of a committed parent, written to and kept across
    /// kills; once the client has [`KEEP_MAPPED`], removes one of them instead.
    async fn mapped(&mut self) -> Result<(), Stop> {
        let own: Vec<String> = model(&self.model)
            .mapped
            .iter()
            .filter(|(_, m)| m.owner == self.id)
            .map(|(key, _)| key.clone())
            .collect();
        if own.len() >= KEEP_MAPPED {
            let key = own[self.rng.below(own.len() as u64) as usize].clone();
            let r = self.s.remove(&key).await;
            let in_flight = InFlight::Remove { name: key.clone() };
            if self.outcome("remove", in_flight, r)?.is_some() {
                model(&self.model).mapped.remove(&key);
            }
            return Ok(());
        }
        let Some((parent, c)) = self.pick(false) else {
            return Ok(());
        };
        let base = MAPPING_BASES[self.rng.below(MAPPING_BASES.len() as u64) as usize];
        let mapping = format!("0:{base}:{MAPPING_SIZE}");
        let seq = self.next_seq();
        let key = format!("w{}-u{seq}", self.id);
        // The parent's tree was hashed through its view: for an overlayfs snapshot without a
        // parent that is a bind of its directory, showing a layer's whiteouts as the devices
        // they are, which an overlay of it (this snapshot's mounts) hides.
        let mut expect = Mapped {
            parent: parent.clone(),
            base,
            tree: (c.depth > 1).then_some(c.tree),
            owner: self.id,
        };
        let r = self
            .s
            .prepare_labels(&key, &parent, mapped(&mapping, &mapping))
            .await;
        let in_flight = InFlight::PrepareMapped {
            key: key.clone(),
            expect: expect.clone(),
        };
        let Some(mounts) = self.outcome("prepare mapped", in_flight, r)? else {
            return Ok(());
        };
        let comparable = c.depth > 1 || mounts.iter().all(|m| m.r#type != "overlay");
        match mapped_tree(&mounts, &self.mnt, base).await {
            Ok(_) if !comparable => {}
            Ok(tree) if tree == c.tree => {}
            Ok(_) => model(&self.model).violations.push(format!(
                "{key}: its mounts show another tree than {parent}'s, owners shifted"
            )),
            Err(e) => model(&self.model).violations.push(format!("{key}: {e}")),
        }
        let (written, mnt, id, pick) = (mounts.clone(), self.mnt.clone(), self.id, self.rng.next());
        let wrote = tokio::task::spawn_blocking(move || {
            try_with_mounted(&written, &mnt, |root| write_files(root, id, seq, pick))
                .map_err(|e| format!("{written:?}: {e}"))
        })
        .await
        .unwrap();
        match wrote.and(mapped_tree(&mounts, &self.mnt, base).await) {
            Ok(tree) => expect.tree = Some(tree),
            Err(e) => model(&self.model).violations.push(format!("{key}: {e}")),
        }
        model(&self.model).mapped.insert(key, expect);
        Ok(())
    }

    /// Sets a label on one of this client's committed snapshots.
    async fn update(&mut self) -> Result<(), Stop> {
        let Some((name, c)) = self.pick(true) else {
            return Ok(());
        };
        let value = self.next_seq().to_string();
        let mut after = c.labels.clone();
        after.insert(UPDATE_LABEL.to_string(), value.clone());
        let info = pb::Info {
            name: name.clone(),
            labels: [(UPDATE_LABEL.to_string(), value)].into(),
            ..Default::default()
        };
        let path = format!("labels.{UPDATE_LABEL}");
        let r = self.s.update(info, &[&path]).await;
        let in_flight = InFlight::Update {
            name: name.clone(),
            before: c.labels,
            after: after.clone(),
        };
        if self.outcome("update", in_flight, r)?.is_some()
            && let Some(c) = model(&self.model).committed.get_mut(&name)
        {
            c.labels = after;
        }
        Ok(())
    }

    /// Removes one of this client's committed snapshots (refused while it has children).
    async fn remove(&mut self) -> Result<(), Stop> {
        let Some((name, _)) = self.pick(true) else {
            return Ok(());
        };
        let r = self.s.remove(&name).await;
        let in_flight = InFlight::Remove { name: name.clone() };
        if self.outcome("remove", in_flight, r)?.is_some() {
            model(&self.model).committed.remove(&name);
        }
        Ok(())
    }

    async fn cleanup(&mut self) -> Result<(), Stop> {
        let r = self.s.cleanup().await;
        self.outcome("cleanup", InFlight::Discardable, r).map(drop)
    }

    /// Stat of one of this client's committed snapshots matches the record.
    async fn stat(&mut self) -> Result<(), Stop> {
        let Some((name, c)) = self.pick(true) else {
            return Ok(());
        };
        let r = self.s.stat(&name).await;
        match self.outcome("stat", InFlight::Discardable, r)? {
            Some(info) if info.parent == c.parent && own_labels(&info.labels) == c.labels => {}
            seen => model(&self.model)
                .violations
                .push(format!("stat {name}: {seen:?}, recorded {c:?}")),
        }
        Ok(())
    }
}

/// Writes a few files, a directory and a symlink, and removes one entry the parent had.
fn write_files(root: &Path, id: usize, seq: u64, pick: u64) {
    let dir = root.join(format!("w{id}-{seq}"));
    std::fs::create_dir(&dir).unwrap();
    for i in 0..(pick % 8) {
        let data = format!("{id}/{seq}/{i} ").repeat(1 + (pick >> (8 + i)) as usize % 2000);
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    std::os::unix::fs::symlink("f0", dir.join("link")).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != dir)
        .collect();
    entries.sort();
    if !entries.is_empty() && pick.is_multiple_of(3) {
        let victim = &entries[(pick >> 32) as usize % entries.len()];
        // A directory only the overlay's upper layer has, holding a layer's whiteout of a
        // path no lower layer has, cannot be removed through the mount (ENOTEMPTY), as
        // with containerd: the tree is hashed after, whatever this did.
        let _ = if victim.symlink_metadata().unwrap().is_dir() {
            std::fs::remove_dir_all(victim)
        } else {
            std::fs::remove_file(victim)
        };
    }
}
