//! A model-based test of the collector: random sequences of what clients do (blobs, images,
//! containers, leases flat or expired and their resources, writes in progress, snapshots
//! with parents, label edits, deletions, in three namespaces) are applied both to a real
//! store (over a native snapshotter, in process, no root) and to a small reference model of
//! containerd's collection rules written here, independently of the collector's code. After
//! every collection the store must hold exactly what the model says survives.
//!
//! The model follows `core/metadata/gc.go` (containerd 2.2): roots are leases that have not
//! expired (with what they hold), images that have not expired, containers, blobs and the
//! store's snapshots labelled `gc.root*`, writes made without a lease; edges are an image's
//! target, a container's snapshot, a snapshot's parent, a write's expected blob, `gc.ref.*`
//! labels and `gc.bref.*` back-references; a flat lease's objects keep their snapshot
//! parents and image targets but follow no label. Snapshots are one space shared by the
//! namespaces (Strata's snapshotter keys are global): one survives if any namespace reaches
//! it. Snapshotter names in references are resolved as a Prepare resolves them.
//!
//! `STRATA_GC_MODEL_SEQUENCES` (default 2000) sets how many sequences run,
//! `STRATA_GC_MODEL_SECONDS` instead runs sequences for that long, `STRATA_GC_MODEL_THREADS`
//! on how many threads (default: one per CPU); `STRATA_GC_MODEL_SEED` replays one sequence.
//! A failure prints its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use api::services::containers::v1::{Container, container::Runtime};
use api::services::images::v1::Image;
use api::services::leases::v1::Resource;
use api::types::Descriptor;
use imagestore::{Caller, ImageStore, Snapshotters, StoreError, StoreSnapshots};
use snapshotter::native::{Native, NativeSnapshotter};
use snapshotter::{Filters, Snapshotter};

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const BLOBS: usize = 8;
const SNAPSHOTS: usize = 6;
const NAMES: usize = 3;
const PAST: &str = "2000-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";

/// xorshift64*: a sequence's randomness from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

type Labels = BTreeMap<String, String>;

fn blob_data(i: usize) -> Vec<u8> {
    format!("blob number {i}").into_bytes()
}

fn digest_of(data: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(data);
    h.finish().0.to_string()
}

/// One namespace's objects in the model.
#[derive(Default, Clone, Debug)]
struct ModelNs {
    content: BTreeMap<String, Labels>,
    /// name → (target digest, labels).
    images: BTreeMap<String, (String, Labels)>,
    /// id → (snapshotter name as written, snapshot key, labels).
    containers: BTreeMap<String, (String, String, Labels)>,
    /// id → (labels, resources as (type, id)).
    leases: BTreeMap<String, (Labels, BTreeSet<(String, String)>)>,
    /// ref → (expected digest, made under a lease).
    ingests: BTreeMap<String, (Option<String>, bool)>,
}

/// A snapshot in the model: parent, labels, the namespace it was made in.
#[derive(Clone, Debug)]
struct ModelSnapshot {
    parent: String,
    labels: Labels,
    namespace: String,
}

#[derive(Default, Clone, Debug)]
struct Model {
    ns: BTreeMap<String, ModelNs>,
    snapshots: BTreeMap<String, ModelSnapshot>,
}

/// A node as the model marks it: kind, id; flat visits are kept apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum N {
    Content(String),
    Image(String),
    Container(String),
    Ingest(String),
    Snapshot(String),
}

fn prefixed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('/'))
}

/// Every name a client may give the one snapshotter instance selects it.
fn snapshotter_known(name: &str) -> bool {
    !name.is_empty()
}

