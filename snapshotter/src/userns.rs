//! User-namespaced snapshots (containerd's `remap-ids` capability). A snapshot labelled
//! with [`UID_MAPPING`] and [`GID_MAPPING`] gets mounts whose lower layers are seen through
//! an idmapped, read-only clone of `<root>/snapshots`, attached once per mapping at
//! `<root>/idmapped/<hash>`, and its own directory belongs to the container's root: no layer
//! is copied or chowned. Where the kernel or filesystem cannot idmap (or the instance is
//! configured not to), the snapshot instead gets a copy of its parents with every owner
//! shifted, which is what containerd's client does for snapshotters without `remap-ids`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mountutil::idmap::{self, IdMapping, IdRange};
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::copy::{entry_metadata, walk_entry};
use crate::{Error, Labels, Result};

/// containerd's label carrying a snapshot's uid mapping (`ctr:host:size[,...]`).
pub const UID_MAPPING: &str = "containerd.io/snapshot/uidmapping";
/// containerd's label carrying a snapshot's gid mapping.
pub const GID_MAPPING: &str = "containerd.io/snapshot/gidmapping";
/// In a snapshot's directory: its `fs` holds a shifted copy of its parents (the fallback),
/// so a view mounts that copy rather than its parents.
pub(crate) const REMAPPED_COPY: &str = "remapped-copy";

/// The mapping a snapshot's labels ask for: none, or both labels, well formed.
pub(crate) fn mapping_of(labels: &Labels) -> Result<Option<IdMapping>> {
    match (labels.get(UID_MAPPING), labels.get(GID_MAPPING)) {
        (None, None) => Ok(None),
        (Some(uids), Some(gids)) => Ok(Some(IdMapping {
            uids: parse_ranges(UID_MAPPING, uids)?,
            gids: parse_ranges(GID_MAPPING, gids)?,
        })),
        _ => Err(Error::InvalidArgument(format!(
            "labels {UID_MAPPING} and {GID_MAPPING} go together"
        ))),
    }
}

/// `ctr:host:size[,ctr:host:size...]` (containerd 1.x sends a single range).
fn parse_ranges(label: &str, value: &str) -> Result<Vec<IdRange>> {
    let bad = || Error::InvalidArgument(format!("label {label}={value:?} is not ctr:host:size"));
    value
        .split(',')
        .map(|range| {
            let fields: Vec<u32> = range
                .split(':')
                .map(|f| f.trim().parse::<u32>().map_err(|_| bad()))
                .collect::<Result<_>>()?;
            let [container, host, size] = fields[..] else {
                return Err(bad());
            };
            let fits = |start: u32| start.checked_add(size - 1).is_some();
            if size == 0 || !fits(container) || !fits(host) {
                return Err(bad());
            }
            Ok(IdRange {
                container,
                host,
                size,
            })
        })
        .collect()
}

/// The idmapped clones of `<root>/snapshots`, one per mapping in use.
pub(crate) struct IdmappedTrees {
    /// `<root>/idmapped`.
    dir: PathBuf,
    /// `<root>/snapshots`, what every clone shows.
    snapshots: PathBuf,
    /// Idmapping is configured on and has not failed yet.
    usable: AtomicBool,
    /// Serialises attaching and detaching.
    lock: Mutex<()>,
    /// Mappings of creations in flight (not yet in the index), with their counts.
    pins: Arc<Mutex<HashMap<IdMapping, usize>>>,
}

/// Keeps a mapping's tree attached while a creation using it is in flight.
pub(crate) struct Pin {
    mapping: IdMapping,
    pins: Arc<Mutex<HashMap<IdMapping, usize>>>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pins.get_mut(&self.mapping) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.mapping);
            }
        }
    }
}

impl IdmappedTrees {
    pub(crate) fn new(root: &Path, enabled: bool) -> Self {
        IdmappedTrees {
            dir: root.join("idmapped"),
            snapshots: root.join("snapshots"),
            usable: AtomicBool::new(enabled),
            lock: Mutex::new(()),
            pins: Arc::default(),
        }
    }

    /// Keeps `mapping`'s tree from [`release_unused`](Self::release_unused) until the pin
    /// drops: a creation holds it until its snapshot is in the index.
    pub(crate) fn pin(&self, mapping: &IdMapping) -> Pin {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        *pins.entry(mapping.clone()).or_default() += 1;
        Pin {
            mapping: mapping.clone(),
            pins: Arc::clone(&self.pins),
        }
    }

