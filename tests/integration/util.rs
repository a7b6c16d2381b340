//! Test harness: root gating, a daemon process on a private root and socket, a client, and
//! mounting helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use api::services::snapshots::v1 as pb;
use api::types::{Descriptor, Mount as PbMount};
use differ::content::{BlobSink, LocalStore};
use differ::diff::{Changes, DiffOptions, write_layer};
use differ::{Compression, Digest};
use strata::cli::SnapshotsClient;
use strata::convert::mount_from_pb;

/// Asserts that this process is root, and that the machine has what the end-to-end tests
/// use (installed the first time, see [`prepare_machine`]). Every test that needs root is
/// marked `#[ignore = "needs root"]`: a plain `cargo test` lists it as ignored, and it runs
/// only when asked for (`cargo test -- --include-ignored`, as `.ci/run` does as root), so not
/// being root here is an error, never a silent pass.
pub fn assert_root(test: &str) {
    assert!(
        mountutil::at::effective_ids().0 == 0,
        "{test} needs root: run it as root, or leave out --include-ignored to skip it"
    );
    prepare_machine();
}

/// Installs what the end-to-end tests use where it is missing, once per test run: Debian's
/// containerd, runc, registry, skopeo and the rest (`scripts/e2e/ensure-deps.sh`),
/// containerd 1.7.24 and 2.1.9 unpacked from their .debs (`containerd.sh`), containerd's
/// content test suite (`content-suite.sh --build`). Each script does nothing when what it
/// provides is there (as after `.ci/run`, which runs them first).
fn prepare_machine() {
    static PREPARED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    PREPARED.get_or_init(|| {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e");
        let steps: [&[&str]; 4] = [
            &["ensure-deps.sh"],
            &["containerd.sh", "1.7"],
            &["containerd.sh", "2.1"],
            &["content-suite.sh", "--build"],
        ];
        for step in steps {
            let out = Command::new(scripts.join(step[0]))
                .args(&step[1..])
                .stdout(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("run {step:?}: {e}"));
            assert!(
                out.status.success(),
                "{step:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// A private temporary directory, removed on drop (after unmounting anything left in it);
/// kept for a look when the test failed and `STRATA_TEST_KEEP` is set.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        // A user's own base, so that a test run without root never meets root's files.
        let uid = mountutil::at::effective_ids().0;
        let default = match uid {
            0 => PathBuf::from("/var/tmp/strata-tests"),
            uid => std::env::temp_dir().join(format!("strata-tests-{uid}")),
        };
        let base = std::env::var_os("STRATA_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or(default);
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in(&base)
            .unwrap()
            .keep();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("STRATA_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        // Mounts a test left (a loop-mounted btrfs, a daemon's idmapped layers) would
        // outlive the run, with their loop devices, and hold what remove_dir_all cannot
        // remove.
        for point in mountutil::mount::mount_points_under(&self.0).unwrap_or_default() {
            if let Err(e) = mountutil::mount::unmount(&point) {
                eprintln!("leaving {}: {e}", point.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on, for a server a test starts. It is below the kernel's
/// ephemeral range (no outgoing connection takes it before the server binds it) and never
/// handed out twice in this process (two tests starting servers at once cannot both get it),
/// where a port the kernel picked for a probe could be either.
pub fn free_port() -> u16 {
    /// Ports handed out so far; the range starts at a place of this process's own, so two
    /// test processes at once seldom meet.
    static HANDED_OUT: AtomicU16 = AtomicU16::new(0);
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 10_000;
    let start = (std::process::id() % 40) as u16 * 250;
    loop {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < COUNT,
            "no free loopback port left in {FIRST}..{}",
            FIRST + COUNT
        );
        let port = FIRST + (start + n) % COUNT;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A `strata serve` process.
pub struct Daemon {
    child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with `--snapshotter kind` on `root`.
    pub fn start(root: &Path, kind: &str) -> Self {
        Self::start_with(root, &["--snapshotter", kind])
    }

    /// Starts a daemon with `--snapshotter kind` on `root` whose Diff service keeps blobs in
    /// the OCI-layout directory `content`.
    pub fn start_with_content(root: &Path, kind: &str, content: &Path) -> Self {
        let content = content.to_str().expect("UTF-8 path");
        Self::start_with(root, &["--snapshotter", kind, "--content-dir", content])
    }

    /// Starts a daemon on `root` with extra `serve` arguments.
    pub fn start_with(root: &Path, extra: &[&str]) -> Self {
        Self::start_rooted(root, root.join("root"), extra)
    }

    /// Starts a daemon with its socket and log in `dir` and its root at `root`.
    pub fn start_rooted(dir: &Path, root: PathBuf, extra: &[&str]) -> Self {
        let socket = dir.join("strata.sock");
        let mut d = Daemon {
            child: None,
            root,
            socket,
            args: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.join("daemon.log"),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // A restrictive umask, so nothing the daemon creates may depend on a permissive one.
        let child = Command::new("sh")
            .arg("-c")
            .arg("umask 077 && exec \"$0\" \"$@\"")
            .arg(strata_binary())
            .arg("--address")
            .arg(&self.socket)
            .arg("serve")
            .arg("--root")
            .arg(&self.root)
            .args(&self.args)
            .env("RUST_LOG", "info")
            // Hermetic: never the machine's /etc/strata/config.toml (a --config wins).
            .env("STRATA_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start strata");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists()
            || std::os::unix::net::UnixStream::connect(&self.socket).is_err()
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> SnapshotsClient {
        let channel = api::channel::connect(&self.socket).await.expect("connect");
        strata::cli::snapshots_client(channel)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "daemon exit {status}: {}",
                self.log_text()
            );
        }
    }

    /// Starts the daemon again on the same root and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts a killed daemon again.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `strata` binary, kept from the machine's `/etc/strata/config.toml` (a `--config`
/// still wins). `STRATA_TEST_BINARY` names another build to run the tests against (to show
/// that a test fails on an older one).
pub fn strata_command() -> Command {
    let mut c = Command::new(strata_binary());
    c.env("STRATA_CONFIG", "/dev/null");
    c
}

/// The `strata` binary the tests run: this build's, or `STRATA_TEST_BINARY`'s.
pub fn strata_binary() -> std::ffi::OsString {
    std::env::var_os("STRATA_TEST_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_strata").into())
}

/// Mounts `mounts` on a fresh directory under `parent`; unmounted on drop.
pub fn mount(mounts: &[PbMount], parent: &Path) -> mountutil::TempMount {
    let mounts: Vec<_> = mounts.iter().cloned().map(mount_from_pb).collect();
    mountutil::TempMount::new(&mounts, parent).expect("mount")
}

/// Runs `f` on the mounted `mounts`.
pub fn with_mounted<T>(mounts: &[PbMount], parent: &Path, f: impl FnOnce(&Path) -> T) -> T {
    try_with_mounted(mounts, parent, f).expect("mount or unmount")
}

/// [`with_mounted`], a failing mount or unmount being an error rather than a panic.
pub fn try_with_mounted<T>(
    mounts: &[PbMount],
    parent: &Path,
    f: impl FnOnce(&Path) -> T,
) -> Result<T, mountutil::Error> {
    let mounts: Vec<_> = mounts.iter().cloned().map(mount_from_pb).collect();
    let m = mountutil::TempMount::new(&mounts, parent)?;
    let out = f(m.path());
    m.release()?;
    Ok(out)
}

/// Thin typed calls over the client, panicking on transport errors only where noted.
pub struct Snap {
    pub client: SnapshotsClient,
}

pub type Labels = std::collections::HashMap<String, String>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Snap {
    pub async fn new(d: &Daemon) -> Self {
        Snap {
            client: d.client().await,
        }
    }

    pub async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<PbMount>, tonic::Status> {
        self.prepare_labels(key, parent, Labels::new()).await
    }

    pub async fn prepare_labels(
        &mut self,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<PbMount>, tonic::Status> {
        let r = pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels,
            ..Default::default()
        };
        Ok(self.client.prepare(r).await?.into_inner().mounts)
    }

    pub async fn view(&mut self, key: &str, parent: &str) -> Result<Vec<PbMount>, tonic::Status> {
        self.view_labels(key, parent, Labels::new()).await
    }

    pub async fn view_labels(
        &mut self,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<PbMount>, tonic::Status> {
        let r = pb::ViewSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels,
            ..Default::default()
        };
        Ok(self.client.view(r).await?.into_inner().mounts)
    }

    pub async fn mounts(&mut self, key: &str) -> Result<Vec<PbMount>, tonic::Status> {
        let r = pb::MountsRequest {
            key: key.into(),
            ..Default::default()
        };
        Ok(self.client.mounts(r).await?.into_inner().mounts)
    }

    pub async fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        self.commit_full(name, key, Labels::new(), "").await
    }

    pub async fn commit_full(
        &mut self,
        name: &str,
        key: &str,
        labels: Labels,
        parent: &str,
    ) -> Result<(), tonic::Status> {
        let r = pb::CommitSnapshotRequest {
            name: name.into(),
            key: key.into(),
            labels,
            parent: parent.into(),
            ..Default::default()
        };
        self.client.commit(r).await.map(|_| ())
    }

    pub async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let r = pb::RemoveSnapshotRequest {
            key: key.into(),
            ..Default::default()
        };
        self.client.remove(r).await.map(|_| ())
    }

    pub async fn stat(&mut self, key: &str) -> Result<pb::Info, tonic::Status> {
        let r = pb::StatSnapshotRequest {
            key: key.into(),
            ..Default::default()
        };
        Ok(self.client.stat(r).await?.into_inner().info.expect("info"))
    }

    pub async fn update(
        &mut self,
        info: pb::Info,
        paths: &[&str],
    ) -> Result<pb::Info, tonic::Status> {
        let r = pb::UpdateSnapshotRequest {
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        };
        Ok(self
            .client
            .update(r)
            .await?
            .into_inner()
            .info
            .expect("info"))
    }

    pub async fn list(&mut self, filters: &[&str]) -> Result<Vec<pb::Info>, tonic::Status> {
        let r = pb::ListSnapshotsRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        };
        let mut stream = self.client.list(r).await?.into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await? {
            out.extend(m.info);
        }
        Ok(out)
    }

    pub async fn usage(&mut self, key: &str) -> Result<(i64, i64), tonic::Status> {
        let r = pb::UsageRequest {
            key: key.into(),
            ..Default::default()
        };
        let u = self.client.usage(r).await?.into_inner();
        Ok((u.size, u.inodes))
    }

    pub async fn cleanup(&mut self) -> Result<(), tonic::Status> {
        self.client
            .cleanup(pb::CleanupRequest::default())
            .await
            .map(|_| ())
    }
}

/// Directories under `<root>/snapshots`.
pub fn snapshot_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Once every image is removed and collected: `daemon` lists no snapshot and no blob, and
/// no snapshot directory is left under its root.
pub fn assert_nothing_stored(daemon: &Daemon) {
    for what in ["snapshot", "content"] {
        let listed = strata_ok(&daemon.socket, &[what, "ls"]);
        assert_eq!(listed.lines().count(), 1, "only the header: {listed}");
    }
    assert_eq!(snapshot_dirs(&daemon.root), Vec::<String>::new());
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountutil::mount::mount_points_under(dir).expect("read mountinfo")
}

/// Writes the layer that turns tree `lower` into tree `upper` into `content`: its
/// descriptor and diffID.
pub fn store_layer(
    content: &LocalStore,
    lower: &Path,
    upper: &Path,
    compression: Compression,
) -> (Descriptor, Digest) {
    let mut w = content.create().unwrap();
    let created = write_layer(
        Changes::Trees { lower, upper },
        &mut w,
        DiffOptions {
            compression,
            source_date_epoch: None,
        },
    )
    .unwrap();
    w.commit(&created.digest, created.size, &[]).unwrap();
    let desc = Descriptor {
        media_type: created.media_type.into(),
        digest: created.digest.to_string(),
        size: created.size as i64,
        annotations: Default::default(),
    };
    (desc, created.diff_id)
}

/// A small seeded pseudo-random generator (xorshift64*): test workloads that a seed
/// reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A btrfs of `mib` MiB in a file under `dir`, loop-mounted at `dir/mnt`, with quotas
/// enabled when `quotas`; its mount point. The loop device goes with the mount, which the
/// TempDir holding `dir` unmounts.
pub fn loop_btrfs(dir: &Path, mib: u64, quotas: bool) -> PathBuf {
    let image = dir.join("btrfs.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(mib << 20))
        .unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    run(Command::new("mkfs.btrfs").arg("-q").arg(&image));
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&mnt));
    if quotas {
        run(Command::new("btrfs").args(["quota", "enable"]).arg(&mnt));
    }
    mnt
}

/// `btrfs` with `args` on `mnt`, its output.
pub fn btrfs(args: &[&str], mnt: &Path) -> String {
    let out = Command::new("btrfs").args(args).arg(mnt).output().unwrap();
    assert!(out.status.success(), "btrfs {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that no subvolume qgroup (`0/<id>`, the top level's `0/5` aside) is left on the
/// btrfs at `mnt` once its deleted subvolumes are dropped: at once, or within 15 s (the
/// kernel removes a dropped subvolume's qgroup only if its accounting has caught up; Strata
/// retries the others each second).
pub fn assert_no_subvolume_qgroups(mnt: &Path) {
    // A transaction commit wakes the cleaner, which drops deleted subvolumes (otherwise
    // within the 30 s commit interval).
    btrfs(&["filesystem", "sync"], mnt);
    btrfs(&["subvolume", "sync"], mnt);
    assert_eq!(btrfs(&["subvolume", "list"], mnt), "");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let qgroups = btrfs(&["qgroup", "show", "-r"], mnt);
        let left = qgroups
            .lines()
            .any(|l| l.starts_with("0/") && !l.starts_with("0/5 "));
        if !left {
            return;
        }
        assert!(Instant::now() < deadline, "{qgroups}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `strata --address SOCKET ARGS...`, finished.
pub fn strata_run(socket: &Path, args: &[&str]) -> std::process::Output {
    strata_command()
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// `strata --address SOCKET ARGS...`, which must succeed; its stdout.
pub fn strata_ok(socket: &Path, args: &[&str]) -> String {
    let out = strata_run(socket, args);
    assert!(out.status.success(), "strata {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Bytes written so far into the content store's writes in progress under `root`.
pub fn ingest_bytes(root: &Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(root.join("content/ingest")) else {
        return 0;
    };
    dirs.filter_map(|d| std::fs::metadata(d.ok()?.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

/// The sha256 digest of `data`, as containerd writes it.
pub fn sha256(data: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(data);
    h.finish().0.to_string()
}
