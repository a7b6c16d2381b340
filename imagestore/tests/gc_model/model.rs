//! The reference model: containerd's collection rules (`core/metadata/gc.go`, 2.2) written
//! here, independently of the collector's code: each namespace's objects, the snapshots all
//! namespaces share, and what a collection keeps of them.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Labels, PAST};

/// One namespace's objects in the model.
#[derive(Default, Clone, Debug)]
pub(crate) struct ModelNs {
    pub(crate) content: BTreeMap<String, Labels>,
    /// name → (target digest, labels).
    pub(crate) images: BTreeMap<String, (String, Labels)>,
    /// id → (snapshotter name as written, snapshot key, labels).
    pub(crate) containers: BTreeMap<String, (String, String, Labels)>,
    /// id → (labels, resources as (type, id)).
    pub(crate) leases: BTreeMap<String, (Labels, BTreeSet<(String, String)>)>,
    /// ref → (expected digest, made under a lease).
    pub(crate) ingests: BTreeMap<String, (Option<String>, bool)>,
}

/// A snapshot in the model: parent, labels, the namespace it was made in.
#[derive(Clone, Debug)]
pub(crate) struct ModelSnapshot {
    pub(crate) parent: String,
    pub(crate) labels: Labels,
    pub(crate) namespace: String,
}

#[derive(Default, Clone, Debug)]
pub(crate) struct Model {
    pub(crate) ns: BTreeMap<String, ModelNs>,
    pub(crate) snapshots: BTreeMap<String, ModelSnapshot>,
}

/// A node as the model marks it: kind, id; flat visits are kept apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum N {
    Content(String),
    Image(String),
    Container(String),
    Ingest(String),
    Snapshot(String),
}

pub(crate) fn prefixed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('/'))
}

/// Every name a client may give the one snapshotter instance selects it.
pub(crate) fn snapshotter_known(name: &str) -> bool {
    !name.is_empty()
}

/// The `gc.ref.*` edges of labels.
pub(crate) fn refs(labels: &Labels) -> Vec<N> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if prefixed(k, "containerd.io/gc.ref.content") {
            out.push(N::Content(v.clone()));
        } else if prefixed(k, "containerd.io/gc.ref.image") {
            out.push(N::Image(v.clone()));
        } else if let Some(rest) = k.strip_prefix("containerd.io/gc.ref.snapshot.") {
            let name = rest.split('/').next().unwrap_or("");
            if snapshotter_known(name) {
                out.push(N::Snapshot(v.clone()));
            }
        }
    }
    out
}

/// The `gc.bref.*` sources in labels.
pub(crate) fn brefs(labels: &Labels) -> Vec<N> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if prefixed(k, "containerd.io/gc.bref.content") {
            out.push(N::Content(v.clone()));
        } else if prefixed(k, "containerd.io/gc.bref.image") {
            out.push(N::Image(v.clone()));
        } else if prefixed(k, "containerd.io/gc.bref.container") {
            out.push(N::Container(v.clone()));
        } else if let Some(rest) = k.strip_prefix("containerd.io/gc.bref.snapshot.")
            && snapshotter_known(rest.split('/').next().unwrap_or(""))
        {
            out.push(N::Snapshot(v.clone()));
        }
    }
    out
}

pub(crate) fn expired(labels: &Labels) -> bool {
    labels
        .get("containerd.io/gc.expire")
        .is_some_and(|v| v == PAST)
}

pub(crate) fn rooted(labels: &Labels) -> bool {
    labels
        .keys()
        .any(|k| k.starts_with("containerd.io/gc.root"))
}

