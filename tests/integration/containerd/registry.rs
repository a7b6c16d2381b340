//! A private OCI registry for the end-to-end tests: Debian's `docker-registry` (the CNCF
//! distribution registry) serving plain HTTP on a free loopback port from a directory of
//! the test's, filled with `skopeo copy` from the test image's OCI archive or layout;
//! anonymous, with basic authentication from an htpasswd file, or with bearer tokens from a
//! token server of `scripts/e2e/registry-aid.py`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::free_port;

const REGISTRY: &str = "/usr/bin/docker-registry";
const SKOPEO: &str = "/usr/bin/skopeo";

/// `scripts/e2e/registry-aid.py`.
pub fn aid() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e/registry-aid.py")
}

/// Waits until something listens on `address`.
pub fn wait_listening(address: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a registry authenticates, and whom it lets in.
enum Auth {
    Anonymous,
    /// htpasswd.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from a token server, given for these basic credentials.
    Token {
        user: String,
        password: String,
    },
}

impl Auth {
    fn credentials(&self) -> Option<(String, String)> {
        match self {
            Auth::Anonymous => None,
            Auth::Basic { user, password } | Auth::Token { user, password } => {
                Some((user.clone(), password.clone()))
            }
        }
    }
}

/// A running registry, killed on drop.
pub struct Registry {
    child: Child,
    /// The token server, for a token registry.
    helper: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// The user and password it requires, if any.
    credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry storing under `dir`.
    pub fn start(dir: &Path) -> Registry {
        Self::start_auth(dir, Auth::Anonymous, "127.0.0.1")
    }

    /// Starts an anonymous registry storing under `dir`, listening on `host` (an address of
    /// this machine) rather than loopback.
    pub fn start_on(dir: &Path, host: &str) -> Registry {
        Self::start_auth(dir, Auth::Anonymous, host)
    }

    /// Starts a registry storing under `dir` that requires `user` and `password` (basic
    /// authentication, checked against a bcrypt htpasswd file) for everything.
    pub fn start_authenticated(dir: &Path, user: &str, password: &str) -> Registry {
        let (user, password) = (user.to_string(), password.to_string());
        Self::start_auth(dir, Auth::Basic { user, password }, "127.0.0.1")
    }

    /// Starts a registry storing under `dir` that takes only bearer tokens, which its token
    /// server gives for `user` and `password` (basic credentials) and nothing else.
    pub fn start_token(dir: &Path, user: &str, password: &str) -> Registry {
        let (user, password) = (user.to_string(), password.to_string());
        Self::start_auth(dir, Auth::Token { user, password }, "127.0.0.1")
    }

    fn start_auth(dir: &Path, auth: Auth, host: &str) -> Registry {
        for program in [REGISTRY, SKOPEO] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: run scripts/e2e/ensure-deps.sh"
            );
        }
        let address = format!("{host}:{}", free_port());
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut config_text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {address}\n",
            dir.join("storage").display()
        );
        let mut helper = None;
        match &auth {
            Auth::Basic { user, password } => {
                let htpasswd = dir.join("htpasswd");
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                config_text += &format!(
                    "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                    htpasswd.display()
                );
            }
            Auth::Token { user, password } => {
                let keys = dir.join("token");
                std::fs::create_dir_all(&keys).unwrap();
                let made = Command::new(aid())
                    .arg("token-keys")
                    .arg(&keys)
                    .status()
                    .unwrap();
                assert!(made.success(), "token keys");
                let token_address = format!("127.0.0.1:{}", free_port());
                let port = token_address.rsplit_once(':').unwrap().1;
                helper = Some(
                    Command::new(aid())
                        .args(["token-server", port])
                        .arg(&keys)
                        .args(["strata-test-issuer", "strata-test-registry", user, password])
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("start the token server"),
                );
                wait_listening(&token_address, "the token server");
                config_text += &format!(
                    "auth:\n  token:\n    realm: http://{token_address}/token\n    \
                     service: strata-test-registry\n    issuer: strata-test-issuer\n    \
                     rootcertbundle: {}\n",
                    keys.join("cert.pem").display()
                );
            }
            Auth::Anonymous => {}
        }
        let config = dir.join("registry.yml");
        std::fs::write(&config, config_text).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        wait_listening(&address, "the registry");
        Registry {
            child,
            helper,
            address,
            credentials: auth.credentials(),
        }
    }

    /// Pushes the image in the OCI archive `archive` as `<address>/<repository>`; the
    /// reference.
    pub fn push(&self, archive: &Path, repository: &str) -> String {
        self.push_from(&format!("oci-archive:{}", archive.display()), repository)
    }

    /// Pushes the image skopeo finds at `source` (`oci:DIR:NAME`, `oci-archive:...`; an
    /// index with all its platforms) as `<address>/<repository>`; the reference.
    pub fn push_from(&self, source: &str, repository: &str) -> String {
        let reference = format!("{}/{repository}", self.address);
        let mut skopeo = Command::new(SKOPEO);
        skopeo.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some((user, password)) = &self.credentials {
            skopeo.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = skopeo
            .arg(source)
            .arg(format!("docker://{reference}"))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.helper.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `registry-aid.py KIND PORT UPSTREAM LOG ARG` listening on `address`, once it does.
fn start_aid(kind: &str, address: &str, upstream: &str, log: &Path, arg: &str) -> Child {
    let child = Command::new(aid())
        .args([kind, address.rsplit_once(':').unwrap().1, upstream])
        .arg(log)
        .arg(arg)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start registry-aid.py {kind}: {e}"));
    wait_listening(address, kind);
    child
}

/// `registry-aid.py flaky-proxy` in front of `upstream`, killed on drop.
pub struct FlakyProxy {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Its log of requests.
    pub log: PathBuf,
}

impl FlakyProxy {
    /// Starts it in `mode` (see `registry-aid.py`: `cut`, `flip-once`, `chaos:SEED`).
    pub fn start(upstream: &str, log: PathBuf, mode: &str) -> FlakyProxy {
        Self::start_on(format!("127.0.0.1:{}", free_port()), upstream, log, mode)
    }

    /// [`start`](Self::start) on `address` (`127.0.0.1:<free port>`).
    pub fn start_on(address: String, upstream: &str, log: PathBuf, mode: &str) -> FlakyProxy {
        let child = start_aid("flaky-proxy", &address, upstream, &log, mode);
        FlakyProxy {
            child,
            address,
            log,
        }
    }
}

impl FlakyProxy {
    /// The chaos mode's off switch: while `<log>.off` exists, the proxy passes everything.
    fn off_switch(&self) -> std::path::PathBuf {
        let mut off = self.log.clone().into_os_string();
        off.push(".off");
        off.into()
    }

    /// From now on the proxy passes everything.
    pub fn calm(&self) {
        std::fs::write(self.off_switch(), b"").expect("write the proxy's off switch");
    }

    /// From now on the proxy damages transfers again (after [`calm`](Self::calm)).
    pub fn stir(&self) {
        match std::fs::remove_file(self.off_switch()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("remove the proxy's off switch: {e}")
            }
            _ => {}
        }
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `registry-aid.py count-proxy` in front of `upstream`: answers streamed at a limited rate,
/// each request's body bytes logged, killed on drop.
pub struct CountingProxy {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    pub log: PathBuf,
}

impl CountingProxy {
    /// Starts it, all answers together at most `kbps` kilobytes a second (0: no limit).
    pub fn start(upstream: &str, log: PathBuf, kbps: u64) -> CountingProxy {
        let address = format!("127.0.0.1:{}", free_port());
        let child = start_aid("count-proxy", &address, upstream, &log, &kbps.to_string());
        CountingProxy {
            child,
            address,
            log,
        }
    }

    /// The requests answered so far: (method, path, range, status, body bytes).
    pub fn requests(&self) -> Vec<(String, String, String, u16, u64)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f.len(), 5, "proxy log line {l:?}");
                let (method, path, range) = (f[0].into(), f[1].into(), f[2].into());
                (
                    method,
                    path,
                    range,
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                )
            })
            .collect()
    }

    /// Body bytes sent for blobs and manifests so far.
    pub fn bytes(&self) -> u64 {
        self.requests().iter().map(|r| r.4).sum()
    }

    /// Stops it (the registry is then unreachable through it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
