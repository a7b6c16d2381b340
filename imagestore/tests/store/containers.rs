//! Containers: creation (times set, ids unique per namespace, containerd's validation), List
//! filters (id, image, runtime name, labels), updates by field mask with the snapshotter and
//! runtime immutable, and deletion.

use api::services::containers::v1::Container;
use api::services::containers::v1::container::Runtime;

use crate::support::{Class, Store, error_class, filters, labels, outcome, paths, sorted};

const RUNC: &str = "io.containerd.runc.v2";

fn spec(version: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: format!(r#"{{"ociVersion":"{version}"}}"#).into_bytes(),
    }
}

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        labels: labels(&[("app", id)]),
        image: "example.test/one:1".into(),
        runtime: Some(Runtime {
            name: RUNC.into(),
            options: None,
        }),
        spec: Some(spec("1.2.0")),
        snapshotter: "strata".into(),
        snapshot_key: id.into(),
        ..Default::default()
    }
}

/// Creation sets both times; an id is unique in its namespace and unknown in the others.
#[test]
fn containers_are_created_once_per_namespace() {
    let s = Store::new();
    let created = s.container_create("a", container("web")).unwrap();
    assert!(created.created_at.is_some());
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(s.container_get("a", "web").unwrap(), created);
    let mut other = container("web");
    other.image = "example.test/other:1".into();
    assert_eq!(
        error_class(s.container_create("a", other.clone())),
        Class::AlreadyExists
    );
    assert_eq!(
        s.container_get("a", "web").unwrap(),
        created,
        "the first stays"
    );
    assert_eq!(error_class(s.container_get("b", "web")), Class::NotFound);
    s.container_create("b", other).unwrap();
}

/// containerd's checks of a container: each row breaks one rule, and nothing is stored.
#[test]
fn invalid_containers_are_refused() {
    let s = Store::new();
    type Change = Box<dyn Fn(&mut Container)>;
    type Row<'a> = (&'a str, Change);
    let rows: Vec<Row> = vec![
        (
            "an id that is no identifier",
            Box::new(|c| c.id = "-bad".into()),
        ),
        ("no id", Box::new(|c| c.id.clear())),
        ("an id too long", Box::new(|c| c.id = "a".repeat(77))),
        ("no spec", Box::new(|c| c.spec = None)),
        ("no runtime", Box::new(|c| c.runtime = None)),
        (
            "a runtime without a name",
            Box::new(|c| c.runtime.as_mut().unwrap().name.clear()),
        ),
        (
            "a snapshot key without a snapshotter",
            Box::new(|c| c.snapshotter.clear()),
        ),
        (
            "an extension without a name",
            Box::new(|c| {
                c.extensions.insert(String::new(), Default::default());
            }),
        ),
        (
            "an empty label key",
            Box::new(|c| c.labels = labels(&[("", "x")])),
        ),
    ];
    for (name, change) in rows {
        let mut bad = container("bad");
        change(&mut bad);
        assert_eq!(
            error_class(s.container_create("a", bad)),
            Class::InvalidArgument,
            "{name}"
        );
    }
    assert!(
        s.container_list("a", &Default::default())
            .unwrap()
            .is_empty()
    );
    // Without a snapshot key, no snapshotter is needed.
    let mut bare = container("bare");
    bare.snapshot_key.clear();
    bare.snapshotter.clear();
    s.container_create("a", bare).unwrap();
}

