//! Garbage collection with containerd's semantics (`core/metadata/gc.go`, 2.2 rules; the
//! graph and its marking are in [`graph`]).
//!
//! Roots: leases until they expire (what they hold), images until they expire
//! (`containerd.io/gc.expire`), containers, content and the store's snapshots labelled
//! `containerd.io/gc.root*`, and writes made without a lease for a day after they were last
//! opened or written. Edges: an image's target, a container's snapshot, a snapshot's parent,
//! a write's expected blob, `gc.ref.*` labels, and `gc.bref.*` back-references.
//!
//! Swept in one index transaction: expired leases, unreachable images (only expired ones
//! can be), blob records and write records. Then, outside it: blob files no record names
//! and no write expects, write directories without a record, and the store's snapshots no
//! namespace reaches, children first. Each step is atomic on its own and re-derived from
//! the index, so a crash leaves a state the next collection finishes.

pub mod graph;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use api::services::leases::v1::Lease;
use differ::Digest;
use snapshotter::Filters;

use self::graph::{IngestState, Namespace, SnapshotId, SnapshotInfo, Snapshots};
use crate::ingests::IngestRecord;
use crate::meta::{Kind, Read, key};
use crate::snapshots::Snapshotters;
use crate::{ImageStore, Result, StoreError};

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (namespace, lease id).
    pub leases: Vec<(String, String)>,
    /// (namespace, image name).
    pub images: Vec<(String, String)>,
    /// (namespace, digest).
    pub content: Vec<(String, String)>,
    /// (namespace, ref).
    pub ingests: Vec<(String, String)>,
    /// (snapshotter, key).
    pub snapshots: Vec<(String, String)>,
    /// Blob files deleted.
    pub blobs: Vec<String>,
}

impl Report {
    /// Whether nothing was (or would be) removed.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
            && self.images.is_empty()
            && self.content.is_empty()
            && self.ingests.is_empty()
            && self.snapshots.is_empty()
            && self.blobs.is_empty()
    }
}

/// Blob files without any record, and write directories without a record, older than this
/// are leftovers of a crash between the file and its record, and are deleted; younger ones
/// may be that very moment.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// Every record of `kind` in namespace `ns`.
fn values<M: prost::Message + Default>(r: &impl Read, kind: Kind, ns: &str) -> Result<Vec<M>> {
    Ok(r.list(kind, ns)?.into_iter().map(|(_, v)| v).collect())
}

/// Reads one namespace's records.
fn read_namespace(
    store: &ImageStore,
    r: &impl Read,
    ns: &str,
    snapshot_roots: Vec<SnapshotId>,
) -> Result<Namespace> {
    let mut n = Namespace {
        images: values(r, Kind::Image, ns)?,
        containers: values(r, Kind::Container, ns)?,
        content: values(r, Kind::Content, ns)?,
        snapshot_roots,
        ..Default::default()
    };
    for (reference, record) in r.list::<IngestRecord>(Kind::Ingest, ns)? {
        let written = store
            .blobs
            .written(&crate::ingests::tree_ref(ns, &reference));
        n.ingests.push(IngestState {
            expected: (!record.expected.is_empty()).then(|| record.expected.clone()),
            expires: record.expires(written),
            reference,
        });
    }
    for (_, lease) in r.list::<Lease>(Kind::Lease, ns)? {
        let resources = r.resources(ns, &lease.id)?;
        n.leases.push((lease, resources));
    }
    Ok(n)
}

/// What the mark phase decided.
struct Plan {
    report: Report,
    /// Blob digests whose records, or writes expecting them, the sweep drops.
    released: Vec<String>,
    /// Blob digests some record or write still names once the sweep is done.
    kept_blobs: HashSet<String>,
    /// Write directories (tree refs) that keep a record.
    kept_ingests: HashSet<String>,
}

