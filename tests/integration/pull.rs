//! `strata image pull` from Debian's docker-registry, beyond the basics of
//! `imagestore::pull_from_registry`: an image with every kind of layer entry (gzip and
//! zstd, whiteouts, an opaque directory, hard links, xattrs, a device) whose mounted root
//! filesystem must equal its flattened content as `scripts/e2e/rich-image.py` computes it
//! from the layer entries; transfers cut in the middle (and a registry answering 503) that
//! the pull resumes; bearer-token authentication with credentials from `--user` and from the
//! docker config file; and the platform picked from a multi-platform index.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::containerd::env::build_image;
use crate::containerd::registry::{FlakyProxy, Registry};
use crate::tree::capture as tree_capture;
use crate::util::{Daemon, TempDir, assert_root, strata_ok, strata_run};

fn rich_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e/rich-image.py")
}

/// Builds the rich image as an OCI layout in `dir` (image "rich", for `arches`, this
/// machine's if none); `oci:DIR:rich` for skopeo.
pub(crate) fn rich_image(dir: &Path, arches: &[&str]) -> String {
    let out = Command::new(rich_script())
        .arg("build")
        .arg(dir)
        .arg("rich")
        .args(arches)
        .output()
        .unwrap();
    assert!(out.status.success(), "rich-image.py build: {out:?}");
    format!("oci:{}:rich", dir.display())
}

/// The OCI layout in `layout` as the archive `tar`, for `ctr images import`.
pub(crate) fn pack_layout(layout: &Path, tar: &Path) {
    let packed = Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success(), "tar of {}", layout.display());
}

