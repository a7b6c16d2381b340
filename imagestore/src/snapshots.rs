//! Which snapshots belong to this store. The snapshotters also serve containerd, whose
//! snapshots this store must never collect, and the two cannot be told apart by key or by
//! request header (containerd 2.1 forwards its namespace to proxies). A snapshot is this
//! store's when a client made it under one of this store's leases (as `ctr` does for an
//! import, a pull or a mount against Strata's socket): it is recorded with the lease's
//! namespace and added to the lease, as containerd's metadata layer does, and its committed
//! successor inherits that. Records are keyed `<snapshotter>\0<key>` and hold the namespace
//! (a `Resource` whose id is the namespace). The record is made in this store's index after
//! the snapshotter made the snapshot in its own, so an intent is recorded first and settled
//! at the next start if a crash came between ([`SnapshotIntent`]).

use std::collections::HashMap;
use std::sync::Arc;

use api::services::leases::v1::{Lease, Resource};
use snapshotter::{Labels, Mount, Snapshotter};

use super::gc::graph::SnapshotId;
use super::meta::{Kind, Read, Writer, key};
use super::{ImageStore, Result, StoreError};
use api::resources::SNAPSHOTS as RESOURCE_SNAPSHOTS;

/// The snapshotter instances a daemon serves, as the store reaches them.
pub trait Snapshotters: Send + Sync {
    /// The instance a request's `snapshotter` name selects, with its own name; `None` if
    /// none. Every caller (the Snapshots service, the collector following references, an
    /// unpack) selects through this, so they agree on which snapshot a name means.
    fn resolve(&self, name: &str) -> Option<(String, Arc<dyn Snapshotter>)>;
}

/// Who makes a snapshot call: the containerd namespace and lease it names, if any.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub namespace: Option<String>,
    pub lease: Option<String>,
}

impl Caller {
    /// The namespace and lease, when the call names both.
    fn lease(&self) -> Option<(&str, &str)> {
        Some((self.namespace.as_deref()?, self.lease.as_deref()?))
    }
}

/// The snapshotters seen through the image store, as containerd's metadata snapshotter
/// wraps its own: a snapshot made under one of the store's leases becomes the store's (so
/// the collector may remove it once nothing reaches it), and its commit, reuse and removal
/// keep that record right. Every snapshot call that can create or remove one goes through
/// here: the Snapshots service, a pull's or an import's unpack.
#[derive(Clone)]
pub struct StoreSnapshots {
    store: Arc<ImageStore>,
    snapshotters: Arc<dyn Snapshotters>,
}

impl StoreSnapshots {
    pub fn new(store: Arc<ImageStore>, snapshotters: Arc<dyn Snapshotters>) -> Self {
        StoreSnapshots {
            store,
            snapshotters,
        }
    }

    /// The instance `name` selects, and its own name; NotFound if none.
    pub fn snapshotter(&self, name: &str) -> Result<(String, Arc<dyn Snapshotter>)> {
        self.snapshotters.resolve(name).ok_or_else(|| {
            StoreError::Snapshot(snapshotter::Error::NotFound(format!(
                "snapshotter {name:?}"
            )))
        })
    }

    /// The instances, for the collector.
    pub fn snapshotters(&self) -> &dyn Snapshotters {
        self.snapshotters.as_ref()
    }

    /// Prepare. A layer already committed on that parent (the snapshotter's reuse, an
    /// AlreadyExists naming it) stays or becomes the store's when the caller holds one of
    /// the store's leases, and is handed over otherwise (containerd adopted it).
    pub fn prepare(
        &self,
        caller: &Caller,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let (name, s) = self.snapshotter(snapshotter)?;
        let intended = self.intend(caller, &name, s.as_ref(), key, None)?;
        let held = self.store.holding_snapshots();
        let result = s.prepare(key, parent, labels);
        if let Err(snapshotter::Error::LayerCommitted { name: layer, .. }) = &result
            && self.store.owns_snapshot(&name, layer)?
        {
            self.store.snapshot_reused(&name, layer, caller.lease())?;
        }
        drop(held);
        self.settle(intended, result)
    }

