//! How the images a transfer stores are named, by containerd's rules for its `ImageStore`
//! destination (`core/transfer/image/imagestore.go`, `Store`): a pulled or tagged image
//! gets the destination's name and each full extra reference (`<name>@<digest>` if asked);
//! an imported archive's manifests (marked [`REF_SOURCE`]) are named by each prefix
//! reference from their `io.containerd.image.name` or `org.opencontainers.image.ref.name`
//! annotation, and may add `<prefix>@<digest>`.

use std::collections::HashMap;

use crate::oci::Descriptor;

/// Annotation containerd marks an archive's manifests with while importing them: their
/// names come from their annotations.
pub const REF_SOURCE: &str = "io.containerd.import.ref-source";

/// containerd's annotation with an image's full name.
const IMAGE_NAME: &str = api::labels::CONTAINERD_IMAGE_NAME;

/// One `ImageStore.extra_references` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageReference {
    pub name: String,
    pub is_prefix: bool,
    pub allow_overwrite: bool,
    pub add_digest: bool,
    pub skip_named_digest: bool,
}

/// Whether `s` is `prefix` or `prefix` followed by `/`, `:` or `@`.
fn has_image_prefix(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', ':', '@']))
}

/// containerd's `refTranslator`: a full reference stays (unless checked against the prefix
/// and not under it), a bare tag becomes `<prefix>:<tag>`.
fn translate(prefix: &str, check_prefix: bool, reference: &str) -> String {
    if prefix.is_empty() {
        return String::new();
    }
    if reference.contains(['/', ':', '@']) {
        if check_prefix && !has_image_prefix(reference, prefix) {
            return String::new();
        }
        return reference.to_string();
    }
    format!("{prefix}:{reference}")
}

/// containerd's `imageName`: the full name annotation if the translation keeps it as it
/// is, else the OCI ref name translated.
fn image_name(desc: &Descriptor, translate: impl Fn(&str) -> String) -> String {
    if let Some(name) = desc.annotations.get(IMAGE_NAME).filter(|n| !n.is_empty()) {
        return if translate(name) == *name {
            name.clone()
        } else {
            String::new()
        };
    }
    desc.annotations
        .get(api::labels::OCI_REF_NAME)
        .filter(|n| !n.is_empty())
        .map(|n| translate(n))
        .unwrap_or_default()
}

/// Where a transfer stores images: containerd's `ImageStore` as a destination.
#[derive(Debug, Clone, Default)]
pub struct ImageDestination {
    /// The image's name (for an import, the archive index's); none if empty.
    pub name: String,
    /// The image records' labels.
    pub labels: HashMap<String, String>,
    pub references: Vec<ImageReference>,
}

/// The names image target `desc` gets in `destination` (see the module doc).
pub fn names(desc: &Descriptor, destination: &ImageDestination) -> Vec<String> {
    if desc.annotations.contains_key(REF_SOURCE) {
        return annotated_names(desc, &destination.references);
    }
    let full = destination.references.iter().filter(|r| !r.is_prefix);
    (!destination.name.is_empty())
        .then(|| destination.name.clone())
        .into_iter()
        .chain(full.map(|r| match r.add_digest {
            true => format!("{}@{}", r.name, desc.digest),
            false => r.name.clone(),
        }))
        .collect()
}

