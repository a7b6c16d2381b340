//! Images: creation (times set, names unique per namespace, containerd's validation),
//! List filters (name, labels, target digest and media type, annotations), updates by field
//! mask, deletion guarded by the target, expiring images joining the caller's lease, and
//! images surviving a reopened store.

use std::collections::HashMap;

use api::services::images::v1::Image;
use api::types::Descriptor;

use crate::support::{
    Class, MANIFEST, Store, error_class, filters, labels, outcome, paths, sha256, sorted,
};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn target(digest: &str, media_type: &str, annotations: &[(&str, &str)]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size: 42,
        annotations: labels(annotations),
    }
}

fn image(name: &str, l: &[(&str, &str)], t: Descriptor) -> Image {
    Image {
        name: name.to_string(),
        labels: labels(l),
        target: Some(t),
        ..Default::default()
    }
}

fn names(images: Vec<Image>) -> Vec<String> {
    sorted(images.into_iter().map(|i| i.name).collect())
}

/// Creation sets both times; a name is unique in its namespace and unknown in the others.
#[test]
fn images_are_created_once_per_namespace() {
    let s = Store::new();
    let t = target(&sha256(b"manifest"), MANIFEST, &[]);
    let created = s
        .image_create(
            "a",
            image("example.test/one:1", &[("tier", "base")], t.clone()),
            None,
        )
        .unwrap();
    assert!(created.created_at.is_some());
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(s.image_get("a", "example.test/one:1").unwrap(), created);
    let dup = s.image_create("a", image("example.test/one:1", &[], t.clone()), None);
    assert_eq!(error_class(dup), Class::AlreadyExists);
    assert_eq!(
        s.image_get("a", "example.test/one:1").unwrap().labels,
        labels(&[("tier", "base")]),
        "the first one stays"
    );
    assert_eq!(
        error_class(s.image_get("b", "example.test/one:1")),
        Class::NotFound
    );
    assert!(s.image_list("b", &Default::default()).unwrap().is_empty());
    s.image_create("b", image("example.test/one:1", &[], t), None)
        .unwrap();
}

/// containerd's checks of an image: each row breaks one rule, and nothing is stored.
#[test]
fn invalid_images_are_refused() {
    let s = Store::new();
    let good = || {
        image(
            "example.test/bad:1",
            &[],
            target(&sha256(b"m"), MANIFEST, &[]),
        )
    };
    let long = "v".repeat(4096);
    type Change = Box<dyn Fn(&mut Image)>;
    type Row<'a> = (&'a str, Change);
    let rows: Vec<Row> = vec![
        ("no target", Box::new(|i| i.target = None)),
        ("no name", Box::new(|i| i.name.clear())),
        (
            "a target digest that is none",
            Box::new(|i| i.target.as_mut().unwrap().digest = "sha256:short".into()),
        ),
        (
            "a zero size",
            Box::new(|i| i.target.as_mut().unwrap().size = 0),
        ),
        (
            "no media type",
            Box::new(|i| i.target.as_mut().unwrap().media_type.clear()),
        ),
        (
            "an empty label key",
            Box::new(|i| i.labels = labels(&[("", "v")])),
        ),
        (
            "a label too long",
            Box::new(move |i| i.labels = labels(&[("k", long.as_str())])),
        ),
    ];
    for (name, change) in rows {
        let mut bad = good();
        change(&mut bad);
        assert_eq!(
            error_class(s.image_create("a", bad, None)),
            Class::InvalidArgument,
            "{name}"
        );
    }
    assert!(s.image_list("a", &Default::default()).unwrap().is_empty());
    s.image_create("a", good(), None).unwrap();
}

