//! Garbage collection with containerd's semantics (`core/metadata/gc.go`), per namespace.
//!
//! Roots: images (their target), containers (their snapshot), leases until they expire
//! (`containerd.io/gc.expire`; what they hold), content and snapshots labelled
//! `containerd.io/gc.root`, and writes in progress that are leased or younger than a day.
//! Edges: `containerd.io/gc.ref.content[.<anything>]` labels (to a blob),
//! `containerd.io/gc.ref.snapshot.<snapshotter>[/<anything>]` labels (to a snapshot), and a
//! snapshot's parent. A lease labelled `containerd.io/gc.flat` holds its resources without
//! their references.
//!
//! Unreachable: expired leases are deleted, blob records dropped (a blob whose last record
//! goes is deleted), writes aborted, and this store's snapshots (see [`super::snapshots`])
//! removed, children first. Nothing reachable is touched, and each step is atomic on its
//! own, so a crash leaves a state the next collection finishes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use differ::Digest;

use super::content::{RESOURCE_CONTENT, RESOURCE_INGEST};
use super::leases::RESOURCE_SNAPSHOTS;
use super::meta::{Kind, Read, key};
use super::{ImageStore, Result, StoreError};
use api::services::containers::v1::Container;
use api::services::content::v1 as content_pb;
use api::services::images::v1::Image;
use api::services::leases::v1::Lease;

const GC_ROOT: &str = "containerd.io/gc.root";
const GC_EXPIRE: &str = "containerd.io/gc.expire";
const GC_FLAT: &str = "containerd.io/gc.flat";
const REF_CONTENT: &str = "containerd.io/gc.ref.content";
const REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// How long a write without a lease is kept, as containerd's.
const INGEST_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Every snapshot of a snapshotter: key → (parent, labels).
pub type SnapshotTree = HashMap<String, (String, HashMap<String, String>)>;

/// What the collector sees of, and does to, the daemon's snapshotters.
pub trait SnapshotAccess {
    /// Every snapshot of snapshotter `name`.
    fn snapshots(&self, name: &str) -> Result<SnapshotTree>;
    /// Removes snapshot `key` of snapshotter `name`.
    fn remove(&self, name: &str, key: &str) -> Result<()>;
    /// Reclaims the directories of removed snapshots of snapshotter `name`.
    fn cleanup(&self, name: &str) -> Result<()>;
}

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (namespace, lease id).
    pub leases: Vec<(String, String)>,
    /// (namespace, digest).
    pub content: Vec<(String, String)>,
    /// (namespace, ref).
    pub ingests: Vec<(String, String)>,
    /// (namespace, snapshotter, key).
    pub snapshots: Vec<(String, String, String)>,
    /// Blob files deleted.
    pub blobs: Vec<String>,
}

impl Report {
    /// Whether nothing was (or would be) removed.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
            && self.content.is_empty()
            && self.ingests.is_empty()
            && self.snapshots.is_empty()
            && self.blobs.is_empty()
    }
}

/// A node of the reference graph, within one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    Content(String),
    Snapshot(String, String),
    Ingest(String),
}

/// The references in a set of labels.
fn label_refs(labels: &HashMap<String, String>) -> Vec<Node> {
    let mut out = Vec::new();
    for (k, v) in labels {
        let rest = k.strip_prefix(REF_CONTENT);
        if rest.is_some_and(|r| r.is_empty() || r.starts_with(['.', '/'])) {
            out.push(Node::Content(v.clone()));
        } else if let Some(rest) = k.strip_prefix(REF_SNAPSHOT) {
            let snapshotter = rest.split('/').next().unwrap_or(rest);
            out.push(Node::Snapshot(snapshotter.to_string(), v.clone()));
        }
    }
    out
}

/// Whether a lease's `containerd.io/gc.expire` (RFC 3339) has passed.
fn expired(labels: &HashMap<String, String>, now: SystemTime) -> bool {
    labels
        .get(GC_EXPIRE)
        .and_then(|t| api::time::parse_rfc3339(t))
        .is_some_and(|t| t <= now)
}

/// One namespace's records, as the mark phase needs them.
#[derive(Default)]
struct Namespace {
    images: Vec<Image>,
    containers: Vec<Container>,
    leases: Vec<(Lease, Vec<(String, String)>)>,
    content: Vec<content_pb::Info>,
    ingests: Vec<(String, content_pb::Status)>,
    /// This store's snapshots here: (snapshotter, key).
    snapshots: Vec<(String, String)>,
}

/// Blob files without any record older than this are leftovers of a crash between placing
/// a blob and recording it, and are deleted; younger ones may be that very moment.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// The snapshotters this store has snapshots of, and every snapshot of theirs.
type Listed = HashMap<String, SnapshotTree>;

