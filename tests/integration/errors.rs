//! Every misuse of the Snapshots API gets the gRPC code containerd expects, and leaves
//! committed data untouched.

use tonic::Code;

use crate::suite::Fixture;
use crate::util::{Daemon, Snap, TempDir, assert_root};

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            assert!(!s.message().is_empty());
            s.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn misuse_codes() {
    for kind in ["native", "overlayfs"] {
        let mut f = Fixture::new(&format!("errors-{kind}"), kind).await;
        let s = &mut f.s;
        s.prepare("base-p", "").await.unwrap();
        s.commit("base", "base-p").await.unwrap();
        s.prepare("active", "base").await.unwrap();
        s.view("view", "base").await.unwrap();
        s.prepare("orphan", "").await.unwrap();
        let before = s.list(&[]).await.unwrap();

        assert_eq!(code(s.prepare("", "").await), Code::InvalidArgument);
        assert_eq!(code(s.view("", "base").await), Code::InvalidArgument);
        assert_eq!(code(s.prepare("active", "").await), Code::AlreadyExists);
        assert_eq!(code(s.prepare("base", "").await), Code::AlreadyExists);
        assert_eq!(code(s.prepare("x", "missing").await), Code::NotFound);
        assert_eq!(code(s.prepare("x", "active").await), Code::InvalidArgument);
        assert_eq!(code(s.view("x", "view").await), Code::InvalidArgument);
        assert_eq!(code(s.mounts("missing").await), Code::NotFound);
        assert_eq!(code(s.mounts("base").await), Code::FailedPrecondition);
        assert_eq!(code(s.commit("c", "missing").await), Code::NotFound);
        assert_eq!(code(s.commit("c", "view").await), Code::FailedPrecondition);
        assert_eq!(code(s.commit("c", "base").await), Code::FailedPrecondition);
        assert_eq!(code(s.commit("base", "active").await), Code::AlreadyExists);
        assert_eq!(code(s.commit("", "active").await), Code::InvalidArgument);
        assert_eq!(
            code(
                s.commit_full("c", "active", Default::default(), "orphan")
                    .await
            ),
            Code::InvalidArgument,
            "commit onto another parent than the one prepared on"
        );
        assert_eq!(
            code(
                s.commit_full("c", "orphan", Default::default(), "missing")
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                s.commit_full("c", "orphan", Default::default(), "active")
                    .await
            ),
            Code::FailedPrecondition
        );
        assert_eq!(code(s.remove("missing").await), Code::NotFound);
        let e = s.remove("base").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("remove"));
        assert_eq!(code(s.stat("missing").await), Code::NotFound);
        assert_eq!(code(s.usage("missing").await), Code::NotFound);
        let info = s.stat("base").await.unwrap();
        assert_eq!(
            code(s.update(info.clone(), &["parent"]).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(s.update(info.clone(), &["labels", "name"]).await),
            Code::InvalidArgument
        );
        let mut missing = info.clone();
        missing.name = "missing".into();
        assert_eq!(code(s.update(missing, &[]).await), Code::NotFound);
        // As containerd's filters.Parse: an empty filter matches everything.
        assert_eq!(s.list(&[""]).await.unwrap().len(), before.len());
        for bad in ["name==", "kind=active", "labels.\"x", "name~=("] {
            assert_eq!(
                code(s.list(&[bad]).await),
                Code::InvalidArgument,
                "filter {bad:?}"
            );
        }
        let r = s
            .client
            .update(api::services::snapshots::v1::UpdateSnapshotRequest::default())
            .await;
        assert_eq!(code(r), Code::InvalidArgument, "update without info");

        assert_eq!(s.list(&[]).await.unwrap(), before, "misuse changed nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn instances_are_selected_by_name() {
    assert_root("instances_are_selected_by_name");
    let tmp = TempDir::new("instances");
    let config = tmp.path().join("strata.toml");
    std::fs::write(
        &config,
        "[[snapshotters]]\nname = \"strata\"\ntype = \"overlayfs\"\nupperdir_label = true\n\n[[snapshotters]]\nname = \"strata-native\"\ntype = \"native\"\n",
    )
    .unwrap();
    let d = Daemon::start_with(tmp.path(), &["--config", config.to_str().unwrap()]);
    let mut s = Snap::new(&d).await;
    let req = |name: &str, key: &str| api::services::snapshots::v1::PrepareSnapshotRequest {
        snapshotter: name.into(),
        key: key.into(),
        ..Default::default()
    };
    let m = s
        .client
        .prepare(req("strata", "a"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert!(m[0].source.contains("/strata/snapshots/"), "{m:?}");
    let m = s
        .client
        .prepare(req("strata-native", "a"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert!(m[0].source.contains("/strata-native/snapshots/"), "{m:?}");
    // The overlay instance reports each snapshot's upper directory, computed, not stored.
    let stat = |name: &str| api::services::snapshots::v1::StatSnapshotRequest {
        snapshotter: name.into(),
        key: "a".into(),
    };
    let info = s
        .client
        .stat(stat("strata"))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    let upper = &info.labels["containerd.io/snapshot/overlay.upperdir"];
    assert!(
        upper.ends_with("/fs") && std::path::Path::new(upper).is_dir(),
        "{upper}"
    );
    let info = s
        .client
        .stat(stat("strata-native"))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert!(info.labels.is_empty(), "{:?}", info.labels);
    let e = s.client.prepare(req("nope", "a")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A second daemon on the same roots is refused.
    let other = TempDir::new("instances-2");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--address")
        .arg(other.path().join("s.sock"))
        .arg("serve")
        .arg("--root")
        .arg(&d.root)
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "a second daemon must not open a locked root"
    );
}
