//! End-to-end tests against a real containerd: a private containerd uses a Strata daemon as
//! its proxy snapshotter `strata`, and `ctr` drives it through the snapshot commands, an image
//! import, a container run on that image, and image removal followed by containerd's garbage
//! collection, after which Strata must hold no snapshot at all.
//!
//! Debian 12's containerd 1.6 has no proxy differs: its walking differ unpacks images into
//! Strata's mounts. containerd 1.7.24 (Debian 13's, see `scripts/e2e/containerd.sh`) also
//! uses Strata as its differ `strata-diff`, both for unpacking in `ctr` and in containerd's
//! transfer service, and Strata must then apply every layer straight into its own snapshots;
//! `ctr snapshots diff` must get its layer from Strata too, through containerd's content store.
//!
//! Needs root. `scripts/e2e/ensure-deps.sh` installs containerd, runc and busybox-static if
//! missing, and `scripts/e2e/build-image.sh` builds the test image offline from busybox.

mod content_suite;
pub(crate) mod cri;
mod ctr_snapshots;
pub mod env;
mod layer_creation;
mod quota;
pub mod registry;
mod transfer;
mod userns;

use std::path::Path;

use self::ctr_snapshots::{diff_through_containerd, image_lifecycle, snapshot_commands};
use self::env::{BASE_LAYERS, Containerd, Env, NAMESPACE, SNAPSHOTTER, Unpack, table};
use crate::util;

#[test]
#[ignore = "needs root"]
fn native() {
    image_lifecycle("containerd::native", "native");
}

#[test]
#[ignore = "needs root"]
fn overlayfs() {
    image_lifecycle("containerd::overlayfs", "overlayfs");
}

/// 150 layers: containerd must bring the container's overlay mount options under a page by
/// compacting the lowerdirs, which only works if all layers share a parent directory.
#[test]
#[ignore = "needs root"]
fn overlayfs_150_layers() {
    let env = Env::start(
        "containerd::overlayfs_150_layers",
        "overlayfs",
        Containerd::V1_6,
    );
    let image = "strata.test/e2e/deep:1";
    let extra = 150 - BASE_LAYERS;
    env.import(image, extra, Unpack::Client);
    env.run_container(image, "e2e-deep", extra);
    env.remove_image(image);
}

/// containerd 1.7 with Strata as its differ too: an image unpacked by `ctr` (diff-service
/// order, `strata-diff` first), then one unpacked by containerd's transfer service (its
/// unpack configuration names `strata-diff`), each with every layer applied by Strata.
#[test]
#[ignore = "needs root"]
fn strata_differ_1_7() {
    strata_differ("containerd::strata_differ_1_7", Containerd::V1_7);
}

/// The same on containerd 2.1.9 with the documented version-3 configuration. Both restart
/// Strata while containerd runs, between an image's import and its run.
#[test]
#[ignore = "needs root"]
fn strata_differ_2_1() {
    strata_differ("containerd::strata_differ_2_1", Containerd::V2_1);
}

fn strata_differ(test: &str, release: Containerd) {
    let mut env = Env::start(test, "overlayfs", release);
    snapshot_commands(&env, "overlayfs");
    diff_through_containerd(&env);

    let image = "strata.test/e2e/client-unpack:1";
    env.import(image, 0, Unpack::Client);
    env.run_container(image, "e2e-client-unpack", 0);
    env.remove_image(image);

    let image = "strata.test/e2e/transfer-unpack:1";
    env.import(image, 2, Unpack::Transfer);
    // Strata restarts under a running containerd: containerd reaches it again, the
    // unpacked image is intact and runs, and its removal and collection go through.
    let took = env.restart_strata();
    eprintln!("{test}: containerd reached the restarted Strata after {took:?}");
    env.run_container(image, "e2e-transfer-unpack", 2);
    env.remove_image(image);
}

/// containerd 2.1 pulls an image from a registry (Debian's docker-registry, filled by skopeo)
/// through its transfer service, with the documented configuration: Strata applies every
/// layer into its own snapshots, the container runs, and after removal the collector
/// leaves nothing in Strata.
#[test]
#[ignore = "needs root"]
fn pull_from_registry_2_1() {
    let env = Env::start(
        "containerd::pull_from_registry_2_1",
        "overlayfs",
        Containerd::V2_1,
    );
    let registry = registry::Registry::start(&env.scratch().join("registry"));
    let name = "e2e/pull:1";
    env.import(name, 1, Unpack::Pull(&registry));
    let image = format!("{}/{name}", registry.address);
    env.run_container(&image, "e2e-pull", 1);
    env.remove_image(&image);
}

