//! Collection and failed transfers over the daemon's socket, as a user meets them: the five
//! ways main lost data or service before containerd's rules were followed (issue 26), each
//! end to end. The rules themselves are tested in process (`imagestore`'s model-based test
//! and its collector tests); these show the daemon wired to them.

use api::services::content::v1 as ctpb;
use api::services::content::v1::content_client::ContentClient;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;
use tonic::Request;

use crate::containerd::env::build_image;
use crate::containerd::registry::{FlakyProxy, Registry};
use crate::util::{Daemon, TempDir, assert_root, strata_ok, strata_run};

const IMAGE: &str = "strata.test/collect:1";

/// `message` in namespace `ns`, under `lease` if given.
fn request<T>(ns: &str, lease: Option<&str>, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(api::headers::NAMESPACE, ns.parse().unwrap());
    if let Some(lease) = lease {
        r.metadata_mut()
            .insert(api::headers::LEASE, lease.parse().unwrap());
    }
    r
}

/// The test image (five gzip layers) as an OCI archive in `dir`.
fn archive(dir: &std::path::Path) -> String {
    let archive = dir.join("image.tar");
    build_image(&archive, IMAGE, 2, &[]);
    archive.to_str().unwrap().to_string()
}

/// How many snapshots the daemon holds.
fn snapshot_count(daemon: &Daemon) -> usize {
    strata_ok(&daemon.socket, &["snapshot", "ls"])
        .lines()
        .count()
        - 1
}

/// Scenario 1: a lease labelled `containerd.io/gc.flat` holding an image's manifest does
/// not stop the image's own references from being followed: nothing is collected.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn a_flat_lease_hides_no_references() {
    assert_root("collection::a_flat_lease_hides_no_references");
    let tmp = TempDir::new("collect-flat");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let archive = archive(tmp.path());
    strata_ok(&daemon.socket, &["image", "-n", "nsb", "import", &archive]);
    let blobs = strata_ok(&daemon.socket, &["content", "-n", "nsb", "ls"]);
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let image = ImagesClient::new(channel.clone())
        .get(request(
            "nsb",
            None,
            ipb::GetImageRequest { name: IMAGE.into() },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    let mut leases = LeasesClient::new(channel);
    let create = lpb::CreateRequest {
        id: "flat".into(),
        labels: [("containerd.io/gc.flat".to_string(), "true".to_string())].into(),
    };
    leases.create(request("nsb", None, create)).await.unwrap();
    let add = lpb::AddResourceRequest {
        id: "flat".into(),
        resource: Some(lpb::Resource {
            id: image.target.unwrap().digest,
            r#type: "content".into(),
        }),
    };
    leases
        .add_resource(request("nsb", None, add))
        .await
        .unwrap();
    let collected = strata_ok(&daemon.socket, &["gc", "--force"]);
    assert!(collected.contains(": 0 items"), "{collected}");
    assert_eq!(
        strata_ok(&daemon.socket, &["content", "-n", "nsb", "ls"]),
        blobs
    );
    let unpack = strata_ok(&daemon.socket, &["image", "-n", "nsb", "unpack", IMAGE]);
    assert!(
        unpack.contains("0 layers applied, 5 already present"),
        "{unpack}"
    );
}

/// Scenario 2: an image unpacked naming the snapshotter `overlayfs` (ctr's default; the
/// daemon's one instance is `strata`) keeps its layers through a collection.
#[test]
#[ignore = "needs root"]
fn layers_unpacked_under_another_snapshotter_name_stay() {
    assert_root("collection::layers_unpacked_under_another_snapshotter_name_stay");
    let tmp = TempDir::new("collect-name");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let archive = archive(tmp.path());
    let strata = |args: &[&str]| strata_ok(&daemon.socket, args);
    strata(&["image", "--snapshotter", "overlayfs", "import", &archive]);
    assert_eq!(snapshot_count(&daemon), 5);
    strata(&["gc", "--force"]);
    assert_eq!(snapshot_count(&daemon), 5);
    let unpack = strata(&["image", "--snapshotter", "overlayfs", "unpack", IMAGE]);
    assert!(
        unpack.contains("0 layers applied, 5 already present"),
        "{unpack}"
    );
}

/// Scenario 3: two namespaces import one image (the second reuses the first's layers); the
/// first removes it: the layers stay for the second.
#[test]
#[ignore = "needs root"]
fn layers_stay_while_another_namespace_uses_them() {
    assert_root("collection::layers_stay_while_another_namespace_uses_them");
    let tmp = TempDir::new("collect-shared");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let archive = archive(tmp.path());
    let strata = |args: &[&str]| strata_ok(&daemon.socket, args);
    strata(&["image", "-n", "nsa", "import", &archive]);
    strata(&["image", "-n", "nsb", "import", &archive]);
    assert_eq!(snapshot_count(&daemon), 5);
    strata(&["image", "-n", "nsa", "rm", "--sync", IMAGE]);
    assert_eq!(snapshot_count(&daemon), 5);
    let unpack = strata(&["image", "-n", "nsb", "unpack", IMAGE]);
    assert!(
        unpack.contains("0 layers applied, 5 already present"),
        "{unpack}"
    );
    strata(&["image", "-n", "nsb", "rm", "--sync", IMAGE]);
    assert_eq!(snapshot_count(&daemon), 0);
}

/// Scenario 4: a transfer that corrupts a blob once fails the pull with FailedPrecondition
/// naming the blob; the next pull (the same proxy, passing bytes now) starts it afresh and
/// succeeds, and so does one from the registry directly.
#[test]
#[ignore = "needs root"]
fn a_corrupted_transfer_costs_one_retry() {
    assert_root("collection::a_corrupted_transfer_costs_one_retry");
    let tmp = TempDir::new("collect-corrupt");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    let direct = registry.push(std::path::Path::new(&archive(tmp.path())), "e2e/collect:1");
    let proxy = FlakyProxy::start(&registry.address, tmp.path().join("proxy.log"), "flip-once");
    let through = format!("{}/e2e/collect:1", proxy.address);
    let failed = strata_run(&daemon.socket, &["image", "pull", "-q", &through]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "a flipped byte went unnoticed");
    assert!(
        stderr.contains("failed precondition") && stderr.contains("sha256:"),
        "not a digest failure naming the blob: {stderr}"
    );
    let again = strata_ok(&daemon.socket, &["image", "pull", "-q", &through]);
    assert!(again.contains("layers applied"), "{again}");
    let direct = strata_ok(&daemon.socket, &["image", "pull", "-q", &direct]);
    assert!(direct.contains("layers applied"), "{direct}");
    let writes = strata_ok(&daemon.socket, &["content", "ls"]);
    assert!(!writes.contains("pull-"), "a write was left: {writes}");
}

/// Scenario 5: a write under a lease that does not exist is refused with NotFound, as
/// containerd 1.7 refuses it, and stores nothing. Needs no root (a native daemon, no mount).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_under_a_missing_lease_is_refused() {
    let tmp = TempDir::new("collect-lease");
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut content = ContentClient::new(channel);
    let data = b"under no lease".to_vec();
    let write = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: "nolease".into(),
        total: data.len() as i64,
        data,
        ..Default::default()
    }];
    let answer = match content
        .write(request("ns", Some("nope"), tokio_stream::iter(write)))
        .await
    {
        Err(status) => Err(status),
        Ok(stream) => stream.into_inner().message().await,
    };
    let status = answer.expect_err("a write under a missing lease succeeded");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let list = content
        .list(request("ns", None, ctpb::ListContentRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap();
    assert!(list.as_ref().is_none_or(|l| l.info.is_empty()), "{list:?}");
}
