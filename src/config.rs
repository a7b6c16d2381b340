//! Daemon configuration: a TOML file (`--config`, else `/etc/strata/config.toml` when it
//! exists) and command-line overrides, turned into snapshotter instances with typed options.
//! Unknown keys are errors naming the key. The snapshotter crate never sees TOML.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default root directory.
pub const DEFAULT_ROOT: &str = "/var/lib/strata";
/// Default socket path.
pub const DEFAULT_ADDRESS: &str = "/run/strata/strata.sock";
/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/strata/config.toml";

/// The daemon's configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root directory; a single instance lives here, several live in `<root>/<name>`.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Unix socket to serve on.
    #[serde(default = "default_address")]
    pub address: PathBuf,
    /// Snapshotter instances; none means one overlayfs instance at `root`.
    #[serde(default)]
    pub snapshotters: Vec<InstanceConfig>,
    /// Where the Diff service reads and writes layer blobs.
    #[serde(default)]
    pub differ: DifferConfig,
    /// `host:port` to serve Prometheus metrics on over HTTP (`/metrics`); off when unset.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Registries (`host[:port]`) that pulls reach over plain HTTP, as with `--plain-http`
    /// (registries on loopback always are).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Sharing blobs with other Strata nodes (`[fleet]`); off when absent.
    #[serde(default)]
    pub fleet: Option<FleetSettings>,
}

/// The `[fleet]` section: this node's peer API and how it finds its peers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// `host:port` the peer API (the OCI distribution API, read-only) listens on.
    pub listen: String,
    /// This node's address as its peers list it; default `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// A file holding the secret every peer request must carry (the same on every node).
    pub secret_file: PathBuf,
    /// Peers by address (`host:port`), this node among them or not.
    #[serde(default)]
    pub peers: Vec<String>,
    /// A DNS name (`name:port`, such as a Kubernetes headless Service) whose addresses are
    /// the peers, resolved again every `refresh_secs`.
    #[serde(default)]
    pub peers_dns: Option<String>,
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Seconds a blob fetched for the fleet is kept when no image of this node holds it.
    #[serde(default = "default_keep_secs")]
    pub keep_secs: u64,
}

fn default_refresh_secs() -> u64 {
    5
}

fn default_keep_secs() -> u64 {
    3600
}

/// Where layer blobs live for the Diff service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DifferConfig {
    /// A local directory in the OCI layout (`blobs/sha256/<hex>`); when set, it is used
    /// instead of containerd's Content service.
    #[serde(default)]
    pub content_dir: Option<PathBuf>,
    /// containerd's gRPC socket, for its Content service: where layers are when Strata is
    /// containerd's differ. Neither this nor `content_dir`: the daemon's own content store.
    #[serde(default)]
    pub containerd_address: Option<PathBuf>,
    /// Namespace for content calls when neither the request nor the snapshot key names one.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How long a layer created by Diff stays protected from containerd's garbage collector
    /// (by a lease of Strata's own) when the request brought no lease of the caller's.
    #[serde(default = "default_lease_expiry_secs")]
    pub lease_expiry_secs: u64,
    /// Bounds on each applied layer (`[differ.limits]`: `max_entries`, `max_path_depth`,
    /// `max_name_bytes`).
    #[serde(default)]
    pub limits: differ::LayerLimits,
}

fn default_namespace() -> String {
    "default".into()
}

/// One hour: ample for a client to read a new layer and reference it from its image.
pub const DEFAULT_LEASE_EXPIRY_SECS: u64 = 3600;

fn default_lease_expiry_secs() -> u64 {
    DEFAULT_LEASE_EXPIRY_SECS
}

impl Default for DifferConfig {
    fn default() -> Self {
        DifferConfig {
            content_dir: None,
            containerd_address: None,
            namespace: default_namespace(),
            lease_expiry_secs: DEFAULT_LEASE_EXPIRY_SECS,
            limits: differ::LayerLimits::default(),
        }
    }
}

