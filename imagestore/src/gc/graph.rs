//! The reference graph of containerd's collector (`core/metadata/gc.go`, 2.2 rules), and its
//! marking: which nodes are roots, which edges each node has, and what is reachable.
//!
//! Content, images, containers and writes belong to one namespace each, as in containerd.
//! Snapshots do not: a snapshotter's keys are one space shared by every namespace (a second
//! namespace's unpack finds a layer by its chain ID and uses it as it is), so a snapshot
//! node is global, reached from any namespace, and its references lead into the namespace
//! that reached it. A flat lease's resources are nodes of their own kinds, which keep the
//! object (and a snapshot's parents, an image's target) but follow no label and no
//! back-reference; reaching an object flat or not keeps it all the same.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use api::labels::{
    GC_BREF_CONTAINER, GC_BREF_CONTENT, GC_BREF_IMAGE, GC_BREF_SNAPSHOT, GC_EXPIRE, GC_FLAT,
    GC_REF_CONTENT, GC_REF_IMAGE, GC_REF_SNAPSHOT, GC_ROOT,
};
use api::services::containers::v1::Container;
use api::services::content::v1 as content_pb;
use api::services::images::v1::Image;
use api::services::leases::v1::Lease;

use api::resources::{
    CONTENT as RESOURCE_CONTENT, IMAGES as RESOURCE_IMAGES, INGESTS as RESOURCE_INGEST,
    SNAPSHOTS as RESOURCE_SNAPSHOTS,
};

type Labels = HashMap<String, String>;

/// A snapshot: (snapshotter instance, key).
pub type SnapshotId = (String, String);

/// A node of the graph. Snapshots are global; the others are in the namespace being marked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Content(String),
    ContentFlat(String),
    Image(String),
    ImageFlat(String),
    Container(String),
    Ingest(String),
    Snapshot(SnapshotId),
    SnapshotFlat(SnapshotId),
}

/// Maps the snapshotter names clients write (in labels, lease resources, containers) to
/// the instance holding the snapshot, as a Prepare selects it; `None` for a name that
/// selects no instance (its references lead nowhere this store collects).
pub type Canonical<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Whether `key` is `prefix`, or `prefix` followed by `.` or `/` and anything.
fn prefixed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '/']))
}

/// The snapshot a `<prefix><snapshotter>[/anything]` label names with value `key`.
fn snapshot_label(rest: &str, key: &str, canonical: Canonical) -> Option<SnapshotId> {
    let snapshotter = rest.split('/').next().unwrap_or(rest);
    Some((canonical(snapshotter)?, key.to_string()))
}

/// The forward references (`gc.ref.*`) in a set of labels.
pub fn label_refs(labels: &Labels, canonical: Canonical) -> Vec<Node> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if prefixed(k, GC_REF_CONTENT) {
            out.push(Node::Content(v.clone()));
        } else if prefixed(k, GC_REF_IMAGE) {
            out.push(Node::Image(v.clone()));
        } else if let Some(rest) = k.strip_prefix(GC_REF_SNAPSHOT) {
            out.extend(snapshot_label(rest, v, canonical).map(Node::Snapshot));
        }
    }
    out
}

/// The objects that, by the back-references (`gc.bref.*`) in a set of labels, reference the
/// labelled object.
pub fn back_refs(labels: &Labels, canonical: Canonical) -> Vec<Node> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if prefixed(k, GC_BREF_CONTENT) {
            out.push(Node::Content(v.clone()));
        } else if prefixed(k, GC_BREF_IMAGE) {
            out.push(Node::Image(v.clone()));
        } else if prefixed(k, GC_BREF_CONTAINER) {
            out.push(Node::Container(v.clone()));
        } else if let Some(rest) = k.strip_prefix(GC_BREF_SNAPSHOT) {
            out.extend(snapshot_label(rest, v, canonical).map(Node::Snapshot));
        }
    }
    out
}

/// Whether labels make their object a root (`containerd.io/gc.root`, any key it begins).
pub fn is_root(labels: &Labels) -> bool {
    labels.keys().any(|k| k.starts_with(GC_ROOT))
}

/// Whether a `containerd.io/gc.expire` label (RFC 3339) has passed: strictly before `now`.
/// An expiry that does not parse never passes, as in containerd.
pub fn expired(labels: &Labels, now: SystemTime) -> bool {
    labels
        .get(GC_EXPIRE)
        .and_then(|t| api::time::parse_rfc3339(t))
        .is_some_and(|t| t < now)
}

