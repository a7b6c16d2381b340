//! A collection over what the other modules create, through the public API with a native
//! snapshotter: what keeps a blob (one row per root or reference), and containerd's
//! semantics on one namespace's image, leases live and expired, a gc.root label and a blob
//! two namespaces share, with a dry run reporting exactly what the collection then removes
//! (what the daemon's Admin CollectGarbage lists).

use std::collections::HashMap;

use api::services::content::v1::Info;
use api::services::images::v1::Image;
use api::services::leases::v1::Resource;
use api::types::Descriptor;
use imagestore::{Caller, Report};

use crate::support::{MANIFEST, SNAPSHOTTER, Store, bare_container, labels, sorted};

const PAST: &str = "2001-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";

fn image(name: &str, digest: &str, l: &[(&str, &str)]) -> Image {
    Image {
        name: name.into(),
        labels: labels(l),
        target: Some(Descriptor {
            media_type: MANIFEST.into(),
            digest: digest.into(),
            size: 8,
            annotations: HashMap::new(),
        }),
        ..Default::default()
    }
}

fn content(digest: &str) -> Resource {
    Resource {
        id: digest.into(),
        r#type: "content".into(),
    }
}

/// Lease `id` in `ns` expiring at `until` (never if `None`), holding blob `digest`.
fn lease_holding(s: &Store, ns: &str, id: &str, until: Option<&str>, digest: &str) {
    let l = until.map(|t| labels(&[("containerd.io/gc.expire", t)]));
    s.lease_create(ns, id, l.unwrap_or_default()).unwrap();
    s.lease_add_resource(ns, id, &content(digest)).unwrap();
}

/// Labels blob `digest` of `ns` with `pairs`.
fn label(s: &Store, ns: &str, digest: &str, pairs: &[(&str, &str)]) {
    let info = Info {
        digest: digest.into(),
        labels: labels(pairs),
        ..Default::default()
    };
    let mask: Vec<String> = pairs.iter().map(|(k, _)| format!("labels.{k}")).collect();
    s.content_update(ns, info, &mask).unwrap();
}

/// Each row sets up one thing that may keep blob `target` of namespace `a`, in a store of
/// its own; whether the blob's record and file are there after a collection.
#[test]
fn what_keeps_a_blob() {
    type Setup = Box<dyn Fn(&Store, &str)>;
    let gc_ref = |d: &str| ("containerd.io/gc.ref.content.x", d.to_string());
    type Row<'a> = (&'a str, Setup, bool);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("nothing", Box::new(|_, _| {}), false),
        ("an image's target", Box::new(|s, d| {
            s.image_create("a", image("i", d, &[]), None).unwrap();
        }), true),
        ("an image that has expired", Box::new(|s, d| {
            s.image_create("a", image("i", d, &[("containerd.io/gc.expire", PAST)]), None)
                .unwrap();
        }), false),
        ("an image that expires later", Box::new(|s, d| {
            s.image_create("a", image("i", d, &[("containerd.io/gc.expire", FUTURE)]), None)
                .unwrap();
        }), true),
        ("a gc.root label", Box::new(|s, d| label(s, "a", d, &[("containerd.io/gc.root", "x")])),
            true),
        ("a lease without expiry", Box::new(|s, d| lease_holding(s, "a", "l", None, d)), true),
        ("a live lease", Box::new(|s, d| lease_holding(s, "a", "l", Some(FUTURE), d)), true),
        ("an expired lease", Box::new(|s, d| lease_holding(s, "a", "l", Some(PAST), d)), false),
        ("a kept blob's gc.ref label", Box::new(move |s, d| {
            let (k, v) = gc_ref(d);
            s.blob("a", b"root", &[("containerd.io/gc.root", "x"), (k, v.as_str())]);
        }), true),
        ("a collected blob's gc.ref label", Box::new(move |s, d| {
            let (k, v) = gc_ref(d);
            s.blob("a", b"loose", &[(k, v.as_str())]);
        }), false),
        ("another namespace's gc.ref label", Box::new(move |s, d| {
            let (k, v) = gc_ref(d);
            s.blob("b", b"root", &[("containerd.io/gc.root", "x"), (k, v.as_str())]);
        }), false),
        ("a container's gc.ref label", Box::new(move |s, d| {
            let (k, v) = gc_ref(d);
            let mut c = bare_container();
            c.labels = labels(&[(k, v.as_str())]);
            s.container_create("a", c).unwrap();
        }), true),
        ("a container naming the image (no reference)", Box::new(|s, d| {
            s.image_create("a", image("i", d, &[("containerd.io/gc.expire", PAST)]), None)
                .unwrap();
            let mut c = bare_container();
            c.image = "i".into();
            s.container_create("a", c).unwrap();
        }), false),
    ];
    for (name, setup, kept) in rows {
        let s = Store::new();
        let digest = s.blob("a", b"target", &[]);
        setup(&s, &digest);
        s.collect(false);
        let recorded = s.content_info("a", &digest).is_ok();
        assert_eq!(recorded, kept, "{name}: the record");
        assert_eq!(s.blob_file(&digest).exists(), kept, "{name}: the file");
    }
}

