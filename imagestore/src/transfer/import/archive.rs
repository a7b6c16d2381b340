//! An archive's bytes into the store, once through: each regular file a blob, then the
//! archive's index, taken from an OCI layout or made for a docker archive as containerd's
//! `archive.ImportIndex` makes it (its JSON byte for byte: Go's field order, no spaces), so
//! that the manifests and their digests are containerd's.

use std::collections::HashMap;
use std::io::{BufReader, Read};

use differ::Compression;
use differ::digest::Hasher;
use serde::Deserialize;

use super::super::{Result, TransferError};
use crate::oci::{self, Descriptor};
use crate::{ImageStore, StoreError};

/// The OCI layout version the archive must be (`oci-layout`).
const LAYOUT_VERSION: &str = "1.0.0";

/// One image of a docker archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// A stored file: its digest, size and first bytes (to tell a layer's compression).
#[derive(Clone)]
struct Stored {
    digest: String,
    size: u64,
    magic: Vec<u8>,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: what.to_string(),
        source,
    }
}

/// Reads the archive `reader` streams into the store, in namespace `ns` under `lease`; the
/// archive's index (stored).
pub fn read(
    store: &ImageStore,
    ns: &str,
    lease: Option<&str>,
    reader: impl Read + Send,
) -> Result<Descriptor> {
    let mut input = BufReader::with_capacity(1 << 20, reader);
    let magic = std::io::BufRead::fill_buf(&mut input).map_err(io("archive"))?;
    let decoded = Compression::sniff(magic)
        .decoder(input)
        .map_err(|e| TransferError::Invalid(format!("archive: {e}")))?;
    let mut tar = tar::Archive::new(decoded);
    let (mut layout, mut docker) = (None, None);
    let mut blobs: HashMap<String, Stored> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for entry in tar.entries().map_err(io("archive"))? {
        let mut entry = entry.map_err(io("archive"))?;
        let path = entry.path().map_err(io("archive entry"))?;
        let name = clean(&path.to_string_lossy());
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                if let Ok(Some(target)) = entry.link_name() {
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    links.push((name.clone(), clean(&format!("{dir}/{}", target.display()))));
                }
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            _ => continue,
        }
        match name.as_str() {
            "oci-layout" => {
                let mut text = Vec::new();
                entry.read_to_end(&mut text).map_err(io("oci-layout"))?;
                layout = Some(parse::<Layout>(&text, "oci-layout")?);
            }
            "manifest.json" => {
                let mut text = Vec::new();
                entry.read_to_end(&mut text).map_err(io("manifest.json"))?;
                docker = Some(parse::<Vec<DockerEntry>>(&text, "manifest.json")?);
            }
            _ => {
                let size = entry.size();
                // A blob named by its digest is checked against it.
                let expected = name
                    .strip_prefix("blobs/sha256/")
                    .filter(|h| h.len() == 64)
                    .map(|h| format!("sha256:{h}"));
                let stored = write(
                    store,
                    ns,
                    lease,
                    &format!("tar-{name}"),
                    size,
                    expected,
                    &mut entry,
                )?;
                blobs.insert(name, stored);
            }
        }
    }
    for (link, target) in links {
        if let Some(stored) = blobs.get(&target).cloned() {
            blobs.insert(link, stored);
        }
    }
    if let Some(layout) = layout {
        if layout.version != LAYOUT_VERSION {
            return Err(TransferError::Invalid(format!(
                "unsupported OCI layout version {}",
                layout.version
            )));
        }
        let index = blobs
            .get("index.json")
            .ok_or_else(|| TransferError::Invalid("an OCI layout without index.json".into()))?;
        return Ok(Descriptor {
            media_type: api::media_types::OCI_INDEX.into(),
            digest: index.digest.clone(),
            size: index.size as i64,
            platform: None,
            annotations: HashMap::new(),
        });
    }
    let entries =
        docker.ok_or_else(|| TransferError::Invalid("unrecognized image format".into()))?;
    docker_index(store, ns, lease, &entries, &blobs)
}

/// An archive path as containerd cleans it (`path.Clean`, no leading `./`).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    oci::parse(bytes, what).map_err(TransferError::Invalid)
}