/// The tree under `root` as rich-image.py captures it.
pub(crate) fn capture(root: &Path) -> Value {
    let out = Command::new(rich_script())
        .arg("capture")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "rich-image.py capture: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts `actual` equals `expected`, naming every path that differs.
pub(crate) fn assert_same_tree(expected: &Value, actual: &Value) {
    let (e, a) = (expected.as_object().unwrap(), actual.as_object().unwrap());
    let mut differences = Vec::new();
    for (path, want) in e {
        match a.get(path) {
            None => differences.push(format!("{path}: missing")),
            Some(got) if got != want => differences.push(format!("{path}: {got} != {want}")),
            Some(_) => {}
        }
    }
    for path in a.keys().filter(|p| !e.contains_key(*p)) {
        differences.push(format!("{path}: not in the image"));
    }
    assert!(
        differences.is_empty(),
        "trees differ:\n{}",
        differences.join("\n")
    );
}

/// The flattened tree rich-image.py wrote next to the layout in `dir`.
pub(crate) fn expected_tree(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

/// Prepares a root filesystem of `image` under `key`, mounted at `dir/key`; its capture.
fn rootfs_capture(daemon: &Daemon, image: &str, key: &str, dir: &Path) -> Value {
    rootfs_with(&daemon.socket, image, key, dir, capture)
}

/// Prepares a root filesystem of `image` under `key` through the daemon at `socket`, mounts
/// it at `dir/key`, runs `f` on it, then unmounts and removes it; what `f` returned.
pub(crate) fn rootfs_with<T>(
    socket: &Path,
    image: &str,
    key: &str,
    dir: &Path,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let root = dir.join(key);
    let root_arg = root.to_str().expect("UTF-8 path");
    strata_ok(
        socket,
        &["rootfs", "prepare", image, key, "--mount", root_arg],
    );
    let seen = f(&root);
    strata_ok(socket, &["rootfs", "unmount", root_arg]);
    strata_ok(socket, &["snapshot", "rm", key]);
    seen
}

/// The rich image, pulled: the first pull downloads its 5 blobs and applies its 3 layers,
/// the second does nothing and says so; the root filesystem equals the flattened image.
#[test]
#[ignore = "needs root"]
fn pull_rich_image() {
    assert_root("pull::pull_rich_image");
    let tmp = TempDir::new("pull-rich");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    let layout = tmp.path().join("layout");
    let image = registry.push_from(&rich_image(&layout, &[]), "e2e/rich:1");

    let first = strata_ok(&daemon.socket, &["image", "pull", &image]);
    assert!(
        first.contains("5 blobs downloaded") && first.contains("3 layers applied, 0 already"),
        "{first}"
    );
    let again = strata_ok(&daemon.socket, &["image", "pull", &image]);
    assert!(
        again.contains("0 blobs downloaded (0 bytes), 5 present; 0 layers applied, 3 already"),
        "{again}"
    );
    let expected = expected_tree(&layout);
    let tree = rootfs_capture(&daemon, &image, "rich-root", tmp.path());
    assert_same_tree(&expected, &tree);

    strata_ok(&daemon.socket, &["image", "rm", "--sync", &image]);
    crate::util::assert_nothing_stored(&daemon);
}

/// Two pulls at once of images with the same layers (one image pushed under two names, a
/// 64 MiB layer among them), then two imports at once of one archive: each waits for the
/// other's write of a blob they share, as containerd's clients do, instead of failing on
/// its lock ("ref ... locked"), and the images are whole.
#[test]
#[ignore = "needs root"]
fn concurrent_pulls_and_imports_of_shared_layers() {
    assert_root("pull::concurrent_pulls_and_imports_of_shared_layers");
    let tmp = TempDir::new("pull-shared");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    let archive = tmp.path().join("shared.tar");
    build_image(&archive, "strata.test/shared:1", 1, &[("BIG_MB", "64")]);
    let pulled = [
        registry.push(&archive, "e2e/one:1"),
        registry.push(&archive, "e2e/two:1"),
    ];
    let at_once = |calls: &[Vec<&str>]| {
        let clients: Vec<Child> = calls
            .iter()
            .map(|a| {
                crate::util::strata_command()
                    .arg("--address")
                    .arg(&daemon.socket)
                    .args(a)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in clients {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{calls:?}: {out:?}");
        }
    };
    let pulls: Vec<Vec<&str>> = pulled.iter().map(|i| vec!["image", "pull", i]).collect();
    at_once(&pulls);
    let trees: Vec<_> = pulled
        .iter()
        .map(|image| {
            rootfs_with(
                &daemon.socket,
                image,
                "shared-root",
                tmp.path(),
                tree_capture,
            )
        })
        .collect();
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0]["/big"].data.len(), 64 << 20);

    let mut rm = vec!["image", "rm", "--sync"];
    rm.extend(pulled.iter().map(String::as_str));
    strata_ok(&daemon.socket, &rm);
    let import = vec!["image", "import", archive.to_str().unwrap()];
    at_once(&[import.clone(), import]);
    let tree = rootfs_with(
        &daemon.socket,
        "strata.test/shared:1",
        "shared-root",
        tmp.path(),
        tree_capture,
    );
    assert_eq!(tree, trees[0]);
}

/// Through a proxy that answers each manifest's first request with 503 and cuts each blob's
/// first response in the middle: the pull resolves on a retry, resumes every blob where
/// the cut left it (a ranged request from a non-zero offset, answered 206), and the root
/// filesystem is the image's.
#[test]
#[ignore = "needs root"]
fn pull_resumes_broken_transfers() {
    assert_root("pull::pull_resumes_broken_transfers");
    let tmp = TempDir::new("pull-flaky");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    let layout = tmp.path().join("layout");
    registry.push_from(&rich_image(&layout, &[]), "e2e/rich:1");
    let proxy = FlakyProxy::start(&registry.address, tmp.path().join("proxy.log"), "cut");
    let image = format!("{}/e2e/rich:1", proxy.address);

    let pulled = strata_ok(&daemon.socket, &["image", "pull", &image]);
    assert!(
        pulled.contains("5 blobs downloaded") && pulled.contains("3 layers applied"),
        "{pulled}"
    );
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l[1].contains("/manifests/") && l[3] == "503"),
        "no manifest request failed:\n{log}"
    );
    let cut: Vec<&str> = lines
        .iter()
        .filter(|l| l.len() == 5 && l[4] == "cut")
        .map(|l| l[1])
        .collect();
    // The config and the three layers (the manifest is fetched by the resolve).
    assert_eq!(cut.len(), 4, "{log}");
    for path in cut {
        let resumed = lines.iter().any(|l| {
            l[1] == path
                && l[3] == "206"
                && l[2]
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
        });
        assert!(
            resumed,
            "{path} was not resumed from where it was cut:\n{log}"
        );
    }
    let expected = expected_tree(&layout);
    assert_same_tree(
        &expected,
        &rootfs_capture(&daemon, &image, "flaky-root", tmp.path()),
    );
    assert_eq!(
        strata_ok(&daemon.socket, &["content", "ls"])
            .lines()
            .count(),
        6,
        "the header and the 5 blobs, no ingest left"
    );
}

/// A registry that takes only bearer tokens: an anonymous pull is refused (Unauthenticated
/// by the token server, nothing stored); `--user` gets a token and pulls; after the image is
/// removed, the credentials of a docker config file (`$DOCKER_CONFIG/config.json`) do too.
#[test]
#[ignore = "needs root"]
fn pull_with_bearer_tokens() {
    assert_root("pull::pull_with_bearer_tokens");
    let tmp = TempDir::new("pull-token");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start_token(&tmp.path().join("registry"), "puller", "pw-tok");
    let image = registry.push_from(&rich_image(&tmp.path().join("layout"), &[]), "e2e/rich:1");

    let refused = strata_run(&daemon.socket, &["image", "pull", &image]);
    assert!(!refused.status.success(), "{refused:?}");
    assert_eq!(
        strata_ok(&daemon.socket, &["content", "ls"])
            .lines()
            .count(),
        1,
        "a refused pull stores nothing"
    );
    let wrong = strata_run(
        &daemon.socket,
        &["image", "pull", "--user", "puller:wrong", &image],
    );
    assert!(!wrong.status.success(), "{wrong:?}");

    let with_user = strata_ok(
        &daemon.socket,
        &["image", "pull", "--user", "puller:pw-tok", &image],
    );
    assert!(with_user.contains("3 layers applied"), "{with_user}");
    strata_ok(&daemon.socket, &["image", "rm", "--sync", &image]);

    let config = tmp.path().join("docker");
    std::fs::create_dir_all(&config).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("puller:pw-tok");
    std::fs::write(
        config.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.address
        ),
    )
    .unwrap();
    let out = crate::util::strata_command()
        .arg("--address")
        .arg(&daemon.socket)
        .args(["image", "pull", &image])
        .env("DOCKER_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("5 blobs downloaded"), "{text}");
}

