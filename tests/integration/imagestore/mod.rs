//! The image store through the daemon: its services over the socket ([`services`]: codes,
//! streams, headers), the collector reached through the Admin API and a synchronous image
//! removal, and the CLI's image commands: import (OCI and docker archives), unpack, rootfs,
//! containers, pulls from a registry and a pull killed midway. The store's own behaviour is
//! tested in process (`imagestore/tests/store`).

mod services;

use std::collections::HashMap;

use api::admin::v1 as apb;
use api::admin::v1::admin_client::AdminClient;
use api::services::content::v1 as ctpb;
use api::services::content::v1::content_client::ContentClient;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;
use api::types::Descriptor;
use tonic::Request;
use tonic::transport::Channel;

use crate::containerd::env::build_image;
use crate::util::{Daemon, TempDir, assert_root, ingest_bytes, sha256, strata_ok, strata_run};

/// `message` as a request in containerd namespace `ns` (none if empty).
fn ns<T>(ns: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if !ns.is_empty() {
        r.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
    }
    r
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes `data` as a blob in namespace `namespace` with `labels_in`, in one stream; the
/// digest.
async fn put_blob(
    c: &mut ContentClient<Channel>,
    namespace: &str,
    data: &[u8],
    labels_in: &[(&str, &str)],
) -> String {
    let digest = sha256(data);
    let req = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: format!("put-{digest}"),
        total: data.len() as i64,
        expected: digest.clone(),
        data: data.to_vec(),
        labels: labels(labels_in),
        ..Default::default()
    }];
    let mut answers = c
        .write(ns(namespace, tokio_stream::iter(req)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().digest, digest);
    digest
}