/// Writes `size` bytes from `reader` as blob ref `reference`, checked against `expected`
/// if given; what was stored.
/// Stores one file of the archive as a blob (checked against `expected`, the digest its
/// path names, if any). While another write holds its ref (another import of the same
/// blob), this waits for it, as containerd's importer does; a blob already stored is not
/// written again (its bytes are read past).
fn write(
    store: &ImageStore,
    ns: &str,
    lease: Option<&str>,
    name: &str,
    size: u64,
    expected: Option<String>,
    reader: &mut impl Read,
) -> Result<Stored> {
    let reference = match &expected {
        Some(digest) => format!("import-{digest}"),
        None => format!("tar-{name}"),
    };
    let reference = reference.as_str();
    let mut attempt = 0;
    let mut writer = loop {
        match store.content_writer(ns, reference, size, expected.as_deref(), lease) {
            Ok(w) => break w,
            Err(StoreError::AlreadyExists(_)) => {
                std::io::copy(reader, &mut std::io::sink()).map_err(io(reference))?;
                let digest = expected.expect("only a write that names its digest finds it stored");
                let (file, size) = store.content_open(ns, &digest)?;
                let mut magic = Vec::with_capacity(10);
                file.take(10)
                    .read_to_end(&mut magic)
                    .map_err(io(reference))?;
                return Ok(Stored {
                    digest,
                    size,
                    magic,
                });
            }
            Err(StoreError::Unavailable(_)) => {
                std::thread::sleep(super::super::lock_wait(attempt));
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let mut magic = Vec::new();
    loop {
        let n = reader.read(&mut buf).map_err(io(reference))?;
        if n == 0 {
            break;
        }
        if magic.len() < 10 {
            magic.extend_from_slice(&buf[..n.min(10 - magic.len())]);
        }
        hasher.update(&buf[..n]);
        writer.write_at(offset, &buf[..n])?;
        offset += n as u64;
    }
    let digest = hasher.finish().0.to_string();
    if let Some(expected) = &expected
        && *expected != digest
    {
        drop(writer);
        let _ = store.ingest_abort(ns, reference);
        return Err(TransferError::Store(StoreError::FailedPrecondition(
            format!("{reference}: the archive's blob is {digest}, not the {expected} it is named"),
        )));
    }
    match store.content_commit(writer, reference, size, Some(&digest), HashMap::new()) {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Stored {
        digest,
        size,
        magic,
    })
}

/// A JSON string as Go's `encoding/json` writes it (the values here are plain ASCII names;
/// Go also escapes `<`, `>` and `&`).
fn go_string(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a string serializes");
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A descriptor's JSON as Go writes an `ocispec.Descriptor` (fields in declaration order,
/// empty ones left out).
fn go_descriptor(desc: &Descriptor) -> String {
    let mut out = format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{}",
        go_string(&desc.media_type),
        go_string(&desc.digest),
        desc.size
    );
    if !desc.annotations.is_empty() {
        let mut keys: Vec<&String> = desc.annotations.keys().collect();
        keys.sort();
        let fields: Vec<String> = keys
            .iter()
            .map(|k| format!("{}:{}", go_string(k), go_string(&desc.annotations[*k])))
            .collect();
        out.push_str(&format!(",\"annotations\":{{{}}}", fields.join(",")));
    }
    if let Some(p) = &desc.platform {
        out.push_str(&format!(
            ",\"platform\":{{\"architecture\":{},\"os\":{}",
            go_string(&p.architecture),
            go_string(&p.os)
        ));
        if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
            out.push_str(&format!(",\"variant\":{}", go_string(v)));
        }
        out.push('}');
    }
    out.push('}');
    out
}

/// Stores `json` as a blob of `media_type`; its descriptor.
fn store_json(
    store: &ImageStore,
    ns: &str,
    lease: Option<&str>,
    json: String,
    media_type: &str,
) -> Result<Descriptor> {
    let digest = oci::digest_of(json.as_bytes());
    let reference = format!("manifest-{digest}");
    write(
        store,
        ns,
        lease,
        &reference,
        json.len() as u64,
        Some(digest.clone()),
        &mut json.as_bytes(),
    )?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: json.len() as i64,
        platform: None,
        annotations: HashMap::new(),
    })
}

/// The platform an image config names.
fn config_platform(store: &ImageStore, ns: &str, digest: &str) -> Result<Option<oci::Platform>> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let (mut file, _) = store.content_open(ns, digest)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io(digest))?;
    let c: Config = parse(&bytes, digest)?;
    Ok((!c.os.is_empty()).then_some(oci::Platform {
        architecture: c.architecture,
        os: c.os,
        variant: c.variant.filter(|v| !v.is_empty()),
    }))
}

