//! The collector against containerd's rules, each case the way a client would meet it: an
//! image pulled into a namespace (manifest, config, layer, and the layer's snapshot, made
//! under the pull's lease), then something done to it, then a collection.

use std::collections::HashMap;

use api::labels::{GC_EXPIRE, GC_FLAT, GC_ROOT};
use api::services::leases::v1::Resource;

use crate::StoreError;
use crate::testing::Fixture;

/// What a pull leaves: digests of manifest, config and layer, and the layer's snapshot.
struct Pulled {
    manifest: String,
    config: String,
    layer: String,
    chain: &'static str,
}

/// Pulls image `name` into `ns` (as `strata image pull` does: blobs and the layer's
/// snapshot under a lease, labels from manifest to config and layer and from config to
/// snapshot, then the image, then the lease goes), naming the snapshotter `snapshotter`.
/// A second namespace finds the layer committed (by its chain ID) and prepares nothing.
fn pull(f: &Fixture, ns: &str, name: &str, snapshotter: &str) -> Pulled {
    let lease = format!("pull-{ns}-{name}");
    f.lease(ns, &lease, &[]);
    let chain = "sha256:chain";
    let layer = f.blob(ns, b"layer bytes", &[], Some(&lease));
    if !f.snapshot_keys().iter().any(|k| k == chain) {
        f.layer(ns, &lease, snapshotter, chain, "");
    }
    let snapshot_label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    let config = f.blob(ns, b"config", &[(&snapshot_label, chain)], Some(&lease));
    let manifest = f.blob(
        ns,
        b"manifest",
        &[
            ("containerd.io/gc.ref.content.config", &config),
            ("containerd.io/gc.ref.content.l.0", &layer),
        ],
        Some(&lease),
    );
    f.image(ns, name, &manifest, &[]);
    f.store.lease_delete(ns, &lease).unwrap();
    Pulled {
        manifest,
        config,
        layer,
        chain,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Scenario 1: a flat lease holding an image's manifest does not hide the image's own
/// references (the config, the layer, the snapshot).
#[test]
fn a_flat_lease_hides_no_references() {
    let f = Fixture::new();
    let p = pull(&f, "nsb", "img", "strata");
    f.lease("nsb", "flat", &[(GC_FLAT, "true")]);
    let manifest = Resource {
        id: p.manifest.clone(),
        r#type: "content".into(),
    };
    f.store
        .lease_add_resource("nsb", "flat", &manifest)
        .unwrap();
    let report = f.collect();
    assert!(report.is_empty(), "collected {report:?}");
    assert_eq!(
        f.digests("nsb"),
        sorted(vec![p.manifest, p.config, p.layer])
    );
    assert_eq!(f.snapshot_keys(), [p.chain]);
}

/// A flat lease keeps what it holds, and not what that references.
#[test]
fn a_flat_lease_keeps_only_its_own() {
    let f = Fixture::new();
    let p = pull(&f, "ns", "img", "strata");
    f.lease("ns", "flat", &[(GC_FLAT, "true")]);
    let manifest = Resource {
        id: p.manifest.clone(),
        r#type: "content".into(),
    };
    f.store.lease_add_resource("ns", "flat", &manifest).unwrap();
    f.store.image_delete("ns", "img", None, None).unwrap();
    f.collect();
    assert_eq!(f.digests("ns"), [p.manifest]);
    assert!(f.snapshot_keys().is_empty());
}

/// Scenario 2: the config names the snapshotter as the client did (`overlayfs`, ctr's
/// default), the store recorded the instance's own name: the collector resolves the
/// client's name as a Prepare does, and keeps the layer.
#[test]
fn a_snapshotter_named_as_the_client_named_it_is_followed() {
    let f = Fixture::new();
    let p = pull(&f, "ns", "img", "overlayfs");
    let report = f.collect();
    assert!(report.is_empty(), "collected {report:?}");
    assert_eq!(f.snapshot_keys(), [p.chain]);
    f.store.image_delete("ns", "img", None, None).unwrap();
    let report = f.collect();
    assert_eq!(
        report.snapshots,
        [("strata".to_string(), p.chain.to_string())]
    );
}

/// Scenario 3: two namespaces hold one image; the layer (made by the first) stays while
/// either references it.
#[test]
fn a_snapshot_stays_while_any_namespace_reaches_it() {
    let f = Fixture::new();
    let p = pull(&f, "nsa", "img", "strata");
    pull(&f, "nsb", "img", "strata");
    f.store.image_delete("nsa", "img", None, None).unwrap();
    let report = f.collect();
    assert!(report.snapshots.is_empty(), "collected {report:?}");
    assert_eq!(f.snapshot_keys(), [p.chain]);
    assert!(f.digests("nsa").is_empty());
    f.store.image_delete("nsb", "img", None, None).unwrap();
    f.collect();
    assert!(f.snapshot_keys().is_empty());
    assert!(f.digests("nsb").is_empty());
}

/// Scenario 5: a write under a lease that does not exist is refused (NotFound, as
/// containerd), and records nothing.
#[test]
fn a_write_under_a_missing_lease_is_refused() {
    let f = Fixture::new();
    let result = f.store.content_writer("ns", "ref", 5, None, Some("nope"));
    assert!(
        matches!(result, Err(StoreError::NotFound(_))),
        "{:?}",
        result.err()
    );
    let writes = f
        .store
        .ingest_list("ns", &snapshotter::Filters::default())
        .unwrap();
    assert!(writes.is_empty());
    assert!(f.store.namespace_list().unwrap().is_empty());
}

/// The second of two writers of one blob (its commit answered AlreadyExists) still has the
/// blob in its lease: the first's lease going does not take it.
#[test]
fn the_second_writer_of_a_blob_holds_it_too() {
    let f = Fixture::new();
    f.lease("ns", "one", &[]);
    f.lease("ns", "two", &[]);
    let data = b"shared blob";
    let digest = format!("{}", {
        let mut h = differ::digest::Hasher::default();
        h.update(data);
        h.finish().0
    });
    let open = |r, lease| {
        f.store
            .content_writer("ns", r, data.len() as u64, Some(&digest), Some(lease))
            .unwrap()
    };
    let (mut one, mut two) = (open("r1", "one"), open("r2", "two"));
    one.write_at(0, data).unwrap();
    two.write_at(0, data).unwrap();
    let commit = |w, r| {
        f.store
            .content_commit(w, r, data.len() as u64, Some(&digest), HashMap::new())
    };
    commit(one, "r1").unwrap();
    let second = commit(two, "r2");
    assert!(
        matches!(second, Err(StoreError::AlreadyExists(_))),
        "{second:?}"
    );
    let held: Vec<Resource> = f.store.lease_resources("ns", "two").unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].r#type.as_str(), held[0].id.as_str()),
        ("content", digest.as_str())
    );
    f.store.lease_delete("ns", "one").unwrap();
    f.collect();
    assert_eq!(f.digests("ns"), [digest]);
}

