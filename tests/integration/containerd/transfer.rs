//! containerd 2.1.9's `ctr`, unmodified and with its default flags, on Strata's own socket:
//! its image commands go through Strata's Transfer and Streaming services, and leave what
//! the same commands leave in containerd 2.1.9 itself (the environment's containerd, its
//! builtin overlayfs and walking differ: the control): the same image list, the same content
//! (digests, sizes, labels), the same mounted trees. An export imports back into containerd
//! with the same digests; a push pulls back into containerd with the same tree. Credentials
//! are asked for only when the registry wants them; a wrong password stores nothing; a pull
//! interrupted with Ctrl-C leaves nothing after a collection.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::env::{self, Containerd, Env, table};
use super::registry::{FlakyProxy, Registry};
use crate::pull::{capture, rich_image};
use crate::util;

/// `ctr content ls` as digest → (size, labels), the age left out.
fn content(out: &str) -> BTreeMap<String, (String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('\t').filter(|c| !c.is_empty()).collect();
            let labels = cells.get(3).map_or("", |s| s.trim());
            Some((
                cells.first()?.to_string(),
                (cells.get(1)?.to_string(), labels.to_string()),
            ))
        })
        .collect()
}

/// Waits (20 s at most) until Strata's and containerd's content lists agree (each collects
/// what the transfers' leases held on its own schedule); the list.
fn same_content(env: &Env) -> BTreeMap<String, (String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ours = content(&env.ctr_strata(&["content", "ls"]));
        let theirs = content(&env.ctr_ok(&["content", "ls"]));
        if ours == theirs {
            return ours;
        }
        if Instant::now() > deadline {
            let differ: Vec<_> = ours
                .iter()
                .filter(|(d, v)| theirs.get(*d) != Some(v))
                .map(|(d, v)| (d, v, theirs.get(d)))
                .collect();
            let missing: Vec<_> = theirs.keys().filter(|d| !ours.contains_key(*d)).collect();
            panic!("content differs: ours vs theirs {differ:#?}; only theirs {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr images mount` of `image` (of `platform`, if given) at `dir`, the tree, unmounted.
fn mounted(
    ctr: &dyn Fn(&[&str]) -> String,
    image: &str,
    platform: Option<&str>,
    dir: &Path,
) -> serde_json::Value {
    std::fs::create_dir_all(dir).unwrap();
    let dir_s = dir.to_str().unwrap();
    let mut args = vec!["images", "mount"];
    if let Some(p) = platform {
        args.extend(["--platform", p]);
    }
    ctr(&[&args[..], &[image, dir_s]].concat());
    let tree = capture(dir);
    ctr(&["images", "unmount", "--rm", dir_s]);
    tree
}

/// The image list's rows, as whitespace-separated cells.
fn images(out: &str) -> Vec<String> {
    table(out).iter().map(|row| row.join(" ")).collect()
}

/// Pulls (anonymous, by tag and by platform from an index), imports (OCI and docker
/// archives) and a tag on both; the same lists and trees; the export and the push checked
/// by containerd.
#[test]
#[ignore = "needs root"]
fn ctr_2_1_transfers_as_containerd() {
    let mut env = Env::start("containerd::ctr2-transfers", "overlayfs", Containerd::V2_1);
    let scratch = env.scratch().to_path_buf();
    let registry = Registry::start(&scratch.join("registry"));
    let archive = scratch.join("base.tar");
    env::build_image(&archive, "example.test/e2e/base:1", 2, &[]);
    let base = registry.push(&archive, "e2e/base:1");
    let host = imagestore::oci::architecture();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let other = format!("linux/{other}");
    let multi = registry.push_from(
        &rich_image(&scratch.join("multi"), &[host, &other[6..]]),
        "e2e/multi:1",
    );
    let docker = scratch.join("docker.tar");
    let copied = std::process::Command::new("/usr/bin/skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker-archive:{}:e2e/docker:1", docker.display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{copied:?}");
    let (archive, docker) = (archive.to_str().unwrap(), docker.to_str().unwrap());

    let commands: Vec<Vec<&str>> = vec![
        vec!["images", "pull", "--plain-http", &base],
        vec![
            "images",
            "pull",
            "--plain-http",
            "--platform",
            &other,
            &multi,
        ],
        vec!["images", "import", archive],
        vec!["images", "import", docker],
        vec![
            "images",
            "tag",
            "example.test/e2e/base:1",
            "example.test/e2e/tagged:1",
        ],
    ];
    for args in &commands {
        let ours = env.ctr_strata(args);
        let theirs = env.ctr_ok(args);
        if args[1] == "tag" {
            assert_eq!(ours, theirs, "ctr's answer to {args:?}");
        }
    }
    let listed = images(&env.ctr_strata(&["images", "ls"]));
    assert_eq!(listed, images(&env.ctr_ok(&["images", "ls"])));
    assert_eq!(listed.len(), 1 + 5, "{listed:#?}");
    let stored = same_content(&env);
    assert!(stored.len() > 10, "{stored:#?}");

    // The same trees mounted (the index's other platform included).
    let mounts = [
        (base.as_str(), None),
        (multi.as_str(), Some(other.as_str())),
        ("example.test/e2e/base:1", None),
        ("docker.io/e2e/docker:1", None),
        ("example.test/e2e/tagged:1", None),
    ];
    for (i, (image, platform)) in mounts.iter().enumerate() {
        let ours = mounted(
            &|a| env.ctr_strata(a),
            image,
            *platform,
            &scratch.join(format!("s{i}")),
        );
        let theirs = mounted(
            &|a| env.ctr_ok(a),
            image,
            *platform,
            &scratch.join(format!("c{i}")),
        );
        assert_eq!(ours, theirs, "{image}");
    }

    // Strata's export, imported by containerd: the same image digests as containerd's own.
    let exported = scratch.join("exported.tar");
    let exported = exported.to_str().unwrap();
    let names = [
        "example.test/e2e/base:1",
        "docker.io/e2e/docker:1",
        base.as_str(),
    ];
    env.ctr_strata(&[&["images", "export", exported][..], &names].concat());
    let digests = |out: &str| -> BTreeMap<String, String> {
        table(out)
            .iter()
            .skip(1)
            .filter(|r| names.contains(&r[0]))
            .map(|r| (r[0].to_string(), r[2].to_string()))
            .collect()
    };
    let control = digests(&env.ctr_ok(&["images", "ls"]));
    env.use_namespace("from-strata");
    env.ctr_ok(&["images", "import", exported]);
    assert_eq!(digests(&env.ctr_ok(&["images", "ls"])), control);

    // Strata's push, pulled back by containerd: the same tree.
    env.use_namespace(env::NAMESPACE);
    let pushed = format!("{}/e2e/pushed:1", registry.address);
    env.ctr_strata(&[
        "images",
        "push",
        "--plain-http",
        &pushed,
        "example.test/e2e/base:1",
    ]);
    env.use_namespace("pushed");
    env.ctr_ok(&["images", "pull", "--plain-http", &pushed]);
    let back = mounted(&|a| env.ctr_ok(a), &pushed, None, &scratch.join("pushed"));
    env.use_namespace(env::NAMESPACE);
    let ours = mounted(
        &|a| env.ctr_strata(a),
        "example.test/e2e/base:1",
        None,
        &scratch.join("source"),
    );
    assert_eq!(back, ours);

    // Nothing of the transfers stays: no lease, no ingest.
    assert_eq!(env.ctr_strata(&["leases", "ls", "-q"]), "");
    assert_eq!(env.ctr_strata(&["content", "active"]).lines().count(), 1);
}

/// A registry with basic authentication: the right password pulls (ctr answers the
/// credential request Strata makes on the registry's 401); a wrong one, or none, is a clear
/// error and stores nothing.
#[test]
#[ignore = "needs root"]
fn ctr_2_1_credentials() {
    let env = Env::start("containerd::ctr2-creds", "overlayfs", Containerd::V2_1);
    let scratch = env.scratch().to_path_buf();
    let registry = Registry::start_authenticated(&scratch.join("registry"), "puller", "pw-1");
    let archive = scratch.join("base.tar");
    env::build_image(&archive, "example.test/e2e/private:1", 0, &[]);
    let image = registry.push(&archive, "e2e/private:1");
    let nothing_stored = || {
        assert_eq!(env.ctr_strata(&["images", "ls", "-q"]), "");
        assert_eq!(env.ctr_strata(&["content", "ls", "-q"]), "");
        assert_eq!(env.ctr_strata(&["content", "active"]).lines().count(), 1);
        assert_eq!(env.ctr_strata(&["leases", "ls", "-q"]), "");
        assert_eq!(env.ctr_strata(&["snapshots", "ls"]).lines().count(), 1);
    };
    for user in ["puller:wrong", "someone:pw-1"] {
        let refused =
            env.ctr_strata_err(&["images", "pull", "--plain-http", "--user", user, &image]);
        assert!(refused.contains("refused the credentials"), "{refused}");
        util::strata_ok(&env.strata.socket, &["gc", "--force"]);
        nothing_stored();
    }
    let anonymous = env.ctr_strata_err(&["images", "pull", "--plain-http", &image]);
    assert!(anonymous.contains("wants credentials"), "{anonymous}");
    util::strata_ok(&env.strata.socket, &["gc", "--force"]);
    nothing_stored();
    let pulled = env.ctr_strata(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        "puller:pw-1",
        &image,
    ]);
    assert!(pulled.contains("saved"), "{pulled}");
    assert_eq!(
        env.ctr_strata(&["images", "ls", "-q"]),
        format!("{image}\n")
    );
    assert!(
        !env.strata.log_text().contains("pw-1"),
        "a password in the log"
    );
}

/// Ctrl-C (SIGINT) to a `ctr images pull` while a large layer downloads (through a proxy
/// slowed to 4 MB/s): the transfer stops, and after a collection nothing of it is left: no
/// lease (neither the transfer's nor ctr's), ingest, blob or snapshot.
#[test]
#[ignore = "needs root"]
fn ctr_2_1_interrupted_pull() {
    // A process started in the background by a shell without job control ignores SIGINT,
    // and so does every ctr it starts: Ctrl-C would do nothing and the pull complete.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0);
    assert!(
        ignored & (1 << (2 - 1)) == 0,
        "SIGINT is ignored in this test process (started in the background without job \
         control?), so ctr would ignore it too: run the tests in the foreground or with `set -m`"
    );
    let env = Env::start("containerd::ctr2-sigint", "overlayfs", Containerd::V2_1);
    let scratch = env.scratch().to_path_buf();
    let registry = Registry::start(&scratch.join("registry"));
    let archive = scratch.join("big.tar");
    env::build_image(&archive, "example.test/e2e/big:1", 1, &[("BIG_MB", "64")]);
    registry.push(&archive, "e2e/big:1");
    let proxy = FlakyProxy::start(&registry.address, scratch.join("proxy.log"), "slow:4000");
    let image = format!("{}/e2e/big:1", proxy.address);
    let out = scratch.join("pull.out");
    let mut pull = env.ctr_strata_spawn(&["images", "pull", "--plain-http", &image], &out);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("downloading")
    {
        assert!(pull.try_wait().unwrap().is_none(), "the pull ended early");
        assert!(Instant::now() < deadline, "no download began");
        std::thread::sleep(Duration::from_millis(50));
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &pull.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = pull.wait().unwrap();
    assert!(!status.success(), "ctr was interrupted: {status}");
    // The leases go as the daemon sees the client gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.ctr_strata(&["leases", "ls", "-q"]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{}",
            env.ctr_strata(&["leases", "ls"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    util::strata_ok(&env.strata.socket, &["gc", "--force"]);
    assert_eq!(env.ctr_strata(&["images", "ls", "-q"]), "");
    assert_eq!(env.ctr_strata(&["content", "ls", "-q"]), "");
    assert_eq!(env.ctr_strata(&["content", "active"]).lines().count(), 1);
    assert_eq!(env.ctr_strata(&["snapshots", "ls"]).lines().count(), 1);
    assert_eq!(util::snapshot_dirs(&env.strata.root), Vec::<String>::new());
    assert_eq!(util::ingest_bytes(&env.strata.root), 0);
    drop(proxy);
}
