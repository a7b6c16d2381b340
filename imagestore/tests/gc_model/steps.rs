//! The operations of a sequence: one random client action (blobs, images, containers,
//! leases flat or expired and their resources, writes, snapshots, label edits, deletions,
//! collections) applied to both the model and the real store.

use std::collections::BTreeSet;

use api::services::containers::v1::{Container, container::Runtime};
use api::services::images::v1::Image;
use api::services::leases::v1::Resource;
use api::types::Descriptor;
use imagestore::{Caller, StoreError};

use crate::model::{Model, ModelSnapshot};
use crate::real::{Real, hash, labels_of};
use crate::{BLOBS, FUTURE, Labels, NAMES, NAMESPACES, PAST, Rng, SNAPSHOTS, blob_data, digest_of};

/// One step of a sequence, applied to both; a description for the failure message.
pub(crate) fn step(
    rng: &mut Rng,
    model: &mut Model,
    real: &Real,
    digests: &[String],
    counter: &mut u64,
) -> String {
    let name = rng.pick(&NAMESPACES).to_string();
    *counter += 1;
    let n = *counter;
    // A label that references something, or marks a root, or nothing.
    let reference = |rng: &mut Rng| -> Vec<(String, String)> {
        match rng.below(9) {
            0 => vec![(
                format!("containerd.io/gc.ref.content.x{}", rng.below(2)),
                rng.pick(digests).clone(),
            )],
            1 => vec![(
                "containerd.io/gc.ref.content".into(),
                rng.pick(digests).clone(),
            )],
            2 => vec![(
                format!(
                    "containerd.io/gc.ref.snapshot.{}",
                    rng.pick(&["strata", "overlayfs"])
                ),
                format!("s{}", rng.below(SNAPSHOTS)),
            )],
            3 => vec![(
                "containerd.io/gc.ref.image".into(),
                format!("img{}", rng.below(NAMES)),
            )],
            4 => vec![("containerd.io/gc.root".into(), "yes".into())],
            5 => vec![(
                "containerd.io/gc.bref.content.x".into(),
                rng.pick(digests).clone(),
            )],
            6 => vec![(
                "containerd.io/gc.bref.image".into(),
                format!("img{}", rng.below(NAMES)),
            )],
            7 => vec![(
                "containerd.io/gc.ref.contentbad".into(),
                rng.pick(digests).clone(),
            )],
            _ => vec![],
        }
    };
    let leases: Vec<String> = model.ns(&name).leases.keys().cloned().collect();
    match rng.below(16) {
        0 | 1 => {
            let i = rng.below(BLOBS);
            let data = blob_data(i);
            let lease = if rng.chance(50) && !leases.is_empty() {
                Some(rng.pick(&leases).clone())
            } else {
                None
            };
            let labels = labels_of(&reference(rng));
            let reference_name = format!("w{n}");
            let result =
                real.store
                    .content_writer(&name, &reference_name, 0, None, lease.as_deref());
            let mut w = result.unwrap();
            w.write_at(0, &data).unwrap();
            let committed = real
                .store
                .content_commit(w, &reference_name, 0, None, hash(&labels));
            let digest = digest_of(&data);
            let m = model.ns(&name);
            match committed {
                Ok(_) => {
                    m.content.insert(digest.clone(), labels.clone());
                }
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => panic!("commit: {e}"),
            }
            if let Some(l) = &lease {
                m.leases
                    .get_mut(l)
                    .expect("lease")
                    .1
                    .insert(("content".into(), digest.clone()));
            }
            format!("put blob {i} in {name} lease {lease:?} labels {labels:?}")
        }
        2 => {
            let have: Vec<String> = model.ns(&name).content.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let d = rng.pick(&have).clone();
            real.store.content_delete(&name, &d).unwrap();
            model.ns(&name).content.remove(&d);
            format!("delete blob {d} in {name}")
        }
        3 => {
            let image = format!("img{}", rng.below(NAMES));
            let target = rng.pick(digests).clone();
            let mut labels = labels_of(&reference(rng));
            match rng.below(4) {
                0 => {
                    labels.insert("containerd.io/gc.expire".into(), PAST.into());
                }
                1 => {
                    labels.insert("containerd.io/gc.expire".into(), FUTURE.into());
                }
                _ => {}
            }
            let _ = real.store.image_delete(&name, &image, None, None);
            real.store
                .image_create(
                    &name,
                    Image {
                        name: image.clone(),
                        target: Some(Descriptor {
                            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                            digest: target.clone(),
                            size: 1,
                            ..Default::default()
                        }),
                        labels: hash(&labels),
                        ..Default::default()
                    },
                    None,
                )
                .unwrap();
            model
                .ns(&name)
                .images
                .insert(image.clone(), (target.clone(), labels.clone()));
            format!("image {image} in {name} → {target} labels {labels:?}")
        }
        4 => {
            let have: Vec<String> = model.ns(&name).images.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let i = rng.pick(&have).clone();
            real.store.image_delete(&name, &i, None, None).unwrap();
            model.ns(&name).images.remove(&i);
            format!("delete image {i} in {name}")
        }
        5 => {
            let id = format!("c{}", rng.below(NAMES));
            let snapshotter = rng.pick(&["strata", "overlayfs", ""]).to_string();
            let key = if snapshotter.is_empty() {
                String::new()
            } else {
                format!("s{}", rng.below(SNAPSHOTS))
            };
            let labels = labels_of(&reference(rng));
            let _ = real.store.container_delete(&name, &id);
            real.store
                .container_create(
                    &name,
                    Container {
                        id: id.clone(),
                        snapshotter: snapshotter.clone(),
                        snapshot_key: key.clone(),
                        labels: hash(&labels),
                        runtime: Some(Runtime {
                            name: "io.containerd.runc.v2".into(),
                            options: None,
                        }),
                        spec: Some(prost_types::Any::default()),
                        ..Default::default()
                    },
                )
                .unwrap();
            model.ns(&name).containers.insert(
                id.clone(),
                (snapshotter.clone(), key.clone(), labels.clone()),
            );
            format!("container {id} in {name} on {snapshotter}/{key} labels {labels:?}")
        }
        6 => {
            let have: Vec<String> = model.ns(&name).containers.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let c = rng.pick(&have).clone();
            real.store.container_delete(&name, &c).unwrap();
            model.ns(&name).containers.remove(&c);
            format!("delete container {c} in {name}")
        }
        7 => {
            let id = format!("l{n}");
            let mut labels = Labels::new();
            if rng.chance(30) {
                labels.insert("containerd.io/gc.flat".into(), "true".into());
            }
            if rng.chance(20) {
                labels.insert("containerd.io/gc.expire".into(), PAST.into());
            }
            real.store.lease_create(&name, &id, hash(&labels)).unwrap();
            model
                .ns(&name)
                .leases
                .insert(id.clone(), (labels.clone(), BTreeSet::new()));
            format!("lease {id} in {name} labels {labels:?}")
        }
        8 => {
            if leases.is_empty() {
                return "nothing".into();
            }
            let l = rng.pick(&leases).clone();
            real.store.lease_delete(&name, &l).unwrap();
            model.ns(&name).leases.remove(&l);
            format!("delete lease {l} in {name}")
        }
        9 | 10 => {
            if leases.is_empty() {
                return "nothing".into();
            }
            let l = rng.pick(&leases).clone();
            let (kind, id) = match rng.below(4) {
                0 => ("content".to_string(), rng.pick(digests).clone()),
                1 => ("images".to_string(), format!("img{}", rng.below(NAMES))),
                2 => (
                    format!("snapshots/{}", rng.pick(&["strata", "overlayfs"])),
                    format!("s{}", rng.below(SNAPSHOTS)),
                ),
                _ => ("ingests".to_string(), format!("i{}", rng.below(NAMES))),
            };
            real.store
                .lease_add_resource(
                    &name,
                    &l,
                    &Resource {
                        id: id.clone(),
                        r#type: kind.clone(),
                    },
                )
                .unwrap();
            model
                .ns(&name)
                .leases
                .get_mut(&l)
                .expect("lease")
                .1
                .insert((kind.clone(), id.clone()));
            format!("lease {l} in {name} holds {kind} {id}")
        }
        11 | 12 => {
            // A snapshot made through the store under a lease, on a committed parent.
            let key = format!("s{}", rng.below(SNAPSHOTS));
            if model.snapshots.contains_key(&key) || leases.is_empty() {
                return "nothing".into();
            }
            let lease = rng.pick(&leases).clone();
            let parents: Vec<String> = model.snapshots.keys().cloned().collect();
            let parent = if rng.chance(60) && !parents.is_empty() {
                rng.pick(&parents).clone()
            } else {
                String::new()
            };
            let labels = labels_of(&reference(rng));
            let caller = Caller {
                namespace: Some(name.clone()),
                lease: Some(lease.clone()),
            };
            let snapshotter = rng.pick(&["strata", "overlayfs"]).to_string();
            let active = format!("active-{n}");
            real.snapshots
                .prepare(&caller, &snapshotter, &active, &parent, Default::default())
                .unwrap();
            real.snapshots
                .commit(
                    &caller,
                    &snapshotter,
                    &key,
                    &active,
                    hash(&labels).into_iter().collect(),
                    "",
                )
                .unwrap();
            let m = model.ns(&name);
            let held = &mut m.leases.get_mut(&lease).expect("lease").1;
            held.insert(("snapshots/strata".into(), key.clone()));
            model.snapshots.insert(
                key.clone(),
                ModelSnapshot {
                    parent: parent.clone(),
                    labels: labels.clone(),
                    namespace: name.clone(),
                },
            );
            format!("snapshot {key} on {parent:?} in {name} lease {lease} labels {labels:?}")
        }
        13 => {
            let have: Vec<String> = model.snapshots.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let k = rng.pick(&have).clone();
            let has_child = model.snapshots.values().any(|s| s.parent == k);
            let removed = real.snapshots.remove("strata", &k);
            assert_eq!(removed.is_ok(), !has_child, "remove {k}: {removed:?}");
            if !has_child {
                model.snapshots.remove(&k);
            }
            format!("remove snapshot {k}")
        }
        14 => {
            // A write left open: expected or not, under a lease or not.
            let reference_name = format!("i{}", rng.below(NAMES));
            if model.ns(&name).ingests.contains_key(&reference_name) {
                return "nothing".into();
            }
            let expected = if rng.chance(50) {
                Some(rng.pick(digests).clone())
            } else {
                None
            };
            let lease = if rng.chance(50) && !leases.is_empty() {
                Some(rng.pick(&leases).clone())
            } else {
                None
            };
            let opened = real.store.content_writer(
                &name,
                &reference_name,
                0,
                expected.as_deref(),
                lease.as_deref(),
            );
            let m = model.ns(&name);
            match opened {
                Ok(mut w) => {
                    w.write_at(0, b"partial").unwrap();
                    m.ingests
                        .insert(reference_name.clone(), (expected.clone(), lease.is_some()));
                    if let Some(l) = &lease {
                        m.leases
                            .get_mut(l)
                            .expect("lease")
                            .1
                            .insert(("ingests".into(), reference_name.clone()));
                    }
                }
                Err(StoreError::AlreadyExists(_)) => {
                    let d = expected.clone().expect("exists only when expected");
                    if let Some(l) = &lease {
                        m.leases
                            .get_mut(l)
                            .expect("lease")
                            .1
                            .insert(("content".into(), d));
                    }
                }
                Err(e) => panic!("open write: {e}"),
            }
            format!("write {reference_name} in {name} expecting {expected:?} lease {lease:?}")
        }
        _ => {
            let have: Vec<String> = model.ns(&name).content.keys().cloned().collect();
            if have.is_empty() {
                return "nothing".into();
            }
            let d = rng.pick(&have).clone();
            let labels = labels_of(&reference(rng));
            let mut info = real.store.content_info(&name, &d).unwrap();
            info.labels = hash(&labels);
            real.store
                .content_update(&name, info, &["labels".to_string()])
                .unwrap();
            model.ns(&name).content.insert(d.clone(), labels.clone());
            format!("relabel {d} in {name} as {labels:?}")
        }
    }
}