/// Marks every namespace and lists what is unreachable.
fn plan(
    store: &ImageStore,
    r: &impl Read,
    snapshots: &Snapshots,
    owned: &HashMap<SnapshotId, String>,
    canonical: graph::Canonical,
    now: SystemTime,
) -> Result<Plan> {
    let snapshot_brefs = graph::snapshot_back_refs(snapshots, canonical);
    let mut roots_by_ns: HashMap<&str, Vec<SnapshotId>> = HashMap::new();
    for (id, ns) in owned {
        if snapshots.get(id).is_some_and(|i| graph::is_root(&i.labels)) {
            roots_by_ns.entry(ns.as_str()).or_default().push(id.clone());
        }
    }
    let mut namespaces: BTreeSet<String> = r.namespaces()?.into_iter().collect();
    namespaces.extend(roots_by_ns.keys().map(|s| s.to_string()));
    let mut report = Report::default();
    let mut reached: HashSet<SnapshotId> = HashSet::new();
    let mut kept_blobs = HashSet::new();
    let mut kept_ingests = HashSet::new();
    let mut released = Vec::new();
    for ns in namespaces {
        let roots = roots_by_ns.remove(ns.as_str()).unwrap_or_default();
        let n = read_namespace(store, r, &ns, roots)?;
        let marked = graph::mark(&n, snapshots, &snapshot_brefs, canonical, now);
        for (lease, _) in &n.leases {
            if graph::expired(&lease.labels, now) {
                report.leases.push((ns.clone(), lease.id.clone()));
            }
        }
        for image in &n.images {
            if !marked.images.contains(&image.name) {
                report.images.push((ns.clone(), image.name.clone()));
            }
        }
        for info in &n.content {
            if marked.content.contains(&info.digest) {
                kept_blobs.insert(info.digest.clone());
            } else {
                report.content.push((ns.clone(), info.digest.clone()));
                released.push(info.digest.clone());
            }
        }
        for ingest in &n.ingests {
            if marked.ingests.contains(&ingest.reference) {
                kept_blobs.extend(ingest.expected.clone());
                kept_ingests.insert(crate::ingests::tree_ref(&ns, &ingest.reference));
            } else {
                report.ingests.push((ns.clone(), ingest.reference.clone()));
                released.extend(ingest.expected.clone());
            }
        }
        reached.extend(marked.snapshots);
    }
    let mut unreached: Vec<SnapshotId> = owned
        .keys()
        .filter(|id| !reached.contains(*id))
        .cloned()
        .collect();
    unreached.sort();
    report.snapshots = unreached;
    report.leases.sort();
    report.images.sort();
    report.content.sort();
    report.ingests.sort();
    Ok(Plan {
        report,
        released,
        kept_blobs,
        kept_ingests,
    })
}

