//! Importing an image archive streamed in: a tar (gzip- or zstd-compressed, or plain) of an
//! OCI layout or a docker archive (`docker save`), read once from start to end as
//! containerd's `archive.ImportIndex` reads it. Every regular file becomes a blob (a file
//! named `blobs/sha256/<hex>` is checked against that digest as it is written); then the
//! archive's index is taken (an OCI layout's `index.json`), or made (for a docker archive:
//! a Docker schema 2 manifest per image, serialized byte for byte as containerd's, so the
//! digests are the same, and an index naming each tag). The index's children are labelled
//! with containerd's gc references, the platform asked for is unpacked, and the images are
//! named by containerd's rules for `ImageStore.extra_references` ([`super::naming`]).

mod archive;

use std::collections::HashMap;
use std::io::Read;

use super::events::{Event, Progress};
use super::naming::{ImageDestination, REF_SOURCE};
use super::unpack::Unpacked;
use super::{Result, Transfer, TransferError};
use crate::StoreError;
use crate::oci::{self, Descriptor, Document};

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Where the images are recorded: the archive's index under the destination's name
    /// (none if empty), its manifests under the names the prefix references give them.
    pub image: ImageDestination,
    /// The platforms whose manifests are labelled (their content kept); all if empty.
    pub platforms: Vec<String>,
    /// The platform to unpack, if any.
    pub unpack: Option<String>,
}

/// What an import did: each image recorded (name, target), and what unpacking did.
#[derive(Debug, Default)]
pub struct Imported {
    pub images: Vec<(String, Descriptor)>,
    pub unpacked: Vec<(String, Unpacked)>,
}

impl Transfer {
    /// Imports the archive `reader` streams (see the module doc); `progress` hears
    /// containerd's events.
    pub async fn import(
        &self,
        reader: impl Read + Send + 'static,
        options: &ImportOptions,
        progress: Progress,
    ) -> Result<Imported> {
        progress(Event::status("Importing"));
        let (store, ns, lease, busy) = (
            std::sync::Arc::clone(&self.store),
            self.namespace.clone(),
            self.lease.clone(),
            std::sync::Arc::clone(&self.busy),
        );
        let index = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            archive::read(&store, &ns, lease.as_deref(), reader)
        })
        .await
        .map_err(|e| TransferError::Invalid(format!("import task: {e}")))??;

        // The index's children, named from their annotations, and what they reference.
        let document: Document = parse(&self.read_blob(&index.digest).await?, &index.digest)?;
        self.label_children(&index, &document).await?;
        let matches = |d: &Descriptor| {
            options.platforms.is_empty()
                || d.platform
                    .as_ref()
                    .is_none_or(|p| options.platforms.iter().any(|w| p.is(w)))
        };
        let mut unpacked = Vec::new();
        let mut targets: Vec<Descriptor> = Vec::new();
        for child in &document.manifests {
            let mut target = child.clone();
            target
                .annotations
                .insert(REF_SOURCE.into(), "annotation".into());
            targets.push(target);
            if !matches(child) {
                continue;
            }
            for (manifest, platform) in self.manifests_under(child, &matches).await? {
                let wanted = options
                    .unpack
                    .as_ref()
                    .is_some_and(|u| platform.as_ref().is_none_or(|p: &oci::Platform| p.is(u)));
                if wanted {
                    let done = self.unpack_target(&manifest, &progress).await?;
                    unpacked.push((manifest.digest.clone(), done));
                }
            }
        }

        let mut imported = Imported {
            unpacked,
            ..Default::default()
        };
        for target in std::iter::once(&index).chain(&targets) {
            let names = match self.store_image(target, &options.image).await {
                Err(TransferError::Store(StoreError::NotFound(_))) => continue,
                other => other?,
            };
            let mut target = target.clone();
            target.annotations.remove(REF_SOURCE);
            for name in names {
                progress(Event {
                    desc: Some(target.clone()),
                    ..Event::named("saved", &name)
                });
                imported.images.push((name, target.clone()));
            }
        }
        progress(Event::status("Completed import"));
        Ok(imported)
    }

    /// Labels `index`'s children with containerd's gc references, and each manifest's
    /// config and layers (all of them, as containerd labels before filtering).
    async fn label_children(&self, index: &Descriptor, document: &Document) -> Result<()> {
        let labels: HashMap<String, String> = document
            .manifests
            .iter()
            .enumerate()
            .map(|(i, m)| (api::labels::ref_manifest(i), m.digest.clone()))
            .collect();
        if !labels.is_empty() {
            self.label_blob(&index.digest, labels).await?;
        }
        for child in &document.manifests {
            let doc: Document = parse(&self.read_blob(&child.digest).await?, &child.digest)?;
            if child.is_index() {
                Box::pin(self.label_children(child, &doc)).await?;
            } else if let Some(manifest) = doc.manifest() {
                let mut labels: HashMap<String, String> =
                    [(api::labels::ref_config(), manifest.config.digest.clone())].into();
                for (i, l) in manifest.layers.iter().enumerate() {
                    labels.insert(api::labels::ref_layer(i), l.digest.clone());
                }
                self.label_blob(&child.digest, labels).await?;
            }
        }
        Ok(())
    }

    /// The manifests `desc` is or holds (an index's, of the platforms `matches` takes),
    /// each with its platform.
    async fn manifests_under(
        &self,
        desc: &Descriptor,
        matches: &impl Fn(&Descriptor) -> bool,
    ) -> Result<Vec<(Descriptor, Option<oci::Platform>)>> {
        if !desc.is_index() {
            return Ok(vec![(desc.clone(), desc.platform.clone())]);
        }
        let index: Document = parse(&self.read_blob(&desc.digest).await?, &desc.digest)?;
        Ok(index
            .manifests
            .into_iter()
            .filter(|m| !m.is_index() && matches(m))
            .map(|m| {
                let platform = m.platform.clone();
                (m, platform)
            })
            .collect())
    }

    /// Unpacks manifest `desc` (already in the store), telling `progress` each layer's
    /// state.
    async fn unpack_target(&self, desc: &Descriptor, progress: &Progress) -> Result<Unpacked> {
        let document: Document = parse(&self.read_blob(&desc.digest).await?, &desc.digest)?;
        let manifest = document
            .manifest()
            .ok_or_else(|| TransferError::Invalid(format!("{} has no config", desc.digest)))?;
        let layer = |digest: &str, state: &str| progress(Event::layer(state, digest));
        self.unpack_manifest(&desc.digest, &manifest, &mut Default::default(), layer)
            .await
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    oci::parse(bytes, what).map_err(TransferError::Invalid)
}
