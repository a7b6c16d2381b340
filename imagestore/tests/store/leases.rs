//! Leases: creation (ids unique per namespace, labels checked), resources of every type
//! containerd knows (and the refusals of the others), List filters, deletion, and what
//! writes and commits made under a lease add to it.

use std::collections::HashMap;

use api::services::leases::v1::Resource;

use crate::support::{Class, Store, error_class, filters, labels, outcome, sha256, sorted};

fn resource(t: &str, id: &str) -> Resource {
    Resource {
        id: id.into(),
        r#type: t.into(),
    }
}

/// The (type, id) pairs lease `id` of `ns` holds, sorted.
fn held(s: &Store, ns: &str, id: &str) -> Vec<(String, String)> {
    sorted(
        s.lease_resources(ns, id)
            .unwrap()
            .into_iter()
            .map(|r| (r.r#type, r.id))
            .collect(),
    )
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    sorted(
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

/// Creation keeps the id and labels; an id is unique in its namespace; no id, or a label
/// containerd refuses, is InvalidArgument.
#[test]
fn leases_are_created_once_per_namespace() {
    let s = Store::new();
    let expire = [("containerd.io/gc.expire", "2100-01-01T00:00:00Z")];
    let lease = s.lease_create("a", "pull-1", labels(&expire)).unwrap();
    assert_eq!(
        (lease.id.as_str(), lease.labels),
        ("pull-1", labels(&expire))
    );
    assert!(lease.created_at.is_some());
    assert!(s.lease_exists("a", "pull-1").unwrap());
    assert!(!s.lease_exists("b", "pull-1").unwrap());
    type Row<'a> = (&'a str, &'a str, &'a str, HashMap<String, String>, Class);
    let rows: Vec<Row> = vec![
        (
            "the same id",
            "a",
            "pull-1",
            HashMap::new(),
            Class::AlreadyExists,
        ),
        ("no id", "a", "", HashMap::new(), Class::InvalidArgument),
        (
            "an empty label key",
            "a",
            "x",
            labels(&[("", "v")]),
            Class::InvalidArgument,
        ),
    ];
    for (name, ns, id, l, expected) in rows {
        assert_eq!(error_class(s.lease_create(ns, id, l)), expected, "{name}");
    }
    assert_eq!(s.lease_list("a", &Default::default()).unwrap().len(), 1);
    s.lease_create("b", "pull-1", HashMap::new()).unwrap();
}

/// Resources by type: content (a digest), writes, images and snapshots of a named
/// snapshotter are held; other types are Unimplemented; a lease another namespace has is
/// NotFound. The lease then holds exactly the rows that were accepted.
#[test]
fn resources_of_every_type() {
    let s = Store::new();
    s.lease_create("a", "pull-1", HashMap::new()).unwrap();
    let digest = sha256(b"layer");
    let d = digest.as_str();
    type Row<'a> = (&'a str, &'a str, &'a str, &'a str, Result<(), Class>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("a blob", "pull-1", "content", d, Ok(())),
        ("a snapshot", "pull-1", "snapshots/strata", "k1", Ok(())),
        ("a write", "pull-1", "ingests", "ref-1", Ok(())),
        ("an image", "pull-1", "images", "example.test/one:1", Ok(())),
        ("a blob twice", "pull-1", "content", d, Ok(())),
        ("a blob that is no digest", "pull-1", "content", "layer", Err(Class::InvalidArgument)),
        ("a snapshot of no snapshotter", "pull-1", "snapshots/", "k", Err(Class::InvalidArgument)),
        ("a snapshotter name with a slash", "pull-1", "snapshots/a/b", "k",
            Err(Class::InvalidArgument)),
        ("no id", "pull-1", "ingests", "", Err(Class::InvalidArgument)),
        ("an unknown type", "pull-1", "bogus", "x", Err(Class::Unimplemented)),
        ("another namespace's lease", "other", "content", d, Err(Class::NotFound)),
    ];
    for (name, lease, t, id, expected) in rows {
        let ns = if lease == "other" { "b" } else { "a" };
        let lease = if lease == "other" { "pull-1" } else { lease };
        let got = s.lease_add_resource(ns, lease, &resource(t, id));
        assert_eq!(outcome(got), expected, "{name}");
    }
    assert_eq!(
        held(&s, "a", "pull-1"),
        pairs(&[
            ("content", d),
            ("snapshots/strata", "k1"),
            ("ingests", "ref-1"),
            ("images", "example.test/one:1"),
        ])
    );
    assert_eq!(
        error_class(s.lease_resources("b", "pull-1")),
        Class::NotFound
    );

    // Taken out one by one; the same refusals on the way out.
    s.lease_delete_resource("a", "pull-1", &resource("snapshots/strata", "k1"))
        .unwrap();
    let bogus = s.lease_delete_resource("a", "pull-1", &resource("bogus", "x"));
    assert_eq!(error_class(bogus), Class::Unimplemented);
    let missing = s.lease_delete_resource("a", "none", &resource("ingests", "ref-1"));
    assert_eq!(error_class(missing), Class::NotFound);
    assert_eq!(
        held(&s, "a", "pull-1"),
        pairs(&[
            ("content", d),
            ("ingests", "ref-1"),
            ("images", "example.test/one:1"),
        ])
    );
}

/// List by filter (id, labels).
#[test]
fn leases_listed_by_filter() {
    let s = Store::new();
    s.lease_create("a", "pull-1", labels(&[("tier", "pull")]))
        .unwrap();
    s.lease_create("a", "pull-2", HashMap::new()).unwrap();
    s.lease_create("a", "unpack", labels(&[("tier", "unpack")]))
        .unwrap();
    s.lease_create("b", "pull-1", HashMap::new()).unwrap();
    type Row<'a> = (&'a str, Vec<&'a str>, Result<Vec<&'a str>, Class>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("no filter", vec![], Ok(vec!["pull-1", "pull-2", "unpack"])),
        ("an id", vec!["id==pull-1"], Ok(vec!["pull-1"])),
        ("ids by pattern", vec!["id~=^pull-"], Ok(vec!["pull-1", "pull-2"])),
        ("a label", vec!["labels.tier==unpack"], Ok(vec!["unpack"])),
        ("a label's presence", vec!["labels.tier"], Ok(vec!["pull-1", "unpack"])),
        ("an id or a label", vec!["id==pull-2", "labels.tier==unpack"],
            Ok(vec!["pull-2", "unpack"])),
        ("a trailing comma", vec!["id==pull-1,"], Err(Class::InvalidArgument)),
    ];
    for (name, f, expected) in rows {
        let got = outcome(filters(&f).and_then(|f| s.lease_list("a", &f)))
            .map(|l| sorted(l.into_iter().map(|l| l.id).collect::<Vec<_>>()));
        let expected = expected.map(|v| v.into_iter().map(String::from).collect());
        assert_eq!(got, expected, "{name}");
    }
}

/// Deletion goes once, with the lease's resources; the lease is then unknown to every call.
#[test]
fn a_deleted_lease_is_gone_with_its_resources() {
    let s = Store::new();
    s.lease_create("a", "gen", HashMap::new()).unwrap();
    s.lease_add_resource("a", "gen", &resource("ingests", "r"))
        .unwrap();
    assert_eq!(error_class(s.lease_delete("b", "gen")), Class::NotFound);
    s.lease_delete("a", "gen").unwrap();
    assert_eq!(error_class(s.lease_delete("a", "gen")), Class::NotFound);
    assert_eq!(error_class(s.lease_resources("a", "gen")), Class::NotFound);
    let add = s.lease_add_resource("a", "gen", &resource("ingests", "r"));
    assert_eq!(error_class(add), Class::NotFound);
    // The same id again starts empty.
    s.lease_create("a", "gen", HashMap::new()).unwrap();
    assert!(held(&s, "a", "gen").is_empty());
}

/// A write under a lease is held by it as a write, its commit as a blob; a commit of a blob
/// the namespace had already (AlreadyExists) is held all the same; a write under a lease
/// that does not exist is NotFound and records nothing.
#[test]
fn writes_and_commits_under_a_lease_are_held_by_it() {
    let s = Store::new();
    s.lease_create("a", "pull", HashMap::new()).unwrap();
    let missing = s.content_writer("a", "w", 0, None, Some("nope"));
    assert_eq!(error_class(missing.map(|_| ())), Class::NotFound);
    assert!(s.ingest_list("a", &Default::default()).unwrap().is_empty());

    let mut w = s.content_writer("a", "w", 0, None, Some("pull")).unwrap();
    w.write_at(0, b"leased").unwrap();
    assert_eq!(held(&s, "a", "pull"), pairs(&[("ingests", "w")]));
    let digest = s
        .content_commit(w, "w", 6, None, HashMap::new())
        .unwrap()
        .to_string();
    assert_eq!(
        held(&s, "a", "pull"),
        pairs(&[("content", digest.as_str())])
    );

    let had = s.blob("a", b"had", &[]);
    s.lease_create("a", "second", HashMap::new()).unwrap();
    let mut w = s
        .content_writer("a", "w2", 0, None, Some("second"))
        .unwrap();
    w.write_at(0, b"had").unwrap();
    let again = s.content_commit(w, "w2", 3, None, HashMap::new());
    assert_eq!(error_class(again), Class::AlreadyExists);
    assert_eq!(held(&s, "a", "second"), pairs(&[("content", had.as_str())]));
    // Opening a write of a blob the namespace has puts the blob in the lease.
    s.lease_create("a", "third", HashMap::new()).unwrap();
    let exists = s.content_writer("a", "w3", 0, Some(&had), Some("third"));
    assert_eq!(error_class(exists.map(|_| ())), Class::AlreadyExists);
    assert_eq!(held(&s, "a", "third"), pairs(&[("content", had.as_str())]));
}