/// A write that needs no data (its blob is in the tree, from another namespace) keeps the
/// blob: the other namespace's delete does not fail its commit.
#[test]
fn an_open_write_keeps_the_blob_it_expects() {
    let f = Fixture::new();
    let digest = f.blob("a", b"blob of a", &[], None);
    let mut w = f
        .store
        .content_writer("b", "r", 0, Some(&digest), None)
        .unwrap();
    w.write_at(0, b"").unwrap();
    f.store.content_delete("a", &digest).unwrap();
    f.collect();
    f.store
        .content_commit(w, "r", 0, Some(&digest), HashMap::new())
        .unwrap();
    let (mut file, size) = f.store.content_open("b", &digest).unwrap();
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut read).unwrap();
    assert_eq!((size, read.as_slice()), (9, b"blob of a".as_slice()));
}

/// Deleting a namespace takes its leases and writes with it, as containerd's bucket.
#[test]
fn a_deleted_namespace_leaves_no_leases_or_writes() {
    let f = Fixture::new();
    f.lease("gone", "l", &[]);
    let mut w = f.store.content_writer("gone", "r", 0, None, None).unwrap();
    w.write_at(0, b"half").unwrap();
    drop(w);
    f.store.namespace_delete("gone", None).unwrap();
    assert!(f.store.namespace_list().unwrap().is_empty());
    let left = std::fs::read_dir(f.store.blobs().root().join("ingest"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}

/// A write directory without a record (a crash between the two) is removed once old.
#[test]
fn write_directories_without_records_go() {
    let f = Fixture::new();
    let mut w = f.store.content_writer("ns", "r", 0, None, None).unwrap();
    w.write_at(0, b"orphan").unwrap();
    drop(w);
    // The crash: the record gone, the directory not.
    f.store.ingest_abort_record_only("ns", "r");
    let ingest = f.store.blobs().root().join("ingest");
    f.collect();
    assert_eq!(
        std::fs::read_dir(&ingest).unwrap().count(),
        1,
        "too young to go"
    );
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(&ingest).unwrap() {
        let dir = entry.unwrap().path();
        for p in [dir.join("data"), dir.clone()] {
            std::fs::File::open(&p).unwrap().set_modified(old).unwrap();
        }
    }
    f.collect();
    assert_eq!(std::fs::read_dir(&ingest).unwrap().count(), 0);
}

/// containerd 2.x: an image whose `gc.expire` passed is collected (unless a lease holds
/// it); one that has not, kept.
#[test]
fn images_expire() {
    let f = Fixture::new();
    let m = f.blob("ns", b"m", &[], None);
    f.image("ns", "past", &m, &[(GC_EXPIRE, "2000-01-01T00:00:00Z")]);
    f.image("ns", "future", &m, &[(GC_EXPIRE, "2999-01-01T00:00:00Z")]);
    f.image("ns", "leased", &m, &[(GC_EXPIRE, "2000-01-01T00:00:00Z")]);
    f.lease("ns", "l", &[]);
    let image = Resource {
        id: "leased".into(),
        r#type: "images".into(),
    };
    f.store.lease_add_resource("ns", "l", &image).unwrap();
    let report = f.collect();
    assert_eq!(report.images, [("ns".to_string(), "past".to_string())]);
    let names: Vec<String> = f
        .store
        .image_list("ns", &snapshotter::Filters::default())
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["future", "leased"]);
}

/// containerd 2.2 back-references: a blob labelled `gc.bref.content=<Y>` lives while Y is
/// reachable.
#[test]
fn back_references_keep_while_their_source_lives() {
    let f = Fixture::new();
    let y = f.blob("ns", b"y", &[(GC_ROOT, "yes")], None);
    let x = f.blob(
        "ns",
        b"x",
        &[("containerd.io/gc.bref.content.sig", &y)],
        None,
    );
    f.collect();
    assert_eq!(f.digests("ns"), sorted(vec![x.clone(), y.clone()]));
    let mut info = f.store.content_info("ns", &y).unwrap();
    info.labels.clear();
    f.store
        .content_update("ns", info, &["labels".into()])
        .unwrap();
    f.collect();
    assert!(f.digests("ns").is_empty());
}