/// List by filter over two containers.
#[test]
fn containers_listed_by_filter() {
    let s = Store::new();
    s.container_create("a", container("web")).unwrap();
    let mut db = container("db");
    db.image = "example.test/db:1".into();
    s.container_create("a", db).unwrap();
    s.container_create("b", container("elsewhere")).unwrap();
    type Row<'a> = (&'a str, Vec<&'a str>, Result<Vec<&'a str>, Class>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("no filter", vec![], Ok(vec!["db", "web"])),
        ("a label", vec!["labels.app==db"], Ok(vec!["db"])),
        ("the runtime's name", vec!["runtime.name==io.containerd.runc.v2"],
            Ok(vec!["db", "web"])),
        ("another runtime", vec!["runtime.name==io.containerd.kata.v2"], Ok(vec![])),
        ("an id", vec!["id==web"], Ok(vec!["web"])),
        ("an image", vec![r#"image=="example.test/db:1""#], Ok(vec!["db"])),
        ("either id", vec!["id==web", "id==db"], Ok(vec!["db", "web"])),
        ("an id and a label of another", vec!["id==web,labels.app==db"], Ok(vec![])),
        ("an unclosed quote", vec![r#"id=="web"#], Err(Class::InvalidArgument)),
    ];
    for (name, f, expected) in rows {
        let got = outcome(filters(&f).and_then(|f| s.container_list("a", &f)))
            .map(|l| sorted(l.into_iter().map(|c| c.id).collect::<Vec<_>>()));
        let expected = expected.map(|v| v.into_iter().map(String::from).collect());
        assert_eq!(got, expected, "{name}");
    }
}

/// Changes every field an update may change.
fn change_all(c: &mut Container) {
    c.image = "example.test/two:1".into();
    c.labels = labels(&[("extra", "1")]);
    c.spec = Some(spec("1.3.0"));
    c.snapshot_key = "web-2".into();
    c.extensions.insert("ext".into(), Default::default());
}

/// Updates by field mask. Each row starts from container `web` (labels {app: web}, image
/// one, spec 1.2.0, snapshot key web) and changes a copy of it; the expected image, labels,
/// spec version and snapshot key, or the refusal (then nothing changed).
#[test]
fn containers_updated_by_field_mask() {
    let s = Store::new();
    type Change = Box<dyn Fn(&mut Container)>;
    type Expect<'a> = Result<(&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str), Class>;
    let one = "example.test/one:1";
    let two = "example.test/two:1";
    type Row<'a> = (&'a str, Change, Vec<&'a str>, Expect<'a>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("the image and one label", Box::new(change_all),
            vec!["image", "labels.extra"],
            Ok((two, vec![("app", "web"), ("extra", "1")], "1.2.0", "web"))),
        ("every label", Box::new(change_all), vec!["labels"],
            Ok((one, vec![("extra", "1")], "1.2.0", "web"))),
        ("the spec", Box::new(change_all), vec!["spec"],
            Ok((one, vec![("app", "web")], "1.3.0", "web"))),
        ("the snapshot key", Box::new(change_all), vec!["snapshotkey"],
            Ok((one, vec![("app", "web")], "1.2.0", "web-2"))),
        ("no mask: every mutable field", Box::new(change_all), vec![],
            Ok((two, vec![("extra", "1")], "1.3.0", "web-2"))),
        ("no mask, another snapshotter",
            Box::new(|c| c.snapshotter = "other".into()), vec![], Err(Class::InvalidArgument)),
        ("no mask, another runtime",
            Box::new(|c| c.runtime.as_mut().unwrap().name = "io.containerd.kata.v2".into()),
            vec![], Err(Class::InvalidArgument)),
        ("the snapshotter by mask", Box::new(|c| c.snapshotter = "other".into()),
            vec!["snapshotter"], Err(Class::InvalidArgument)),
        ("the runtime by mask", Box::new(|_| {}), vec!["runtime"], Err(Class::InvalidArgument)),
        ("a spec removed", Box::new(|c| c.spec = None), vec!["spec"],
            Err(Class::InvalidArgument)),
        ("a label key emptied", Box::new(|c| c.labels = labels(&[("", "x")])), vec!["labels"],
            Err(Class::InvalidArgument)),
    ];
    for (name, change, mask, expected) in rows {
        let _ = s.container_delete("a", "web");
        let created = s.container_create("a", container("web")).unwrap();
        let mut c = container("web");
        change(&mut c);
        let seen = |c: &Container| {
            let version: serde_json::Value =
                serde_json::from_slice(&c.spec.as_ref().unwrap().value).unwrap();
            (
                c.image.clone(),
                c.labels.clone(),
                version["ociVersion"].as_str().unwrap().to_string(),
                c.snapshot_key.clone(),
            )
        };
        let want = |(i, l, v, k): (&str, Vec<(&str, &str)>, &str, &str)| {
            (i.to_string(), labels(&l), v.to_string(), k.to_string())
        };
        let got = outcome(s.container_update("a", c, &paths(&mask)));
        assert_eq!(
            got.as_ref().map(seen).map_err(|c| *c),
            expected.clone().map(want),
            "{name}"
        );
        let stored = s.container_get("a", "web").unwrap();
        assert_eq!(stored.created_at, created.created_at, "{name}");
        match expected {
            Ok(e) => assert_eq!(seen(&stored), want(e), "{name}: what is stored"),
            Err(_) => assert_eq!(stored, created, "{name}: nothing changed"),
        }
    }
}

/// Single extensions by `extensions.<name>`: set from the update, removed when it lacks one.
#[test]
fn extensions_updated_one_by_one() {
    let s = Store::new();
    let mut c = container("web");
    c.extensions.insert("keep".into(), spec("k"));
    c.extensions.insert("drop".into(), spec("d"));
    s.container_create("a", c.clone()).unwrap();
    c.extensions.remove("drop");
    c.extensions.insert("add".into(), spec("a"));
    let updated = s
        .container_update("a", c, &paths(&["extensions.drop", "extensions.add"]))
        .unwrap();
    let mut names: Vec<&String> = updated.extensions.keys().collect();
    names.sort();
    assert_eq!(names, ["add", "keep"]);
}

/// An update names an existing container; deletion goes once.
#[test]
fn updates_and_deletions_name_an_existing_container() {
    let s = Store::new();
    s.container_create("a", container("db")).unwrap();
    let elsewhere = s.container_update("b", container("db"), &[]);
    assert_eq!(error_class(elsewhere), Class::NotFound);
    let nameless = s.container_update("a", container(""), &[]);
    assert_eq!(error_class(nameless), Class::InvalidArgument);
    assert_eq!(error_class(s.container_delete("b", "db")), Class::NotFound);
    s.container_delete("a", "db").unwrap();
    assert_eq!(error_class(s.container_delete("a", "db")), Class::NotFound);
    assert_eq!(error_class(s.container_get("a", "db")), Class::NotFound);
}
