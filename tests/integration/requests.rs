//! What any client may send reaches the services as containerd's would, or is refused as
//! containerd refuses it: an `:authority` that is the socket's path (gRPC's C core), and a
//! namespace that is not a containerd identifier (InvalidArgument from every service, with
//! nothing stored).

use api::services::containers::v1 as cpb;
use api::services::containers::v1::containers_client::ContainersClient;
use api::services::content::v1 as ctpb;
use api::services::content::v1::content_client::ContentClient;
use api::services::diff::v1 as dpb;
use api::services::diff::v1::diff_client::DiffClient;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;
use api::services::introspection::v1 as inpb;
use api::services::introspection::v1::introspection_client::IntrospectionClient;
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::namespaces::v1 as npb;
use api::services::namespaces::v1::namespaces_client::NamespacesClient;
use api::services::snapshots::v1 as spb;
use api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::util::{Daemon, TempDir, assert_root};

/// The namespace containerd 1.7.24 refuses with InvalidArgument.
const BAD: &str = "../../etc";

fn bad<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(api::headers::NAMESPACE, BAD.parse().unwrap());
    r
}

/// gRPC's C core (Python's grpcio) with the socket's path as `:authority`: the call
/// reaches the Version service.
#[test]
#[ignore = "needs root"]
fn an_authority_that_is_the_socket_path_is_accepted() {
    assert_root("requests::an_authority_that_is_the_socket_path_is_accepted");
    let tmp = TempDir::new("requests-authority");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e/grpc-authority.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&daemon.socket)
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'grpc'"),
        "grpcio is missing: run scripts/e2e/ensure-deps.sh (as .ci/run does)"
    );
    assert!(out.status.success(), "grpcio's call failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "strata 0.1.0");
}

/// Asserts `result` is containerd's refusal of the namespace.
fn refused<T: std::fmt::Debug>(service: &str, result: Result<T, tonic::Status>) {
    let status = result.expect_err(&format!("{service} took namespace {BAD:?}"));
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{service}: {status:?}"
    );
    assert!(
        status
            .message()
            .starts_with("namespace validation: identifier"),
        "{service}: {}",
        status.message()
    );
}

/// Starts a daemon, makes `call` on it with the bad namespace, and checks that nothing of
/// the namespace was stored. Needs no root: the daemon runs a native snapshotter, and
/// nothing here mounts.
async fn check<F, Fut>(call: F)
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let tmp = TempDir::new("requests-namespace");
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    call(channel.clone()).await;
    let listed = NamespacesClient::new(channel.clone())
        .list(Request::new(npb::ListNamespacesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert!(listed.is_empty(), "{listed:?}");
    let mut snapshots = SnapshotsClient::new(channel)
        .list(Request::new(spb::ListSnapshotsRequest {
            snapshotter: "strata".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(snapshots.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn content_refuses_a_bad_namespace() {
    check(|ch| async move {
        let write = vec![ctpb::WriteContentRequest {
            action: ctpb::WriteAction::Commit as i32,
            r#ref: "escape".into(),
            data: b"data".to_vec(),
            ..Default::default()
        }];
        let mut c = ContentClient::new(ch);
        let result = match c.write(bad(tokio_stream::iter(write))).await {
            Ok(s) => s.into_inner().message().await,
            Err(e) => Err(e),
        };
        refused("Content.Write", result);
        refused(
            "Content.List",
            c.list(bad(ctpb::ListContentRequest::default())).await,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn images_refuse_a_bad_namespace() {
    check(|ch| async move {
        let image = ipb::Image {
            name: "escape".into(),
            target: Some(api::types::Descriptor {
                media_type: api::media_types::OCI_MANIFEST.into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let create = ipb::CreateImageRequest {
            image: Some(image),
            source_date_epoch: None,
        };
        refused(
            "Images.Create",
            ImagesClient::new(ch).create(bad(create)).await,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_refuse_a_bad_namespace() {
    check(|ch| async move {
        let container = cpb::Container {
            id: "escape".into(),
            runtime: Some(cpb::container::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any::default()),
            ..Default::default()
        };
        let create = cpb::CreateContainerRequest {
            container: Some(container),
        };
        refused(
            "Containers.Create",
            ContainersClient::new(ch).create(bad(create)).await,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_refuse_a_bad_namespace() {
    check(|ch| async move {
        let create = lpb::CreateRequest {
            id: "escape".into(),
            labels: Default::default(),
        };
        refused(
            "Leases.Create",
            LeasesClient::new(ch).create(bad(create)).await,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_refuse_a_bad_namespace() {
    check(|ch| async move {
        let prepare = spb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: "escape".into(),
            ..Default::default()
        };
        refused(
            "Snapshots.Prepare",
            SnapshotsClient::new(ch).prepare(bad(prepare)).await,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_refuses_a_bad_namespace() {
    check(|ch| async move {
        let apply = dpb::ApplyRequest::default();
        refused("Diff.Apply", DiffClient::new(ch).apply(bad(apply)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_refuse_a_bad_namespace() {
    check(|ch| async move {
        let get = npb::GetNamespaceRequest {
            name: "default".into(),
        };
        refused(
            "Namespaces.Get",
            NamespacesClient::new(ch).get(bad(get)).await,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_refuses_a_bad_namespace() {
    check(|ch| async move {
        let plugins = inpb::PluginsRequest::default();
        refused(
            "Introspection.Plugins",
            IntrospectionClient::new(ch).plugins(bad(plugins)).await,
        );
    })
    .await;
}
