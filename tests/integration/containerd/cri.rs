//! Kubernetes' path: containerd's CRI plugin, with Strata as its snapshotter and differ,
//! driven through the CRI gRPC API as kubelet drives it. Images come from two private
//! registries (one anonymous, one requiring a password); containerd finds them through
//! `hosts.toml` files. Pods use the host network, so no CNI is needed.
//!
//! One test per containerd release checks that every layer was applied by Strata's differ,
//! the container saw the image's files, ImageFsInfo names Strata's filesystem, 50 pods
//! created and removed leave nothing behind, and removing the images leaves Strata empty.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::cri;
use api::cri::image_service_client::ImageServiceClient;
use api::cri::runtime_service_client::RuntimeServiceClient;
use api::services::snapshots::v1 as pb;
use tonic::transport::Channel;

use super::env::{BASE_LAYERS, Containerd, CriSetup, Env, build_image};
use super::registry::Registry;
use crate::util::{self, TempDir};

/// Extra layers of the application image beyond the base ones it shares with the sandbox's.
const APP_EXTRA: usize = 2;
/// Pods created and removed in the churn.
const CHURN: usize = 50;
/// containerd's CRI namespace.
const K8S_NAMESPACE: &str = "k8s.io";
const USER: &str = "kube";
const PASSWORD: &str = "s3cret-pull";

/// The CRI clients on containerd's socket.
pub(crate) struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub(crate) async fn connect(socket: &Path) -> Cri {
        let channel = api::channel::connect(socket)
            .await
            .expect("connect to containerd");
        Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    pub(crate) async fn pull(
        &mut self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let r = cri::PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config: None,
        };
        Ok(self.images.pull_image(r).await?.into_inner().image_ref)
    }

    async fn remove_image(&mut self, image: &str) {
        let r = cri::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.images.remove_image(r).await.expect("RemoveImage");
    }

    /// Runs a host-network pod sandbox named `name` logging under `logs`; its id and config.
    async fn run_pod(&mut self, name: &str, logs: &Path) -> (String, cri::PodSandboxConfig) {
        std::fs::create_dir_all(logs).unwrap();
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: logs.to_str().expect("UTF-8").into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                }),
            }),
            ..Default::default()
        };
        let r = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self
            .runtime
            .run_pod_sandbox(r)
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// Creates and starts a container of `image` in the pod running `command`, waits for it
    /// to exit and returns its exit code and what it wrote (from the CRI log file).
    async fn run_container(
        &mut self,
        pod: &(String, cri::PodSandboxConfig),
        name: &str,
        image: &str,
        command: &str,
    ) -> (i32, String) {
        let log_path = format!("{name}.log");
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(image_spec(image)),
            command: vec!["/bin/sh".into(), "-c".into(), command.into()],
            log_path: log_path.clone(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                }),
            }),
            ..Default::default()
        };
        let r = cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        };
        let id = self
            .runtime
            .create_container(r)
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        let r = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        self.runtime
            .start_container(r)
            .await
            .expect("StartContainer");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let r = cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            };
            let status = self
                .runtime
                .container_status(r)
                .await
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("a status");
            if status.state() == cri::ContainerState::ContainerExited {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "container still running: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let logs = Path::new(&pod.1.log_directory).join(log_path);
        (status.exit_code, cri_log_text(&logs))
    }

    async fn remove_pod(&mut self, id: &str) {
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .stop_pod_sandbox(stop)
            .await
            .expect("StopPodSandbox");
        let remove = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .remove_pod_sandbox(remove)
            .await
            .expect("RemovePodSandbox");
    }
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        annotations: HashMap::new(),
    }
}

fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
    }
}

/// The text of a CRI log file: each line is `<time> <stream> <P|F> <text>`; partial (`P`)
/// lines continue on the next.
fn cri_log_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("container log {}: {e}", path.display()));
    let mut text = String::new();
    for line in raw.lines() {
        let mut fields = line.splitn(4, ' ');
        let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
        text += fields.next().unwrap_or("");
        if tag == Some("F") {
            text.push('\n');
        }
    }
    text
}

/// Writes a `hosts.toml` under `dir` for each registry: plain HTTP on loopback.
fn write_hosts(dir: &Path, registries: &[&Registry]) {
    for registry in registries {
        let host = dir.join(&registry.address);
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(
            host.join("hosts.toml"),
            format!(
                "server = \"http://{a}\"\n\n[host.\"http://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                a = registry.address
            ),
        )
        .unwrap();
    }
}

/// Strata's snapshots that are not committed.
fn uncommitted(stored: &[pb::Info]) -> Vec<&pb::Info> {
    stored
        .iter()
        .filter(|i| i.kind() != pb::Kind::Committed)
        .collect()
}

/// Mounts that show anything under `root`: their mount point, source or layer options
/// (an overlay elsewhere stacking Strata's directories counts too, unlike
/// `util::mounts_under`, which looks at mount points only).
fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_str().expect("UTF-8");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(root))
        .map(str::to_string)
        .collect()
}

