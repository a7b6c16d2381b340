//! The OCI image model as JSON has it (descriptors, indexes, manifests, the config's diff
//! IDs, platforms), and what is computed from it: chain IDs, this machine's platform, image
//! names as containerd normalizes them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use api::media_types;

/// An OCI (or Docker) descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// A platform, as an index names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether this is platform `wanted`, `os/arch` or `os/arch/variant` (a variant is
    /// compared only when `wanted` names one).
    pub fn is(&self, wanted: &str) -> bool {
        let mut name = format!("{}/{}", self.os, self.architecture);
        if let Some(v) = &self.variant
            && wanted.matches('/').count() == 2
        {
            name = format!("{name}/{v}");
        }
        name == wanted
    }
}

/// An index (or Docker manifest list), and a single-platform manifest, as one document may
/// be either.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// A single-platform manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Document {
    /// The manifest part, if this is one.
    pub fn manifest(&self) -> Option<Manifest> {
        Some(Manifest {
            config: self.config.clone()?,
            layers: self.layers.clone(),
        })
    }
}

/// An image config, as far as unpacking needs it.
#[derive(Debug, Deserialize)]
pub struct Config {
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

impl Descriptor {
    /// The descriptor as containerd's API has it.
    pub fn to_pb(&self) -> api::types::Descriptor {
        api::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone(),
        }
    }

    /// The descriptor of containerd's API's `d`.
    pub fn from_pb(d: api::types::Descriptor) -> Self {
        Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
            platform: None,
            annotations: d.annotations,
        }
    }

    /// Whether it is an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        media_types::is_index(&self.media_type)
    }

    /// Whether it is a manifest (or an index).
    pub fn is_manifest(&self) -> bool {
        media_types::is_manifest(&self.media_type) || self.is_index()
    }
}

/// Parses JSON document `bytes` (`what` names it in errors).
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
}

/// This machine's OCI architecture.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// This machine's platform, `linux/<arch>`.
pub fn this_platform() -> String {
    format!("linux/{}", architecture())
}

/// The OCI chain IDs of layers with `diff_ids`, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => snapshotter::chain_id(parent, d),
        };
        out.push(next);
    }
    out
}

/// A docker image name as containerd normalizes it (`ParseDockerRef`): `busybox:1` →
/// `docker.io/library/busybox:1`, `user/app:2` → `docker.io/user/app:2`, a name without a
/// tag or digest gets `:latest`; names with a registry host (a dot, a port, or `localhost`)
/// keep it.
pub fn docker_name(tag: &str) -> String {
    let first = tag.split('/').next().unwrap_or(tag);
    let has_host =
        tag.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_host {
        tag.to_string()
    } else if tag.contains('/') {
        format!("docker.io/{tag}")
    } else {
        format!("docker.io/library/{tag}")
    };
    let last = full.rsplit('/').next().unwrap_or(&full);
    if last.contains([':', '@']) {
        full
    } else {
        format!("{full}:latest")
    }
}

/// A full docker image name as `docker` shows it (`FamiliarString`): `docker.io/library/`
/// and `docker.io/` left out.
pub fn familiar_name(name: &str) -> String {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
        .to_string()
}

/// The sha256 digest of `bytes`, `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(bytes);
    h.finish().0.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_are_normalized() {
        assert_eq!(docker_name("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(docker_name("user/app:2"), "docker.io/user/app:2");
        assert_eq!(docker_name("127.0.0.1:5000/a/b:3"), "127.0.0.1:5000/a/b:3");
        assert_eq!(docker_name("localhost/x:1"), "localhost/x:1");
        assert_eq!(docker_name("quay.io/a/b:1"), "quay.io/a/b:1");
        assert_eq!(docker_name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(docker_name("127.0.0.1:5000/a"), "127.0.0.1:5000/a:latest");
        assert_eq!(familiar_name("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(familiar_name("docker.io/user/app:2"), "user/app:2");
        assert_eq!(familiar_name("quay.io/a/b:1"), "quay.io/a/b:1");
    }

    #[test]
    fn chain_ids_follow_oci() {
        let ids = chain_ids(&["sha256:aa".into(), "sha256:bb".into()]);
        assert_eq!(ids[0], "sha256:aa");
        // sha256 of "sha256:aa sha256:bb", computed with sha256sum.
        assert_eq!(
            ids[1],
            "sha256:b68ad689d6d1ec110ea1c13617437ad6f3766d4b3b309f6a603a222e07a0164f"
        );
    }

    #[test]
    fn platforms_match_with_or_without_variant() {
        let arm = Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            variant: Some("v7".into()),
        };
        assert!(arm.is("linux/arm") && arm.is("linux/arm/v7") && !arm.is("linux/arm/v6"));
    }
}