/// The `gc.ref.*` edges of labels.
fn refs(labels: &Labels) -> Vec<N> {
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
fn brefs(labels: &Labels) -> Vec<N> {
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

fn expired(labels: &Labels) -> bool {
    labels
        .get("containerd.io/gc.expire")
        .is_some_and(|v| v == PAST)
}

fn rooted(labels: &Labels) -> bool {
    labels
        .keys()
        .any(|k| k.starts_with("containerd.io/gc.root"))
}

impl Model {
    /// What namespace `name` reaches: (full visits, flat visits), to a fixpoint.
    fn reach(&self, name: &str) -> BTreeSet<N> {
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
    fn collect(&mut self) {
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

    fn ns(&mut self, name: &str) -> &mut ModelNs {
        self.ns.entry(name.to_string()).or_default()
    }
}

/// The one native snapshotter, named `strata`, selected by any name.
struct One(Arc<dyn Snapshotter>);

impl Snapshotters for One {
    fn resolve(&self, name: &str) -> Option<(String, Arc<dyn Snapshotter>)> {
        snapshotter_known(name).then(|| ("strata".to_string(), Arc::clone(&self.0)))
    }
}

/// A store and its snapshotter in temporary directories.
struct Real {
    store: Arc<ImageStore>,
    snapshots: StoreSnapshots,
    snapshotter: Arc<dyn Snapshotter>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Real {
    fn new() -> Self {
        // tmpfs where there is one: the test is about the collector, not the disk's flushes.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let sdir = tempfile::tempdir_in(&base).unwrap();
        let snap = tempfile::tempdir_in(&base).unwrap();
        let store = Arc::new(ImageStore::open(sdir.path()).unwrap());
        let snapshotter: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(snap.path(), Native, Default::default()).unwrap());
        let snapshots =
            StoreSnapshots::new(Arc::clone(&store), Arc::new(One(Arc::clone(&snapshotter))));
        Real {
            store,
            snapshots,
            snapshotter,
            _dirs: (sdir, snap),
        }
    }
}

fn labels_of(pairs: &[(String, String)]) -> Labels {
    pairs.iter().cloned().collect()
}

fn hash(labels: &Labels) -> std::collections::HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// One step of a sequence, applied to both; a description for the failure message.
fn step(
    rng: &mut Rng,
    model: &mut Model,
    real: &Real,
    digests: &[String],
    counter: &mut u64,
) -> String {
    let name = rng.pick(&NAMESPACES).to_string();
    *counter += 1;
    let n = *counter;
    // A label that references something, or marks a root, or nothing.
    let reference = |rng: &mut Rng| -> Vec<(String, String)> {
        match rng.below(9) {
            0 => vec![(
                format!("containerd.io/gc.ref.content.x{}", rng.below(2)),
                rng.pick(digests).clone(),
            )],
            1 => vec![(
                "containerd.io/gc.ref.content".into(),
                rng.pick(digests).clone(),
            )],
            2 => vec![(
                format!(
                    "containerd.io/gc.ref.snapshot.{}",
                    rng.pick(&["strata", "overlayfs"])
                ),
                format!("s{}", rng.below(SNAPSHOTS)),
            )],
            3 => vec![(
                "containerd.io/gc.ref.image".into(),
                format!("img{}", rng.below(NAMES)),
            )],
            4 => vec![("containerd.io/gc.root".into(), "yes".into())],
            5 => vec![(
                "containerd.io/gc.bref.content.x".into(),
                rng.pick(digests).clone(),
            )],
            6 => vec![(
                "containerd.io/gc.bref.image".into(),
                format!("img{}", rng.below(NAMES)),
            )],
            7 => vec![(
                "containerd.io/gc.ref.contentbad".into(),
                rng.pick(digests).clone(),
            )],
            _ => vec![],
        }
    };
    let leases: Vec<String> = model.ns(&name).leases.keys().cloned().collect();
    match rng.below(16) {
        0 | 1 => {
            let i = rng.below(BLOBS);
            let data = blob_data(i);
            let lease = if rng.chance(50) && !leases.is_empty() {
                Some(rng.pick(&leases).clone())
            } else {
                None
            };
            let labels = labels_of(&reference(rng));
            let reference_name = format!("w{n}");
            let result =
                real.store
                    .content_writer(&name, &reference_name, 0, None, lease.as_deref());
            let mut w = result.unwrap();
            w.write_at(0, &data).unwrap();
            let committed = real
                .store
                .content_commit(w, &reference_name, 0, None, hash(&labels));
            let digest = digest_of(&data);
            let m = model.ns(&name);
            match committed {
                Ok(_) => {
                    m.content.insert(digest.clone(), labels.clone());
                }
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => panic!("commit: {e}"),
            }
            if let Some(l) = &lease {
                m.leases
                    .get_mut(l)
                    .expect("lease")
                    .1
                    .insert(("content".into(), digest.clone()));
            }
            format!("put blob {i} in {name} lease {lease:?} labels {labels:?}")
        }
        2 => {
            let have: Vec<String> = model.ns(&name).content.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let d = rng.pick(&have).clone();
            real.store.content_delete(&name, &d).unwrap();
            model.ns(&name).content.remove(&d);
            format!("delete blob {d} in {name}")
        }
        3 => {
            let image = format!("img{}", rng.below(NAMES));
            let target = rng.pick(digests).clone();
            let mut labels = labels_of(&reference(rng));
            match rng.below(4) {
                0 => {
                    labels.insert("containerd.io/gc.expire".into(), PAST.into());
                }
                1 => {
                    labels.insert("containerd.io/gc.expire".into(), FUTURE.into());
                }
                _ => {}
            }
            let _ = real.store.image_delete(&name, &image, None, None);
            real.store
                .image_create(
                    &name,
                    Image {
                        name: image.clone(),
                        target: Some(Descriptor {
                            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                            digest: target.clone(),
                            size: 1,
                            ..Default::default()
                        }),
                        labels: hash(&labels),
                        ..Default::default()
                    },
                    None,
                )
                .unwrap();
            model
                .ns(&name)
                .images
                .insert(image.clone(), (target.clone(), labels.clone()));
            format!("image {image} in {name} → {target} labels {labels:?}")
        }
        4 => {
            let have: Vec<String> = model.ns(&name).images.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let i = rng.pick(&have).clone();
            real.store.image_delete(&name, &i, None, None).unwrap();
            model.ns(&name).images.remove(&i);
            format!("delete image {i} in {name}")
        }
        5 => {
            let id = format!("c{}", rng.below(NAMES));
            let snapshotter = rng.pick(&["strata", "overlayfs", ""]).to_string();
            let key = if snapshotter.is_empty() {
                String::new()
            } else {
                format!("s{}", rng.below(SNAPSHOTS))
            };
            let labels = labels_of(&reference(rng));
            let _ = real.store.container_delete(&name, &id);
            real.store
                .container_create(
                    &name,
                    Container {
                        id: id.clone(),
                        snapshotter: snapshotter.clone(),
                        snapshot_key: key.clone(),
                        labels: hash(&labels),
                        runtime: Some(Runtime {
                            name: "io.containerd.runc.v2".into(),
                            options: None,
                        }),
                        spec: Some(prost_types::Any::default()),
                        ..Default::default()
                    },
                )
                .unwrap();
            model.ns(&name).containers.insert(
                id.clone(),
                (snapshotter.clone(), key.clone(), labels.clone()),
            );
            format!("container {id} in {name} on {snapshotter}/{key} labels {labels:?}")
        }
        6 => {
            let have: Vec<String> = model.ns(&name).containers.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let c = rng.pick(&have).clone();
            real.store.container_delete(&name, &c).unwrap();
            model.ns(&name).containers.remove(&c);
            format!("delete container {c} in {name}")
        }
        7 => {
            let id = format!("l{n}");
            let mut labels = Labels::new();
            if rng.chance(30) {
                labels.insert("containerd.io/gc.flat".into(), "true".into());
            }
            if rng.chance(20) {
                labels.insert("containerd.io/gc.expire".into(), PAST.into());
            }
            real.store.lease_create(&name, &id, hash(&labels)).unwrap();
            model
                .ns(&name)
                .leases
                .insert(id.clone(), (labels.clone(), BTreeSet::new()));
            format!("lease {id} in {name} labels {labels:?}")
        }
        8 => {
            if leases.is_empty() {
                return "nothing".into();
            }
            let l = rng.pick(&leases).clone();
            real.store.lease_delete(&name, &l).unwrap();
            model.ns(&name).leases.remove(&l);
            format!("delete lease {l} in {name}")
        }
        9 | 10 => {
            if leases.is_empty() {
                return "nothing".into();
            }
            let l = rng.pick(&leases).clone();
            let (kind, id) = match rng.below(4) {
                0 => ("content".to_string(), rng.pick(digests).clone()),
                1 => ("images".to_string(), format!("img{}", rng.below(NAMES))),
                2 => (
                    format!("snapshots/{}", rng.pick(&["strata", "overlayfs"])),
                    format!("s{}", rng.below(SNAPSHOTS)),
                ),
                _ => ("ingests".to_string(), format!("i{}", rng.below(NAMES))),
            };
            real.store
                .lease_add_resource(
                    &name,
                    &l,
                    &Resource {
                        id: id.clone(),
                        r#type: kind.clone(),
                    },
                )
                .unwrap();
            model
                .ns(&name)
                .leases
                .get_mut(&l)
                .expect("lease")
                .1
                .insert((kind.clone(), id.clone()));
            format!("lease {l} in {name} holds {kind} {id}")
        }
        11 | 12 => {
            // A snapshot made through the store under a lease, on a committed parent.
            let key = format!("s{}", rng.below(SNAPSHOTS));
            if model.snapshots.contains_key(&key) || leases.is_empty() {
                return "nothing".into();
            }
            let lease = rng.pick(&leases).clone();
            let parents: Vec<String> = model.snapshots.keys().cloned().collect();
            let parent = if rng.chance(60) && !parents.is_empty() {
                rng.pick(&parents).clone()
            } else {
                String::new()
            };
            let labels = labels_of(&reference(rng));
            let caller = Caller {
                namespace: Some(name.clone()),
                lease: Some(lease.clone()),
            };
            let snapshotter = rng.pick(&["strata", "overlayfs"]).to_string();
            let active = format!("active-{n}");
            real.snapshots
                .prepare(&caller, &snapshotter, &active, &parent, Default::default())
                .unwrap();
            real.snapshots
                .commit(
                    &caller,
                    &snapshotter,
                    &key,
                    &active,
                    hash(&labels).into_iter().collect(),
                    "",
                )
                .unwrap();
            let m = model.ns(&name);
            let held = &mut m.leases.get_mut(&lease).expect("lease").1;
            held.insert(("snapshots/strata".into(), key.clone()));
            model.snapshots.insert(
                key.clone(),
                ModelSnapshot {
                    parent: parent.clone(),
                    labels: labels.clone(),
                    namespace: name.clone(),
                },
            );
            format!("snapshot {key} on {parent:?} in {name} lease {lease} labels {labels:?}")
        }
        13 => {
            let have: Vec<String> = model.snapshots.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let k = rng.pick(&have).clone();
            let has_child = model.snapshots.values().any(|s| s.parent == k);
            let removed = real.snapshots.remove("strata", &k);
            assert_eq!(removed.is_ok(), !has_child, "remove {k}: {removed:?}");
            if !has_child {
                model.snapshots.remove(&k);
            }
            format!("remove snapshot {k}")
        }
        14 => {
            // A write left open: expected or not, under a lease or not.
            let reference_name = format!("i{}", rng.below(NAMES));
            if model.ns(&name).ingests.contains_key(&reference_name) {
                return "nothing".into();
            }
            let expected = if rng.chance(50) {
                Some(rng.pick(digests).clone())
            } else {
                None
            };
            let lease = if rng.chance(50) && !leases.is_empty() {
                Some(rng.pick(&leases).clone())
            } else {
                None
            };
            let opened = real.store.content_writer(
                &name,
                &reference_name,
                0,
                expected.as_deref(),
                lease.as_deref(),
            );
            let m = model.ns(&name);
            match opened {
                Ok(mut w) => {
                    w.write_at(0, b"partial").unwrap();
                    m.ingests
                        .insert(reference_name.clone(), (expected.clone(), lease.is_some()));
                    if let Some(l) = &lease {
                        m.leases
                            .get_mut(l)
                            .expect("lease")
                            .1
                            .insert(("ingests".into(), reference_name.clone()));
                    }
                }
                Err(StoreError::AlreadyExists(_)) => {
                    let d = expected.clone().expect("exists only when expected");
                    if let Some(l) = &lease {
                        m.leases
                            .get_mut(l)
                            .expect("lease")
                            .1
                            .insert(("content".into(), d));
                    }
                }
                Err(e) => panic!("open write: {e}"),
            }
            format!("write {reference_name} in {name} expecting {expected:?} lease {lease:?}")
        }
        _ => {
            let have: Vec<String> = model.ns(&name).content.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let d = rng.pick(&have).clone();
            let labels = labels_of(&reference(rng));
            let mut info = real.store.content_info(&name, &d).unwrap();
            info.labels = hash(&labels);
            real.store
                .content_update(&name, info, &["labels".to_string()])
                .unwrap();
            model.ns(&name).content.insert(d.clone(), labels.clone());
            format!("relabel {d} in {name} as {labels:?}")
        }
    }
}

/// The store's state in the model's terms.
fn observed(real: &Real) -> Model {
    let mut m = Model::default();
    let all = Filters::default();
    for ns in real.store.namespace_list().unwrap() {
        let name = ns.name;
        let mut n = ModelNs::default();
        for info in real.store.content_list(&name, &all).unwrap() {
            n.content
                .insert(info.digest, info.labels.into_iter().collect());
        }
        for image in real.store.image_list(&name, &all).unwrap() {
            let target = image.target.unwrap_or_default().digest;
            n.images
                .insert(image.name, (target, image.labels.into_iter().collect()));
        }
        for c in real.store.container_list(&name, &all).unwrap() {
            n.containers.insert(
                c.id,
                (
                    c.snapshotter,
                    c.snapshot_key,
                    c.labels.into_iter().collect(),
                ),
            );
        }
        for lease in real.store.lease_list(&name, &all).unwrap() {
            let held = real.store.lease_resources(&name, &lease.id).unwrap();
            let held = held.into_iter().map(|r| (r.r#type, r.id)).collect();
            n.leases
                .insert(lease.id, (lease.labels.into_iter().collect(), held));
        }
        for s in real.store.ingest_list(&name, &all).unwrap() {
            n.ingests
                .insert(s.reference, (s.expected.map(|d| d.to_string()), false));
        }
        m.ns.insert(name, n);
    }
    for info in real.snapshotter.list(&all).unwrap() {
        if info.name.starts_with("active-") {
            continue;
        }
        m.snapshots.insert(
            info.name,
            ModelSnapshot {
                parent: info.parent,
                labels: info.labels.into_iter().collect(),
                namespace: String::new(),
            },
        );
    }
    m
}

/// Compares what the store holds with what the model says.
fn compare(model: &Model, real: &Real) -> Result<(), String> {
    let seen = observed(real);
    for name in NAMESPACES {
        let empty = ModelNs::default();
        let want = model.ns.get(name).unwrap_or(&empty);
        let got = seen.ns.get(name).unwrap_or(&empty);
        let pairs: [(&str, Vec<String>, Vec<String>); 5] = [
            (
                "content",
                want.content.keys().cloned().collect(),
                got.content.keys().cloned().collect(),
            ),
            (
                "images",
                want.images.keys().cloned().collect(),
                got.images.keys().cloned().collect(),
            ),
            (
                "containers",
                want.containers.keys().cloned().collect(),
                got.containers.keys().cloned().collect(),
            ),
            (
                "leases",
                want.leases.keys().cloned().collect(),
                got.leases.keys().cloned().collect(),
            ),
            (
                "writes",
                want.ingests.keys().cloned().collect(),
                got.ingests.keys().cloned().collect(),
            ),
        ];
        for (what, w, g) in pairs {
            if w != g {
                return Err(format!("namespace {name} {what}: model {w:?}, store {g:?}"));
            }
        }
    }
    let w: Vec<&String> = model.snapshots.keys().collect();
    let g: Vec<&String> = seen.snapshots.keys().collect();
    if w != g {
        return Err(format!("snapshots: model {w:?}, store {g:?}"));
    }
    // Every record has its blob file; every blob file is recorded or expected.
    let files: BTreeSet<String> = real
        .store
        .blobs()
        .digests()
        .unwrap()
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    let mut recorded = BTreeSet::new();
    let mut expected = BTreeSet::new();
    for n in seen.ns.values() {
        recorded.extend(n.content.keys().cloned());
        expected.extend(n.ingests.values().filter_map(|(e, _)| e.clone()));
    }
    if let Some(d) = recorded.iter().find(|d| !files.contains(*d)) {
        return Err(format!("blob {d} recorded without its file"));
    }
    if let Some(d) = files
        .iter()
        .find(|d| !recorded.contains(*d) && !expected.contains(*d))
    {
        return Err(format!(
            "blob file {d} kept with no record and no write expecting it"
        ));
    }
    Ok(())
}

/// Runs sequence `seed`; what went wrong, with the steps that led there.
fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let digests: Vec<String> = (0..BLOBS).map(|i| digest_of(&blob_data(i))).collect();
    let real = Real::new();
    let mut model = Model::default();
    let mut log = Vec::new();
    let mut counter = 0;
    let steps = 20 + rng.below(40);
    for i in 0..steps {
        if rng.chance(15) || i + 1 == steps {
            let report = real
                .store
                .collect(real.snapshots.snapshotters(), false)
                .map_err(|e| e.to_string())?;
            model.collect();
            log.push(format!("collect: {report:?}"));
            if let Err(e) = compare(&model, &real) {
                return Err(format!("{e}\nafter:\n  {}", log.join("\n  ")));
            }
        } else {
            log.push(step(&mut rng, &mut model, &real, &digests, &mut counter));
        }
    }
    Ok(())
}

#[test]
fn the_collector_keeps_exactly_what_the_model_reaches() {
    if let Some(seed) = std::env::var("STRATA_GC_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        if let Err(e) = run(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let number = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let seconds = number("STRATA_GC_MODEL_SECONDS");
    let default = if seconds.is_some() { u64::MAX } else { 2000 };
    let sequences = number("STRATA_GC_MODEL_SEQUENCES").unwrap_or(default);
    let deadline = seconds.map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let threads = number("STRATA_GC_MODEL_THREADS")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) as u64);
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut i, mut ran) = (t, 0u64);
                while i < sequences && deadline.is_none_or(|d| std::time::Instant::now() < d) {
                    let seed = base.wrapping_add(i);
                    if let Err(e) = run(seed) {
                        return Err(format!(
                            "seed {seed} (STRATA_GC_MODEL_SEED={seed} to replay): {e}"
                        ));
                    }
                    i += threads;
                    ran += 1;
                }
                Ok(ran)
            })
        })
        .collect();
    let mut sequences = 0;
    for w in workers {
        match w.join().expect("worker") {
            Ok(ran) => sequences += ran,
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "{sequences} sequences in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
