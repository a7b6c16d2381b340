//! Pulling an image from an OCI registry into the image store, then unpacking it, in the
//! daemon: blob bytes go from the registry straight into the content store, and a layer is
//! applied while it downloads.
//!
//! The reference is resolved to its root (an index or a manifest). Of an index, the
//! manifests of the platforms asked for are fetched (all when none is), with only their
//! configs for the others when every platform's metadata is wanted, as containerd's
//! `all_metadata`. Only the blobs the namespace lacks are downloaded, several at a time
//! (`download`). Blobs are labelled as containerd labels them (gc references from
//! index to manifests and from a manifest to its config and layers,
//! `containerd.io/distribution.source.<host>`), the image is recorded, and the manifest of
//! the platform to unpack is unpacked as its layers arrive: layers already committed are not
//! applied again. Progress is reported with containerd's events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::download::{Destination, Download, Fetched};
use super::events::{Event, Progress, ref_key};
use super::fleet::FleetBlob;
use super::naming::ImageDestination;
use super::registry::{Registry, RegistryOptions};
use super::source::Source;
use super::unpack::{Arrivals, Unpacked};
use super::{Pending, Result, Transfer, TransferError};
use crate::oci::{self, Descriptor, Document, Manifest};

/// Downloads in flight at once (containerd's default).
const DOWNLOADS: usize = 3;

/// What to pull, and how.
#[derive(Clone, Default)]
pub struct PullOptions {
    pub registry: RegistryOptions,
    /// The platforms (`os/arch[/variant]`) whose content is fetched; all when empty.
    pub platforms: Vec<String>,
    /// Also every other platform's manifest and config (not its layers).
    pub all_metadata: bool,
    /// The platform to unpack, if any.
    pub unpack: Option<String>,
    /// Where the image is recorded; under the reference if it names nothing.
    pub image: ImageDestination,
}

/// What a pull did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Blobs downloaded (manifests included) and their bytes.
    pub downloaded: usize,
    pub bytes: u64,
    /// Blobs the namespace had.
    pub present: usize,
    pub unpacked: Unpacked,
}

/// A manifest to fetch the content of: whether its layers too, and the name its progress
/// is shown under.
struct Wanted {
    desc: Descriptor,
    layers: bool,
    parent: String,
}

