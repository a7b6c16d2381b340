//! The snapshotter instances a daemon serves: opened from the configuration, each under its
//! own root and name, selected per request by the `snapshotter` field containerd fills in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use snapshotter::native::NativeSnapshotter;
use snapshotter::overlay::OverlaySnapshotter;
use snapshotter::{Options, Snapshotter};

use crate::config::{Config, ConfigError, InstanceConfig, SnapshotterKind};

/// Why the instances could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The configuration names them wrongly.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// One could not be opened.
    #[error("open snapshotter {name} at {root}")]
    Open {
        /// Instance name.
        name: String,
        /// Its root.
        root: PathBuf,
        /// Why.
        #[source]
        source: snapshotter::Error,
    },
}

/// One named snapshotter instance.
pub struct Instance {
    /// The name containerd selects it by.
    pub name: String,
    /// The snapshotter.
    pub snapshotter: Arc<dyn Snapshotter>,
    /// Its root directory.
    pub root: PathBuf,
}

/// The instances a daemon serves, selected by the request's `snapshotter` field.
pub struct Instances {
    by_name: BTreeMap<String, Instance>,
}

impl Instances {
    /// Opens every configured instance (taking each root's lock).
    pub fn open(config: &Config) -> Result<Self, InstanceError> {
        let mut by_name = BTreeMap::new();
        for (inst, root) in config.instances()? {
            let snapshotter =
                open_instance(&inst, &root).map_err(|source| InstanceError::Open {
                    name: inst.name.clone(),
                    root: root.clone(),
                    source,
                })?;
            tracing::info!(name = %inst.name, kind = ?inst.kind, root = %root.display(), "snapshotter ready");
            by_name.insert(
                inst.name.clone(),
                Instance {
                    name: inst.name,
                    snapshotter,
                    root,
                },
            );
        }
        Ok(Instances { by_name })
    }

    /// The instance for a request: the named one when several are served, the only one
    /// otherwise (whatever name containerd gave its proxy plugin).
    pub fn get(&self, name: &str) -> snapshotter::Result<&Instance> {
        if self.by_name.len() == 1 {
            return Ok(self.by_name.values().next().expect("one instance"));
        }
        self.by_name
            .get(name)
            .ok_or_else(|| snapshotter::Error::NotFound(format!("snapshotter {name:?}")))
    }

    /// The name an unpack that names no snapshotter uses: containerd's default,
    /// `overlayfs`, if an instance answers to it (the only one answers to any name), else
    /// the first instance's.
    pub fn default_name(&self) -> &str {
        match self.get("overlayfs") {
            Ok(_) => "overlayfs",
            Err(_) => self.by_name.keys().next().map_or("", String::as_str),
        }
    }

    /// Every instance.
    pub fn all(&self) -> impl Iterator<Item = &Instance> {
        self.by_name.values()
    }
}

impl imagestore::Snapshotters for Instances {
    fn resolve(&self, name: &str) -> Option<(String, Arc<dyn Snapshotter>)> {
        let inst = self.get(name).ok()?;
        Some((inst.name.clone(), Arc::clone(&inst.snapshotter)))
    }
}

fn open_instance(inst: &InstanceConfig, root: &Path) -> snapshotter::Result<Arc<dyn Snapshotter>> {
    let options = Options {
        sync_remove: inst
            .sync_remove
            .unwrap_or(inst.kind == SnapshotterKind::Native),
        max_size: Some(inst.max_size),
        shifted_copies: !inst.idmapped_layers,
    };
    Ok(match inst.kind {
        SnapshotterKind::Native => Arc::new(NativeSnapshotter::open(
            root,
            snapshotter::native::Native,
            options,
        )?),
        SnapshotterKind::Overlayfs => {
            let driver = snapshotter::overlay::Overlay::probe(
                root,
                snapshotter::overlay::OverlayOptions {
                    upperdir_label: inst.upperdir_label,
                    mount_options: inst.mount_options.clone(),
                },
            )?;
            Arc::new(OverlaySnapshotter::open(root, driver, options)?)
        }
    })
}