/// Reads one namespace's records.
fn read_namespace(r: &impl Read, ns: &str, snapshots: Vec<(String, String)>) -> Result<Namespace> {
    let mut n = Namespace {
        images: r
            .list(Kind::Image, ns)?
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
        containers: r
            .list(Kind::Container, ns)?
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
        content: r
            .list(Kind::Content, ns)?
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
        ingests: r.list(Kind::Ingest, ns)?,
        snapshots,
        ..Default::default()
    };
    for (_, lease) in r.list::<Lease>(Kind::Lease, ns)? {
        let resources = r.resources(ns, &lease.id)?;
        n.leases.push((lease, resources));
    }
    Ok(n)
}

/// What is unreachable, everywhere.
fn plan(r: &impl Read, listed: &Listed, now: SystemTime) -> Result<Report> {
    let mut report = Report::default();
    let mut owned = ImageStore::snapshots_by_namespace(r)?;
    let mut namespaces: BTreeSet<String> = r.namespaces()?.into_iter().collect();
    namespaces.extend(owned.keys().cloned());
    for ns in namespaces {
        let n = read_namespace(r, &ns, owned.remove(&ns).unwrap_or_default())?;
        let marked = mark(&n, listed, now);
        for (lease, _) in &n.leases {
            if expired(&lease.labels, now) {
                report.leases.push((ns.clone(), lease.id.clone()));
            }
        }
        for info in &n.content {
            if !marked.contains(&Node::Content(info.digest.clone())) {
                report.content.push((ns.clone(), info.digest.clone()));
            }
        }
        for (reference, _) in &n.ingests {
            if !marked.contains(&Node::Ingest(reference.clone())) {
                report.ingests.push((ns.clone(), reference.clone()));
            }
        }
        for (snapshotter, snapshot) in &n.snapshots {
            if !marked.contains(&Node::Snapshot(snapshotter.clone(), snapshot.clone())) {
                report
                    .snapshots
                    .push((ns.clone(), snapshotter.clone(), snapshot.clone()));
            }
        }
    }
    report.leases.sort();
    report.content.sort();
    report.ingests.sort();
    report.snapshots.sort();
    Ok(report)
}