    fn path(&self, mapping: &IdMapping) -> PathBuf {
        let digest = Sha256::digest(mapping.to_string().as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }

    /// The directory showing `<root>/snapshots` through `mapping`, attached now if it is not
    /// yet; `None` where idmapping is off or the kernel or filesystem refuses it (logged
    /// once: the callers fall back to a shifted copy).
    pub(crate) fn tree(&self, mapping: &IdMapping) -> Option<PathBuf> {
        if !self.usable.load(Ordering::Relaxed) {
            return None;
        }
        let path = self.path(mapping);
        let _attaching = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(idmap::is_mount_root(&path), Ok(true)) {
            return Some(path);
        }
        match self.attach(mapping, &path) {
            Ok(()) => {
                tracing::info!(%mapping, tree = %path.display(), "idmapped layers attached");
                Some(path)
            }
            Err(e) => {
                self.usable.store(false, Ordering::Relaxed);
                let _ = fs::remove_dir(&path);
                tracing::warn!(
                    error = %with_causes(&e),
                    "cannot idmap layers here; user-namespaced snapshots get shifted copies"
                );
                None
            }
        }
    }

    fn attach(&self, mapping: &IdMapping, path: &Path) -> Result<()> {
        fs::create_dir_all(path).map_err(|e| Error::io("create", path, e))?;
        let userns = idmap::user_namespace(mapping)?;
        idmap::attach_idmapped(&self.snapshots, path, userns.as_fd())?;
        Ok(())
    }

    /// Detaches the trees of mappings that neither a snapshot (`indexed` reads them from
    /// the index) nor a creation in flight uses. Creations pinned after the pins are read
    /// here wait for this to finish before they attach.
    pub(crate) fn release_unused(
        &self,
        indexed: impl FnOnce() -> Result<HashSet<IdMapping>>,
    ) -> Result<()> {
        let _detaching = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut used: HashSet<IdMapping> = self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        used.extend(indexed()?);
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", &self.dir, e)),
        };
        let kept: HashSet<PathBuf> = used.iter().map(|m| self.path(m)).collect();
        for entry in entries {
            let path = entry.map_err(|e| Error::io("read", &self.dir, e))?.path();
            if kept.contains(&path) {
                continue;
            }
            if idmap::is_mount_root(&path)? {
                mountutil::unmount(&path)?;
            }
            fs::remove_dir(&path).map_err(|e| Error::io("remove", &path, e))?;
            tracing::info!(tree = %path.display(), "idmapped layers detached");
        }
        Ok(())
    }
}

/// `e` and its sources, `: `-separated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Gives every entry under `root` (itself included) the host owner `mapping` gives its
/// current owner, keeping setuid and setgid bits, which chown clears. An owner outside
/// the mapping is refused: the container could not own the file either.
pub(crate) fn shift_owners(root: &Path, mapping: &IdMapping) -> Result<()> {
    for entry in WalkDir::new(root) {
        let entry = walk_entry(entry, root)?;
        let path = entry.path();
        let md = entry_metadata(path)?;
        let (Some(uid), Some(gid)) = mapping.to_host(md.uid(), md.gid()) else {
            return Err(Error::InvalidArgument(format!(
                "{} is owned by {}:{}, outside the mapping ({mapping})",
                path.display(),
                md.uid(),
                md.gid()
            )));
        };
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| Error::io("chown", path, e))?;
        if md.is_file() && md.mode() & 0o6000 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(|e| Error::io("chmod", path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(uids: &str, gids: &str) -> Labels {
        [(UID_MAPPING, uids), (GID_MAPPING, gids)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mapping_labels_parse_as_containerd_writes_them() {
        let m = mapping_of(&labels("0:100000:65536", "0:200000:1,1:300000:10"))
            .unwrap()
            .unwrap();
        assert_eq!(
            m.to_string(),
            "uids 0:100000:65536 gids 0:200000:1,1:300000:10"
        );
        assert_eq!(mapping_of(&Labels::new()).unwrap(), None);
        for (uids, gids) in [
            ("0:100000", "0:1:1"),
            ("0:1:0", "0:1:1"),
            ("a:1:1", "0:1:1"),
            ("0:4294967295:2", "0:1:1"),
            ("", "0:1:1"),
        ] {
            let e = mapping_of(&labels(uids, gids)).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{uids}: {e}");
        }
        let only_uids: Labels = [(UID_MAPPING.to_string(), "0:1:1".to_string())].into();
        assert!(matches!(
            mapping_of(&only_uids),
            Err(Error::InvalidArgument(_))
        ));
    }
}