/// The digests of `data`.
fn d(data: &[u8]) -> String {
    crate::support::sha256(data)
}

/// What an image, a live lease or a gc.root label reaches (through gc.ref.content labels,
/// in its own namespace) stays; the rest goes, with expired leases; a dry run only reports
/// what the collection then removes; the same blob recorded in two namespaces keeps its
/// file while either keeps it. Removing the image then takes its tree and the snapshot its
/// config names.
#[test]
fn an_image_leases_and_roots_over_two_namespaces() {
    let s = Store::new();
    let layer = s.blob("a", b"layer", &[]);
    s.lease_create("a", "unpack", HashMap::new()).unwrap();
    let caller = Caller {
        namespace: Some("a".into()),
        lease: Some("unpack".into()),
    };
    s.snapshots
        .prepare(&caller, SNAPSHOTTER, "extract", "", Default::default())
        .unwrap();
    s.snapshots
        .commit(
            &caller,
            SNAPSHOTTER,
            "chain",
            "extract",
            Default::default(),
            "",
        )
        .unwrap();
    let snapshot_ref = ("containerd.io/gc.ref.snapshot.strata", "chain");
    let config = s.blob("a", b"config", &[snapshot_ref]);
    let manifest = s.blob(
        "a",
        b"manifest",
        &[
            ("containerd.io/gc.ref.content.config", &config),
            ("containerd.io/gc.ref.content.l.0", &layer),
        ],
    );
    s.image_create("a", image("example.test/gc:1", &manifest, &[]), None)
        .unwrap();
    s.lease_delete("a", "unpack").unwrap();
    let pinned = s.blob("a", b"pinned", &[("containerd.io/gc.root", "x")]);
    let leased = s.blob("a", b"leased", &[]);
    let expired = s.blob("a", b"expired", &[]);
    let loose = s.blob("a", b"loose", &[]);
    // "layer" again in namespace b, unreferenced there.
    s.blob("b", b"layer", &[]);
    lease_holding(&s, "a", "live", Some(FUTURE), &leased);
    lease_holding(&s, "a", "old", Some(PAST), &expired);

    let pair = |ns: &str, id: &str| (ns.to_string(), id.to_string());
    let expected = Report {
        leases: vec![pair("a", "old")],
        content: sorted(vec![
            pair("a", &expired),
            pair("a", &loose),
            pair("b", &layer),
        ]),
        blobs: sorted(vec![expired.clone(), loose.clone()]),
        ..Default::default()
    };
    let normalized = |mut r: Report| {
        r.content.sort();
        r.blobs.sort();
        r.leases.sort();
        r
    };
    assert_eq!(normalized(s.collect(true)), expected, "the dry run");
    assert_eq!(s.digests("a").len(), 7, "a dry run removes nothing");
    assert!(s.blob_file(&loose).exists());
    assert_eq!(normalized(s.collect(false)), expected, "the collection");

    let kept = sorted(vec![
        layer.clone(),
        config.clone(),
        manifest.clone(),
        pinned.clone(),
        leased.clone(),
    ]);
    assert_eq!(s.digests("a"), kept);
    assert!(s.digests("b").is_empty());
    assert_eq!(
        s.read("a", &layer),
        b"layer",
        "b's record went, a's blob stays"
    );
    assert!(!s.blob_file(&loose).exists());
    let left: Vec<String> = s
        .lease_list("a", &Default::default())
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(left, ["live"]);
    assert!(s.collect(false).is_empty(), "nothing more to collect");

    // The image removed: its tree and its snapshot go.
    s.image_delete("a", "example.test/gc:1", None, None)
        .unwrap();
    let report = s.collect(false);
    assert_eq!(
        report.snapshots,
        [(SNAPSHOTTER.to_string(), "chain".to_string())]
    );
    assert_eq!(sorted(report.blobs), sorted(vec![layer, config, manifest]));
    assert_eq!(s.digests("a"), sorted(vec![pinned, d(b"leased")]));
}

/// A write whose lease went is collected with its data at once (a cancelled pull's
/// partial blob, say), unless its writer still holds the ref: then its directory stays
/// for that writer, and the data goes as an orphan later.
#[test]
fn a_collected_write_takes_its_data() {
    let s = Store::new();
    s.lease_create("a", "pull", HashMap::new()).unwrap();
    for reference in ["dropped", "held"] {
        let mut w = s
            .content_writer("a", reference, 0, None, Some("pull"))
            .unwrap();
        w.write_at(0, b"partial").unwrap();
        if reference == "dropped" {
            drop(w);
        } else {
            std::mem::forget(w);
        }
    }
    assert_eq!(s.ingest_dirs(), 2);
    s.lease_delete("a", "pull").unwrap();
    let report = s.collect(false);
    assert_eq!(
        sorted(report.ingests),
        [
            ("a".to_string(), "dropped".to_string()),
            ("a".to_string(), "held".to_string())
        ]
    );
    assert_eq!(s.ingest_dirs(), 1, "only the held write's directory stays");
}
