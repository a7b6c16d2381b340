//! Namespaces: existing by creation or by holding anything, creation refusals, label
//! updates by field mask (an update creates the namespace), and deletion: refused while it
//! holds images, blobs, containers or snapshots, taking its leases and writes with it.

use std::collections::HashMap;

use api::services::namespaces::v1::Namespace;

use crate::support::{
    Class, LabelUpdateRow, Store, bare_container, error_class, labels, outcome, paths, sha256,
};

const DEFAULT_SNAPSHOTTER: &str = "containerd.io/defaults/snapshotter";

fn namespace(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        name: name.into(),
        labels: labels(l),
    }
}

fn names(s: &Store) -> Vec<String> {
    s.namespace_list()
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// "a" holds a blob, "b" a lease, "w" a write in progress, "c" was created with labels:
/// all four are listed, by name; an unknown one reads as one without labels.
#[test]
fn namespaces_exist_by_creation_or_by_holding_anything() {
    let s = Store::new();
    assert!(names(&s).is_empty());
    s.blob("a", b"blob", &[]);
    s.lease_create("b", "l", HashMap::new()).unwrap();
    drop(s.content_writer("w", "r", 0, None, None).unwrap());
    let created = s
        .namespace_create(namespace("c", &[(DEFAULT_SNAPSHOTTER, "strata")]))
        .unwrap();
    assert_eq!(created, namespace("c", &[(DEFAULT_SNAPSHOTTER, "strata")]));
    assert_eq!(names(&s), ["a", "b", "c", "w"]);
    assert_eq!(
        s.namespace_get("c").unwrap().labels,
        labels(&[(DEFAULT_SNAPSHOTTER, "strata")])
    );
    assert_eq!(s.namespace_get("a").unwrap(), namespace("a", &[]));
    assert_eq!(
        s.namespace_get("unknown").unwrap(),
        namespace("unknown", &[])
    );
}

/// Creation refusals: a namespace that exists (by creation or by holding something), a
/// name that is no identifier, a label containerd refuses.
#[test]
fn namespace_creation_refusals() {
    let s = Store::new();
    s.blob("a", b"blob", &[]);
    s.namespace_create(namespace("c", &[])).unwrap();
    let long = "n".repeat(77);
    type Row<'a> = (&'a str, Namespace, Class);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("one holding a blob", namespace("a", &[]), Class::AlreadyExists),
        ("one created", namespace("c", &[("x", "1")]), Class::AlreadyExists),
        ("a space", namespace("Bad Name", &[]), Class::InvalidArgument),
        ("no name", namespace("", &[]), Class::InvalidArgument),
        ("a leading dash", namespace("-a", &[]), Class::InvalidArgument),
        ("a path", namespace("../../etc", &[]), Class::InvalidArgument),
        ("too long", namespace(&long, &[]), Class::InvalidArgument),
        ("an empty label key", namespace("d", &[("", "v")]), Class::InvalidArgument),
    ];
    for (name, ns, expected) in rows {
        assert_eq!(error_class(s.namespace_create(ns)), expected, "{name}");
    }
    assert_eq!(names(&s), ["a", "c"]);
    assert!(s.namespace_get("c").unwrap().labels.is_empty());
}

/// Label updates by field mask; each row starts from labels {x: 1, keep: k}. containerd
/// takes single labels only (a bare `labels` path is refused); no mask replaces them all.
#[test]
fn namespace_labels_updated_by_field_mask() {
    let s = Store::new();
    let start = [("x", "1"), ("keep", "k")];
    #[rustfmt::skip]
    let rows: Vec<LabelUpdateRow> = vec![
        ("one label set", vec![("y", "2")], vec!["labels.y"],
            Ok(vec![("x", "1"), ("keep", "k"), ("y", "2")])),
        ("one label removed", vec![], vec!["labels.x"], Ok(vec![("keep", "k")])),
        ("no mask replaces every label", vec![("y", "2")], vec![], Ok(vec![("y", "2")])),
        ("a bare labels path", vec![("y", "2")], vec!["labels"], Err(Class::InvalidArgument)),
        ("a field namespaces lack", vec![], vec!["name"], Err(Class::InvalidArgument)),
        ("an empty label key", vec![("", "v")], vec!["labels."], Err(Class::InvalidArgument)),
    ];
    for (name, new, mask, expected) in rows {
        s.namespace_update(namespace("n", &start), &[]).unwrap();
        let got = outcome(s.namespace_update(namespace("n", &new), &paths(&mask)));
        let expected = expected.map(|l| namespace("n", &l));
        assert_eq!(got, expected, "{name}");
        let stored = s.namespace_get("n").unwrap();
        let want = expected.unwrap_or(namespace("n", &start));
        assert_eq!(stored, want, "{name}: what is stored");
    }
    // An update creates the namespace; a name that is no identifier is refused.
    s.namespace_update(namespace("fresh", &[("y", "2")]), &[])
        .unwrap();
    assert_eq!(names(&s), ["fresh", "n"]);
    let bad = s.namespace_update(namespace("Bad Name", &[]), &[]);
    assert_eq!(error_class(bad), Class::InvalidArgument);
}