/// A two-platform index (this machine's and another architecture): `--platform` picks the
/// other's manifest (its blobs are stored, this machine's are not); without it, this
/// machine's, whose root filesystem's `/arch` names it; a platform the index lacks is
/// refused.
#[test]
#[ignore = "needs root"]
fn pull_selects_platform() {
    assert_root("pull::pull_selects_platform");
    let tmp = TempDir::new("pull-platform");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    let host = imagestore::oci::architecture();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let layout = tmp.path().join("layout");
    let image = registry.push_from(&rich_image(&layout, &[host, other]), "e2e/multi:1");
    // The manifest of each architecture, from the layout's index.
    let read_json = |digest: &str| -> Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let top: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let index = read_json(top["manifests"][0]["digest"].as_str().unwrap());
    let manifest_of = |arch: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .map(|m| m["digest"].as_str().unwrap().to_string())
            .unwrap()
    };
    // The digests stored (labels name blobs that need not be).
    let content = || {
        strata_ok(&daemon.socket, &["content", "ls"])
            .lines()
            .skip(1)
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    let pulled = strata_ok(
        &daemon.socket,
        &[
            "image",
            "pull",
            "--platform",
            &format!("linux/{other}"),
            &image,
        ],
    );
    // The index, the chosen manifest, its config and three layers.
    assert!(
        pulled.contains("6 blobs downloaded") && pulled.contains("3 layers applied"),
        "{pulled}"
    );
    let stored = content();
    assert!(stored.contains(&manifest_of(other)), "{stored:?}");
    assert!(!stored.contains(&manifest_of(host)), "{stored:?}");

    strata_ok(&daemon.socket, &["image", "rm", "--sync", &image]);
    let default = strata_ok(&daemon.socket, &["image", "pull", &image]);
    assert!(default.contains("6 blobs downloaded"), "{default}");
    assert!(content().contains(&manifest_of(host)));
    let tree = rootfs_capture(&daemon, &image, "host-root", tmp.path());
    let sha = crate::util::sha256(format!("{host}\n").as_bytes());
    assert_eq!(
        tree["/arch"]["sha256"],
        sha.trim_start_matches("sha256:"),
        "{}",
        tree["/arch"]
    );

    let missing = strata_run(
        &daemon.socket,
        &["image", "pull", "--platform", "linux/s390x", &image],
    );
    assert!(!missing.status.success(), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no manifest for linux/s390x"),
        "{missing:?}"
    );
}

/// An IPv4 address of this machine that is not loopback.
fn network_address() -> String {
    let out = Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .expect("this machine has a non-loopback IPv4 address")
        .to_string()
}

/// A plain-HTTP registry on this machine's network address (not loopback, so HTTPS is
/// assumed): a pull fails; `--plain-http` reaches it; so does a daemon whose configuration
/// lists it in `insecure_registries`.
#[test]
#[ignore = "needs root"]
fn pull_from_an_insecure_registry() {
    assert_root("pull::pull_from_an_insecure_registry");
    let tmp = TempDir::new("pull-insecure");
    let registry = Registry::start_on(&tmp.path().join("registry"), &network_address());
    let image = registry.push_from(&rich_image(&tmp.path().join("layout"), &[]), "e2e/rich:1");

    let (plain_dir, listed_dir) = (tmp.path().join("plain"), tmp.path().join("listed"));
    std::fs::create_dir_all(&plain_dir).unwrap();
    std::fs::create_dir_all(&listed_dir).unwrap();
    let plain = Daemon::start(&plain_dir, "overlayfs");
    let refused = strata_run(&plain.socket, &["image", "pull", &image]);
    assert!(!refused.status.success(), "{refused:?}");
    let flagged = strata_ok(&plain.socket, &["image", "pull", "--plain-http", &image]);
    assert!(flagged.contains("3 layers applied"), "{flagged}");

    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!("insecure_registries = [\"{}\"]\n", registry.address),
    )
    .unwrap();
    let listed = Daemon::start_with(&listed_dir, &["--config", config.to_str().unwrap()]);
    let pulled = strata_ok(&listed.socket, &["image", "pull", &image]);
    assert!(pulled.contains("3 layers applied"), "{pulled}");
}