pub fn pod_lifecycle(test: &str, release: Containerd) {
    util::assert_root(test);
    let scratch = TempDir::new(&format!("{}-registries", test.replace("::", "-")));
    let open = Registry::start(&scratch.path().join("open"));
    let locked = Registry::start_authenticated(&scratch.path().join("locked"), USER, PASSWORD);
    let hosts_dir = scratch.path().join("certs.d");
    write_hosts(&hosts_dir, &[&open, &locked]);
    let sandbox_image = format!("{}/e2e/pause:1", open.address);
    let mut env = Env::start_cri(
        test,
        release,
        CriSetup {
            hosts_dir,
            sandbox_image: sandbox_image.clone(),
        },
    );
    env.use_namespace(K8S_NAMESPACE);

    let pause = scratch.path().join("pause.tar");
    build_image(
        &pause,
        "e2e/pause:1",
        0,
        &[("IMAGE_CMD", r#"["/bin/sleep","100000"]"#)],
    );
    open.push(&pause, "e2e/pause:1");
    let app_archive = scratch.path().join("app.tar");
    build_image(&app_archive, "e2e/app:1", APP_EXTRA, &[]);
    let app = locked.push(&app_archive, "e2e/app:1");

    let socket = env.socket().to_path_buf();
    let strata_root = env.strata.root.clone();
    let applied_before = env.applied_lines().len();
    let runs = env.block_on(async {
        let mut cri = Cri::connect(&socket).await;
        let version = cri
            .runtime
            .version(cri::VersionRequest::default())
            .await
            .expect("Version")
            .into_inner();
        assert_eq!(version.runtime_name, "containerd", "{version:?}");

        // The sandbox image anonymously; the application image needs the password.
        cri.pull(&sandbox_image, None)
            .await
            .expect("pull the sandbox image");
        let refused = cri
            .pull(&app, None)
            .await
            .expect_err("pulled without credentials");
        assert!(
            ["401", "nauthorized", "authorization failed"]
                .iter()
                .any(|m| refused.message().contains(m)),
            "{refused:?}"
        );
        let auth = cri::AuthConfig {
            username: USER.into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        let app_ref = cri
            .pull(&app, Some(auth))
            .await
            .expect("pull with credentials");
        assert!(app_ref.starts_with("sha256:"), "{app_ref}");

        let fs = cri
            .images
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .expect("ImageFsInfo")
            .into_inner();
        let mountpoint = fs
            .image_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|id| PathBuf::from(&id.mountpoint));
        assert_eq!(mountpoint.as_deref(), Some(strata_root.as_path()), "{fs:?}");

        let logs = socket.parent().unwrap().join("pods");
        let pod = cri.run_pod("app", &logs.join("app")).await;
        let script = "cat /etc/a /etc/c /data/keep/x /data/old/new /extra/f1 /extra/f2; \
                      ls /data/old; test ! -e /etc/b && echo whiteout-ok";
        let (code, out) = cri.run_container(&pod, "app", &app, script).await;
        cri.remove_pod(&pod.0).await;

        let started = Instant::now();
        for n in 0..CHURN {
            let pod = cri
                .run_pod(&format!("churn-{n}"), &logs.join(format!("churn-{n}")))
                .await;
            let (code, out) = cri.run_container(&pod, "c", &app, "echo $((6 * 7))").await;
            assert_eq!((code, out.as_str()), (0, "42\n"), "pod {n}");
            cri.remove_pod(&pod.0).await;
        }
        eprintln!("{test}: {CHURN} pods in {:?}", started.elapsed());
        ((code, out), cri)
    });
    let ((code, out), mut cri) = runs;
    assert_eq!(
        (code, out.as_str()),
        (0, "a2\nc2\nx1\nnew3\nextra 1\nextra 2\nnew\nwhiteout-ok\n")
    );

    // Every layer of both images was applied by Strata's differ, into its own snapshots.
    let applied = &env.applied_lines()[applied_before..];
    assert_eq!(applied.len(), BASE_LAYERS + APP_EXTRA, "{applied:#?}");
    for line in applied {
        let snapshot = line
            .split_once(" snapshot=")
            .map(|(_, field)| field.trim_start_matches('"'));
        assert!(
            snapshot.is_some_and(|s| s.starts_with(&format!("{K8S_NAMESPACE}/"))),
            "not applied into a snapshot of ours: {line}"
        );
    }

    // The pods left nothing once containerd's collector has run (it removes the snapshots
    // of removed containers from Strata): only the images' committed layers, one directory
    // each, no mount.
    env.collect_garbage();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = env.strata_snapshots();
        if uncommitted(&stored).is_empty() || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(uncommitted(&stored), Vec::<&pb::Info>::new());
    assert_eq!(stored.len(), BASE_LAYERS + APP_EXTRA, "{stored:?}");
    assert_eq!(util::snapshot_dirs(&env.strata.root).len(), stored.len());
    assert_eq!(mounts_under(&env.strata.root), Vec::<String>::new());

    env.block_on(async {
        cri.remove_image(&app).await;
        cri.remove_image(&sandbox_image).await;
    });
    env.collect_garbage();
    env.wait_strata_empty();
}