    /// Whether snapshot `key` exists. If it does and is the store's, the caller's lease
    /// holds it from now on, so no collection removes it before the caller builds on it or
    /// records it (an unpack finding a layer already there; containerd's unpacker only
    /// Stats, and a collection between its Stat and its next Prepare fails the pull).
    pub fn hold(&self, caller: &Caller, snapshotter: &str, key: &str) -> Result<bool> {
        let (name, s) = self.snapshotter(snapshotter)?;
        let _held = self.store.holding_snapshots();
        match s.stat(key) {
            Ok(_) => {}
            Err(snapshotter::Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(StoreError::Snapshot(e)),
        }
        if caller.lease().is_some() && self.store.owns_snapshot(&name, key)? {
            self.store.snapshot_reused(&name, key, caller.lease())?;
        }
        Ok(true)
    }

    /// View.
    pub fn view(
        &self,
        caller: &Caller,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let (name, s) = self.snapshotter(snapshotter)?;
        let intended = self.intend(caller, &name, s.as_ref(), key, None)?;
        let result = s.view(key, parent, labels);
        self.settle(intended, result)
    }

    /// Commit: the committed snapshot is the store's if the active one was, or the caller
    /// holds one of its leases.
    pub fn commit(
        &self,
        caller: &Caller,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: Labels,
        parent: &str,
    ) -> Result<()> {
        let (instance, s) = self.snapshotter(snapshotter)?;
        let intended = self.intend(caller, &instance, s.as_ref(), name, Some(key))?;
        let result = s.commit(name, key, labels, parent);
        self.settle(intended, result)
    }

    /// Remove: a snapshot of the store's is no longer its.
    pub fn remove(&self, snapshotter: &str, key: &str) -> Result<()> {
        let (name, s) = self.snapshotter(snapshotter)?;
        s.remove(key)?;
        self.store.mark_dirty(&name);
        if self.store.owns_snapshot(&name, key)? {
            self.store.snapshot_released(&name, key)?;
        }
        Ok(())
    }

    /// Before the snapshotter makes `snapshot`: records the intent if the result will be
    /// the store's (see [`ImageStore::intend_snapshot`]); whether it did. A request without
    /// a lease, as containerd's, costs a lookup.
    fn intend(
        &self,
        caller: &Caller,
        instance: &str,
        s: &dyn Snapshotter,
        snapshot: &str,
        from: Option<&str>,
    ) -> Result<Option<IntentId>> {
        let from_owned = match from {
            Some(f) => self.store.owns_snapshot(instance, f)?,
            None => false,
        };
        if caller.lease().is_none() && !from_owned {
            return Ok(None);
        }
        let is_new = || match s.stat(snapshot) {
            Ok(_) => Ok(false),
            Err(snapshotter::Error::NotFound(_)) => Ok(true),
            Err(e) => Err(StoreError::Snapshot(e)),
        };
        self.store
            .intend_snapshot(instance, snapshot, caller.lease(), from, is_new)
    }

    /// After the snapshotter call an intent was recorded for: the snapshot is recorded as
    /// the store's if the call made it, and the intent goes either way. The call's result.
    fn settle<T>(&self, intended: Option<IntentId>, result: snapshotter::Result<T>) -> Result<T> {
        if let Some(intent) = intended {
            if result.is_ok() {
                self.store.snapshot_intent_done(&intent)?;
            } else {
                self.store.snapshot_intent_dropped(&intent)?;
            }
        }
        Ok(result?)
    }
}

/// A snapshot a client of this store is about to make under one of its leases, or to
/// commit from one of its snapshots, recorded before the snapshotter acts. The snapshotter's
/// index and this store's are two databases: a crash after the snapshotter's change and
/// before this store's record of it would leave a snapshot that nobody collects. The next
/// start settles each intent from what the snapshotter has
/// ([`ImageStore::settle_snapshot_intents`]). Each call's intent is its own record
/// ([`IntentId`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotIntent {
    /// The lease's namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// The lease the snapshot is made under; empty if none of this store's.
    #[prost(string, tag = "2")]
    pub lease: String,
    /// For a commit, the active snapshot committed; empty for a Prepare or View.
    #[prost(string, tag = "3")]
    pub from: String,
}

/// One call's intent record: `<snapshotter>\0<snapshot>\0<call>`. Two clients may make the
/// same snapshot at once (two unpacks committing one layer: one commit succeeds, the other
/// fails AlreadyExists); keyed by the snapshot alone, the loser's settlement would drop the
/// winner's intent, and the winner's snapshot would be recorded as nobody's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentId {
    snapshotter: String,
    snapshot: String,
    /// Unique among the calls of this store, across restarts.
    call: String,
}

impl IntentId {
    fn key(&self) -> Vec<u8> {
        key(&self.snapshotter, &[&self.snapshot, &self.call])
    }

