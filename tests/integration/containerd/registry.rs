//! A private OCI registry for the end-to-end tests: Debian's `docker-registry` (the CNCF
//! distribution registry) serving plain HTTP on a free loopback port from a directory of
//! the test's, filled with `skopeo copy` from the test image's OCI archive; anonymous, or
//! with basic authentication from an htpasswd file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY: &str = "/usr/bin/docker-registry";
const SKOPEO: &str = "/usr/bin/skopeo";

/// A running registry, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// The user and password it requires, if any.
    credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry storing under `dir`.
    pub fn start(dir: &Path) -> Registry {
        Self::start_with(dir, None)
    }

    /// Starts a registry storing under `dir` that requires `user` and `password` (basic
    /// authentication, checked against a bcrypt htpasswd file) for everything.
    pub fn start_authenticated(dir: &Path, user: &str, password: &str) -> Registry {
        Self::start_with(dir, Some((user.to_string(), password.to_string())))
    }

    fn start_with(dir: &Path, credentials: Option<(String, String)>) -> Registry {
        for program in [REGISTRY, SKOPEO] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: run scripts/e2e/ensure-deps.sh"
            );
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let address = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut config_text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {address}\n",
            dir.join("storage").display()
        );
        if let Some((user, password)) = &credentials {
            let htpasswd = dir.join("htpasswd");
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config_text += &format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                htpasswd.display()
            );
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            address,
            credentials,
        }
    }

    /// Pushes the image in the OCI archive `archive` as `<address>/<repository>`; the
    /// reference.
    pub fn push(&self, archive: &Path, repository: &str) -> String {
        let reference = format!("{}/{repository}", self.address);
        let mut skopeo = Command::new(SKOPEO);
        skopeo.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((user, password)) = &self.credentials {
            skopeo.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = skopeo
            .arg(format!("oci-archive:{}", archive.display()))
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