/// One named snapshotter instance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The name containerd uses for it (the `proxy_plugins` key).
    pub name: String,
    /// Which snapshotter.
    #[serde(rename = "type", default)]
    pub kind: SnapshotterKind,
    /// Its own root; default `<root>/<name>` (or `<root>` when it is the only instance).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Delete removed snapshots' directories at once (default: native yes, overlayfs no).
    #[serde(default)]
    pub sync_remove: Option<bool>,
    /// Report `containerd.io/snapshot/overlay.upperdir` in Stat/List (overlayfs only).
    #[serde(default)]
    pub upperdir_label: bool,
    /// Extra overlay mount options, such as `volatile` (overlayfs only).
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// Size limit in bytes of container snapshots that ask for none (0: none); needs
    /// btrfs quotas or project quotas on the root's filesystem.
    #[serde(default)]
    pub max_size: u64,
    /// Show layers to user-namespaced snapshots through idmapped mounts (else: shifted
    /// copies).
    #[serde(default = "yes")]
    pub idmapped_layers: bool,
}

fn yes() -> bool {
    true
}

impl InstanceConfig {
    /// The instance `strata serve` runs without a config listing any: "strata", every
    /// option at its default.
    pub fn default_of(kind: SnapshotterKind) -> Self {
        InstanceConfig {
            name: "strata".into(),
            kind,
            root: None,
            sync_remove: None,
            upperdir_label: false,
            mount_options: Vec::new(),
            max_size: 0,
            idmapped_layers: true,
        }
    }
}

/// The snapshotter implementations.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotterKind {
    /// overlayfs layers (the default).
    #[default]
    Overlayfs,
    /// Full copies, bind mounts.
    Native,
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