impl Transfer {
    /// Pulls `reference` (see the module doc); `progress` hears containerd's events.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: Progress,
    ) -> Result<Pulled> {
        let registry = Registry::new(reference, &options.registry).await?;
        let image = registry.image().clone();
        let host = registry.host().to_string();
        let source_label = format!(
            "{}{}",
            api::labels::DISTRIBUTION_SOURCE,
            host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h)
        );
        let source: HashMap<String, String> =
            [(source_label, image.repository().to_string())].into();
        let mut pulled = Pulled::default();

        progress(Event::status(format!(
            "Resolving from OCI Registry ({reference})"
        )));
        // A manifest named by its digest comes from a peer when the registry cannot be
        // reached (never one named by a tag: what a tag means is the registry's to say).
        let fetch = |image: oci_client::Reference, what: String| {
            let registry = &registry;
            let fleet = self.fleet.as_ref();
            async move {
                let fetched = registry
                    .call(&what, |client, auth| {
                        let image = image.clone();
                        async move {
                            client
                                .pull_manifest_raw(&image, &auth, api::media_types::MANIFESTS)
                                .await
                        }
                    })
                    .await;
                match (fetched, fleet, image.digest()) {
                    (Err(TransferError::Registry(why)), Some(fleet), Some(digest)) => fleet
                        .manifest(image.repository(), digest)
                        .await
                        .map(|bytes| (bytes::Bytes::from(bytes), digest.to_string()))
                        .ok_or(TransferError::Registry(why)),
                    (fetched, _, _) => fetched,
                }
            }
        };
        let (bytes, digest) = fetch(image.clone(), format!("resolve {reference}")).await?;
        let root: Document = oci::parse(&bytes, &digest).map_err(TransferError::Invalid)?;
        let root_desc = Descriptor {
            media_type: if root.media_type.is_empty() {
                api::media_types::OCI_MANIFEST.to_string()
            } else {
                root.media_type.clone()
            },
            digest: digest.clone(),
            size: bytes.len() as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        progress(Event::status(format!(
            "Pulling from OCI Registry ({reference})"
        )));
        progress(Event::named("fetching image content", reference));
        self.store_fetched(
            &root_desc,
            bytes.to_vec(),
            reference,
            &progress,
            &mut pulled,
        )
        .await?;

        let wanted = if root_desc.is_index() {
            let mut labels: HashMap<String, String> = root
                .manifests
                .iter()
                .enumerate()
                .map(|(i, m)| (api::labels::ref_manifest(i), m.digest.clone()))
                .collect();
            labels.extend(source.clone());
            self.label_blob(&root_desc.digest, labels).await?;
            let matches = |m: &Descriptor| {
                options.platforms.is_empty()
                    || m.platform
                        .as_ref()
                        .is_none_or(|p| options.platforms.iter().any(|w| p.is(w)))
            };
            let parent = ref_key(&root_desc);
            let wanted: Vec<Wanted> = root
                .manifests
                .iter()
                .filter(|m| m.is_manifest() && (options.all_metadata || matches(m)))
                .map(|m| Wanted {
                    desc: m.clone(),
                    layers: matches(m),
                    parent: parent.clone(),
                })
                .collect();
            if !wanted.iter().any(|w| w.layers) {
                return Err(TransferError::Invalid(format!(
                    "{reference} has no manifest for {}",
                    options.platforms.join(", ")
                )));
            }
            wanted
        } else {
            vec![Wanted {
                desc: root_desc.clone(),
                layers: true,
                parent: reference.to_string(),
            }]
        };

        // Each manifest fetched (the root is one already), labelled, its blobs listed.
        let mut manifests: Vec<(Descriptor, Manifest, bool)> = Vec::new();
        for w in &wanted {
            let document = if w.desc.digest == root_desc.digest {
                root.clone()
            } else {
                let by_digest = image.clone_with_digest(w.desc.digest.clone());
                let (bytes, _) = fetch(by_digest, format!("fetch {}", w.desc.digest)).await?;
                self.store_fetched(&w.desc, bytes.to_vec(), &w.parent, &progress, &mut pulled)
                    .await?;
                oci::parse::<Document>(&bytes, &w.desc.digest).map_err(TransferError::Invalid)?
            };
            let manifest = document.manifest().ok_or_else(|| {
                TransferError::Invalid(format!("{} has no config", w.desc.digest))
            })?;
            let mut labels: HashMap<String, String> =
                [(api::labels::ref_config(), manifest.config.digest.clone())].into();
            for (i, l) in manifest.layers.iter().enumerate() {
                labels.insert(api::labels::ref_layer(i), l.digest.clone());
            }
            labels.extend(source.clone());
            self.label_blob(&w.desc.digest, labels).await?;
            manifests.push((w.desc.clone(), manifest, w.layers));
        }

        // Configs and layers: the missing ones, several at a time.
        let (remote, _) = registry.client().await;
        let from_registry = Source::Registry {
            client: remote,
            image: image.clone(),
        };
        let destination = Destination {
            store: Arc::clone(&self.store),
            namespace: self.namespace.clone(),
            lease: self.lease.clone().unwrap_or_default(),
            busy: Arc::clone(&self.busy),
        };
        let limit = Arc::new(Semaphore::new(DOWNLOADS));
        let mut arrivals = Arrivals::default();
        // Dropped with the pull (a cancelled pull stops its downloads).
        let mut downloads = JoinSet::new();
        let mut seen = HashSet::new();
        let mut fetched = Vec::new();
        for (desc, manifest, layers) in &manifests {
            let parent = ref_key(desc);
            let blobs =
                std::iter::once(&manifest.config).chain(manifest.layers.iter().filter(|_| *layers));
            for blob in blobs {
                if !seen.insert(blob.digest.clone()) {
                    continue;
                }
                fetched.push(blob.clone());
                if self.has_blob(&blob.digest).await? {
                    pulled.present += 1;
                    progress(Event::blob(
                        "already exists",
                        blob,
                        &parent,
                        blob.size as u64,
                    ));
                    continue;
                }
                let (opened, arrived) = arrivals.expect(&blob.digest);
                progress(Event::blob("waiting", blob, &parent, 0));
                let (limit, to) = (Arc::clone(&limit), destination.clone());
                let fetch: Pending<Fetched> = match &self.fleet {
                    Some(fleet) => {
                        let wanted = FleetBlob {
                            desc: blob.clone(),
                            upstream: host.clone(),
                            repository: image.repository().to_string(),
                            plain_http: registry.plain_http(),
                            registry: from_registry.clone(),
                            ask_peers: true,
                            parent: parent.clone(),
                            progress: Arc::clone(&progress),
                        };
                        let fleet = Arc::clone(fleet);
                        Box::pin(async move { fleet.fetch(wanted, &to, opened).await })
                    }
                    None => {
                        let download = Download {
                            sources: vec![from_registry.clone()],
                            desc: blob.clone(),
                            parent: parent.clone(),
                            progress: Arc::clone(&progress),
                        };
                        Box::pin(download.run(to, opened))
                    }
                };
                downloads.spawn(async move {
                    let _slot = limit.acquire_owned().await.expect("semaphore open");
                    let _ = arrived.send(fetch.await);
                });
            }
        }
        // The platform to unpack: its layers are applied as soon as they (and the ones
        // below) are in.
        let unpacking = options.unpack.as_ref().and_then(|platform| {
            manifests.iter().find(|(d, _, layers)| {
                *layers && d.platform.as_ref().is_none_or(|p| p.is(platform))
            })
        });
        let unpacked = match unpacking {
            Some((desc, manifest, _)) => {
                let layer = |digest: &str, state: &str| progress(Event::layer(state, digest));
                self.unpack_manifest(&desc.digest, manifest, &mut arrivals, layer)
                    .await
            }
            None => Ok(Unpacked::default()),
        };
        // Whatever happened, no download is left running unwatched; a download's failure
        // is the cause of an unpack's that read it, and is the one reported.
        arrivals.wait_all().await?;
        pulled.unpacked = unpacked?;
        pulled.downloaded += arrivals.count;
        pulled.bytes += arrivals.bytes;
        for blob in &fetched {
            self.label_blob(&blob.digest, source.clone()).await?;
        }
        let mut destination = options.image.clone();
        if destination.name.is_empty() && destination.references.is_empty() {
            destination.name = reference.to_string();
        }
        for name in self.store_image(&root_desc, &destination).await? {
            progress(Event::named("saved", &name));
        }
        progress(Event::status(format!(
            "Completed pull from OCI Registry ({reference})"
        )));
        Ok(pulled)
    }

    /// Stores a manifest or index already fetched (`bytes`), showing it under `parent`, and
    /// counts it.
    async fn store_fetched(
        &self,
        desc: &Descriptor,
        bytes: Vec<u8>,
        parent: &str,
        progress: &Progress,
        pulled: &mut Pulled,
    ) -> Result<()> {
        let size = bytes.len() as u64;
        if self.write_blob(desc, std::io::Cursor::new(bytes)).await? {
            pulled.downloaded += 1;
            pulled.bytes += size;
            progress(Event::blob("complete", desc, parent, size));
        } else {
            pulled.present += 1;
            progress(Event::blob("already exists", desc, parent, size));
        }
        Ok(())
    }
}
