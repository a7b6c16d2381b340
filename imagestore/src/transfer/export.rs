//! Exporting images as an OCI layout tar, as containerd's `archive.Export` writes it: each
//! image's blobs (of an index, the manifests of the platforms asked for, with their configs
//! and layers), `oci-layout`, an `index.json` naming each image (`io.containerd.image.name`
//! and the OCI ref name), and Docker's `manifest.json` for the images that are one manifest
//! for the platform, so that `docker load` takes the archive too. The tar streams out; a
//! blob is read from the store as it is written.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;

use super::events::{Event, Progress};
use super::{Result, Transfer, TransferError};
use crate::oci::{self, Descriptor, Document};
use crate::{ImageStore, StoreError};

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The platforms whose manifests go in; this machine's if empty (and not all).
    pub platforms: Vec<String>,
    /// Every platform's manifests.
    pub all_platforms: bool,
    /// Leave out Docker's `manifest.json`.
    pub skip_manifest_json: bool,
}

/// One image of the archive: its name, target and, if it is one manifest for the
/// platform, that manifest's config and layers (for `manifest.json`).
struct Entry {
    name: String,
    target: Descriptor,
    docker: Option<(String, Vec<String>)>,
}

impl Transfer {
    /// Writes images `names` (see the module doc) to `out`.
    pub async fn export(
        &self,
        names: &[String],
        options: &ExportOptions,
        out: impl Write + Send + 'static,
        progress: Progress,
    ) -> Result<()> {
        progress(Event::status("Exporting"));
        let platforms = if options.all_platforms {
            Vec::new()
        } else if options.platforms.is_empty() {
            vec![oci::this_platform()]
        } else {
            options.platforms.clone()
        };
        let mut entries = Vec::new();
        let mut blobs: Vec<Descriptor> = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let target = self.image_target(name).await?;
            let docker = self
                .collect_blobs(&target, &platforms, &mut blobs, &mut seen)
                .await?;
            entries.push(Entry {
                name: name.clone(),
                target,
                docker,
            });
        }
        let (store, ns) = (Arc::clone(&self.store), self.namespace.clone());
        let skip = options.skip_manifest_json;
        tokio::task::spawn_blocking(move || {
            write_archive(&store, &ns, &blobs, &entries, skip, out)
        })
        .await
        .map_err(|e| TransferError::Invalid(format!("export task: {e}")))??;
        progress(Event::status("Completed export"));
        Ok(())
    }

    /// Adds `desc` and what it references (of an index, the manifests `platforms` match, all
    /// if none) to `blobs`, children after their parents; for a single manifest, its config
    /// and layers as `manifest.json` names them.
    async fn collect_blobs(
        &self,
        desc: &Descriptor,
        platforms: &[String],
        blobs: &mut Vec<Descriptor>,
        seen: &mut HashSet<String>,
    ) -> Result<Option<(String, Vec<String>)>> {
        if seen.insert(desc.digest.clone()) {
            blobs.push(desc.clone());
        }
        if !desc.is_manifest() {
            return Ok(None);
        }
        let document: Document = oci::parse(&self.read_blob(&desc.digest).await?, &desc.digest)
            .map_err(TransferError::Invalid)?;
        if desc.is_index() {
            let mut single = None;
            let mut matched = 0;
            for m in &document.manifests {
                let wanted = platforms.is_empty()
                    || m.platform
                        .as_ref()
                        .is_none_or(|p| platforms.iter().any(|w| p.is(w)));
                if wanted {
                    matched += 1;
                    single = Box::pin(self.collect_blobs(m, platforms, blobs, seen)).await?;
                }
            }
            return Ok(single.filter(|_| matched == 1));
        }
        let Some(manifest) = document.manifest() else {
            return Ok(None);
        };
        let path =
            |d: &Descriptor| format!("blobs/sha256/{}", d.digest.trim_start_matches("sha256:"));
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if seen.insert(d.digest.clone()) {
                blobs.push(d.clone());
            }
        }
        Ok(Some((
            path(&manifest.config),
            manifest.layers.iter().map(path).collect(),
        )))
    }
}

/// A tar header for a regular file of `size` bytes, read-only as containerd writes blobs.
fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o444);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h
}

/// Writes the archive: the blobs, `oci-layout`, `index.json`, `manifest.json`.
fn write_archive(
    store: &ImageStore,
    ns: &str,
    blobs: &[Descriptor],
    entries: &[Entry],
    skip_manifest_json: bool,
    out: impl Write,
) -> Result<()> {
    let io = |e: std::io::Error| TransferError::Io {
        path: "export archive".into(),
        source: e,
    };
    let mut tar = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, dir, std::io::empty()).map_err(io)?;
    }
    for desc in blobs {
        let (file, size) = store.content_open(ns, &desc.digest)?;
        if size as i64 != desc.size {
            return Err(TransferError::Store(StoreError::FailedPrecondition(
                format!(
                    "blob {} is {size} bytes, its descriptor says {}",
                    desc.digest, desc.size
                ),
            )));
        }
        let path = format!("blobs/sha256/{}", desc.digest.trim_start_matches("sha256:"));
        tar.append_data(&mut header(size), path, file.take(size))
            .map_err(io)?;
    }
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    tar.append_data(&mut header(layout.len() as u64), "oci-layout", &layout[..])
        .map_err(io)?;
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let mut target = e.target.clone();
            target
                .annotations
                .insert(api::labels::CONTAINERD_IMAGE_NAME.into(), e.name.clone());
            let object = e
                .name
                .rsplit_once(':')
                .filter(|(r, _)| !r.contains('@') && !r.ends_with('/'));
            if let Some((_, tag)) = object.filter(|(_, t)| !t.contains('/')) {
                target
                    .annotations
                    .insert(api::labels::OCI_REF_NAME.into(), tag.to_string());
            }
            serde_json::to_value(target).expect("a descriptor serializes")
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": api::media_types::OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("JSON");
    tar.append_data(&mut header(index.len() as u64), "index.json", &index[..])
        .map_err(io)?;
    if !skip_manifest_json {
        let docker: Vec<serde_json::Value> = entries
            .iter()
            .filter_map(|e| {
                let (config, layers) = e.docker.as_ref()?;
                Some(serde_json::json!({
                    "Config": config,
                    "RepoTags": [oci::familiar_name(&e.name)],
                    "Layers": layers,
                }))
            })
            .collect();
        if !docker.is_empty() {
            let json = serde_json::to_vec(&docker).expect("JSON");
            tar.append_data(&mut header(json.len() as u64), "manifest.json", &json[..])
                .map_err(io)?;
        }
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)?;
    Ok(())
}
