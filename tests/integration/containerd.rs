//! End-to-end tests against a real containerd (Debian's 1.6): a private containerd uses a
//! Strata daemon as its proxy snapshotter `strata`, and `ctr` drives it through the snapshot
//! commands, an image import (unpacked by containerd's walking differ into Strata's mounts), a
//! container run on that image, and image removal followed by containerd's garbage collection,
//! after which Strata must hold no snapshot at all.
//!
//! Needs root. `scripts/e2e/ensure-deps.sh` installs containerd, runc and busybox-static if
//! missing, and `scripts/e2e/build-image.sh` builds the test image offline from busybox.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use strata::api::services::snapshots::v1 as pb;

use crate::util::{self, Daemon, Snap, TempDir};

/// The containerd namespace every `ctr` call uses.
const NAMESPACE: &str = "e2e";
/// The proxy plugin name containerd knows Strata by.
const SNAPSHOTTER: &str = "strata";
/// Limit for one `ctr` (or script) invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long containerd may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long garbage collection may take to empty Strata after the last reference is gone.
const GC_TIMEOUT: Duration = Duration::from_secs(30);
/// Layers of the base test image (see `build-image.sh`).
const BASE_LAYERS: usize = 3;

/// Every path in the container's root filesystem (`find / -xdev`), apart from the busybox
/// applets under `/bin`, once the base image's three layers are applied: `/etc/b` and
/// `/data/gone` are whited out, `/data/old` is opaque and holds only `new`.
const BASE_TREE: &[&str] = &[
    "/",
    "/bin",
    "/data",
    "/data/keep",
    "/data/keep/x",
    "/data/old",
    "/data/old/new",
    "/dev",
    "/etc",
    "/etc/a",
    "/etc/c",
    "/proc",
    "/run",
    "/sys",
    "/tmp",
];

#[test]
fn native() {
    image_lifecycle("containerd::native", "native");
}

#[test]
fn overlayfs() {
    image_lifecycle("containerd::overlayfs", "overlayfs");
}

/// 150 layers: containerd must bring the container's overlay mount options under a page by
/// compacting the lowerdirs, which only works if all layers share a parent directory.
#[test]
fn overlayfs_150_layers() {
    let Some(env) = Env::start("containerd::overlayfs_150_layers", "overlayfs") else {
        return;
    };
    let extra = 150 - BASE_LAYERS;
    let image = "strata.test/e2e/deep:1";
    env.import(image, extra);
    env.check_layer_chain(BASE_LAYERS + extra);

    let script = format!("cat /extra/f1 /extra/f{extra}; ls /extra | wc -l");
    let out = env.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        image,
        "e2e-deep",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(out, format!("extra 1\nextra {extra}\n{extra}\n"));

    env.remove_image(image);
}

/// The whole flow on one snapshotter kind: snapshot commands, import, run, removal and GC.
fn image_lifecycle(test: &str, kind: &str) {
    let Some(env) = Env::start(test, kind) else {
        return;
    };
    snapshot_commands(&env, kind);

    let image = format!("strata.test/e2e/{kind}:1");
    env.import(&image, 0);
    env.check_layer_chain(BASE_LAYERS);

    // List the tree, read the files, then write to the root filesystem.
    let script = "find / -xdev; echo ---; cat /etc/a /etc/c /data/keep/x /data/old/new; echo ---; \
                  echo written >/data/old/mine && rm /etc/c && cat /data/old/mine && \
                  test ! -e /etc/c && echo removed";
    let out = env.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        &image,
        &format!("e2e-{kind}"),
        "/bin/sh",
        "-c",
        script,
    ]);
    let sections: Vec<&str> = out.split("---\n").collect();
    assert_eq!(sections.len(), 3, "container output:\n{out}");
    let mut tree: Vec<&str> = sections[0].lines().collect();
    tree.sort_unstable();
    for applet in ["/bin/busybox", "/bin/sh"] {
        assert!(tree.contains(&applet), "{applet} missing from {tree:?}");
    }
    tree.retain(|p| !p.starts_with("/bin/"));
    assert_eq!(tree, BASE_TREE);
    assert_eq!(sections[1], "a2\nc2\nx1\nnew3\n");
    assert_eq!(sections[2], "written\nremoved\n");

    assert_eq!(env.ctr_ok(&["containers", "ls", "-q"]), "");
    assert_eq!(env.ctr_ok(&["tasks", "ls", "-q"]), "");
    env.remove_image(&image);
}