/// Two containerd namespaces pull one image (as `default` and Kubernetes' `k8s.io` do on
/// one host): the second pull finds every layer already committed in Strata, which answers
/// its extraction Prepares with AlreadyExists; containerd adopts the committed snapshots,
/// so Strata applies nothing and stores nothing more, and the image runs in both. Removing
/// it from one namespace keeps the layers the other uses; removing it from both leaves
/// nothing.
#[test]
#[ignore = "needs root"]
fn shared_layers_2_1() {
    let mut env = Env::start(
        "containerd::shared_layers_2_1",
        "overlayfs",
        Containerd::V2_1,
    );
    let registry = registry::Registry::start(&env.scratch().join("registry"));
    let name = "e2e/shared:1";
    env.import(name, 1, Unpack::Pull(&registry));
    let image = format!("{}/{name}", registry.address);
    let stored = env.strata_snapshots();
    let applied = env.applied_lines().len();

    env.use_namespace("e2e-other");
    env.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        SNAPSHOTTER,
        &image,
    ]);
    assert_eq!(env.applied_lines().len(), applied, "layers applied again");
    assert_eq!(env.strata_snapshots(), stored, "Strata's snapshots changed");
    let reused = env
        .strata
        .log_text()
        .lines()
        .filter(|l| l.contains("layer already committed"))
        .count();
    assert_eq!(reused, stored.len(), "each layer reused once");
    // containerd's view in the second namespace: the whole chain, committed.
    let listed = env.ctr_ok(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
    let committed = table(&listed)
        .iter()
        .filter(|row| row.last() == Some(&"Committed"))
        .count();
    assert_eq!(committed, stored.len(), "{listed}");
    env.run_container(&image, "e2e-other-run", 1);

    env.use_namespace(NAMESPACE);
    env.ctr_ok(&["images", "rm", "--sync", &image]);
    env.collect_garbage();
    assert_eq!(
        env.strata_snapshots(),
        stored,
        "layers in use were collected"
    );
    env.use_namespace("e2e-other");
    env.remove_image(&image);
}

/// A user-namespaced container on Strata's idmapped layers (see `containerd/userns.rs`).
#[test]
#[ignore = "needs root"]
fn userns_2_1() {
    userns::idmapped_container("containerd::userns_2_1");
}

/// Containers with and without a size limit (see `containerd/quota.rs`).
#[test]
#[ignore = "needs root"]
fn quota_2_1() {
    quota::size_limited_containers("containerd::quota_2_1");
}

/// Kubernetes' path on containerd 1.7.24 (the documented 1.7 configuration, CRI on): pull
/// with and without credentials, a pod and its container, ImageFsInfo, 50 pods of churn,
/// image removal; every layer applied by Strata's differ.
#[test]
#[ignore = "needs root"]
fn cri_1_7() {
    cri::pod_lifecycle("containerd::cri_1_7", Containerd::V1_7);
}

/// The same on containerd 2.1.9 with the documented version-3 configuration.
#[test]
#[ignore = "needs root"]
fn cri_2_1() {
    cri::pod_lifecycle("containerd::cri_2_1", Containerd::V2_1);
}