    /// The intent listed as `id` (`<snapshot>\0<call>`) under `snapshotter`.
    fn listed(snapshotter: &str, id: &str) -> Self {
        let (snapshot, call) = id.split_once('\0').unwrap_or((id, ""));
        IntentId {
            snapshotter: snapshotter.to_string(),
            snapshot: snapshot.to_string(),
            call: call.to_string(),
        }
    }
}

impl ImageStore {
    /// Before `snapshotter` makes `snapshot` (a Prepare or View, or with `from` a Commit):
    /// records the intent if this store will own the result, that is if `lease` (namespace,
    /// id) is one of its leases or `from` one of its snapshots, and `is_new` says `snapshot`
    /// does not exist yet (one that does is someone else's, and the call will fail); the
    /// intent if it did. A read only for everyone else's calls.
    pub fn intend_snapshot(
        &self,
        snapshotter: &str,
        snapshot: &str,
        lease: Option<(&str, &str)>,
        from: Option<&str>,
        is_new: impl FnOnce() -> Result<bool>,
    ) -> Result<Option<IntentId>> {
        let lease = match lease {
            Some((ns, id)) if self.lease_exists(ns, id)? => Some((ns, id)),
            _ => None,
        };
        let from = match from {
            Some(f) if self.owns_snapshot(snapshotter, f)? => f,
            _ => "",
        };
        if (lease.is_none() && from.is_empty()) || !is_new()? {
            return Ok(None);
        }
        let (namespace, lease) = lease.unwrap_or_default();
        let intent = SnapshotIntent {
            namespace: namespace.to_string(),
            lease: lease.to_string(),
            from: from.to_string(),
        };
        let id = IntentId {
            snapshotter: snapshotter.to_string(),
            snapshot: snapshot.to_string(),
            call: crate::unique_suffix(),
        };
        self.meta.write(|w| {
            w.put(Kind::SnapshotIntent, &id.key(), &intent)?;
            Ok(Some(id))
        })
    }

    /// The snapshotter made the snapshot as intended
    /// ([`intend_snapshot`](Self::intend_snapshot)): records it as this store's (moving a
    /// committed `from`'s record to it, adding it to the lease) and drops the intent, in one
    /// transaction.
    pub fn snapshot_intent_done(&self, id: &IntentId) -> Result<()> {
        let (snapshotter, snapshot) = (id.snapshotter.as_str(), id.snapshot.as_str());
        self.meta.write(|w| {
            let Some(intent) = w.get::<SnapshotIntent>(Kind::SnapshotIntent, &id.key())? else {
                return Ok(());
            };
            w.delete(Kind::SnapshotIntent, &id.key())?;
            let k = key(snapshotter, &[snapshot]);
            if !intent.from.is_empty() {
                let from = key(snapshotter, &[&intent.from]);
                if let Some(record) = w.get::<Resource>(Kind::Snapshot, &from)? {
                    w.delete(Kind::Snapshot, &from)?;
                    w.put(Kind::Snapshot, &k, &record)?;
                }
            }
            let lease_key = key(&intent.namespace, &[&intent.lease]);
            if !intent.lease.is_empty() && w.get::<Lease>(Kind::Lease, &lease_key)?.is_some() {
                record_made(w, &intent.namespace, &intent.lease, snapshotter, snapshot)?;
            }
            Ok(())
        })
    }

    /// The snapshotter did not make the snapshot: the intent goes.
    pub fn snapshot_intent_dropped(&self, id: &IntentId) -> Result<()> {
        self.meta.write(|w| {
            w.delete(Kind::SnapshotIntent, &id.key())?;
            Ok(())
        })
    }

    /// Settles the intents a crash left, from what the snapshotters have (before the daemon
    /// serves): a snapshot that exists (and, for a commit, whose active snapshot is gone: a
    /// commit replaces one with the other at once) was made, and is recorded; otherwise the
    /// intent just goes. A snapshotter that cannot be listed keeps its intents for the next
    /// start. How many were made.
    pub fn settle_snapshot_intents(&self, snapshotters: &dyn Snapshotters) -> Result<usize> {
        let mut made = 0;
        for snapshotter in self.meta.read(|r| r.namespaces_of(Kind::SnapshotIntent))? {
            let intents = self
                .meta
                .read(|r| r.list::<SnapshotIntent>(Kind::SnapshotIntent, &snapshotter))?;
            let listed = snapshotters
                .resolve(&snapshotter)
                .map(|(_, s)| s.list(&snapshotter::Filters::default()));
            let existing: std::collections::HashSet<String> = match listed {
                Some(Ok(all)) => all.into_iter().map(|i| i.name).collect(),
                None => {
                    tracing::warn!(snapshotter, "snapshot intents kept: no such snapshotter");
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(snapshotter, error = %e, "snapshot intents kept");
                    continue;
                }
            };
            for (listed, intent) in intents {
                let id = IntentId::listed(&snapshotter, &listed);
                let done = existing.contains(&id.snapshot)
                    && (intent.from.is_empty() || !existing.contains(&intent.from));
                if done {
                    tracing::info!(
                        snapshotter,
                        snapshot = id.snapshot,
                        "snapshot made before a crash recorded"
                    );
                    self.snapshot_intent_done(&id)?;
                    made += 1;
                } else {
                    self.snapshot_intent_dropped(&id)?;
                }
            }
        }
        Ok(made)
    }