/// `ctr snapshots` prepare/commit/view/ls/info/usage/mounts/rm, checked both as containerd
/// reports it and as Strata stores it (keys namespaced by containerd's metadata layer).
fn snapshot_commands(env: &Env, kind: &str) {
    let snap = |args: &[&str]| {
        env.ctr_ok(&[&["snapshots", "--snapshotter", SNAPSHOTTER][..], args].concat())
    };

    snap(&["prepare", "k1"]);
    snap(&["commit", "n1", "k1"]);
    let mounts: serde_json::Value =
        serde_json::from_str(&snap(&["prepare", "--mounts", "k2", "n1"])).expect("mounts JSON");
    let mount = &mounts[0];
    let strata_root = env.strata.root.to_string_lossy().into_owned();
    if kind == "native" {
        assert_eq!(mount["Type"], "bind", "{mounts}");
        let source = mount["Source"].as_str().expect("source");
        assert!(source.starts_with(&strata_root), "{mounts}");
    } else {
        assert_eq!(mount["Type"], "overlay", "{mounts}");
        let options = mount["Options"].to_string();
        assert!(
            options.contains(&format!("upperdir={strata_root}")),
            "{mounts}"
        );
        assert!(
            options.contains(&format!("lowerdir={strata_root}")),
            "{mounts}"
        );
    }
    snap(&["view", "v1", "n1"]);
    // Unlike prepare, ctr's view sets no gc.root label, and the next collection (after the
    // first removal) would take the view away.
    snap(&["label", "v1", "containerd.io/gc.root=e2e"]);
    // containerd forwards only labels under containerd.io/snapshot/ to the backend.
    snap(&["label", "n1", "containerd.io/snapshot/e2e=yes", "other=no"]);

    assert_eq!(
        table(&snap(&["ls"])),
        [
            vec!["KEY", "PARENT", "KIND"],
            vec!["k2", "n1", "Active"],
            vec!["n1", "Committed"],
            vec!["v1", "n1", "View"],
        ]
    );
    let info: serde_json::Value = serde_json::from_str(&snap(&["info", "n1"])).expect("info JSON");
    assert_eq!(
        [&info["Name"], &info["Kind"]],
        ["n1", "Committed"],
        "{info}"
    );
    let info: serde_json::Value = serde_json::from_str(&snap(&["info", "k2"])).expect("info JSON");
    assert_eq!(
        [&info["Name"], &info["Kind"], &info["Parent"]],
        ["k2", "Active", "n1"],
        "{info}"
    );
    let usage = snap(&["usage", "k2", "n1"]);
    let usage = table(&usage);
    assert_eq!(usage[0], ["KEY", "SIZE", "INODES"]);
    assert_eq!(
        usage[1..].iter().map(|row| row[0]).collect::<Vec<_>>(),
        ["k2", "n1"]
    );
    let shown = snap(&["mounts", "/mnt", "k2"]);
    assert!(shown.starts_with("mount -t "), "{shown}");

    // Strata sees containerd's backend keys "<namespace>/<seq>/<key>", parents mapped.
    let stored = env.strata_snapshots();
    assert_eq!(stored.len(), 3, "{stored:?}");
    let n1 = backend(&stored, "n1");
    assert_eq!(n1.kind(), pb::Kind::Committed);
    assert_eq!(
        n1.labels,
        util::labels(&[("containerd.io/snapshot/e2e", "yes")]),
        "{n1:?}"
    );
    let k2 = backend(&stored, "k2");
    assert_eq!((k2.kind(), &k2.parent), (pb::Kind::Active, &n1.name));
    let v1 = backend(&stored, "v1");
    assert_eq!((v1.kind(), &v1.parent), (pb::Kind::View, &n1.name));

    let err = env.ctr_err(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", "missing"]);
    assert!(err.contains("not found"), "{err}");
    let err = env.ctr_err(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", "n1"]);
    assert!(err.contains("child"), "{err}");
    snap(&["rm", "k2", "v1", "n1"]);
    assert_eq!(table(&snap(&["ls"])), [vec!["KEY", "PARENT", "KIND"]]);
    env.collect_garbage();
    env.wait_strata_empty();
}

/// The snapshot containerd stores in Strata for its `key` in [`NAMESPACE`].
fn backend<'a>(stored: &'a [pb::Info], key: &str) -> &'a pb::Info {
    let (prefix, suffix) = (format!("{NAMESPACE}/"), format!("/{key}"));
    stored
        .iter()
        .find(|i| i.name.starts_with(&prefix) && i.name.ends_with(&suffix))
        .unwrap_or_else(|| panic!("{key} not in Strata: {stored:?}"))
}