/// A write in progress as the collector sees it.
pub struct IngestState {
    pub reference: String,
    /// The digest it is expected to become, if said.
    pub expected: Option<String>,
    /// Until when it is kept without a lease; `None` for a write made under a lease (kept
    /// only while a lease holds it).
    pub expires: Option<SystemTime>,
}

/// One namespace's records, as marking needs them.
#[derive(Default)]
pub struct Namespace {
    pub images: Vec<Image>,
    pub containers: Vec<Container>,
    /// Leases and their resources: (type, id).
    pub leases: Vec<(Lease, Vec<(String, String)>)>,
    pub content: Vec<content_pb::Info>,
    pub ingests: Vec<IngestState>,
    /// The store's snapshots made in this namespace that are roots (`gc.root`).
    pub snapshot_roots: Vec<SnapshotId>,
}

/// A snapshot as listed by its snapshotter.
pub struct SnapshotInfo {
    pub parent: String,
    pub labels: Labels,
}

/// Every snapshot of the snapshotters the store has snapshots in.
pub type Snapshots = HashMap<SnapshotId, SnapshotInfo>;

/// What is reachable in one namespace (flat and not alike), and the snapshots reached
/// from it.
#[derive(Default, Debug)]
pub struct Marked {
    pub content: HashSet<String>,
    pub images: HashSet<String>,
    pub ingests: HashSet<String>,
    pub snapshots: HashSet<SnapshotId>,
}

