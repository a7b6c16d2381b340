//! The end-to-end harness: a Strata daemon and a private containerd (Debian 12's 1.6, or
//! 1.7.24 or 2.1.9 from `scripts/e2e/containerd.sh`) using it, driven with that
//! release's `ctr`; both daemons' logs printed when a test fails. containerd's
//! configuration is made in [`config`]; image import, container run and image removal with
//! the checks every test shares are in [`checks`].

mod checks;
mod config;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use self::config::CriSetup;
use self::config::containerd_config;
use crate::util::{self, Daemon, TempDir};

/// The containerd namespace every `ctr` call uses.
pub const NAMESPACE: &str = "e2e";
/// The proxy snapshotter name containerd knows Strata by.
pub const SNAPSHOTTER: &str = "strata";
/// Limit for one `ctr` (or script) invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long containerd may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Layers of the base test image (see `build-image.sh`).
pub const BASE_LAYERS: usize = 3;

/// Which containerd runs, and so who applies image layers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Containerd {
    /// Debian 12's 1.6 from PATH. It knows no proxy differ: its in-process walking differ
    /// writes layers into Strata's mounts, and Strata's Diff service must stay unused.
    V1_6,
    /// 1.7.24 from Debian 13, with Strata also as its proxy differ `strata-diff`: first in the
    /// diff-service order (client-side unpack) and the differ of the transfer service's
    /// `strata` unpack entry. Strata reads the layer blobs back through containerd's Content
    /// API, and must apply every layer itself.
    V1_7,
    /// 2.1.9 from Debian unstable, configured with the documented version-3 configuration:
    /// Strata as snapshotter (`rebase` advertised, `exports.root`) and as differ, first in
    /// the diff-service order and named in the transfer service's unpack configuration.
    V2_1,
}

impl Containerd {
    /// The release `scripts/e2e/containerd.sh` unpacks, or `None` for the system's 1.6.
    fn unpacked(self) -> Option<&'static str> {
        match self {
            Containerd::V1_6 => None,
            Containerd::V1_7 => Some("1.7"),
            Containerd::V2_1 => Some("2.1"),
        }
    }

    /// The documented name for the release's configuration (`<!-- e2e: containerd X -->`).
    fn readme_name(self) -> &'static str {
        match self {
            Containerd::V1_6 => "1.6",
            Containerd::V1_7 => "1.7",
            Containerd::V2_1 => "2.x",
        }
    }

    /// Whether Strata is also containerd's differ (1.7.4 and later).
    pub fn strata_differ(self) -> bool {
        self != Containerd::V1_6
    }
}

/// How the image gets into containerd and is unpacked.
#[derive(Clone, Copy)]
pub enum Unpack<'r> {
    /// In `ctr` itself, with the first differ of containerd's diff-service order that
    /// implements the apply (1.6's only way, 1.7's default).
    Client,
    /// In containerd, by the transfer service (1.7's `--local=false`), with the differ its
    /// unpack configuration names for the snapshotter.
    Transfer,
    /// Pushed to this registry and pulled from it with `ctr images pull` (2.x: by the
    /// transfer service, as CRI pulls since 2.1).
    Pull(&'r crate::containerd::registry::Registry),
}

