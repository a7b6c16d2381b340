//! `strata image pull`: an image from an OCI registry into the image store, then unpacked.
//!
//! The reference is resolved to its root (an index or a manifest); an index picks the
//! requested platform's manifest. Only the blobs the namespace lacks are downloaded, several
//! at a time, each streamed into the content store, which checks size and digest before
//! committing it; a failed download is retried. Blobs are labelled as containerd labels
//! them (gc references from index to manifests and from a manifest to its config and
//! layers, `containerd.io/distribution.source.<host>`), the image is recorded under the
//! reference, and unpacked: layers already committed are not applied again.
//!
//! Credentials: `--user`, else the docker config file's `auths` entry for the registry
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else anonymous; bearer tokens
//! are negotiated by the registry client. Plain HTTP for `--plain-http` and for loopback
//! registries.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{
    Arrivals, Client, JsonDescriptor, JsonManifest, Result, UnpackError, Unpacked, architecture,
};

/// Downloads in flight at once (containerd's default).
const DOWNLOADS: usize = 3;
/// Attempts per blob.
const ATTEMPTS: usize = 3;

const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Plain HTTP even for a registry that is not on loopback.
    pub plain_http: bool,
    /// `user` or `user:password`.
    pub user: Option<String>,
    /// `os/arch[/variant]`; this machine's if unset.
    pub platform: Option<String>,
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Root {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<JsonDescriptor>,
    #[serde(default)]
    config: Option<JsonDescriptor>,
    #[serde(default)]
    layers: Vec<JsonDescriptor>,
}

fn registry_error(
    what: String,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> UnpackError {
    move |e| UnpackError::Invalid(format!("{what}: {e}"))
}

/// Credentials for `registry`: `user` if given (asking nothing: `user:password`), else the
/// docker config file's, else anonymous.
fn credentials(registry: &str, user: Option<&str>) -> RegistryAuth {
    if let Some(user) = user {
        let (name, password) = user.split_once(':').unwrap_or((user, ""));
        return RegistryAuth::Basic(name.to_string(), password.to_string());
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    let Some(config) = dir.and_then(|d| std::fs::read(d.join("config.json")).ok()) else {
        return RegistryAuth::Anonymous;
    };
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: HashMap<String, DockerAuth>,
    }
    #[derive(Deserialize)]
    struct DockerAuth {
        #[serde(default)]
        auth: String,
    }
    let Ok(parsed) = serde_json::from_slice::<DockerConfig>(&config) else {
        return RegistryAuth::Anonymous;
    };
    let entry = parsed.auths.iter().find(|(k, _)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        host == registry
    });
    use base64::Engine as _;
    entry
        .and_then(|(_, a)| {
            base64::engine::general_purpose::STANDARD
                .decode(&a.auth)
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| RegistryAuth::Basic(u.to_string(), p.to_string()))
        })
        .unwrap_or(RegistryAuth::Anonymous)
}

/// The manifest part of a fetched document.
fn as_manifest(root: &Root, desc: &JsonDescriptor) -> Result<JsonManifest> {
    Ok(JsonManifest {
        config: root
            .config
            .clone()
            .ok_or_else(|| UnpackError::Invalid(format!("{} has no config", desc.digest)))?,
        layers: root.layers.clone(),
    })
}