impl ImageStore {
    /// Collects garbage in every namespace; with `dry_run`, only says what would go. The
    /// index is marked and swept in one write transaction, so no client changes it
    /// meanwhile; files and snapshots go after it.
    pub fn collect(&self, snapshotters: &dyn Snapshotters, dry_run: bool) -> Result<Report> {
        let now = SystemTime::now();
        let canonical = |name: &str| snapshotters.resolve(name).map(|(n, _)| n);
        let owned = self.meta.read(|r| self.owned_snapshots(r))?;
        let mut listed = Snapshots::new();
        let instances: BTreeSet<&String> = owned.keys().map(|(s, _)| s).collect();
        for name in instances {
            let Some((_, s)) = snapshotters.resolve(name) else {
                continue;
            };
            for info in s.list(&Filters::default())? {
                let labels = info.labels.into_iter().collect();
                listed.insert(
                    (name.clone(), info.name),
                    SnapshotInfo {
                        parent: info.parent,
                        labels,
                    },
                );
            }
        }
        if dry_run {
            let plan = self
                .meta
                .read(|r| plan(self, r, &listed, &owned, &canonical, now))?;
            let mut report = plan.report;
            report.blobs = self.unneeded_blobs(&plan.released, &plan.kept_blobs, now)?;
            return Ok(report);
        }
        let collecting = self.blobs.collect();
        let plan = self.meta.write(|w| {
            // Inside the transaction: the owned snapshots may have changed since listing.
            let owned = self.owned_snapshots(w)?;
            let plan = plan(self, w, &listed, &owned, &canonical, now)?;
            let report = &plan.report;
            for (ns, id) in &report.leases {
                w.delete(Kind::Lease, &key(ns, &[id]))?;
                w.clear_resources(ns, id)?;
            }
            for (ns, name) in &report.images {
                w.delete(Kind::Image, &key(ns, &[name]))?;
            }
            for (ns, digest) in &report.content {
                w.delete(Kind::Content, &key(ns, &[digest]))?;
            }
            for (ns, reference) in &report.ingests {
                w.delete(Kind::Ingest, &key(ns, &[reference]))?;
            }
            Ok(plan)
        })?;
        let mut report = plan.report;
        // The collected writes' data goes with their records, unless a writer still holds
        // the ref (its directory goes as an orphan later).
        for (ns, reference) in &report.ingests {
            let tree_ref = crate::ingests::tree_ref(ns, reference);
            if self.blobs.is_locked(&tree_ref) {
                continue;
            }
            match self.blobs.abort(&tree_ref) {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        report.blobs = self.unneeded_blobs(&plan.released, &plan.kept_blobs, now)?;
        for digest in &report.blobs {
            if let Ok(d) = Digest::parse(digest) {
                self.blobs.delete(&d)?;
            }
        }
        drop(collecting);
        self.blobs
            .remove_unrecorded_ingests(&plan.kept_ingests, ORPHAN_AGE)?;
        self.remove_snapshots(&mut report, snapshotters, &listed)?;
        Ok(report)
    }

    /// Blob files to delete: those the sweep `released` (dropped their records, or writes
    /// expecting them) that nothing `kept`, and those without any record or expecting write
    /// for longer than [`ORPHAN_AGE`].
    fn unneeded_blobs(
        &self,
        released: &[String],
        kept: &HashSet<String>,
        now: SystemTime,
    ) -> Result<Vec<String>> {
        let mut out: BTreeSet<String> = released
            .iter()
            .filter(|d| !kept.contains(*d))
            .cloned()
            .collect();
        for digest in self.blobs.digests()? {
            let name = digest.to_string();
            if kept.contains(&name) || out.contains(&name) {
                continue;
            }
            let old = std::fs::metadata(self.blobs.path(&digest))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t + ORPHAN_AGE < now);
            if old {
                out.insert(name);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Notes that a snapshot of `snapshotter` was removed (see [`ImageStore::dirty`]).
    pub(crate) fn mark_dirty(&self, snapshotter: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(snapshotter.to_string());
    }

    /// Removes the unreachable snapshots, children before parents.
    fn remove_snapshots(
        &self,
        report: &mut Report,
        snapshotters: &dyn Snapshotters,
        listed: &Snapshots,
    ) -> Result<()> {
        let canonical = |name: &str| snapshotters.resolve(name).map(|(n, _)| n);
        let mut left: BTreeSet<SnapshotId> = report.snapshots.iter().cloned().collect();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        loop {
            // Parents of what is left wait for their children.
            let waiting: HashSet<SnapshotId> = left
                .iter()
                .filter_map(|id| {
                    let info = listed.get(id)?;
                    (!info.parent.is_empty()).then(|| (id.0.clone(), info.parent.clone()))
                })
                .collect();
            let round: Vec<SnapshotId> = left
                .iter()
                .filter(|k| !waiting.contains(*k))
                .cloned()
                .collect();
            if round.is_empty() {
                // As containerd after pruning a snapshotter: reclaim the directories now,
                // also those of removals made through the store since the last collection.
                touched.extend(std::mem::take(
                    &mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()),
                ));
                for name in touched {
                    if let Some((_, s)) = snapshotters.resolve(&name) {
                        s.cleanup()?;
                    }
                }
                return Ok(());
            }
            for id in round {
                left.remove(&id);
                let Some((_, s)) = snapshotters.resolve(&id.0) else {
                    continue;
                };
                // A client may have taken hold of it since the plan (an unpack finding the
                // layer there): checked again, and removed, with no hold being taken.
                let _exclusive = self
                    .snapshot_holds
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                if self.snapshot_leased(&id, &canonical)? {
                    tracing::debug!(
                        snapshotter = id.0,
                        snapshot = id.1,
                        "snapshot kept: leased since the collection planned"
                    );
                    report.snapshots.retain(|k| *k != id);
                    continue;
                }
                match s.remove(&id.1) {
                    Ok(()) | Err(snapshotter::Error::NotFound(_)) => {
                        self.snapshot_released(&id.0, &id.1)?;
                        touched.insert(id.0.clone());
                    }
                    // A child of someone else's keeps it (containerd adopted it): it stays.
                    Err(snapshotter::Error::FailedPrecondition(m)) => {
                        tracing::warn!(
                            snapshotter = id.0,
                            snapshot = id.1,
                            reason = m,
                            "snapshot kept"
                        );
                        report.snapshots.retain(|k| *k != id);
                    }
                    Err(e) => return Err(StoreError::Snapshot(e)),
                }
            }
        }
    }
}