/// A blob of the namespace labelled as the compressed form of uncompressed layer `digest`
/// (the last by digest, as containerd's walk finds it), which containerd's docker archive
/// import uses in the layer's place.
fn compressed_of(store: &ImageStore, ns: &str, digest: &str) -> Result<Option<Stored>> {
    let filter = format!("labels.\"{}\"=={digest}", api::labels::UNCOMPRESSED);
    let filters = snapshotter::Filters::parse(&[filter]).map_err(StoreError::from)?;
    let Some(info) = store
        .content_list(ns, &filters)?
        .into_iter()
        .max_by(|a, b| a.digest.cmp(&b.digest))
    else {
        return Ok(None);
    };
    let (file, size) = store.content_open(ns, &info.digest)?;
    let mut magic = Vec::with_capacity(10);
    file.take(10)
        .read_to_end(&mut magic)
        .map_err(io("a compressed layer"))?;
    Ok(Some(Stored {
        digest: info.digest,
        size,
        magic,
    }))
}

/// The index containerd makes for a docker archive: a Docker schema 2 manifest per image
/// (layers gzip or plain as their bytes say), named per tag.
fn docker_index(
    store: &ImageStore,
    ns: &str,
    lease: Option<&str>,
    entries: &[DockerEntry],
    blobs: &HashMap<String, Stored>,
) -> Result<Descriptor> {
    let found = |file: &str, what: &str| {
        blobs
            .get(&clean(file))
            .cloned()
            .ok_or_else(|| TransferError::Invalid(format!("{what} {file:?} not found")))
    };
    let mut manifests = Vec::new();
    for entry in entries {
        let config = found(&entry.config, "image config")?;
        let config_desc = Descriptor {
            media_type: api::media_types::DOCKER_CONFIG.into(),
            digest: config.digest.clone(),
            size: config.size as i64,
            platform: None,
            annotations: HashMap::new(),
        };
        let mut layers = Vec::new();
        for file in &entry.layers {
            let mut layer = found(file, "layer")?;
            if let Some(compressed) = compressed_of(store, ns, &layer.digest)? {
                layer = compressed;
            }
            let media_type = match Compression::sniff(&layer.magic) {
                Compression::None => api::media_types::DOCKER_LAYER_TAR,
                _ => api::media_types::DOCKER_LAYER_TAR_GZIP,
            };
            layers.push(go_descriptor(&Descriptor {
                media_type: media_type.into(),
                digest: layer.digest.clone(),
                size: layer.size as i64,
                platform: None,
                annotations: HashMap::new(),
            }));
        }
        let json = format!(
            "{{\"schemaVersion\":2,\"mediaType\":{},\"config\":{},\"layers\":[{}]}}",
            go_string(api::media_types::DOCKER_MANIFEST),
            go_descriptor(&config_desc),
            layers.join(",")
        );
        let mut desc = store_json(store, ns, lease, json, api::media_types::DOCKER_MANIFEST)?;
        desc.platform = config_platform(store, ns, &config.digest)?;
        if entry.repo_tags.is_empty() {
            manifests.push(desc.clone());
        }
        for tag in &entry.repo_tags {
            let name = oci::docker_name(tag);
            let object = name
                .rsplit_once(['@', ':'])
                .filter(|(repo, _)| !repo.ends_with(['/']) && !repo.is_empty())
                .map_or(name.as_str(), |(_, o)| o)
                .to_string();
            let mut named = desc.clone();
            named.annotations = [
                (api::labels::CONTAINERD_IMAGE_NAME.to_string(), name.clone()),
                (api::labels::OCI_REF_NAME.to_string(), object),
            ]
            .into();
            manifests.push(named);
        }
    }
    let children: Vec<String> = manifests.iter().map(go_descriptor).collect();
    let json = format!(
        "{{\"schemaVersion\":2,\"manifests\":[{}]}}",
        children.join(",")
    );
    store_json(store, ns, lease, json, api::media_types::OCI_INDEX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_as_go_cleans_them() {
        assert_eq!(clean("./blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(clean("a/../b//c/."), "b/c");
        assert_eq!(clean("/x"), "x");
    }

    /// A descriptor's JSON is Go's: fields in order, annotations sorted, no spaces.
    #[test]
    fn descriptors_are_written_as_go_writes_them() {
        let desc = Descriptor {
            media_type: "m".into(),
            digest: "sha256:ab".into(),
            size: 3,
            platform: Some(oci::Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "<1>".to_string()),
            ]
            .into(),
        };
        assert_eq!(
            go_descriptor(&desc),
            r#"{"mediaType":"m","digest":"sha256:ab","size":3,"annotations":{"a":"\u003c1\u003e","b":"2"},"platform":{"architecture":"amd64","os":"linux"}}"#
        );
    }
}