/// List by filter over three images: name, labels, target digest and media type,
/// annotations (a key with dots, unquoted), alternatives and conjunctions.
#[test]
fn images_listed_by_filter() {
    let s = Store::new();
    let (d1, d2) = (sha256(b"one"), sha256(b"two"));
    let rows_of = [
        (
            "example.test/one:1",
            vec![("tier", "base")],
            target(&d1, MANIFEST, &[]),
        ),
        ("example.test/two:1", vec![], target(&d1, MANIFEST, &[])),
        (
            "example.test/three:1",
            vec![("tier", "app")],
            target(&d2, INDEX, &[("org.example.ref", "x")]),
        ),
    ];
    for (name, l, t) in rows_of {
        s.image_create("a", image(name, &l, t), None).unwrap();
    }
    let by_d1 = format!("target.digest=={d1}");
    let by_d1_and_two = format!("target.digest=={d1},name~=two");
    let by_index = format!("target.mediatype=={INDEX}");
    let (one, two, three) = (
        "example.test/one:1",
        "example.test/two:1",
        "example.test/three:1",
    );
    type Row<'a> = (&'a str, Vec<&'a str>, Result<Vec<&'a str>, Class>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("no filter", vec![], Ok(vec![one, two, three])),
        ("a name", vec![r#"name=="example.test/two:1""#], Ok(vec![two])),
        ("a name by pattern", vec!["name~=t[wh]"], Ok(vec![two, three])),
        ("a label", vec!["labels.tier==base"], Ok(vec![one])),
        ("a label's presence", vec!["labels.tier"], Ok(vec![one, three])),
        ("a label's absence", vec!["labels.tier!=base"], Ok(vec![two, three])),
        ("the target's digest", vec![by_d1.as_str()], Ok(vec![one, two])),
        ("the target's digest or a name", vec![by_d1.as_str(), "name~=three"],
            Ok(vec![one, two, three])),
        ("the target's digest and a name", vec![by_d1_and_two.as_str()], Ok(vec![two])),
        ("the target's media type", vec![by_index.as_str()], Ok(vec![three])),
        ("an annotation", vec!["annotations.org.example.ref==x"], Ok(vec![three])),
        ("a quoted annotation", vec![r#"annotations."org.example.ref"==x"#], Ok(vec![three])),
        ("an unknown field", vec!["size==42"], Ok(vec![])),
        ("no field", vec!["==x"], Err(Class::InvalidArgument)),
    ];
    for (name, f, expected) in rows {
        let got = outcome(filters(&f).and_then(|f| s.image_list("a", &f))).map(names);
        let expected = expected.map(|v| sorted(v.into_iter().map(String::from).collect()));
        assert_eq!(got, expected, "{name}");
    }
}

/// Updates by field mask: each row starts from image `example.test/one:1` with labels
/// {tier: base} and target T1 annotated {k: v}; the row's image has labels {new: yes} and
/// target T2 annotated {other: o}. The name and creation time never change.
#[test]
fn images_updated_by_field_mask() {
    let s = Store::new();
    let name = "example.test/one:1";
    let (d1, d2) = (sha256(b"t1"), sha256(b"t2"));
    let (t1, t2) = (d1.as_str(), d2.as_str());
    let start = image(
        name,
        &[("tier", "base")],
        target(&d1, MANIFEST, &[("k", "v")]),
    );
    let update = image(
        name,
        &[("new", "yes")],
        target(&d2, INDEX, &[("other", "o")]),
    );
    /// Labels, target digest, annotations.
    type Fields<'a> = (Vec<(&'a str, &'a str)>, &'a str, Vec<(&'a str, &'a str)>);
    type Expect<'a> = Result<Fields<'a>, Class>;
    type Row<'a> = (&'a str, Vec<&'a str>, Expect<'a>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("one label added", vec!["labels.new"],
            Ok((vec![("tier", "base"), ("new", "yes")], t1, vec![("k", "v")]))),
        ("one label removed", vec!["labels.tier"], Ok((vec![], t1, vec![("k", "v")]))),
        ("every label", vec!["labels"], Ok((vec![("new", "yes")], t1, vec![("k", "v")]))),
        ("the target", vec!["target"],
            Ok((vec![("tier", "base")], t2, vec![("other", "o")]))),
        ("the annotations", vec!["annotations"],
            Ok((vec![("tier", "base")], t1, vec![("other", "o")]))),
        ("one annotation added", vec!["annotations.other"],
            Ok((vec![("tier", "base")], t1, vec![("k", "v"), ("other", "o")]))),
        ("one annotation removed", vec!["annotations.k"], Ok((vec![("tier", "base")], t1, vec![]))),
        ("no mask: everything", vec![], Ok((vec![("new", "yes")], t2, vec![("other", "o")]))),
        ("the name", vec!["name"], Err(Class::InvalidArgument)),
        ("a field images lack", vec!["size"], Err(Class::InvalidArgument)),
    ];
    for (row, mask, expected) in rows {
        let _ = s.image_delete("a", name, None, None);
        let created = s.image_create("a", start.clone(), None).unwrap();
        let got = outcome(s.image_update("a", update.clone(), &paths(&mask), None));
        let seen = |i: &Image| {
            let t = i.target.clone().unwrap();
            (i.labels.clone(), t.digest, t.annotations)
        };
        let want = |(l, d, a): Fields| (labels(&l), d.to_string(), labels(&a));
        assert_eq!(
            got.as_ref().map(seen).map_err(|c| *c),
            expected.clone().map(want),
            "{row}"
        );
        let stored = s.image_get("a", name).unwrap();
        assert_eq!(stored.name, name, "{row}");
        assert_eq!(stored.created_at, created.created_at, "{row}");
        match expected {
            Ok(e) => assert_eq!(seen(&stored), want(e), "{row}: what is stored"),
            Err(_) => assert_eq!(stored, created, "{row}: nothing changed"),
        }
    }
    // A target the update makes invalid, an image that is not there, and no name.
    let mut broken = update.clone();
    broken.target.as_mut().unwrap().size = 0;
    let refused = s.image_update("a", broken, &paths(&["target"]), None);
    assert_eq!(error_class(refused), Class::InvalidArgument);
    let elsewhere = s.image_update("b", update.clone(), &[], None);
    assert_eq!(error_class(elsewhere), Class::NotFound);
    let nameless = Image {
        name: String::new(),
        ..update
    };
    assert_eq!(
        error_class(s.image_update("a", nameless, &[], None)),
        Class::InvalidArgument
    );
}

/// Deletion with a target goes only if the image still points there.
#[test]
fn deletion_is_guarded_by_the_target() {
    let s = Store::new();
    let t = target(&sha256(b"m"), MANIFEST, &[]);
    s.image_create("a", image("example.test/two:1", &[], t.clone()), None)
        .unwrap();
    let stale = target(&sha256(b"elsewhere"), MANIFEST, &[]);
    let refused = s.image_delete("a", "example.test/two:1", Some(&stale), None);
    assert_eq!(error_class(refused), Class::NotFound);
    s.image_get("a", "example.test/two:1").unwrap();
    s.image_delete("a", "example.test/two:1", Some(&t), None)
        .unwrap();
    assert_eq!(
        error_class(s.image_get("a", "example.test/two:1")),
        Class::NotFound
    );
    assert_eq!(
        error_class(s.image_delete("a", "example.test/two:1", None, None)),
        Class::NotFound
    );
}

/// An image that expires (`containerd.io/gc.expire`) joins the caller's lease, which must
/// exist; one that does not expire needs no lease. Deleting it under the lease takes it
/// out again.
#[test]
fn an_expiring_image_joins_the_callers_lease() {
    let s = Store::new();
    let t = target(&sha256(b"m"), MANIFEST, &[]);
    let expiring = image(
        "example.test/tmp:1",
        &[("containerd.io/gc.expire", "2999-01-01T00:00:00Z")],
        t.clone(),
    );
    let missing = s.image_create("a", expiring.clone(), Some("pull"));
    assert_eq!(error_class(missing), Class::NotFound);
    assert!(s.image_list("a", &Default::default()).unwrap().is_empty());
    s.image_create("a", image("example.test/kept:1", &[], t), Some("pull"))
        .unwrap();
    s.lease_create("a", "pull", HashMap::new()).unwrap();
    s.image_create("a", expiring, Some("pull")).unwrap();
    let held: Vec<(String, String)> = s
        .lease_resources("a", "pull")
        .unwrap()
        .into_iter()
        .map(|r| (r.r#type, r.id))
        .collect();
    assert_eq!(
        held,
        [("images".to_string(), "example.test/tmp:1".to_string())]
    );
    s.image_delete("a", "example.test/tmp:1", None, Some("pull"))
        .unwrap();
    assert!(s.lease_resources("a", "pull").unwrap().is_empty());
}

/// Images, with their labels, survive reopening the store.
#[test]
fn images_survive_reopening() {
    let s = Store::new();
    let t = target(&sha256(b"m"), MANIFEST, &[]);
    let created = s
        .image_create(
            "a",
            image("example.test/one:1", &[("tier", "base")], t),
            None,
        )
        .unwrap();
    let s = s.reopen();
    assert_eq!(s.image_get("a", "example.test/one:1").unwrap(), created);
}