    /// Whether snapshot `snapshot` of `snapshotter` is this store's. A read only, cheap
    /// enough to ask on every call about containerd's snapshots.
    pub fn owns_snapshot(&self, snapshotter: &str, snapshot: &str) -> Result<bool> {
        let k = key(snapshotter, &[snapshot]);
        self.meta
            .read(|r| Ok(r.get::<Resource>(Kind::Snapshot, &k)?.is_some()))
    }

    /// Committed snapshot `snapshot`, this store's, is taken as it is by a Prepare for the
    /// same layer (the snapshotter's layer reuse). Under one of this store's leases (another
    /// unpack of the store's, in any namespace: a second pull sharing the layer) it stays the
    /// store's and that lease holds it too; otherwise whoever adopts it (containerd) shares
    /// it with references this store cannot see, and it is no longer the store's to collect.
    pub fn snapshot_reused(
        &self,
        snapshotter: &str,
        snapshot: &str,
        lease: Option<(&str, &str)>,
    ) -> Result<()> {
        self.meta.write(|w| {
            let k = key(snapshotter, &[snapshot]);
            let Some(record) = w.get::<Resource>(Kind::Snapshot, &k)? else {
                return Ok(());
            };
            match lease {
                Some((ns, id)) if w.lease_exists(ns, id)? => {
                    let resource = format!("{RESOURCE_SNAPSHOTS}{snapshotter}");
                    w.add_resource(ns, id, &resource, snapshot)?;
                    w.put(Kind::Snapshot, &k, &record)
                }
                _ => {
                    w.delete(Kind::Snapshot, &k)?;
                    Ok(())
                }
            }
        })
    }

