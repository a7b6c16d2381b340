//! The crash loop's checks after each restart: the calls in flight settled all-or-nothing,
//! the listed snapshots exactly the recorded ones with their kind, parent, labels, depth
//! and tree, user-namespaced snapshots with their shifted trees and idmapped lowers, and no
//! directory or mount left over after Cleanup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use api::services::snapshots::v1 as pb;
use api::types::Mount;

use super::{InFlight, MAPPING_BASES, Shared, mapped_tree, model, mounted_tree, own_labels};
use crate::crash::mount_paths;
use crate::util::{Snap, mounts_under, snapshot_dirs};

/// After a restart: settles the calls that were in flight, then checks the index, the
/// trees, the directories and the mounts against the model.
pub(super) async fn check(
    s: &mut Snap,
    shared: &Shared,
    root: &Path,
    mnt: &Path,
    kind: &str,
    round: usize,
) {
    let mut listed: BTreeMap<String, pb::Info> = s
        .list(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    let mut violations = Vec::new();
    let held: Vec<String> = {
        let mut guard = model(shared);
        let m = &mut *guard;
        for op in m.in_flight.iter_mut().filter_map(Option::take) {
            let effect = match op {
                InFlight::Discardable => continue,
                InFlight::Commit { name, key, expect } => {
                    match (listed.contains_key(&name), listed.contains_key(&key)) {
                        (true, false) => {
                            m.committed.insert(name, expect);
                            true
                        }
                        (false, true) => false,
                        both => {
                            violations.push(format!(
                                "commit {key} -> {name} half done: (name, key) present = {both:?}"
                            ));
                            continue;
                        }
                    }
                }
                InFlight::PrepareMapped { key, expect } => {
                    let made = listed.contains_key(&key);
                    if made {
                        m.mapped.insert(key, expect);
                    }
                    made
                }
                InFlight::Remove { name } => {
                    let gone = !listed.contains_key(&name);
                    if gone {
                        m.committed.remove(&name);
                        m.mapped.remove(&name);
                    }
                    gone
                }
                InFlight::Update {
                    name,
                    before,
                    after,
                } => {
                    let seen = listed.get(&name).map(|i| own_labels(&i.labels));
                    if seen.as_ref() == Some(&after) {
                        if let Some(c) = m.committed.get_mut(&name) {
                            c.labels = after;
                        }
                        true
                    } else if seen.as_ref() == Some(&before) {
                        false
                    } else {
                        violations.push(format!("update of {name}: labels {seen:?}"));
                        continue;
                    }
                }
            };
            if effect {
                m.counts.took_effect += 1;
            } else {
                m.counts.did_not += 1;
            }
        }
        m.held.iter_mut().flat_map(std::mem::take).collect()
    };
    // What the clients held uncommitted is discarded, as containerd discards a failed
    // unpack's snapshots.
    for key in held {
        if let Some(info) = listed.remove(&key) {
            if info.kind == pb::Kind::Committed as i32 {
                violations.push(format!("{key} was never committed but is"));
            }
            s.remove(&key).await.unwrap();
        }
    }
    let dropped = MAPPING_BASES[round % MAPPING_BASES.len()];
    let in_use = check_mapped(s, shared, &mut listed, mnt, kind, dropped, &mut violations).await;
    let committed = model(shared).committed.clone();
    for name in listed.keys().filter(|n| !committed.contains_key(*n)) {
        violations.push(format!("{name} is in the index but was never acknowledged"));
    }
    let mut verified = 0;
    for (name, c) in &committed {
        let Some(info) = listed.get(name) else {
            violations.push(format!("{name} was acknowledged and is lost"));
            continue;
        };
        if info.kind != pb::Kind::Committed as i32
            || info.parent != c.parent
            || own_labels(&info.labels) != c.labels
        {
            violations.push(format!("{name}: index has {info:?}, recorded {c:?}"));
        }
        let key = format!("check {name}");
        let mounts = s.view(&key, name).await.unwrap();
        for p in mount_paths(&mounts) {
            if !Path::new(&p).is_dir() {
                violations.push(format!("{name}: {p} is missing"));
            }
        }
        // A native snapshot is one full copy: only overlay mounts show the chain.
        if kind == "overlayfs" && overlay_layers(&mounts) != Some(c.depth) {
            violations.push(format!(
                "{name}: view mounts {mounts:?}, recorded chain depth {}",
                c.depth
            ));
        }
        match mounted_tree(&mounts, mnt).await {
            Ok(tree) if tree == c.tree => {}
            Ok(_) => violations.push(format!("{name}: tree differs from the one committed")),
            Err(e) => violations.push(format!("{name}: {e}")),
        }
        verified += 1;
        s.remove(&key).await.unwrap();
    }
    s.cleanup().await.unwrap();
    let dirs = snapshot_dirs(root);
    let snapshots = committed.len() + model(shared).mapped.len();
    if dirs.iter().any(|d| d.parse::<u64>().is_err()) || dirs.len() != snapshots {
        violations.push(format!(
            "after Cleanup {} directories for {snapshots} snapshots: {dirs:?}",
            dirs.len(),
        ));
    }
    let (idmapped, leaked): (Vec<PathBuf>, Vec<PathBuf>) = mounts_under(root)
        .into_iter()
        .chain(mounts_under(mnt))
        .partition(|p| p.parent() == Some(&root.join("idmapped")));
    if !leaked.is_empty() {
        violations.push(format!("mounts left: {leaked:?}"));
    }
    // Cleanup detaches the tree of every mapping no snapshot uses. A native snapshot is a
    // shifted copy made through its mapping's tree, which stays attached while the snapshot
    // exists but is not re-attached after a restart; overlay mounts name theirs.
    let expected = match &in_use.trees {
        Some(trees) => idmapped.iter().cloned().collect::<BTreeSet<_>>() == *trees,
        None => idmapped.len() <= in_use.bases.len(),
    };
    if !expected {
        violations.push(format!(
            "after Cleanup idmapped trees {idmapped:?} for mappings {:?} in use",
            in_use.bases
        ));
    }
    let mut m = model(shared);
    m.counts.trees_verified += verified;
    m.violations.extend(violations);
}

/// The mappings user-namespaced snapshots use after [`check_mapped`].
struct MappingsInUse {
    bases: BTreeSet<u32>,
    /// For overlayfs, the idmapped trees their lowers are in.
    trees: Option<BTreeSet<PathBuf>>,
}

/// Checks each user-namespaced snapshot the clients recorded (taking it out of `listed`): it
/// is active on its parent, its lowers are idmapped (overlayfs) and its mounts show its
/// recorded tree. Then removes those of mapping `dropped` (alternating by round), so that the
/// Cleanup after must detach that mapping's tree and keep the other's.
async fn check_mapped(
    s: &mut Snap,
    shared: &Shared,
    listed: &mut BTreeMap<String, pb::Info>,
    mnt: &Path,
    kind: &str,
    dropped: u32,
    violations: &mut Vec<String>,
) -> MappingsInUse {
    let mapped = model(shared).mapped.clone();
    let mut in_use = MappingsInUse {
        bases: BTreeSet::new(),
        trees: (kind == "overlayfs").then(BTreeSet::new),
    };
    for (key, m) in &mapped {
        let Some(info) = listed.remove(key) else {
            violations.push(format!("{key} was acknowledged and is lost"));
            model(shared).mapped.remove(key);
            continue;
        };
        if info.kind != pb::Kind::Active as i32 || info.parent != m.parent {
            violations.push(format!("{key}: index has {info:?}, recorded {m:?}"));
        }
        let mounts = match s.mounts(key).await {
            Ok(mounts) => mounts,
            Err(e) => {
                violations.push(format!("{key}: Mounts: {e:?}"));
                continue;
            }
        };
        match (mapped_tree(&mounts, mnt, m.base).await, m.tree) {
            (Ok(tree), Some(recorded)) if tree == recorded => {}
            (Ok(tree), None) => {
                if let Some(m) = model(shared).mapped.get_mut(key) {
                    m.tree = Some(tree);
                }
            }
            (Ok(_), Some(_)) => {
                violations.push(format!("{key}: its mounts show another tree than recorded"))
            }
            (Err(e), _) => violations.push(format!("{key}: {e}")),
        }
        model(shared).counts.mapped_verified += 1;
        if m.base == dropped {
            s.remove(key).await.unwrap();
            model(shared).mapped.remove(key);
            continue;
        }
        in_use.bases.insert(m.base);
        let Some(trees) = in_use.trees.as_mut() else {
            continue;
        };
        let lowers: Vec<String> = mounts
            .iter()
            .map(|pm| strata::convert::mount_from_pb(pm.clone()))
            .flat_map(|m| {
                m.lowerdirs()
                    .into_iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        for lower in lowers {
            // `<root>/idmapped/<tree>/<id>/fs`
            match Path::new(&lower).ancestors().nth(2) {
                Some(tree) if tree.parent().is_some_and(|d| d.ends_with("idmapped")) => {
                    trees.insert(tree.to_path_buf());
                }
                _ => violations.push(format!("{key}: lower {lower} is not idmapped")),
            }
        }
    }
    in_use
}

/// How many layers an overlayfs view's mounts stack: its lowers, or one for a bind.
fn overlay_layers(mounts: &[Mount]) -> Option<usize> {
    let [m] = mounts else { return None };
    let m = strata::convert::mount_from_pb(m.clone());
    match m.fstype.as_str() {
        "overlay" => Some(m.lowerdirs().len()),
        "bind" => Some(1),
        _ => None,
    }
}