/// `ctr`'s tables as whitespace-separated cells.
fn table(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// A finished command.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with no input, output captured in files under `scratch`, killed (and the test
/// failed) after [`COMMAND_TIMEOUT`].
fn run(cmd: &mut Command, scratch: &Path) -> Output {
    let (out, err) = (scratch.join("cmd.stdout"), scratch.join("cmd.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read_to_string(out).expect("read stdout"),
        stderr: std::fs::read_to_string(err).expect("read stderr"),
    }
}

/// A script under `scripts/e2e/`.
fn script(name: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/e2e")
            .join(name),
    );
    cmd
}

/// A TOML string holding `path`.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.to_str().expect("UTF-8 path").to_owned()).to_string()
}

/// A Strata daemon and a private containerd using it, both under one temporary directory.
/// On drop, leftover tasks are deleted and containerd is killed; if the test is failing,
/// both daemons' logs are printed first.
struct Env {
    containerd: Child,
    /// containerd's gRPC socket.
    socket: PathBuf,
    /// containerd's log (stdout and stderr).
    log: PathBuf,
    strata: Daemon,
    runtime: tokio::runtime::Runtime,
    tmp: TempDir,
}

impl Env {
    /// Installs what is missing and starts both daemons, or `None` if `test` must be skipped
    /// for want of root.
    fn start(test: &str, kind: &str) -> Option<Env> {
        if !util::require_root(test) {
            return None;
        }
        let tmp = TempDir::new(&format!("containerd-{kind}"));
        let deps = run(&mut script("ensure-deps.sh"), tmp.path());
        assert!(
            deps.status.success(),
            "ensure-deps.sh: {}\n{}{}",
            deps.status,
            deps.stdout,
            deps.stderr
        );

        let strata_dir = tmp.path().join("strata");
        std::fs::create_dir(&strata_dir).expect("strata dir");
        let strata = Daemon::start(&strata_dir, kind);

        let dir = tmp.path().join("containerd");
        std::fs::create_dir(&dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = {root}
state = {state}
# The CRI plugin is slow to start and unused; the other snapshotters are unused too.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}

# No collection at startup, so none runs before the test's first removal (a late startup
# collection could take `ctr snapshots view`'s snapshot before the test labels it a GC root).
[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = {strata}
"#,
                root = toml_path(&dir.join("root")),
                state = toml_path(&dir.join("state")),
                socket = toml_path(&socket),
                opt = toml_path(&dir.join("opt")),
                strata = toml_path(&strata.socket),
            ),
        )
        .expect("write config");
        let log = dir.join("containerd.log");
        let log_file = File::create(&log).expect("containerd log");
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start containerd");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut env = Env {
            containerd,
            socket,
            log,
            strata,
            runtime,
            tmp,
        };
        env.wait_ready();
        Some(env)
    }

    /// Waits until containerd answers `ctr version`.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.ctr(&["version"]).status.success() {
            if let Some(status) = self.containerd.try_wait().expect("wait") {
                panic!("containerd exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start in {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr --address <socket> -n e2e <args>`.
    fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args);
        run(&mut cmd, self.tmp.path())
    }

    /// A `ctr` call that must succeed; its stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// A `ctr` call that must fail; its stderr.
    fn ctr_err(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            !out.status.success(),
            "ctr {args:?} succeeded:\n{}",
            out.stdout
        );
        out.stderr
    }

    /// Builds the test image with `extra` layers beyond the base ones and imports it as
    /// `name`, unpacked into Strata.
    fn import(&self, name: &str, extra: usize) {
        let archive = self.tmp.path().join("image.tar");
        let built = run(
            script("build-image.sh")
                .arg(&archive)
                .arg(name)
                .arg(extra.to_string()),
            self.tmp.path(),
        );
        assert!(
            built.status.success(),
            "build-image.sh: {}\n{}",
            built.status,
            built.stderr
        );
        let archive = archive.to_str().expect("UTF-8 path");
        self.ctr_ok(&["images", "import", "--snapshotter", SNAPSHOTTER, archive]);
        assert_eq!(self.ctr_ok(&["images", "ls", "-q"]), format!("{name}\n"));
    }

    /// Strata holds exactly one committed chain of `layers` snapshots, each named by
    /// containerd after the chain ID it stands for. (`ctr images import` in 1.6 sets no
    /// `containerd.io/snapshot.ref` label; only the pull unpacker does.)
    fn check_layer_chain(&self, layers: usize) {
        let stored = self.strata_snapshots();
        assert_eq!(stored.len(), layers, "{stored:?}");
        let mut parent = String::new();
        for depth in 0..layers {
            let child = stored
                .iter()
                .find(|i| i.parent == parent)
                .unwrap_or_else(|| panic!("no layer {depth} (parent {parent:?}) in {stored:?}"));
            assert_eq!(child.kind(), pb::Kind::Committed, "{child:?}");
            // "e2e/<seq>/sha256:<chain ID>"
            let chain_id = child.name.rsplit_once("/sha256:").map(|(_, hex)| hex);
            assert!(
                child.name.starts_with(&format!("{NAMESPACE}/"))
                    && chain_id.is_some_and(|h| h.len() == 64),
                "{child:?}"
            );
            parent = child.name.clone();
        }
    }

    /// Removes the image with synchronous garbage collection, then checks that nothing is
    /// left in Strata, neither snapshots nor their directories.
    fn remove_image(&self, name: &str) {
        self.ctr_ok(&["images", "rm", "--sync", name]);
        assert_eq!(self.ctr_ok(&["images", "ls", "-q"]), "");
        self.wait_strata_empty();
        let left = self.ctr_ok(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        assert_eq!(table(&left), [vec!["KEY", "PARENT", "KIND"]]);
    }

    /// Runs containerd's garbage collection now and waits for it, by deleting a lease with
    /// `--sync`. Needed after `ctr snapshots rm`: 1.6's scheduler ignores removals made while
    /// a collection is still cleaning up the snapshotter (it drops events older than the end
    /// of the last collection), so no further collection may ever come on its own.
    fn collect_garbage(&self) {
        self.ctr_ok(&["leases", "create", "--id", "e2e-gc"]);
        self.ctr_ok(&["leases", "rm", "--sync", "e2e-gc"]);
    }

    /// Waits for containerd's garbage collection to remove every snapshot from Strata and
    /// Strata to delete their directories.
    fn wait_strata_empty(&self) {
        let deadline = Instant::now() + GC_TIMEOUT;
        loop {
            let stored = self.strata_snapshots();
            let dirs = util::snapshot_dirs(&self.strata.root);
            if stored.is_empty() && dirs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{GC_TIMEOUT:?} after the last reference went, Strata still holds {:?} in dirs {dirs:?}",
                stored.iter().map(|i| &i.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every snapshot Strata holds, listed over its own socket.
    fn strata_snapshots(&self) -> Vec<pb::Info> {
        self.runtime.block_on(async {
            Snap::new(&self.strata)
                .await
                .list(&[])
                .await
                .expect("list Strata's snapshots")
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- containerd log -----\n{}\n----- strata log -----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                self.strata.log_text()
            );
        }
        if self.containerd.try_wait().ok().flatten().is_none() {
            // Tasks left by a failed test keep a shim, a runc container and mounts alive.
            // Nothing here may panic: this can run while unwinding.
            let ctr = |args: &[&str]| {
                Command::new("timeout")
                    .args(["10", "ctr", "--namespace", NAMESPACE, "--address"])
                    .arg(&self.socket)
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            for id in ctr(&["tasks", "ls", "-q"]).lines() {
                ctr(&["tasks", "rm", "--force", id]);
            }
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
    }
}
