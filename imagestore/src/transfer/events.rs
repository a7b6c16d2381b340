//! A transfer's progress, as containerd's transfer service reports it (its event strings and
//! names, so that `ctr` renders Strata's transfers as containerd's): events without a name
//! set a status line; named ones are nodes of a tree, a blob's named `<kind>-<digest>` under
//! its parents. Strata adds its own about the unpack (a layer's state, [`Event::layer`]),
//! marked as [`Event::extension`]s: containerd sends none, so they go only to clients that
//! ask.

use std::sync::Arc;

use api::media_types;

use crate::oci::Descriptor;

/// One progress event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// What happened (`waiting`, `downloading`, `complete`, `saved`, or a status line).
    pub event: String,
    /// What it happened to; empty for a status line.
    pub name: String,
    /// The names of the nodes it is under.
    pub parents: Vec<String>,
    /// Bytes done and in all, for a blob.
    pub progress: i64,
    pub total: i64,
    pub desc: Option<Descriptor>,
    /// Strata's own (see the module doc).
    pub extension: bool,
}

/// Hears of a transfer's events.
pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;

impl Event {
    /// A status line.
    pub fn status(event: impl Into<String>) -> Self {
        Event {
            event: event.into(),
            ..Default::default()
        }
    }

    /// An event about `name` (an image, or the transfer's root).
    pub fn named(event: &str, name: &str) -> Self {
        Event {
            event: event.to_string(),
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// An event about blob `desc`, under `parent` (none for `already exists`, as
    /// containerd), `done` of its bytes.
    pub fn blob(event: &str, desc: &Descriptor, parent: &str, done: u64) -> Self {
        let parents = match (event, parent) {
            ("already exists", _) | (_, "") => Vec::new(),
            _ => vec![parent.to_string()],
        };
        Event {
            event: event.to_string(),
            name: ref_key(desc),
            parents,
            progress: done as i64,
            total: desc.size,
            desc: Some(desc.clone()),
            extension: false,
        }
    }

    /// Layer `digest`'s state in an unpack: `exists` (its snapshot was there), `unpacking`,
    /// `applied`; named `unpack-<digest>`.
    pub fn layer(state: &str, digest: &str) -> Self {
        Event {
            event: state.to_string(),
            name: format!("unpack-{digest}"),
            extension: true,
            ..Default::default()
        }
    }
}

/// containerd's name for a blob (`remotes.MakeRefKey`): `<kind>-<digest>`, or
/// `<kind>-<ref name>@<digest>` when the descriptor carries an OCI ref name.
pub fn ref_key(desc: &Descriptor) -> String {
    let kind = match desc.media_type.as_str() {
        t if media_types::is_index(t) => "index",
        t if media_types::is_manifest(t) => "manifest",
        media_types::OCI_CONFIG | media_types::DOCKER_CONFIG => "config",
        t if t.contains("layer") || t.contains("rootfs.diff") => "layer",
        _ => "unknown",
    };
    match desc.annotations.get(api::labels::OCI_REF_NAME) {
        Some(name) => format!("{kind}-{name}@{}", desc.digest),
        None => format!("{kind}-{}", desc.digest),
    }
}

/// A progress that hears nothing.
pub fn silent() -> Progress {
    Arc::new(|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: "sha256:ab".into(),
            size: 3,
            platform: None,
            annotations: Default::default(),
        }
    }

    #[test]
    fn blobs_are_named_as_containerd_names_them() {
        assert_eq!(
            ref_key(&desc(media_types::LAYER_TAR_GZIP)),
            "layer-sha256:ab"
        );
        assert_eq!(
            ref_key(&desc(media_types::DOCKER_LAYER_TAR_GZIP)),
            "layer-sha256:ab"
        );
        assert_eq!(ref_key(&desc(media_types::OCI_CONFIG)), "config-sha256:ab");
        assert_eq!(ref_key(&desc(media_types::OCI_INDEX)), "index-sha256:ab");
        assert_eq!(
            ref_key(&desc(media_types::DOCKER_MANIFEST)),
            "manifest-sha256:ab"
        );
        let mut named = desc(media_types::OCI_MANIFEST);
        named
            .annotations
            .insert(api::labels::OCI_REF_NAME.into(), "1".into());
        assert_eq!(ref_key(&named), "manifest-1@sha256:ab");
        let exists = Event::blob("already exists", &named, "index-x", 3);
        assert!(exists.parents.is_empty());
        assert_eq!(
            Event::blob("waiting", &named, "index-x", 0).parents,
            ["index-x"]
        );
    }
}