/// containerd's own `ctr` 1.7.24 uses Strata's socket as its whole image store (content,
/// images, leases, containers, snapshots and differ, Strata's own content store), and sees
/// what it sees of a containerd 1.7.24 with its builtin overlayfs and walking differ
/// importing the same image: the same image list and content, the same mounted tree. Then
/// removal and Strata's collector leave nothing: no image, blob, lease or snapshot.
#[test]
#[ignore = "needs root"]
fn ctr_on_strata_1_7() {
    let env = Env::start(
        "containerd::ctr_on_strata_1_7",
        "overlayfs",
        Containerd::V1_7,
    );
    let image = "strata.test/e2e/ctr-direct:1";
    let archive = env.scratch().join("direct.tar");
    env::build_image(&archive, image, 2, &[]);
    let archive = archive.to_str().expect("UTF-8");

    // The reference: containerd's builtin overlayfs, unpacked by its transfer service with
    // the walking differ (its unpack configuration for overlayfs).
    env.ctr_ok(&[
        "images",
        "import",
        "--local=false",
        "--snapshotter",
        "overlayfs",
        archive,
    ]);
    // Strata as the store: ctr unpacks client-side through Strata's Snapshots and Diff.
    let out = env.ctr_strata(&["images", "import", "--snapshotter", SNAPSHOTTER, archive]);
    assert!(out.contains("done"), "{out}");

    let columns = |out: &str| -> Vec<String> {
        // REF TYPE DIGEST SIZE PLATFORMS (labels differ in nothing here either).
        table(out).iter().map(|row| row.join(" ")).collect()
    };
    assert_eq!(
        columns(&env.ctr_strata(&["images", "ls"])),
        columns(&env.ctr_ok(&["images", "ls"]))
    );
    // Content, once both collectors have dropped what the imports' leases held.
    let digests = |out: String| -> Vec<String> {
        let mut d: Vec<String> = out.lines().map(str::to_string).collect();
        d.sort();
        d
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ours = digests(env.ctr_strata(&["content", "ls", "-q"]));
        let theirs = digests(env.ctr_ok(&["content", "ls", "-q"]));
        if ours == theirs {
            assert_eq!(
                ours.len(),
                2 + BASE_LAYERS + 2,
                "manifest, config, layers: {ours:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "content differs: {ours:?} vs {theirs:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // The same tree mounted from both.
    let mounted = |ctr: &dyn Fn(&[&str]) -> String, snapshotter: &str, image: &str, dir: &Path| {
        mounted_view(ctr, snapshotter, image, dir, crate::tree::capture)
    };
    let ours = mounted(
        &|a| env.ctr_strata(a),
        SNAPSHOTTER,
        image,
        &env.scratch().join("m-strata"),
    );
    let theirs = mounted(
        &|a| env.ctr_ok(a),
        "overlayfs",
        image,
        &env.scratch().join("m-builtin"),
    );
    assert!(ours.contains_key("/extra/f2"), "{ours:?}");
    assert_eq!(ours, theirs);

    // Containers and leases through Strata.
    env.ctr_strata(&[
        "containers",
        "create",
        "--snapshotter",
        SNAPSHOTTER,
        image,
        "direct-c",
    ]);
    let listed = env.ctr_strata(&["containers", "ls", "-q"]);
    assert_eq!(listed, "direct-c\n");
    env.ctr_strata(&["containers", "rm", "direct-c"]);
    assert_eq!(env.ctr_strata(&["containers", "ls", "-q"]), "");
    assert_eq!(env.ctr_strata(&["leases", "ls", "-q"]), "");

    // Removal: the collector (synchronously here) leaves nothing of the image.
    let before = util::strata_command()
        .args(["--address", env.strata.socket.to_str().unwrap(), "gc"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&before.stdout)
            .contains("would remove (run with --force): 0 items"),
        "{before:?}"
    );
    env.ctr_strata(&["images", "rm", "--sync", image]);

    // A pull from a registry (ctr's client-side pull: content writes by ref, progress
    // polls, labels), on both: the same image row and the same tree.
    let registry = registry::Registry::start(&env.scratch().join("registry"));
    let pulled = registry.push(std::path::Path::new(archive), "e2e/ctr-pull:1");
    env.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &pulled,
    ]);
    let local = [
        "images",
        "pull",
        "--local",
        "--plain-http",
        "--snapshotter",
        SNAPSHOTTER,
    ];
    env.ctr_strata(&[&local[..], &[pulled.as_str()]].concat());
    let row = |out: String| columns(&out).into_iter().find(|r| r.starts_with(&pulled));
    assert_eq!(
        row(env.ctr_strata(&["images", "ls"])),
        row(env.ctr_ok(&["images", "ls"]))
    );
    let ours = mounted(
        &|a| env.ctr_strata(a),
        SNAPSHOTTER,
        &pulled,
        &env.scratch().join("p-strata"),
    );
    let theirs = mounted(
        &|a| env.ctr_ok(a),
        "overlayfs",
        &pulled,
        &env.scratch().join("p-builtin"),
    );
    assert_eq!(ours, theirs);
    // The rich image (gzip and zstd layers, hard links, xattrs, a device, whiteouts, an
    // opaque directory): both views equal its flattening, xattrs and hard links included.
    let layout = env.scratch().join("rich");
    let rich_source = crate::pull::rich_image(&layout, &[]);
    let expected = crate::pull::expected_tree(&layout);
    // First containerd's own applier on it (the transfer service's import unpacks with the
    // walking differ), so the independent flattening is checked against containerd too.
    let rich_tar = env.scratch().join("rich.tar");
    crate::pull::pack_layout(&layout, &rich_tar);
    let before = env.ctr_ok(&["images", "ls", "-q"]);
    env.ctr_ok(&[
        "images",
        "import",
        "--local=false",
        "--snapshotter",
        "overlayfs",
        rich_tar.to_str().unwrap(),
    ]);
    let after = env.ctr_ok(&["images", "ls", "-q"]);
    let imported: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
    assert_eq!(imported.len(), 1, "{after}");
    let tree = mounted_view(
        &|a| env.ctr_ok(a),
        "overlayfs",
        imported[0],
        &env.scratch().join("r-walking"),
        crate::pull::capture,
    );
    crate::pull::assert_same_tree(&expected, &tree);
    env.ctr_ok(&["images", "rm", "--sync", imported[0]]);
    let rich = registry.push_from(&rich_source, "e2e/rich:1");
    env.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &rich,
    ]);
    env.ctr_strata(&[&local[..], &[rich.as_str()]].concat());
    for (ctr, snapshotter, dir) in [
        (
            &(|a: &[&str]| env.ctr_strata(a)) as &dyn Fn(&[&str]) -> String,
            SNAPSHOTTER,
            "r-strata",
        ),
        (&|a: &[&str]| env.ctr_ok(a), "overlayfs", "r-builtin"),
    ] {
        let dir = env.scratch().join(dir);
        let tree = mounted_view(ctr, snapshotter, &rich, &dir, crate::pull::capture);
        crate::pull::assert_same_tree(&expected, &tree);
    }
    env.ctr_strata(&["images", "rm", "--sync", &rich]);
    env.ctr_ok(&["images", "rm", "--sync", &rich]);
    // Strata's own pull finds everything ctr put there.
    let again = util::strata_command()
        .args(["--address", env.strata.socket.to_str().unwrap()])
        .args(["image", "-n", NAMESPACE, "pull", "--quiet", &pulled])
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        again.contains("0 blobs downloaded") && again.contains("0 layers applied"),
        "{again:?}"
    );
    env.ctr_strata(&["images", "rm", "--sync", &pulled]);
    env.ctr_ok(&["images", "rm", "--sync", &pulled]);

    assert_eq!(env.ctr_strata(&["images", "ls", "-q"]), "");
    assert_eq!(env.ctr_strata(&["content", "ls", "-q"]), "");
    assert_eq!(env.strata_snapshots(), []);
    assert_eq!(util::snapshot_dirs(&env.strata.root), Vec::<String>::new());
    let blobs = std::fs::read_dir(env.strata.root.join("content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
    env.ctr_ok(&["images", "rm", "--sync", image]);
}

/// ctr 1.7.24's content commands on Strata's socket, client-side through its Content
/// service: `content ingest` (a blob from standard input, size and digest given), `content
/// fetch` (an image's blobs from a registry, written by ref with progress polls), and
/// `content get` reading each back byte for byte; no write is left in progress.
#[test]
#[ignore = "needs root"]
fn ctr_content_commands_1_7() {
    let env = Env::start("containerd::ctr_content_1_7", "native", Containerd::V1_7);
    let blob = env.scratch().join("blob.bin");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&blob, &data).unwrap();
    let digest = util::sha256(&data);
    let size = data.len().to_string();
    env.ctr_strata_bytes(
        &[
            "content",
            "ingest",
            "--expected-size",
            &size,
            "--expected-digest",
            &digest,
            "ingested",
        ],
        Some(&blob),
    );
    let got = env.ctr_strata_bytes(&["content", "get", &digest], None);
    assert_eq!(
        util::sha256(&got),
        digest,
        "content get of the ingested blob"
    );

    let archive = env.scratch().join("fetched.tar");
    env::build_image(&archive, "strata.test/e2e/fetched:1", 1, &[]);
    let registry = registry::Registry::start(&env.scratch().join("registry"));
    let image = registry.push(&archive, "e2e/fetched:1");
    env.ctr_strata(&["content", "fetch", "--plain-http", &image]);
    let listed = env.ctr_strata(&["content", "ls", "-q"]);
    for (layer, _) in archive_layers(&archive) {
        assert!(listed.contains(&layer), "{layer} not fetched: {listed}");
        let got = env.ctr_strata_bytes(&["content", "get", &layer], None);
        assert_eq!(util::sha256(&got), layer);
    }
    assert_eq!(env.ctr_strata(&["content", "active"]).lines().count(), 1);
}