/// Deletion is refused while the namespace holds images, blobs, containers or (in a
/// snapshotter the caller names) snapshots, saying what it holds; one that does not exist
/// is NotFound.
#[test]
fn a_namespace_holding_anything_is_not_deleted() {
    let s = Store::new();
    let digest = s.blob("blobs", b"blob", &[]);
    let image = api::services::images::v1::Image {
        name: "example.test/one:1".into(),
        target: Some(api::types::Descriptor {
            media_type: crate::support::MANIFEST.into(),
            digest: digest.clone(),
            size: 4,
            annotations: HashMap::new(),
        }),
        ..Default::default()
    };
    s.image_create("images", image, None).unwrap();
    s.container_create("containers", bare_container()).unwrap();
    s.namespace_create(namespace("snapshots", &[])).unwrap();
    type Row<'a> = (&'a str, Option<&'a str>, Result<(), (Class, &'a str)>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("blobs", None, Err((Class::FailedPrecondition, "still has blobs"))),
        ("images", None, Err((Class::FailedPrecondition, "still has images"))),
        ("containers", None, Err((Class::FailedPrecondition, "still has containers"))),
        ("snapshots", Some("strata"), Err((Class::FailedPrecondition, "still has snapshots on"))),
        ("unknown", None, Err((Class::NotFound, "not found"))),
    ];
    for (name, snapshots_in, expected) in rows {
        let got = s.namespace_delete(name, snapshots_in);
        match (got, expected) {
            (Err(e), Err((class, says))) => {
                assert_eq!(crate::support::class(&e), class, "{name}");
                assert!(e.to_string().contains(says), "{name}: {e}");
                if class == Class::FailedPrecondition {
                    assert!(e.to_string().contains("must be empty"), "{name}: {e}");
                }
            }
            (got, expected) => panic!("{name}: {got:?}, expected {expected:?}"),
        }
    }
    assert_eq!(names(&s), ["blobs", "containers", "images", "snapshots"]);
    s.namespace_delete("snapshots", None).unwrap();
    assert_eq!(names(&s), ["blobs", "containers", "images"]);
    assert_eq!(
        error_class(s.namespace_delete("snapshots", None)),
        Class::NotFound
    );
}

/// A namespace holding only leases and writes is deleted with them: the leases are gone,
/// the writes' records and directories too.
#[test]
fn leases_and_writes_go_with_their_namespace() {
    let s = Store::new();
    s.namespace_create(namespace("c", &[("x", "1")])).unwrap();
    s.lease_create("c", "l", HashMap::new()).unwrap();
    let mut w = s.content_writer("c", "r", 0, None, Some("l")).unwrap();
    w.write_at(0, b"partial").unwrap();
    drop(w);
    assert_eq!(s.ingest_dirs(), 1);
    s.namespace_delete("c", None).unwrap();
    assert!(names(&s).is_empty());
    assert!(!s.lease_exists("c", "l").unwrap());
    assert_eq!(error_class(s.ingest_status("c", "r")), Class::NotFound);
    assert_eq!(s.ingest_dirs(), 0);
    assert_eq!(
        error_class(s.content_info("c", &sha256(b"partial"))),
        Class::NotFound
    );
    // Created again, it starts without labels.
    s.lease_create("c", "l", HashMap::new()).unwrap();
    assert!(s.namespace_get("c").unwrap().labels.is_empty());
}
