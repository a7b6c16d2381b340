//! Importing an image archive into the store: an OCI layout (directory, or a tar archive of
//! one) or a docker archive (`docker save`). Every blob the namespace lacks is written
//! (checked against its digest), with containerd's `gc.ref` labels from index to manifests
//! and from manifests to config and layers; an image is recorded per named manifest.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::layout::Layout;
use super::{Result, Transfer, TransferError};
use crate::oci::{self, Descriptor, Document};
use api::media_types;

impl Transfer {
    /// Imports the layout or archive at `path`: each manifest of an OCI layout's index
    /// named by its `org.opencontainers.image.ref.name` annotation, each tag of a docker
    /// archive. The images' names.
    pub async fn import(&self, path: &Path) -> Result<Vec<String>> {
        let layout = Layout::open(path)?;
        if !layout.has("index.json") && layout.has("manifest.json") {
            return self.import_docker(&layout).await;
        }
        let index: Document = parse(&layout.read("index.json")?, "index.json")?;
        let mut names = Vec::new();
        for desc in &index.manifests {
            self.import_tree(&layout, desc).await?;
            if let Some(name) = desc.annotations.get(api::labels::OCI_REF_NAME) {
                self.put_image(name, desc).await?;
                names.push(name.clone());
            }
        }
        Ok(names)
    }

    /// Imports a docker archive: for each image of its `manifest.json`, the config and
    /// layers as they are, and a Docker schema 2 manifest made for them, named by each of its
    /// tags as containerd names them (`docker.io/library/busybox:1`).
    async fn import_docker(&self, layout: &Layout) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = parse(&layout.read("manifest.json")?, "manifest.json")?;
        let mut names = Vec::new();
        for entry in entries {
            let config = self
                .import_file(layout, &entry.config, media_types::DOCKER_CONFIG)
                .await?;
            let mut layers = Vec::new();
            for file in &entry.layers {
                let mut magic = [0u8; 2];
                let gzip =
                    layout.file(file)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
                let media_type = if gzip {
                    media_types::DOCKER_LAYER_TAR_GZIP
                } else {
                    media_types::DOCKER_LAYER_TAR
                };
                layers.push(self.import_file(layout, file, media_type).await?);
            }
            let json = |d: &Descriptor| serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media_types::DOCKER_MANIFEST,
                "config": json(&config),
                "layers": layers.iter().map(json).collect::<Vec<_>>(),
            }))
            .expect("JSON");
            let desc = Descriptor {
                media_type: media_types::DOCKER_MANIFEST.into(),
                digest: oci::digest_of(&manifest),
                size: manifest.len() as i64,
                platform: None,
                annotations: HashMap::new(),
            };
            self.write_blob(&desc, std::io::Cursor::new(manifest))
                .await?;
            let mut labels: HashMap<String, String> =
                [(api::labels::ref_config(), config.digest.clone())].into();
            for (i, l) in layers.iter().enumerate() {
                labels.insert(api::labels::ref_layer(i), l.digest.clone());
            }
            self.label_blob(&desc.digest, labels).await?;
            for tag in &entry.repo_tags {
                let name = oci::docker_name(tag);
                self.put_image(&name, &desc).await?;
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Stores file `name` of `layout` as a blob of `media_type` (hashed first, then written
    /// and checked against that digest); its descriptor.
    async fn import_file(
        &self,
        layout: &Layout,
        name: &str,
        media_type: &str,
    ) -> Result<Descriptor> {
        let mut hasher = differ::digest::Hasher::default();
        let mut file = layout.file(name)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|source| TransferError::Io {
                path: name.to_string(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let (digest, size) = hasher.finish();
        let desc = Descriptor {
            media_type: media_type.into(),
            digest: digest.to_string(),
            size: size as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        self.write_blob(&desc, layout.file(name)?).await?;
        Ok(desc)
    }

    /// Writes `desc` and what it references, children first, labelling parents.
    async fn import_tree(&self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        let mut todo = vec![desc.clone()];
        let mut order = Vec::new();
        while let Some(d) = todo.pop() {
            let mut labels = HashMap::new();
            if d.is_index() {
                let index: Document = parse(&layout.blob(&d.digest)?, &d.digest)?;
                for (i, m) in index.manifests.iter().enumerate() {
                    labels.insert(api::labels::ref_manifest(i), m.digest.clone());
                    todo.push(m.clone());
                }
            } else if d.is_manifest() {
                let doc: Document = parse(&layout.blob(&d.digest)?, &d.digest)?;
                let manifest = doc
                    .manifest()
                    .ok_or_else(|| TransferError::Invalid(format!("{} has no config", d.digest)))?;
                labels.insert(api::labels::ref_config(), manifest.config.digest.clone());
                order.push((manifest.config.clone(), HashMap::new()));
                for (i, l) in manifest.layers.iter().enumerate() {
                    labels.insert(api::labels::ref_layer(i), l.digest.clone());
                    order.push((l.clone(), HashMap::new()));
                }
            }
            order.push((d, labels));
        }
        for (d, labels) in order {
            let file = layout.open_blob(&d.digest)?;
            self.write_blob(&d, file).await?;
            if !labels.is_empty() {
                self.label_blob(&d.digest, labels).await?;
            }
        }
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    oci::parse(bytes, what).map_err(TransferError::Invalid)
}