/// The names an archive's manifest `desc` gets from the prefix references.
fn annotated_names(desc: &Descriptor, references: &[ImageReference]) -> Vec<String> {
    let mut out = Vec::new();
    for r in references.iter().filter(|r| r.is_prefix) {
        let check = !r.allow_overwrite;
        let name = image_name(desc, |n| translate(&r.name, check, n));
        let by_digest = format!("{}@{}", r.name, desc.digest);
        if name.is_empty() {
            if r.add_digest {
                out.push(by_digest);
            }
            continue;
        }
        out.push(name);
        if r.add_digest && !r.skip_named_digest {
            out.push(by_digest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(annotations: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            media_type: api::media_types::OCI_MANIFEST.into(),
            digest: "sha256:ab".into(),
            size: 1,
            platform: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn prefix(name: &str, allow_overwrite: bool, add_digest: bool, skip: bool) -> ImageReference {
        ImageReference {
            name: name.into(),
            is_prefix: true,
            allow_overwrite,
            add_digest,
            skip_named_digest: skip,
        }
    }

    /// ctr 2.1's `images import` (a prefix `import-<date>`, overwrite allowed) and its
    /// `--base-name`, `--digests` and `--skip-digest-for-named` variants.
    #[test]
    fn names_follow_containerd() {
        let full = desc(&[
            (IMAGE_NAME, "docker.io/library/busybox:1"),
            (api::labels::OCI_REF_NAME, "1"),
        ]);
        let tag_only = desc(&[(api::labels::OCI_REF_NAME, "latest")]);
        let ref_full = desc(&[(api::labels::OCI_REF_NAME, "strata.test/cli:1")]);
        let none = desc(&[]);
        let cases: Vec<(&Descriptor, ImageReference, Vec<&str>)> = vec![
            (
                &full,
                prefix("import-2026-12-06", true, false, false),
                vec!["docker.io/library/busybox:1"],
            ),
            (
                &tag_only,
                prefix("import-2026-12-06", true, false, false),
                vec!["import-2026-12-06:latest"],
            ),
            (
                &ref_full,
                prefix("import-2026-12-06", true, false, false),
                vec!["strata.test/cli:1"],
            ),
            (
                &none,
                prefix("import-2026-12-06", true, false, false),
                vec![],
            ),
            (&none, prefix("x", true, true, true), vec!["x@sha256:ab"]),
            // --base-name: names outside the base are dropped.
            (
                &full,
                prefix("docker.io/library/busybox", false, false, false),
                vec!["docker.io/library/busybox:1"],
            ),
            (
                &full,
                prefix("example.com/other", false, false, false),
                vec![],
            ),
            (
                &full,
                prefix("docker.io/library/busy", false, false, false),
                vec![],
            ),
            (
                &tag_only,
                prefix("example.com/base", false, false, false),
                vec!["example.com/base:latest"],
            ),
            // --digests: the digest name only where skip_named_digest is false.
            (
                &full,
                prefix("p", true, true, false),
                vec!["docker.io/library/busybox:1", "p@sha256:ab"],
            ),
            (
                &full,
                prefix("p", true, true, true),
                vec!["docker.io/library/busybox:1"],
            ),
        ];
        for (d, r, want) in cases {
            assert_eq!(
                annotated_names(d, std::slice::from_ref(&r)),
                want,
                "{r:?} on {:?}",
                d.annotations
            );
        }
        let not_prefix = ImageReference {
            name: "ignored".into(),
            ..Default::default()
        };
        assert!(annotated_names(&full, &[not_prefix]).is_empty());
    }

    /// A pull or a tag: the destination's name, then each full reference; prefixes ignored.
    #[test]
    fn pulled_images_take_the_name_and_full_references() {
        let target = desc(&[]);
        let reference = |name: &str, is_prefix, add_digest| ImageReference {
            name: name.into(),
            is_prefix,
            add_digest,
            ..Default::default()
        };
        let destination = ImageDestination {
            name: "example.com/a:1".into(),
            references: vec![
                reference("example.com/b:2", false, false),
                reference("example.com/c", false, true),
                reference("prefix", true, true),
            ],
            ..Default::default()
        };
        assert_eq!(
            names(&target, &destination),
            [
                "example.com/a:1",
                "example.com/b:2",
                "example.com/c@sha256:ab"
            ]
        );
        assert!(names(&target, &ImageDestination::default()).is_empty());
        // An archive's manifest: only the prefix references.
        let archived = desc(&[(REF_SOURCE, "annotation"), (api::labels::OCI_REF_NAME, "1")]);
        assert_eq!(
            names(&archived, &destination),
            ["prefix:1", "prefix@sha256:ab"]
        );
    }
}