/// `ctr`'s tables as whitespace-separated cells.
pub fn table(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// A finished command.
struct Output {
    status: ExitStatus,
    stdout: String,
    stdout_bytes: Vec<u8>,
    stderr: String,
}

impl Output {
    /// Panics unless the command succeeded, naming it `what`.
    fn check(self, what: &dyn std::fmt::Debug) -> Self {
        assert!(
            self.status.success(),
            "{what:?}: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
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
    let stdout_bytes = std::fs::read(out).expect("read stdout");
    Output {
        status,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
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

/// Builds the test image (`build-image.sh`) with `extra` layers beyond the base ones as the
/// OCI archive `archive` naming it `name`, with the script's options `vars` (`IMAGE_CMD`,
/// `BIG_MB`) in its environment.
pub fn build_image(archive: &Path, name: &str, extra: usize, vars: &[(&str, &str)]) {
    let mut build = script("build-image.sh");
    build.arg(archive).arg(name).arg(extra.to_string());
    build.envs(vars.iter().copied());
    run(&mut build, archive.parent().expect("a directory")).check(&"build-image.sh");
}

/// A Strata daemon and a private containerd using it, both under one temporary directory.
/// On drop, leftover tasks are deleted and containerd is killed; if the test is failing,
/// both daemons' logs are printed first.
pub struct Env {
    release: Containerd,
    /// The directory holding this release's `containerd` and `ctr`; `None` for PATH's.
    bin: Option<PathBuf>,
    containerd: Child,
    /// containerd's gRPC socket.
    socket: PathBuf,
    /// containerd's log (stdout and stderr).
    log: PathBuf,
    pub strata: Daemon,
    runtime: tokio::runtime::Runtime,
    tmp: TempDir,
    /// The containerd namespace `ctr` works in ([`NAMESPACE`] unless changed).
    namespace: String,
}

impl Env {
    /// Starts Strata with a `kind` snapshotter and then `release` (the programs must be
    /// installed: see `scripts/e2e`). `test` needs root.
    pub fn start(test: &str, kind: &str, release: Containerd) -> Env {
        Self::start_with(test, kind, release, &[])
    }

    /// [`Env::start`] with more arguments for `strata serve`.
    pub fn start_with(test: &str, kind: &str, release: Containerd, strata_extra: &[&str]) -> Env {
        Self::launch(test, kind, release, strata_extra, None, None)
    }

    /// [`Env::start`] (overlayfs) with Strata's root at `root` (on a filesystem of the
    /// test's making).
    pub fn start_rooted(test: &str, release: Containerd, root: PathBuf) -> Env {
        Self::launch(test, "overlayfs", release, &[], None, Some(root))
    }

    /// [`Env::start`] (overlayfs) with containerd's CRI plugin on, set up as `cri` says. On
    /// 1.7, Strata's root is where that CRI plugin reports the image filesystem to be
    /// (`<containerd root>/io.containerd.snapshotter.v1.strata`), as the README says.
    pub fn start_cri(test: &str, release: Containerd, cri: CriSetup) -> Env {
        Self::launch(test, "overlayfs", release, &[], Some(cri), None)
    }

    /// [`Env::start_cri`] with more arguments for `strata serve`.
    pub fn start_cri_with(
        test: &str,
        release: Containerd,
        cri: CriSetup,
        strata_extra: &[&str],
    ) -> Env {
        Self::launch(test, "overlayfs", release, strata_extra, Some(cri), None)
    }

    fn launch(
        test: &str,
        kind: &str,
        release: Containerd,
        strata_extra: &[&str],
        cri: Option<CriSetup>,
        root: Option<PathBuf>,
    ) -> Env {
        util::assert_root(test);
        // No colon in the path: it would split overlay lowerdir options.
        let tmp = TempDir::new(&test.replace("::", "-"));
        // What the machine needs was installed by `util::assert_root` (if it was missing).
        let bin = release.unpacked().map(|version| {
            let out = run(
                script("containerd.sh").args([version, "--check"]),
                tmp.path(),
            )
            .check(&"containerd.sh");
            PathBuf::from(out.stdout.trim_end())
        });

        let dir = tmp.path().join("containerd");
        std::fs::create_dir(&dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");

        // Strata first: it dials containerd's Content service only on its first Apply.
        let strata_dir = tmp.path().join("strata");
        std::fs::create_dir(&strata_dir).expect("strata dir");
        let mut strata_args = vec!["--snapshotter", kind];
        if release.strata_differ() {
            strata_args.extend(["--containerd-address", socket.to_str().expect("UTF-8")]);
        }
        strata_args.extend(strata_extra);
        let strata_root = match (&cri, release, root) {
            (_, _, Some(root)) => root,
            (Some(_), Containerd::V1_7, None) => {
                dir.join("root/io.containerd.snapshotter.v1.strata")
            }
            _ => strata_dir.join("root"),
        };
        let strata = Daemon::start_rooted(&strata_dir, strata_root, &strata_args);

        let config = dir.join("config.toml");
        let text = containerd_config(
            release,
            &dir,
            &socket,
            &strata.socket,
            &strata.root,
            cri.as_ref(),
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.join("containerd.log");
        let log_file = File::create(&log).expect("containerd log");
        let mut cmd = Command::new(program(bin.as_deref(), "containerd"));
        if let Some(bin) = &bin {
            // containerd finds containerd-shim-runc-v2 in PATH before its own directory.
            let path = std::env::var_os("PATH").unwrap_or_default();
            let paths = std::iter::once(bin.clone()).chain(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(paths).expect("PATH"));
        }
        let containerd = cmd
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
            release,
            bin,
            containerd,
            socket,
            log,
            strata,
            runtime,
            tmp,
            namespace: NAMESPACE.to_string(),
        };
        env.wait_ready();
        env
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

    /// `ctr --address <socket> -n e2e`, without arguments yet.
    fn ctr_command(&self) -> Command {
        self.ctr_command_at(&self.socket)
    }

    /// This release's `ctr` on another socket (Strata's, say), in the current namespace.
    fn ctr_command_at(&self, socket: &Path) -> Command {
        let mut cmd = Command::new(program(self.bin.as_deref(), "ctr"));
        cmd.arg("--address")
            .arg(socket)
            .args(["--namespace", &self.namespace]);
        cmd
    }

    /// A `ctr` call on Strata's own socket that must succeed; its stdout.
    pub fn ctr_strata(&self, args: &[&str]) -> String {
        run(
            self.ctr_command_at(&self.strata.socket).args(args),
            self.tmp.path(),
        )
        .check(&args)
        .stdout
    }

    /// A `ctr` call on Strata's own socket that must fail; its stderr.
    pub fn ctr_strata_err(&self, args: &[&str]) -> String {
        let out = run(
            self.ctr_command_at(&self.strata.socket).args(args),
            self.tmp.path(),
        );
        assert!(
            !out.status.success(),
            "ctr {args:?} succeeded:\n{}",
            out.stdout
        );
        out.stderr
    }

    /// A `ctr` call on Strata's own socket, reading `input`, that must succeed; its stdout
    /// as bytes.
    pub fn ctr_strata_bytes(&self, args: &[&str], input: Option<&Path>) -> Vec<u8> {
        let stdin = match input {
            Some(path) => Stdio::from(File::open(path).expect("input")),
            None => Stdio::null(),
        };
        let out = self
            .ctr_command_at(&self.strata.socket)
            .args(args)
            .stdin(stdin)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `ctr` on Strata's own socket, started with its output (both streams) to `out`.
    pub fn ctr_strata_spawn(&self, args: &[&str], out: &Path) -> Child {
        let file = File::create(out).expect("output file");
        self.ctr_command_at(&self.strata.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("output handle"))
            .stderr(file)
            .spawn()
            .expect("start ctr")
    }

    /// containerd's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `f` on the test's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Makes the following `ctr` calls work in containerd namespace `namespace`.
    pub fn use_namespace(&mut self, namespace: &str) {
        self.namespace = namespace.to_string();
    }

    /// A directory for the test's own files, removed with the environment.
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    /// `ctr --address <socket> -n e2e <args>`.
    fn ctr(&self, args: &[&str]) -> Output {
        run(self.ctr_command().args(args), self.tmp.path())
    }

    /// `ctr run <flags> <image> <id> <command>`, which must succeed; its stdout. The container
    /// is named `<id>-<this environment's tag>` and runc keeps its state in the environment's
    /// directory: every containerd on the host shares runc's default root
    /// (`/run/containerd/runc/<namespace>`) and cgroup path (`/<namespace>/<id>`), so two
    /// tests running containers of the same name at once would otherwise store, and delete,
    /// each other's runc state ("unable to store init state").
    pub fn ctr_run(&self, flags: &[&str], image: &str, id: &str, command: &[&str]) -> String {
        let tag = self.tmp.path().to_string_lossy();
        let tag = tag.rsplit('-').next().expect("rsplit yields one item");
        let id = format!("{id}-{tag}");
        let runc_root = self.tmp.path().join("runc");
        let runc_root = runc_root.to_str().expect("UTF-8 path");
        let args = [
            &["run", "--runc-root", runc_root][..],
            flags,
            &[image, &id],
            command,
        ]
        .concat();
        self.ctr_ok(&args)
    }

    /// A `ctr` call that must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctr(args).check(&args).stdout
    }

    /// A `ctr` call that must succeed; its stdout as bytes (blobs).
    pub fn ctr_bytes(&self, args: &[&str]) -> Vec<u8> {
        self.ctr(args).check(&args).stdout_bytes
    }

    /// Restarts Strata (SIGTERM, start again on the same root and socket) while containerd
    /// keeps running, and waits until containerd reaches it again through its proxy; how
    /// long that took.
    pub fn restart_strata(&mut self) -> std::time::Duration {
        let before = self.ctr_ok(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        self.strata.restart();
        let restarted = std::time::Instant::now();
        loop {
            let out = self.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
            if out.status.success() {
                assert_eq!(
                    out.stdout, before,
                    "the snapshots changed across the restart"
                );
                return restarted.elapsed();
            }
            assert!(
                restarted.elapsed() < std::time::Duration::from_secs(60),
                "containerd did not reach the restarted Strata: {}",
                out.stderr
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A `ctr` call that must fail; its stderr.
    pub fn ctr_err(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            !out.status.success(),
            "ctr {args:?} succeeded:\n{}",
            out.stdout
        );
        out.stderr
    }
}

/// `name` in `bin`, or looked up in PATH without it.
fn program(bin: Option<&Path>, name: &str) -> PathBuf {
    bin.map_or_else(|| PathBuf::from(name), |bin| bin.join(name))
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
            let base = self.ctr_command();
            let ctr = |args: &[&str]| {
                Command::new("timeout")
                    .arg("10")
                    .arg(base.get_program())
                    .args(base.get_args())
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