/// The digests `namespace` lists, sorted.
async fn listed(c: &mut ContentClient<Channel>, namespace: &str) -> Vec<String> {
    let mut s = c
        .list(ns(namespace, ctpb::ListContentRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(b) = s.message().await.unwrap() {
        all.extend(b.info.into_iter().map(|i| i.digest));
    }
    all.sort();
    all
}

/// The collector wired to the Admin API and to image removal (its rules are tested in
/// process: `imagestore/tests/store/collection.rs`, the collector's unit tests and the
/// model-based test): a dry run lists what the collection then removes, as (kind,
/// namespace, id), blob files (no namespace), records and expired leases alike, and
/// removes nothing; the collection removes it, files included; an image removed with `sync`
/// takes its tree before the call returns.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn garbage_collection() {
    assert_root("imagestore::garbage_collection");
    let tmp = TempDir::new("imagestore-gc");
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut content = ContentClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let mut leases = LeasesClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);

    let layer = put_blob(&mut content, "a", b"layer", &[]).await;
    let ref_layer = [("containerd.io/gc.ref.content.l.0", layer.as_str())];
    let manifest = put_blob(&mut content, "a", b"manifest", &ref_layer).await;
    let expired = put_blob(&mut content, "a", b"expired", &[]).await;
    let loose = put_blob(&mut content, "a", b"loose", &[]).await;
    let image = ipb::Image {
        name: "example.test/gc:1".into(),
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: manifest.clone(),
            size: 8,
            annotations: HashMap::new(),
        }),
        ..Default::default()
    };
    let create = ipb::CreateImageRequest {
        image: Some(image),
        source_date_epoch: None,
    };
    images.create(ns("a", create)).await.unwrap();
    let old = lpb::CreateRequest {
        id: "old".into(),
        labels: labels(&[("containerd.io/gc.expire", "2001-01-01T00:00:00Z")]),
    };
    leases.create(ns("a", old)).await.unwrap();
    let hold = lpb::AddResourceRequest {
        id: "old".into(),
        resource: Some(lpb::Resource {
            id: expired.clone(),
            r#type: "content".into(),
        }),
    };
    leases.add_resource(ns("a", hold)).await.unwrap();

    let removed = |r: apb::CollectGarbageResponse| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = r
            .removed
            .into_iter()
            .map(|x| (x.kind, x.namespace, x.id))
            .collect();
        v.sort();
        v
    };
    let item = |kind: &str, namespace: &str, id: &str| {
        (kind.to_string(), namespace.to_string(), id.to_string())
    };
    let mut expected = vec![
        item("blob", "", &expired),
        item("blob", "", &loose),
        item("content", "a", &expired),
        item("content", "a", &loose),
        item("lease", "a", "old"),
    ];
    expected.sort();
    let dry = admin
        .collect_garbage(apb::CollectGarbageRequest { dry_run: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed(dry), expected);
    assert_eq!(
        listed(&mut content, "a").await.len(),
        4,
        "a dry run removes nothing"
    );
    let blobs = daemon.root.join("content/blobs/sha256");
    assert!(blobs.join(loose.trim_start_matches("sha256:")).exists());
    let done = admin
        .collect_garbage(apb::CollectGarbageRequest { dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed(done), expected);
    let mut kept = vec![layer.clone(), manifest.clone()];
    kept.sort();
    assert_eq!(listed(&mut content, "a").await, kept);
    assert!(!blobs.join(loose.trim_start_matches("sha256:")).exists());
    let left = leases
        .list(ns("a", lpb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(left.is_empty(), "{left:?}");

    // Removing the image with sync: its tree goes before the call returns.
    let delete = ipb::DeleteImageRequest {
        name: "example.test/gc:1".into(),
        sync: true,
        target: None,
    };
    images.delete(ns("a", delete)).await.unwrap();
    assert!(listed(&mut content, "a").await.is_empty());
    assert!(!blobs.join(layer.trim_start_matches("sha256:")).exists());
}
/// `strata image import` of the e2e test image (gzip layers with whiteouts and an opaque
/// directory): the first import applies every layer, the second applies none and says so;
/// `strata rootfs prepare --mount` shows the image's flattened tree; `container
/// create|label|rm` and `image rm --sync` leave nothing once the root filesystem is
/// removed.
#[test]
#[ignore = "needs root"]
fn cli_import_unpack_rootfs() {
    assert_root("imagestore::cli_import_unpack_rootfs");
    let tmp = TempDir::new("imagestore-cli");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let archive = tmp.path().join("image.tar");
    build_image(&archive, "strata.test/cli:1", 2, &[]);
    let strata = |args: &[&str]| strata_ok(&daemon.socket, args);
    let archive = archive.to_str().unwrap();

    let first = strata(&["image", "import", archive]);
    assert!(
        first.contains("unpacked strata.test/cli:1: 5 layers applied, 0 already present"),
        "{first}"
    );
    let second = strata(&["image", "import", archive]);
    assert!(
        second.contains("unpacked strata.test/cli:1: 0 layers applied, 5 already present"),
        "{second}"
    );
    assert!(strata(&["image", "ls"]).contains("strata.test/cli:1"));
    let unpack = strata(&["image", "unpack", "strata.test/cli:1"]);
    assert!(
        unpack.contains("0 layers applied, 5 already present"),
        "{unpack}"
    );

    let root = tmp.path().join("rootfs");
    strata(&[
        "rootfs",
        "prepare",
        "strata.test/cli:1",
        "rootfs-1",
        "--mount",
        root.to_str().unwrap(),
    ]);
    let tree = crate::tree::capture(&root);
    strata(&["rootfs", "unmount", root.to_str().unwrap()]);
    let read = |p: &str| String::from_utf8(tree[p].data.clone()).unwrap();
    assert_eq!(read("/etc/a"), "a2\n");
    assert_eq!(read("/etc/c"), "c2\n");
    assert_eq!(read("/extra/f2"), "extra 2\n");
    assert!(!tree.contains_key("/etc/b"), "whited out");
    assert!(!tree.contains_key("/data/gone"), "whited out");
    let old: Vec<&String> = tree
        .keys()
        .filter(|k| k.starts_with("/data/old/"))
        .collect();
    assert_eq!(old, ["/data/old/new"], "opaque directory");
    assert_eq!(tree["/tmp"].mode, 0o1777);

    strata(&["container", "create", "strata.test/cli:1", "c1"]);
    assert!(strata(&["container", "label", "c1", "tier=web"]).contains("tier=web"));
    assert!(strata(&["container", "ls"]).contains("c1"));
    strata(&["container", "rm", "c1"]);
    strata(&["snapshot", "rm", "rootfs-1"]);
    strata(&["image", "rm", "--sync", "strata.test/cli:1"]);
    assert_eq!(
        strata(&["gc"]),
        "would remove (run with --force): 0 items\n"
    );
    crate::util::assert_nothing_stored(&daemon);
}

/// `strata image pull` from a registry (Debian's docker-registry, filled by skopeo): the
/// first pull downloads every blob and applies every layer, a second downloads and applies
/// nothing and says so, an image sharing the first one's layers downloads and applies only
/// its own; a registry that wants a password refuses an anonymous pull and serves one with
/// `--user`; removal and collection leave nothing.
#[test]
#[ignore = "needs root"]
fn pull_from_registry() {
    use crate::containerd::registry::Registry;
    assert_root("imagestore::pull_from_registry");
    let tmp = TempDir::new("imagestore-pull");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let open = Registry::start(&tmp.path().join("open"));
    let locked = Registry::start_authenticated(&tmp.path().join("locked"), "puller", "pw-1");
    let build = |name: &str, extra: usize| {
        let archive = tmp.path().join(format!("{extra}.tar"));
        build_image(&archive, name, extra, &[]);
        archive
    };
    // "two" is "one" and one more layer.
    let one = open.push(&build("e2e/one:1", 2), "e2e/one:1");
    let two = open.push(&build("e2e/two:1", 3), "e2e/two:1");
    let private = locked.push(&build("e2e/one:1", 2), "e2e/private:1");
    let strata = |args: &[&str]| strata_run(&daemon.socket, args);
    let ok = |args: &[&str]| strata_ok(&daemon.socket, args);

    let first = ok(&["image", "pull", &one]);
    assert!(
        first.contains("7 blobs downloaded")
            && first.contains("5 layers applied, 0 already present"),
        "{first}"
    );
    let again = ok(&["image", "pull", "--quiet", &one]);
    assert!(
        again.contains(
            "0 blobs downloaded (0 bytes), 7 present; 0 layers applied, 5 already present"
        ),
        "{again}"
    );
    let shared = ok(&["image", "pull", &two]);
    assert!(
        shared.contains("3 blobs downloaded")
            && shared.contains("1 layers applied, 5 already present"),
        "{shared}"
    );

    let root = tmp.path().join("rootfs");
    ok(&[
        "rootfs",
        "prepare",
        &two,
        "two-root",
        "--mount",
        root.to_str().unwrap(),
    ]);
    let tree = crate::tree::capture(&root);
    ok(&["rootfs", "unmount", root.to_str().unwrap()]);
    assert_eq!(tree["/extra/f3"].data, b"extra 3\n");
    assert_eq!(tree["/etc/a"].data, b"a2\n");
    assert!(!tree.contains_key("/etc/b"));
    ok(&["snapshot", "rm", "two-root"]);

    let refused = strata(&["image", "pull", &private]);
    assert!(!refused.status.success(), "{refused:?}");
    let with_user = ok(&["image", "pull", "--user", "puller:pw-1", &private]);
    assert!(
        with_user.contains("0 layers applied, 5 already present"),
        "{with_user}"
    );

    ok(&["image", "rm", &one, &two]);
    ok(&["image", "rm", "--sync", &private]);
    assert_eq!(ok(&["gc"]), "would remove (run with --force): 0 items\n");
    crate::util::assert_nothing_stored(&daemon);
}

/// kill -9 during a pull, of the client and then of the daemon, and pull again: the pull
/// completes, and once collected nothing is left over: no lease, no write in progress, no
/// blob or snapshot beyond the image's.
#[test]
#[ignore = "needs root"]
fn pull_interrupted_by_kill() {
    use crate::containerd::registry::Registry;
    assert_root("imagestore::pull_interrupted_by_kill");
    let tmp = TempDir::new("imagestore-kill");
    let mut daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    for (round, kill_daemon) in [("client", false), ("daemon", true)] {
        let archive = tmp.path().join(format!("{round}.tar"));
        build_image(&archive, &format!("e2e/{round}:1"), 0, &[("BIG_MB", "120")]);
        let image = registry.push(&archive, &format!("e2e/{round}:1"));

        let mut pull = crate::util::strata_command()
            .arg("--address")
            .arg(&daemon.socket)
            .args(["image", "pull", "--quiet", &image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ingest_bytes(&daemon.root) < 16 << 20 {
            assert!(
                pull.try_wait().unwrap().is_none(),
                "the pull ended before it was killed"
            );
            assert!(std::time::Instant::now() < deadline, "the pull never wrote");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if kill_daemon {
            daemon.kill();
            let _ = pull.wait();
            daemon.respawn();
        } else {
            pull.kill().unwrap();
            pull.wait().unwrap();
        }
        assert!(ingest_bytes(&daemon.root) > 0, "a partial write is left");

        let done = strata_ok(&daemon.socket, &["image", "pull", "--quiet", &image]);
        assert!(done.contains("3 layers applied"), "{done}");
        strata_ok(&daemon.socket, &["gc", "--force"]);
        assert_eq!(
            strata_ok(&daemon.socket, &["lease", "ls"]).lines().count(),
            1,
            "leases left"
        );
        assert_eq!(ingest_bytes(&daemon.root), 0, "writes left");
        let blobs = std::fs::read_dir(daemon.root.join("content/blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 2 + 3, "manifest, config, 3 layers");
        let snapshots = strata_ok(&daemon.socket, &["snapshot", "ls"]);
        assert_eq!(snapshots.lines().count(), 1 + 3, "{snapshots}");
        strata_ok(&daemon.socket, &["image", "rm", "--sync", &image]);
        assert_eq!(
            strata_ok(&daemon.socket, &["snapshot", "ls"])
                .lines()
                .count(),
            1
        );
        assert_eq!(
            crate::util::snapshot_dirs(&daemon.root),
            Vec::<String>::new()
        );
    }
}

/// `strata image import` of a docker archive (`docker save`'s format, made with skopeo): the
/// image is named as containerd names it, unpacks, and mounts the same tree as the OCI
/// archive it was made from.
#[test]
#[ignore = "needs root"]
fn docker_archive_import() {
    assert_root("imagestore::docker_archive_import");
    let tmp = TempDir::new("imagestore-docker");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let oci = tmp.path().join("oci.tar");
    build_image(&oci, "strata.test/docker:1", 1, &[]);
    let docker = tmp.path().join("docker.tar");
    let copied = std::process::Command::new("/usr/bin/skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("docker-archive:{}:e2e/docker:1", docker.display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{copied:?}");
    let strata = |args: &[&str]| strata_ok(&daemon.socket, args);
    let imported = strata(&["image", "import", docker.to_str().unwrap()]);
    assert!(
        imported.contains("imported docker.io/e2e/docker:1"),
        "{imported}"
    );
    assert!(
        imported.contains("4 layers applied, 0 already present"),
        "{imported}"
    );
    let from_oci = strata(&["image", "import", oci.to_str().unwrap()]);
    assert!(
        from_oci.contains("0 layers applied, 4 already present"),
        "{from_oci}"
    );
    let mut trees = Vec::new();
    for (name, key) in [
        ("docker.io/e2e/docker:1", "d"),
        ("strata.test/docker:1", "o"),
    ] {
        let root = tmp.path().join(key);
        strata(&[
            "rootfs",
            "prepare",
            name,
            key,
            "--mount",
            root.to_str().unwrap(),
        ]);
        trees.push(crate::tree::capture(&root));
        strata(&["rootfs", "unmount", root.to_str().unwrap()]);
        strata(&["snapshot", "rm", key]);
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0]["/extra/f1"].data, b"extra 1\n");
}