/// Marks what namespace `n` reaches (see the module doc). `snapshot_brefs` are the
/// back-references snapshots carry, which hold in every namespace.
pub fn mark(
    n: &Namespace,
    snapshots: &Snapshots,
    snapshot_brefs: &HashMap<Node, Vec<Node>>,
    canonical: Canonical,
    now: SystemTime,
) -> Marked {
    let content: HashMap<&str, &Labels> = n
        .content
        .iter()
        .map(|i| (i.digest.as_str(), &i.labels))
        .collect();
    let images: HashMap<&str, &Image> = n.images.iter().map(|i| (i.name.as_str(), i)).collect();
    let containers: HashMap<&str, &Container> =
        n.containers.iter().map(|c| (c.id.as_str(), c)).collect();
    let ingests: HashMap<&str, &IngestState> = n
        .ingests
        .iter()
        .map(|i| (i.reference.as_str(), i))
        .collect();
    let mut brefs: HashMap<Node, Vec<Node>> = HashMap::new();
    let mut add_brefs = |labels: &Labels, this: Node| {
        for from in back_refs(labels, canonical) {
            brefs.entry(from).or_default().push(this.clone());
        }
    };
    for info in &n.content {
        add_brefs(&info.labels, Node::Content(info.digest.clone()));
    }
    for image in &n.images {
        add_brefs(&image.labels, Node::Image(image.name.clone()));
    }
    for c in &n.containers {
        add_brefs(&c.labels, Node::Container(c.id.clone()));
    }

    let mut todo: Vec<Node> = Vec::new();
    for (lease, resources) in &n.leases {
        if expired(&lease.labels, now) {
            continue;
        }
        let flat = lease.labels.contains_key(GC_FLAT);
        for (kind, id) in resources {
            let node = match kind.as_str() {
                RESOURCE_CONTENT if flat => Node::ContentFlat(id.clone()),
                RESOURCE_CONTENT => Node::Content(id.clone()),
                RESOURCE_IMAGES if flat => Node::ImageFlat(id.clone()),
                RESOURCE_IMAGES => Node::Image(id.clone()),
                RESOURCE_INGEST => Node::Ingest(id.clone()),
                k => match k.strip_prefix(RESOURCE_SNAPSHOTS).and_then(canonical) {
                    Some(s) if flat => Node::SnapshotFlat((s, id.clone())),
                    Some(s) => Node::Snapshot((s, id.clone())),
                    None => continue,
                },
            };
            todo.push(node);
        }
    }
    for image in &n.images {
        if !expired(&image.labels, now) {
            todo.push(Node::Image(image.name.clone()));
        }
    }
    for ingest in &n.ingests {
        if ingest.expires.is_some_and(|t| t > now) {
            todo.push(Node::Ingest(ingest.reference.clone()));
        }
    }
    for info in &n.content {
        if is_root(&info.labels) {
            todo.push(Node::Content(info.digest.clone()));
        }
    }
    todo.extend(n.containers.iter().map(|c| Node::Container(c.id.clone())));
    todo.extend(n.snapshot_roots.iter().cloned().map(Node::Snapshot));

    let mut seen: HashSet<Node> = HashSet::new();
    let mut marked = Marked::default();
    while let Some(node) = todo.pop() {
        if !seen.insert(node.clone()) {
            continue;
        }
        for by_target in [&brefs, snapshot_brefs] {
            if let Some(from) = by_target.get(&node) {
                todo.extend(from.iter().cloned());
            }
        }
        match node {
            Node::Content(digest) => {
                if let Some(labels) = content.get(digest.as_str()) {
                    todo.extend(label_refs(labels, canonical));
                }
                marked.content.insert(digest);
            }
            Node::ContentFlat(digest) => {
                marked.content.insert(digest);
            }
            Node::Image(name) => {
                if let Some(image) = images.get(name.as_str()) {
                    if let Some(t) = &image.target {
                        todo.push(Node::Content(t.digest.clone()));
                    }
                    todo.extend(label_refs(&image.labels, canonical));
                }
                marked.images.insert(name);
            }
            Node::ImageFlat(name) => {
                if let Some(t) = images.get(name.as_str()).and_then(|i| i.target.as_ref()) {
                    todo.push(Node::ContentFlat(t.digest.clone()));
                }
                marked.images.insert(name);
            }
            Node::Container(id) => {
                if let Some(c) = containers.get(id.as_str()) {
                    if !c.snapshotter.is_empty()
                        && let Some(s) = canonical(&c.snapshotter)
                    {
                        todo.push(Node::Snapshot((s, c.snapshot_key.clone())));
                    }
                    todo.extend(label_refs(&c.labels, canonical));
                }
            }
            Node::Ingest(reference) => {
                if let Some(expected) = ingests
                    .get(reference.as_str())
                    .and_then(|i| i.expected.as_ref())
                {
                    todo.push(Node::Content(expected.clone()));
                }
                marked.ingests.insert(reference);
            }
            Node::Snapshot(id) => {
                if let Some(info) = snapshots.get(&id) {
                    if !info.parent.is_empty() {
                        todo.push(Node::Snapshot((id.0.clone(), info.parent.clone())));
                    }
                    todo.extend(label_refs(&info.labels, canonical));
                }
                marked.snapshots.insert(id);
            }
            Node::SnapshotFlat(id) => {
                if let Some(info) = snapshots.get(&id)
                    && !info.parent.is_empty()
                {
                    todo.push(Node::SnapshotFlat((id.0.clone(), info.parent.clone())));
                }
                marked.snapshots.insert(id);
            }
        }
    }
    marked
}

/// The back-references snapshots carry: referencing node → the snapshots it keeps.
pub fn snapshot_back_refs(snapshots: &Snapshots, canonical: Canonical) -> HashMap<Node, Vec<Node>> {
    let mut out: HashMap<Node, Vec<Node>> = HashMap::new();
    for (id, info) in snapshots {
        for from in back_refs(&info.labels, canonical) {
            out.entry(from)
                .or_default()
                .push(Node::Snapshot(id.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(name: &str) -> Option<String> {
        (name != "unknown").then(|| "strata".to_string())
    }

    #[test]
    fn label_references() {
        let labels: Labels = [
            ("containerd.io/gc.ref.content.l.0", "sha256:a"),
            ("containerd.io/gc.ref.content", "sha256:b"),
            ("containerd.io/gc.ref.contentbad", "sha256:x"),
            ("containerd.io/gc.ref.image/x", "img"),
            ("containerd.io/gc.ref.snapshot.overlayfs", "k1"),
            ("containerd.io/gc.ref.snapshot.strata/1", "k2"),
            ("containerd.io/gc.ref.snapshot.unknown", "k3"),
            ("other", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut refs = label_refs(&labels, &canonical);
        refs.sort();
        let snap = |k: &str| Node::Snapshot(("strata".into(), k.into()));
        assert_eq!(
            refs,
            [
                Node::Content("sha256:a".into()),
                Node::Content("sha256:b".into()),
                Node::Image("img".into()),
                snap("k1"),
                snap("k2"),
            ]
        );
    }
}