impl ImageStore {
    /// Collects garbage in every namespace; with `dry_run`, only says what would go. The
    /// metadata is marked and swept in one write transaction, so no client changes it
    /// meanwhile; blob files, writes and snapshots go after it.
    pub fn collect(&self, snapshots: &dyn SnapshotAccess, dry_run: bool) -> Result<Report> {
        let now = SystemTime::now();
        let snapshotters = self.meta.read(|r| r.namespaces_of(Kind::Snapshot))?;
        let mut listed = Listed::new();
        for name in snapshotters {
            let all = snapshots.snapshots(&name)?;
            listed.insert(name, all);
        }
        if dry_run {
            let mut report = self.meta.read(|r| plan(r, &listed, now))?;
            report.blobs = self
                .meta
                .read(|r| self.orphan_blobs(r, &report.content, now))?;
            return Ok(report);
        }
        let collecting = self.blobs.collect();
        let mut report = self.meta.write(|w| {
            let mut report = plan(w, &listed, now)?;
            report.blobs = self.orphan_blobs(w, &report.content, now)?;
            for (ns, id) in &report.leases {
                w.delete(Kind::Lease, &key(ns, &[id]))?;
                w.clear_resources(ns, id)?;
            }
            for (ns, digest) in &report.content {
                w.delete(Kind::Content, &key(ns, &[digest]))?;
            }
            for (ns, reference) in &report.ingests {
                w.delete(Kind::Ingest, &key(ns, &[reference]))?;
            }
            Ok(report)
        })?;
        for (ns, reference) in &report.ingests {
            match self.blobs.abort(&format!("{ns}/{reference}")) {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for digest in &report.blobs {
            if let Ok(d) = Digest::parse(digest) {
                self.blobs.delete(&d)?;
            }
        }
        drop(collecting);
        self.remove_snapshots(&mut report, snapshots, &listed)?;
        Ok(report)
    }

    /// Blobs left without any record once the `dropped` records go, and blobs that had none
    /// for longer than [`ORPHAN_AGE`].
    fn orphan_blobs(
        &self,
        r: &impl Read,
        dropped: &[(String, String)],
        now: SystemTime,
    ) -> Result<Vec<String>> {
        let dropped_set: HashSet<(&str, &str)> = dropped
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_str()))
            .collect();
        let mut kept = HashSet::new();
        for ns in r.namespaces_of(Kind::Content)? {
            for (digest, _) in r.list::<content_pb::Info>(Kind::Content, &ns)? {
                if !dropped_set.contains(&(ns.as_str(), digest.as_str())) {
                    kept.insert(digest);
                }
            }
        }
        let mut out = BTreeSet::new();
        for (_, digest) in dropped {
            if !kept.contains(digest) {
                out.insert(digest.clone());
            }
        }
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

    /// Removes the unreachable snapshots, children before parents.
    fn remove_snapshots(
        &self,
        report: &mut Report,
        snapshots: &dyn SnapshotAccess,
        listed: &Listed,
    ) -> Result<()> {
        let mut left: BTreeSet<(String, String)> = report
            .snapshots
            .iter()
            .map(|(_, s, k)| (s.clone(), k.clone()))
            .collect();
        loop {
            // Parents of what is left wait for their children.
            let waiting: HashSet<(String, String)> = left
                .iter()
                .filter_map(|(s, k)| {
                    let (parent, _) = listed.get(s)?.get(k)?;
                    (!parent.is_empty()).then(|| (s.clone(), parent.clone()))
                })
                .collect();
            let round: Vec<(String, String)> = left
                .iter()
                .filter(|k| !waiting.contains(*k))
                .cloned()
                .collect();
            if round.is_empty() {
                // As containerd after pruning a snapshotter: reclaim the directories now.
                let touched: BTreeSet<&String> =
                    report.snapshots.iter().map(|(_, s, _)| s).collect();
                for snapshotter in touched {
                    snapshots.cleanup(snapshotter)?;
                }
                return Ok(());
            }
            for (snapshotter, snapshot) in round {
                left.remove(&(snapshotter.clone(), snapshot.clone()));
                match snapshots.remove(&snapshotter, &snapshot) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {
                        self.snapshot_released(&snapshotter, &snapshot)?;
                    }
                    // A child of someone else's keeps it (containerd adopted it): it stays.
                    Err(StoreError::FailedPrecondition(m)) => {
                        tracing::warn!(snapshotter, snapshot, reason = m, "snapshot kept");
                        report
                            .snapshots
                            .retain(|(_, s, k)| (s, k) != (&snapshotter, &snapshot));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Everything reachable in one namespace.
fn mark(n: &Namespace, listed: &Listed, now: SystemTime) -> HashSet<Node> {
    let content_labels: HashMap<&str, &HashMap<String, String>> = n
        .content
        .iter()
        .map(|i| (i.digest.as_str(), &i.labels))
        .collect();
    let mut marked: HashSet<Node> = HashSet::new();
    let mut todo: Vec<Node> = Vec::new();
    for image in &n.images {
        if let Some(t) = &image.target {
            todo.push(Node::Content(t.digest.clone()));
        }
        todo.extend(label_refs(&image.labels));
    }
    for c in &n.containers {
        todo.extend(label_refs(&c.labels));
        if !c.snapshot_key.is_empty() {
            todo.push(Node::Snapshot(
                c.snapshotter.clone(),
                c.snapshot_key.clone(),
            ));
        }
    }
    for (lease, resources) in &n.leases {
        if expired(&lease.labels, now) {
            continue;
        }
        let flat = lease.labels.contains_key(GC_FLAT);
        for (kind, id) in resources {
            let node = match kind.as_str() {
                RESOURCE_CONTENT => Node::Content(id.clone()),
                RESOURCE_INGEST => Node::Ingest(id.clone()),
                k => match k.strip_prefix(RESOURCE_SNAPSHOTS) {
                    Some(s) => Node::Snapshot(s.to_string(), id.clone()),
                    None => continue,
                },
            };
            if flat {
                marked.insert(node);
            } else {
                todo.push(node);
            }
        }
    }
    for info in &n.content {
        if info.labels.contains_key(GC_ROOT) {
            todo.push(Node::Content(info.digest.clone()));
        }
    }
    for (snapshotter, snapshot) in &n.snapshots {
        if let Some((_, labels)) = listed.get(snapshotter).and_then(|all| all.get(snapshot))
            && labels.contains_key(GC_ROOT)
        {
            todo.push(Node::Snapshot(snapshotter.clone(), snapshot.clone()));
        }
    }
    for (reference, status) in &n.ingests {
        let started = status
            .started_at
            .as_ref()
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64));
        if started.is_some_and(|t| t + INGEST_EXPIRY > now) {
            todo.push(Node::Ingest(reference.clone()));
        }
    }
    while let Some(node) = todo.pop() {
        if !marked.insert(node.clone()) {
            continue;
        }
        match &node {
            Node::Content(digest) => {
                if let Some(labels) = content_labels.get(digest.as_str()) {
                    todo.extend(label_refs(labels));
                }
            }
            Node::Snapshot(snapshotter, snapshot) => {
                if let Some((parent, labels)) =
                    listed.get(snapshotter).and_then(|a| a.get(snapshot))
                {
                    if !parent.is_empty() {
                        todo.push(Node::Snapshot(snapshotter.clone(), parent.clone()));
                    }
                    todo.extend(label_refs(labels));
                }
            }
            Node::Ingest(_) => {}
        }
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_references() {
        let labels: HashMap<String, String> = [
            ("containerd.io/gc.ref.content.l.0", "sha256:a"),
            ("containerd.io/gc.ref.content", "sha256:b"),
            ("containerd.io/gc.ref.snapshot.strata", "k1"),
            ("containerd.io/gc.ref.snapshot.strata/1", "k2"),
            ("other", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut refs = label_refs(&labels);
        refs.sort();
        assert_eq!(
            refs,
            [
                Node::Content("sha256:a".into()),
                Node::Content("sha256:b".into()),
                Node::Snapshot("strata".into(), "k1".into()),
                Node::Snapshot("strata".into(), "k2".into()),
            ]
        );
    }
}