    /// Held while a client takes hold of a snapshot that exists (see
    /// [`ImageStore::snapshot_holds`]).
    pub(crate) fn holding_snapshots(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.snapshot_holds
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a lease of any namespace holds snapshot `id` (its snapshotter named as the
    /// client named it, resolved by `canonical`).
    pub(crate) fn snapshot_leased(
        &self,
        (snapshotter, snapshot): &SnapshotId,
        canonical: &dyn Fn(&str) -> Option<String>,
    ) -> Result<bool> {
        self.meta.read(|r| {
            for ns in r.namespaces_of(Kind::Lease)? {
                for (lease, _) in r.list::<Lease>(Kind::Lease, &ns)? {
                    let held = r.resources(&ns, &lease)?.into_iter().any(|(kind, id)| {
                        id == *snapshot
                            && kind
                                .strip_prefix(RESOURCE_SNAPSHOTS)
                                .and_then(canonical)
                                .is_some_and(|name| name == *snapshotter)
                    });
                    if held {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })
    }

    /// Snapshot `snapshot` is gone, or shared with someone else (containerd adopted it):
    /// it is no longer this store's to collect.
    pub fn snapshot_released(&self, snapshotter: &str, snapshot: &str) -> Result<()> {
        let k = key(snapshotter, &[snapshot]);
        self.meta.write(|w| {
            w.delete(Kind::Snapshot, &k)?;
            Ok(())
        })
    }

    /// This store's snapshots, each with the namespace it was made in.
    pub(super) fn owned_snapshots(&self, r: &impl Read) -> Result<HashMap<SnapshotId, String>> {
        let mut out = HashMap::new();
        for snapshotter in r.namespaces_of(Kind::Snapshot)? {
            for (snapshot, record) in r.list::<Resource>(Kind::Snapshot, &snapshotter)? {
                out.insert((snapshotter.clone(), snapshot), record.id);
            }
        }
        Ok(out)
    }
}

/// Records `snapshot` as made in `namespace` under `lease` (known to exist): a resource of
/// the lease, and this store's.
fn record_made(
    w: &mut Writer,
    namespace: &str,
    lease: &str,
    snapshotter: &str,
    snapshot: &str,
) -> Result<()> {
    let resource = format!("{RESOURCE_SNAPSHOTS}{snapshotter}");
    w.add_resource(namespace, lease, &resource, snapshot)?;
    let record = Resource {
        id: namespace.to_string(),
        r#type: resource,
    };
    w.put(Kind::Snapshot, &key(snapshotter, &[snapshot]), &record)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::testing::{OneSnapshotter, native};

    #[test]
    fn intents_left_by_a_crash_are_settled_from_the_snapshotter() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store.lease_create("ns", "pull", HashMap::new()).unwrap();
        let new = || Ok(true);
        let leased = Some(("ns", "pull"));
        let intend = |snapshot: &str, lease, from| {
            store
                .intend_snapshot("s", snapshot, lease, from, new)
                .unwrap()
        };
        // Nobody's lease, no owned parent: nothing recorded (containerd's calls).
        assert!(intend("theirs", None, Some("x")).is_none());
        assert!(intend("other", Some(("ns", "gone")), None).is_none());
        // An existing key is someone else's: not claimed.
        assert!(
            store
                .intend_snapshot("s", "taken", leased, None, || Ok(false))
                .unwrap()
                .is_none()
        );

        // Prepared, then the crash: "a" was made, "b" was not.
        assert!(intend("a", leased, None).is_some());
        assert!(intend("b", leased, None).is_some());
        // "c" was made and recorded, then committed as "d" (made) and "e" (not made: "c2"
        // still exists, the commit did not happen).
        store
            .snapshot_intent_done(&intend("c", leased, None).unwrap())
            .unwrap();
        store
            .snapshot_intent_done(&intend("c2", leased, None).unwrap())
            .unwrap();
        assert!(intend("d", None, Some("c")).is_some());
        assert!(intend("e", None, Some("c2")).is_some());

        // The snapshotter has what was made: "a", "c2", "d" and "e".
        let sdir = tempfile::tempdir().unwrap();
        let s = native(sdir.path());
        for key in ["base", "a", "c2"] {
            s.prepare(key, "", Default::default()).unwrap();
        }
        s.commit("d", "base", Default::default(), "").unwrap();
        s.prepare("e", "", Default::default()).unwrap();
        let listed = OneSnapshotter::new("s", s);
        assert_eq!(store.settle_snapshot_intents(&listed).unwrap(), 2);
        let owned = |k: &str| store.owns_snapshot("s", k).unwrap();
        assert!(owned("a") && owned("d") && owned("c2"));
        assert!(!owned("b") && !owned("c") && !owned("e"));
        let resources: Vec<String> = store
            .lease_resources("ns", "pull")
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(resources, ["a", "c", "c2"]);
        // Every intent is settled: nothing more on the next start.
        assert_eq!(store.settle_snapshot_intents(&listed).unwrap(), 0);
        let left = store
            .meta
            .read(|r| r.namespaces_of(Kind::SnapshotIntent))
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Two unpacks commit the same layer at once: the loser's failed commit is settled
    /// first, and the winner's layer is still recorded as the store's (with one intent
    /// record per snapshot, the loser's settlement dropped the winner's intent, and the
    /// layer was nobody's: the collector never removed it).
    #[test]
    fn a_losing_commit_settled_first_leaves_the_winners_layer_owned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        for lease in ["a", "b"] {
            store.lease_create("ns", lease, HashMap::new()).unwrap();
        }
        let new = || Ok(true);
        let active = |key: &str, lease: &str| {
            let id = store
                .intend_snapshot("s", key, Some(("ns", lease)), None, new)
                .unwrap();
            store.snapshot_intent_done(&id.unwrap()).unwrap();
        };
        active("extract-a", "a");
        active("extract-b", "b");
        let winner = store
            .intend_snapshot("s", "layer", Some(("ns", "a")), Some("extract-a"), new)
            .unwrap()
            .unwrap();
        let loser = store
            .intend_snapshot("s", "layer", Some(("ns", "b")), Some("extract-b"), new)
            .unwrap()
            .unwrap();
        store.snapshot_intent_dropped(&loser).unwrap();
        store.snapshot_intent_done(&winner).unwrap();
        assert!(store.owns_snapshot("s", "layer").unwrap());
        assert!(store.owns_snapshot("s", "extract-b").unwrap());
        assert!(!store.owns_snapshot("s", "extract-a").unwrap());
    }
}
