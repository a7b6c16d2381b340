//! Pushing an image of the store to a registry, as containerd's transfer service pushes:
//! every blob the registry lacks (config and layers first), streamed from the store, then the
//! manifests by digest, then the image's target under the reference's tag; the registry's
//! credentials asked of the client only if it wants them.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use oci_client::errors::OciDistributionError;

use super::events::{Event, Progress};
use super::registry::{Registry, RegistryOptions};
use super::{Result, Transfer, TransferError};
use crate::oci::{self, Descriptor, Document};

/// Bytes of a blob read from the store per chunk pushed.
const CHUNK: usize = 1 << 20;

impl Transfer {
    /// Pushes image `name` to `reference` (the manifests of `platforms` of an index, all if
    /// none).
    pub async fn push(
        &self,
        name: &str,
        reference: &str,
        platforms: &[String],
        options: &RegistryOptions,
        progress: Progress,
    ) -> Result<()> {
        let registry = Registry::new(reference, options).await?;
        let target = self.image_target(name).await?;
        progress(Event::status(format!(
            "Pushing to OCI Registry ({reference})"
        )));
        progress(Event {
            desc: Some(target.clone()),
            ..Event::named("pushing content", name)
        });
        // Children before parents: what a manifest names is there when it is pushed.
        let mut order = Vec::new();
        self.push_order(&target, platforms, &mut order, &mut HashSet::new())
            .await?;
        let parent = name.to_string();
        for desc in &order {
            if desc.is_manifest() {
                let bytes = self.read_blob(&desc.digest).await?;
                let by_digest = registry.image().clone_with_digest(desc.digest.clone());
                let tagged = if desc.digest == target.digest {
                    registry.image().clone()
                } else {
                    by_digest
                };
                put_manifest(&registry, &tagged, desc, bytes).await?;
                progress(Event::blob("complete", desc, &parent, desc.size as u64));
                continue;
            }
            let exists = registry
                .call(&format!("check {}", desc.digest), |client, auth| {
                    let (image, digest) = (registry.image().clone(), desc.digest.clone());
                    async move {
                        client
                            .auth(&image, &auth, oci_client::RegistryOperation::Push)
                            .await?;
                        client.blob_exists(&image, &digest).await
                    }
                })
                .await?;
            if exists {
                progress(Event::blob(
                    "already exists",
                    desc,
                    &parent,
                    desc.size as u64,
                ));
                continue;
            }
            progress(Event::blob("uploading", desc, &parent, 0));
            self.push_blob(&registry, desc).await?;
            progress(Event::blob("complete", desc, &parent, desc.size as u64));
        }
        progress(Event {
            desc: Some(target.clone()),
            ..Event::named("pushed content", name)
        });
        progress(Event {
            desc: Some(target),
            ..Event::status(format!("Completed push to OCI Registry ({reference})"))
        });
        Ok(())
    }

    /// `desc` and what it references, children first (of an index, the manifests
    /// `platforms` match and the store has).
    async fn push_order(
        &self,
        desc: &Descriptor,
        platforms: &[String],
        order: &mut Vec<Descriptor>,
        seen: &mut HashSet<String>,
    ) -> Result<()> {
        if !seen.insert(desc.digest.clone()) {
            return Ok(());
        }
        if desc.is_manifest() {
            let document: Document = oci::parse(&self.read_blob(&desc.digest).await?, &desc.digest)
                .map_err(TransferError::Invalid)?;
            if desc.is_index() {
                for m in &document.manifests {
                    let wanted = platforms.is_empty()
                        || m.platform
                            .as_ref()
                            .is_none_or(|p| platforms.iter().any(|w| p.is(w)));
                    if wanted && self.has_blob(&m.digest).await? {
                        Box::pin(self.push_order(m, platforms, order, seen)).await?;
                    }
                }
            } else if let Some(manifest) = document.manifest() {
                for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    if seen.insert(d.digest.clone()) {
                        order.push(d.clone());
                    }
                }
            }
        }
        order.push(desc.clone());
        Ok(())
    }

    /// Streams blob `desc` from the store to the registry.
    async fn push_blob(&self, registry: &Registry, desc: &Descriptor) -> Result<()> {
        registry
            .call(&format!("push {}", desc.digest), |client, _| {
                let (store, ns) = (Arc::clone(&self.store), self.namespace.clone());
                let (image, digest) = (registry.image().clone(), desc.digest.clone());
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    let d = digest.clone();
                    let reading = tokio::task::spawn_blocking(move || {
                        let read = |e: std::io::Error| OciDistributionError::IoError(e);
                        let (mut file, _) = store
                            .content_open(&ns, &d)
                            .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
                        loop {
                            let mut buf = vec![0u8; CHUNK];
                            let n = file.read(&mut buf).map_err(read)?;
                            if n == 0 {
                                return Ok::<(), OciDistributionError>(());
                            }
                            buf.truncate(n);
                            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                                return Ok(());
                            }
                        }
                    });
                    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                    let pushed = client.push_blob_stream(&image, stream, &digest).await;
                    reading
                        .await
                        .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))??;
                    pushed.map(drop)
                }
            })
            .await
    }
}

/// Puts manifest `desc` (`bytes`) at `image` (by tag or digest).
async fn put_manifest(
    registry: &Registry,
    image: &oci_client::Reference,
    desc: &Descriptor,
    bytes: Vec<u8>,
) -> Result<()> {
    let content_type = http::HeaderValue::from_str(&desc.media_type)
        .map_err(|e| TransferError::Invalid(format!("media type {:?}: {e}", desc.media_type)))?;
    registry
        .call(&format!("push manifest {}", desc.digest), |client, auth| {
            let (image, bytes, content_type) = (image.clone(), bytes.clone(), content_type.clone());
            async move {
                client
                    .auth(&image, &auth, oci_client::RegistryOperation::Push)
                    .await?;
                client.push_manifest_raw(&image, bytes, content_type).await
            }
        })
        .await
        .map(drop)
}