impl Model {
    /// What namespace `name` reaches: (full visits, flat visits), to a fixpoint.
    pub(crate) fn reach(&self, name: &str) -> BTreeSet<N> {
        let ns = &self.ns[name];
        let mut full: BTreeSet<N> = BTreeSet::new();
        let mut flat: BTreeSet<N> = BTreeSet::new();
        for (labels, resources) in ns.leases.values() {
            if expired(labels) {
                continue;
            }
            let is_flat = labels.contains_key("containerd.io/gc.flat");
            for (kind, id) in resources {
                let node = match kind.as_str() {
                    "content" => N::Content(id.clone()),
                    "images" => N::Image(id.clone()),
                    "ingests" => {
                        full.insert(N::Ingest(id.clone()));
                        continue;
                    }
                    k if k.starts_with("snapshots/") => N::Snapshot(id.clone()),
                    _ => continue,
                };
                if is_flat {
                    flat.insert(node);
                } else {
                    full.insert(node);
                }
            }
        }
        for (image, (_, labels)) in &ns.images {
            if !expired(labels) {
                full.insert(N::Image(image.clone()));
            }
        }
        for (reference, (_, leased)) in &ns.ingests {
            if !leased {
                full.insert(N::Ingest(reference.clone()));
            }
        }
        for (digest, labels) in &ns.content {
            if rooted(labels) {
                full.insert(N::Content(digest.clone()));
            }
        }
        for id in ns.containers.keys() {
            full.insert(N::Container(id.clone()));
        }
        for (key, s) in &self.snapshots {
            if s.namespace == name && rooted(&s.labels) {
                full.insert(N::Snapshot(key.clone()));
            }
        }
        // Back-references: source → the objects naming it.
        let mut back: Vec<(N, N)> = Vec::new();
        for (d, labels) in &ns.content {
            back.extend(
                brefs(labels)
                    .into_iter()
                    .map(|b| (b, N::Content(d.clone()))),
            );
        }
        for (i, (_, labels)) in &ns.images {
            back.extend(brefs(labels).into_iter().map(|b| (b, N::Image(i.clone()))));
        }
        for (c, (_, _, labels)) in &ns.containers {
            back.extend(
                brefs(labels)
                    .into_iter()
                    .map(|b| (b, N::Container(c.clone()))),
            );
        }
        for (k, s) in &self.snapshots {
            back.extend(
                brefs(&s.labels)
                    .into_iter()
                    .map(|b| (b, N::Snapshot(k.clone()))),
            );
        }
        loop {
            let before = (full.len(), flat.len());
            for node in full.clone() {
                let mut next = Vec::new();
                match &node {
                    N::Content(d) => {
                        if let Some(labels) = ns.content.get(d) {
                            next.extend(refs(labels));
                        }
                    }
                    N::Image(i) => {
                        if let Some((target, labels)) = ns.images.get(i) {
                            next.push(N::Content(target.clone()));
                            next.extend(refs(labels));
                        }
                    }
                    N::Container(c) => {
                        if let Some((snapshotter, key, labels)) = ns.containers.get(c) {
                            if snapshotter_known(snapshotter) {
                                next.push(N::Snapshot(key.clone()));
                            }
                            next.extend(refs(labels));
                        }
                    }
                    N::Ingest(r) => {
                        if let Some((Some(expected), _)) = ns.ingests.get(r) {
                            next.push(N::Content(expected.clone()));
                        }
                    }
                    N::Snapshot(k) => {
                        if let Some(s) = self.snapshots.get(k) {
                            if !s.parent.is_empty() {
                                next.push(N::Snapshot(s.parent.clone()));
                            }
                            next.extend(refs(&s.labels));
                        }
                    }
                }
                next.extend(
                    back.iter()
                        .filter(|(b, _)| *b == node)
                        .map(|(_, x)| x.clone()),
                );
                full.extend(next);
            }
            for node in flat.clone() {
                match &node {
                    N::Image(i) => {
                        if let Some((target, _)) = ns.images.get(i) {
                            flat.insert(N::Content(target.clone()));
                        }
                    }
                    N::Snapshot(k) => {
                        if let Some(s) = self.snapshots.get(k)
                            && !s.parent.is_empty()
                        {
                            flat.insert(N::Snapshot(s.parent.clone()));
                        }
                    }
                    _ => {}
                }
            }
            if (full.len(), flat.len()) == before {
                break;
            }
        }
        full.extend(flat);
        full
    }

    /// Applies a collection to the model.
    pub(crate) fn collect(&mut self) {
        let names: Vec<String> = self.ns.keys().cloned().collect();
        let mut snapshots_reached = BTreeSet::new();
        for name in &names {
            let reached = self.reach(name);
            let ns = self.ns.get_mut(name).expect("namespace");
            ns.leases.retain(|_, (labels, _)| !expired(labels));
            ns.images
                .retain(|i, _| reached.contains(&N::Image(i.clone())));
            ns.content
                .retain(|d, _| reached.contains(&N::Content(d.clone())));
            ns.ingests
                .retain(|r, _| reached.contains(&N::Ingest(r.clone())));
            for n in reached {
                if let N::Snapshot(k) = n {
                    snapshots_reached.insert(k);
                }
            }
        }
        self.snapshots.retain(|k, _| snapshots_reached.contains(k));
    }

    pub(crate) fn ns(&mut self, name: &str) -> &mut ModelNs {
        self.ns.entry(name.to_string()).or_default()
    }
}