/// `ctr images mount` of `image` from `snapshotter` at `dir` (created), what `capture` sees
/// there, then `ctr images unmount --rm`.
fn mounted_view<T>(
    ctr: &dyn Fn(&[&str]) -> String,
    snapshotter: &str,
    image: &str,
    dir: &Path,
    capture: impl Fn(&Path) -> T,
) -> T {
    std::fs::create_dir_all(dir).unwrap();
    let dir_s = dir.to_str().unwrap();
    ctr(&[
        "images",
        "mount",
        "--snapshotter",
        snapshotter,
        image,
        dir_s,
    ]);
    let seen = capture(dir);
    ctr(&[
        "images",
        "unmount",
        "--rm",
        "--snapshotter",
        snapshotter,
        dir_s,
    ]);
    seen
}

/// The layer blobs (digest, size) of the OCI archive `archive`'s first image.
fn archive_layers(archive: &Path) -> Vec<(String, i64)> {
    let mut files = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("open the archive"));
    for entry in tar.entries().expect("read the archive") {
        let mut entry = entry.expect("an entry");
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("read an entry");
        files.insert(path.trim_start_matches("./").to_string(), data);
    }
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&files[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let index = json("index.json");
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// containerd (1.7, Strata its differ, its own content store) unpacks an image while a
/// client of Strata's own store holds a write of one of its layers open, stalled: Strata's
/// Apply reads the blob from containerd, which has it whole, instead of following the
/// stalled write (and hanging with it).
#[test]
#[ignore = "needs root"]
fn apply_skips_stalled_writes_1_7() {
    use api::services::content::v1 as ctpb;
    use api::services::content::v1::content_client::ContentClient;
    util::assert_root("containerd::apply_skips_stalled_writes_1_7");
    let env = Env::start(
        "containerd::apply_skips_stalled_writes_1_7",
        "overlayfs",
        Containerd::V1_7,
    );
    let archive = env.scratch().join("image.tar");
    let image = "strata.test/e2e/stalled:1";
    env::build_image(&archive, image, 0, &[]);
    let archive = archive.to_str().unwrap();
    env.ctr_ok(&["images", "import", "--no-unpack", archive]);
    let (layer, size) = archive_layers(Path::new(archive)).remove(0);

    // A write of the layer in Strata's own store, opened and left without its data, from a
    // client on a runtime of its own (the stream stays open while ctr runs).
    let client = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let socket = env.strata.socket.clone();
    let opened = client.block_on(async move {
        let channel = api::channel::connect(&socket).await.unwrap();
        tx.send(ctpb::WriteContentRequest {
            action: ctpb::WriteAction::Write as i32,
            r#ref: "stalled".into(),
            total: size,
            expected: layer,
            data: vec![0u8; 16],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert(api::headers::NAMESPACE, NAMESPACE.parse().unwrap());
        let mut answers = ContentClient::new(channel)
            .write(request)
            .await
            .unwrap()
            .into_inner();
        let first = answers.message().await.unwrap().unwrap();
        (tx, answers, first.offset)
    });
    assert_eq!(opened.2, 16);

    let unpacked = env.ctr_ok(&[
        "--timeout",
        "60s",
        "images",
        "import",
        "--snapshotter",
        SNAPSHOTTER,
        archive,
    ]);
    assert!(unpacked.contains("unpacking"), "{unpacked}");
    assert_eq!(
        env.strata_snapshots().len(),
        env::BASE_LAYERS,
        "the layers unpacked"
    );
    drop(opened);
}