/// Whether `registry` (`host[:port]`) is on this machine.
fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl Client {
    /// Pulls `reference` (see the module doc); `progress` hears of each blob's state as
    /// (digest, state, bytes done, bytes in all): resolving, exists, downloading (as bytes
    /// arrive), downloaded, unpacking, applied.
    pub async fn pull(
        &mut self,
        reference: &str,
        options: &PullOptions,
        progress: impl Fn(&str, &str, u64, u64) + Send + Sync + 'static,
    ) -> Result<Pulled> {
        let image = Reference::from_str(reference)
            .map_err(|e| UnpackError::Invalid(format!("reference {reference:?}: {e}")))?;
        let registry = image.resolve_registry().to_string();
        let protocol = if options.plain_http || loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let remote = Arc::new(oci_client::Client::new(ClientConfig {
            protocol,
            ..Default::default()
        }));
        let auth = credentials(&registry, options.user.as_deref());
        let progress = Arc::new(progress);
        let mut pulled = Pulled::default();
        let source_label = format!(
            "containerd.io/distribution.source.{}",
            registry
                .rsplit_once(':')
                .map_or(registry.as_str(), |(h, _)| h)
        );
        let source: HashMap<String, String> =
            [(source_label, image.repository().to_string())].into();

        self.take_lease().await?;
        progress(reference, "resolving", 0, 0);
        let (bytes, digest) = remote
            .pull_manifest_raw(&image, &auth, ACCEPTED)
            .await
            .map_err(registry_error(format!("resolve {reference}")))?;
        let root: Root = super::parse(&bytes, &digest)?;
        let root_desc = JsonDescriptor {
            media_type: if root.media_type.is_empty() {
                ACCEPTED[1].to_string()
            } else {
                root.media_type.clone()
            },
            digest: digest.clone(),
            size: bytes.len() as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        let (manifest, manifest_desc) = if root_desc.is_index() {
            let mut labels = HashMap::new();
            for (i, m) in root.manifests.iter().enumerate() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    m.digest.clone(),
                );
            }
            self.store_bytes(&root_desc, bytes.to_vec(), &mut pulled)
                .await?;
            labels.extend(source.clone());
            self.label_blob(&root_desc.digest, labels).await?;
            let wanted = options
                .platform
                .clone()
                .unwrap_or_else(|| format!("linux/{}", architecture()));
            let chosen = root
                .manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.is(&wanted)))
                .cloned()
                .ok_or_else(|| {
                    UnpackError::Invalid(format!("{reference} has no manifest for {wanted}"))
                })?;
            let by_digest = image.clone_with_digest(chosen.digest.clone());
            let (bytes, _) = remote
                .pull_manifest_raw(&by_digest, &auth, ACCEPTED)
                .await
                .map_err(registry_error(format!("fetch {}", chosen.digest)))?;
            self.store_bytes(&chosen, bytes.to_vec(), &mut pulled)
                .await?;
            (super::parse::<Root>(&bytes, &chosen.digest)?, chosen)
        } else {
            self.store_bytes(&root_desc, bytes.to_vec(), &mut pulled)
                .await?;
            (root, root_desc.clone())
        };
        let config = manifest.config.clone().ok_or_else(|| {
            UnpackError::Invalid(format!("{} has no config", manifest_desc.digest))
        })?;
        let mut labels: HashMap<String, String> = [(
            "containerd.io/gc.ref.content.config".to_string(),
            config.digest.clone(),
        )]
        .into();
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        labels.extend(source.clone());
        self.label_blob(&manifest_desc.digest, labels).await?;

        // Config and layers: the missing ones, several at a time; each layer is unpacked
        // as soon as it and the layers below it are in.
        let limit = Arc::new(Semaphore::new(DOWNLOADS));
        let mut arrivals = Arrivals::default();
        for desc in std::iter::once(config).chain(manifest.layers.iter().cloned()) {
            if self.has_blob(&desc.digest).await? {
                pulled.present += 1;
                progress(&desc.digest, "exists", desc.size as u64, desc.size as u64);
                continue;
            }
            let (opened, arrived) = arrivals.expect(&desc.digest);
            let (remote, image, limit, progress) = (
                Arc::clone(&remote),
                image.clone(),
                Arc::clone(&limit),
                Arc::clone(&progress),
            );
            let writer = self.clone();
            tokio::spawn(async move {
                let _slot = limit.acquire_owned().await.expect("semaphore open");
                let size = desc.size as u64;
                progress(&desc.digest, "downloading", 0, size);
                let mut last = None;
                let mut opened = Some(opened);
                for _ in 0..ATTEMPTS {
                    let stream = match remote.pull_blob_stream(&image, desc.digest.as_str()).await {
                        Ok(s) => s,
                        Err(e) => {
                            last =
                                Some(UnpackError::Invalid(format!("fetch {}: {e}", desc.digest)));
                            continue;
                        }
                    };
                    let mut done = 0u64;
                    let (counting, digest) = (Arc::clone(&progress), desc.digest.clone());
                    let counted = tokio_stream::StreamExt::map(stream.stream, move |chunk| {
                        if let Ok(bytes) = &chunk {
                            done += bytes.len() as u64;
                            counting(&digest, "downloading", done, size);
                        }
                        chunk
                    });
                    match writer
                        .write_blob_stream(&desc, opened.take(), Box::pin(counted))
                        .await
                    {
                        Ok(()) => {
                            progress(&desc.digest, "downloaded", size, size);
                            let _ = arrived.send(Ok(desc.size as u64));
                            return;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let _ = arrived.send(Err(last.expect("an attempt was made")));
            });
        }
        let progress_unpack = Arc::clone(&progress);
        let unpacked = self
            .unpack_manifest(
                &manifest_desc.digest,
                &as_manifest(&manifest, &manifest_desc)?,
                &mut arrivals,
                move |layer, state| progress_unpack(layer, state, 0, 0),
            )
            .await;
        // Whatever happened, no download is left running unwatched.
        let finished = arrivals.wait_all().await;
        pulled.unpacked = unpacked?;
        finished?;
        pulled.downloaded += arrivals.count;
        pulled.bytes += arrivals.bytes;
        for desc in manifest.config.iter().chain(&manifest.layers) {
            self.label_blob(&desc.digest, source.clone()).await?;
        }
        self.put_image(reference, &root_desc).await?;
        self.release_lease().await?;
        Ok(pulled)
    }

    /// Stores a small blob already in memory, counting it.
    async fn store_bytes(
        &self,
        desc: &JsonDescriptor,
        bytes: Vec<u8>,
        pulled: &mut Pulled,
    ) -> Result<()> {
        let size = bytes.len() as u64;
        if self.write_blob(desc, std::io::Cursor::new(bytes)).await? {
            pulled.downloaded += 1;
            pulled.bytes += size;
        } else {
            pulled.present += 1;
        }
        Ok(())
    }
}