fn default_address() -> PathBuf {
    PathBuf::from(DEFAULT_ADDRESS)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: default_root(),
            address: default_address(),
            snapshotters: Vec::new(),
            differ: DifferConfig::default(),
            metrics_address: None,
            insecure_registries: Vec::new(),
            fleet: None,
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is not valid configuration.
    #[error("parse {0}")]
    Parse(PathBuf, #[source] toml::de::Error),
    /// Two instances share a name.
    #[error("snapshotter {0:?} is configured twice")]
    DuplicateName(String),
}

/// A complete configuration with every default, commented: what `strata config default`
/// prints and the package installs as `/etc/strata/config.toml`.
pub const DEFAULT_TOML: &str = r#"# Strata's configuration. Every value below is the default; flags of `strata serve` override
# what is set here. Unknown keys are refused.

# Root directory: the index, and the snapshots of a single instance (several instances
# live in <root>/<name>).
root = "/var/lib/strata"
# Unix socket serving the Snapshots and Diff services (mode 0600). Under systemd socket
# activation (strata.socket) the daemon serves on the socket it is given instead.
address = "/run/strata/strata.sock"
# Prometheus metrics over HTTP at http://<metrics_address>/metrics; off when unset.
# metrics_address = "127.0.0.1:9323"
# Registries (host[:port]) that `strata image pull` reaches over plain HTTP, as with
# --plain-http; registries on loopback always are.
insecure_registries = []

[differ]
# Where the Diff service reads and writes layer blobs. Unset: the daemon's own content
# store (<root>/content, served by its Content service). With containerd using Strata as
# its differ, set containerd_address: containerd's Content service holds the layers.
# containerd_address = "/run/containerd/containerd.sock"
# A local OCI-layout directory instead of either.
# content_dir = "/var/lib/strata-content"
# Namespace for content calls when neither the request nor the snapshot key names one.
namespace = "default"
# Seconds a layer created by Diff is protected from containerd's collector when the
# request brought no lease of its own.
lease_expiry_secs = 3600

[differ.limits]
# A layer beyond any of these is refused with InvalidArgument naming the limit.
max_entries = 4000000
max_path_depth = 256
max_name_bytes = 255

# Sharing layers with the other Strata nodes of a cluster: each serves its content store
# read-only to the others (OCI distribution API, requests carrying the secret), and a pull
# asks the peer its blobs hash to before the registry, so the registry sends each blob to
# the cluster once. Off unless listen is set. See docs/fleet.md.
# [fleet]
# listen = "0.0.0.0:5050"                 # the peer API
# advertise = "10.0.0.5:5050"             # this node as the peers list it (default: listen)
# secret_file = "/etc/strata/fleet-secret" # the same secret on every node
# peers = ["10.0.0.6:5050"]               # a static list, or:
# peers_dns = "strata-peers.kube-system.svc.cluster.local:5050"
# refresh_secs = 5                        # how often peers_dns is resolved again
# keep_secs = 3600                        # how long a blob fetched for peers is kept

# Snapshotter instances; none listed means one overlayfs instance named "strata" at root.
# With several, the request's snapshotter field (containerd's proxy_plugins name) picks one.
# [[snapshotters]]
# name = "strata"
# type = "overlayfs"            # or "native"
# root = "/var/lib/strata"      # default: root, or <root>/<name> with several instances
# sync_remove = false           # delete removed snapshots at once (native default: true)
# upperdir_label = false        # report containerd.io/snapshot/overlay.upperdir
# mount_options = []            # extra overlay options, e.g. ["volatile"]
# max_size = 0                  # bytes a container snapshot may write (0: no limit), unless
#                               # it asks with containerd.io/snapshot/max-size; layer
#                               # extractions never get it. Needs btrfs with quotas
#                               # enabled, or ext4/xfs mounted with prjquota.
# idmapped_layers = true        # user-namespaced snapshots see layers through idmapped
#                               # mounts; false: each gets a copy with owners shifted
"#;

impl Config {
    /// The configuration to start from: `explicit` (`--config`; it must exist), else the
    /// file at `default` if there is one, else the built-in defaults.
    pub fn locate(explicit: Option<&Path>, default: &Path) -> Result<Self, ConfigError> {
        match explicit {
            Some(path) => Self::load(path),
            None if default.exists() => Self::load(default),
            None => Ok(Config::default()),
        }
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))
    }

    /// The instances to open, each with its resolved root.
    pub fn instances(&self) -> Result<Vec<(InstanceConfig, PathBuf)>, ConfigError> {
        if self.snapshotters.is_empty() {
            let only = InstanceConfig::default_of(SnapshotterKind::default());
            return Ok(vec![(only, self.root.clone())]);
        }
        let single = self.snapshotters.len() == 1;
        let mut out: Vec<(InstanceConfig, PathBuf)> = Vec::new();
        for inst in &self.snapshotters {
            if out.iter().any(|(o, _)| o.name == inst.name) {
                return Err(ConfigError::DuplicateName(inst.name.clone()));
            }
            let root = match (&inst.root, single) {
                (Some(r), _) => r.clone(),
                (None, true) => self.root.clone(),
                (None, false) => self.root.join(&inst.name),
            };
            out.push((inst.clone(), root));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_instances_with_roots() {
        let c: Config = toml::from_str(
            r#"
            root = "/r"
            address = "/s.sock"
            [[snapshotters]]
            name = "strata"
            type = "overlayfs"
            upperdir_label = true
            [[snapshotters]]
            name = "strata-native"
            type = "native"
            root = "/elsewhere"
            "#,
        )
        .unwrap();
        let inst = c.instances().unwrap();
        assert_eq!(inst[0].1, PathBuf::from("/r/strata"));
        assert!(inst[0].0.upperdir_label);
        assert_eq!(inst[1].0.kind, SnapshotterKind::Native);
        assert_eq!(inst[1].1, PathBuf::from("/elsewhere"));
    }

    #[test]
    fn empty_config_is_one_overlay_instance_at_the_root() {
        let c: Config = toml::from_str("").unwrap();
        let inst = c.instances().unwrap();
        assert_eq!(inst.len(), 1);
        assert_eq!(inst[0].1, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(inst[0].0.kind, SnapshotterKind::Overlayfs);
    }

    #[test]
    fn unknown_keys_and_duplicates_are_rejected() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let c: Config =
            toml::from_str("[[snapshotters]]\nname = \"a\"\n[[snapshotters]]\nname = \"a\"\n")
                .unwrap();
        assert!(matches!(c.instances(), Err(ConfigError::DuplicateName(_))));
    }

    #[test]
    fn layer_limits_are_read_and_checked() {
        let c: Config =
            toml::from_str("[differ.limits]\nmax_entries = 10\nmax_path_depth = 4\n").unwrap();
        let limits = c.differ.limits;
        assert_eq!((limits.max_entries, limits.max_path_depth), (10, 4));
        assert_eq!(
            limits.max_name_bytes,
            differ::LayerLimits::default().max_name_bytes
        );
        let err = toml::from_str::<Config>("[differ.limits]\nmax_files = 1\n").unwrap_err();
        assert!(err.to_string().contains("max_files"), "{err}");
    }

    #[test]
    fn the_printed_default_is_the_default_and_complete() {
        let c: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(c, Config::default());
        // Uncommenting every example gives a valid configuration too.
        let uncommented: String = DEFAULT_TOML
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = ") || rest.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full: Config = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(full.metrics_address.as_deref(), Some("127.0.0.1:9323"));
        assert!(full.insecure_registries.is_empty());
        assert_eq!(full.snapshotters.len(), 1);
        let fleet = full.fleet.expect("the fleet section");
        assert_eq!((fleet.refresh_secs, fleet.keep_secs), (5, 3600));
        assert_eq!(fleet.peers, ["10.0.0.6:5050"]);
        for key in [
            "listen",
            "advertise",
            "secret_file",
            "peers",
            "peers_dns",
            "refresh_secs",
            "keep_secs",
            "root",
            "address",
            "metrics_address",
            "insecure_registries",
            "content_dir",
            "containerd_address",
            "namespace",
            "lease_expiry_secs",
            "max_entries",
            "max_path_depth",
            "max_name_bytes",
            "name",
            "type",
            "sync_remove",
            "upperdir_label",
            "mount_options",
            "max_size",
            "idmapped_layers",
        ] {
            assert!(
                DEFAULT_TOML.contains(&format!("{key} = ")),
                "{key} is not documented"
            );
        }
    }

    /// The configuration the Kubernetes manifest gives every node parses, with its fleet.
    #[test]
    fn the_kubernetes_manifests_configuration_parses() {
        let manifest = include_str!("../packaging/kubernetes/strata-fleet.yaml");
        let start = manifest
            .find("config.toml: |\n")
            .expect("the ConfigMap's file")
            + 15;
        let text: String = manifest[start..]
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let c: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let fleet = c.fleet.expect("a [fleet] section");
        assert_eq!(fleet.listen, "0.0.0.0:5050");
        assert!(
            fleet
                .peers_dns
                .is_some_and(|d| d.ends_with(".svc.cluster.local:5050"))
        );
        assert!(manifest.contains("STRATA_FLEET_ADVERTISE"));
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("bogus = 1", "bogus"),
            ("[differ]\ncontent_directory = \"/x\"", "content_directory"),
            ("[[snapshotters]]\nname = \"a\"\nkind = \"native\"", "kind"),
        ] {
            let err = toml::from_str::<Config>(text).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
        }
    }

    #[test]
    fn the_default_file_is_read_when_there_is_one_and_config_wins() {
        let dir = std::env::temp_dir().join(format!("strata-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (default, explicit) = (dir.join("default.toml"), dir.join("explicit.toml"));
        assert_eq!(Config::locate(None, &default).unwrap(), Config::default());
        std::fs::write(&default, "root = \"/from-default\"").unwrap();
        std::fs::write(&explicit, "root = \"/from-explicit\"").unwrap();
        assert_eq!(
            Config::locate(None, &default).unwrap().root,
            PathBuf::from("/from-default")
        );
        let c = Config::locate(Some(&explicit), &default).unwrap();
        assert_eq!(c.root, PathBuf::from("/from-explicit"));
        let missing = dir.join("missing.toml");
        assert!(matches!(
            Config::locate(Some(&missing), &default),
            Err(ConfigError::Read(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
