//! The on-disk index stays readable: an index written by this version (schema 1, checked in
//! under `fixtures/index-v1`) opens and shows exactly what was stored. A change to the
//! record encoding that breaks old indexes fails here.

use std::path::Path;

use snapshotter::native::{Native, NativeSnapshotter};
use snapshotter::{Filters, Kind, Labels, Options, Snapshotter};

#[test]
fn a_schema_1_index_stays_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/index-v1");
    std::fs::create_dir_all(root.join("metadata")).unwrap();
    std::fs::copy(
        fixture.join("metadata/data.mdb"),
        root.join("metadata/data.mdb"),
    )
    .unwrap();
    let s = NativeSnapshotter::open(
        root,
        Native,
        Options {
            sync_remove: true,
            ..Options::default()
        },
    )
    .unwrap();

    let all = s.list(&Filters::parse::<&str>(&[]).unwrap()).unwrap();
    let mut seen: Vec<(String, Kind, String, Labels)> = all
        .iter()
        .map(|i| (i.name.clone(), i.kind, i.parent.clone(), i.labels.clone()))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let labels = |k: &str, v: &str| Labels::from([(k.to_string(), v.to_string())]);
    assert_eq!(
        seen,
        [
            (
                "base".to_string(),
                Kind::Committed,
                String::new(),
                labels("containerd.io/snapshot.ref", "sha256:abc"),
            ),
            (
                "top".to_string(),
                Kind::Active,
                "base".to_string(),
                Labels::new()
            ),
            (
                "v".to_string(),
                Kind::View,
                "base".to_string(),
                labels("k", "v")
            ),
        ]
    );
    for info in &all {
        assert!(info.created <= info.updated, "{info:?}");
        let written = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        assert!(info.created > written, "{info:?}");
    }
    // It is still a working index (the fixture holds no snapshot directories, so no parent).
    s.prepare("new", "", Labels::new()).unwrap();
    assert_eq!(s.stat("new").unwrap().kind, Kind::Active);
    assert!(matches!(
        s.prepare("top", "", Labels::new()),
        Err(snapshotter::Error::AlreadyExists(_))
    ));
}
