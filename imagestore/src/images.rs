//! Images: a name pointing at a content root (a descriptor), with labels, per namespace.

use std::borrow::Cow;
use std::time::SystemTime;

use snapshotter::Filters;
use snapshotter::filter::Adaptor;

use crate::labels::Fields;

use super::meta::{Kind, Read, Writer, key};
use super::{ImageStore, Result, StoreError, labels, timestamp};
use api::resources::IMAGES as RESOURCE_IMAGES;
use api::services::images::v1::Image;
use api::types::Descriptor;

impl Adaptor for Fields<'_, Image> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let target = self.0.target.as_ref();
        match path {
            [f] if f == "name" => Some(self.0.name.as_str().into()),
            [f, sub] if f == "target" => match sub.as_str() {
                "digest" => target.map(|t| t.digest.as_str().into()),
                "mediatype" => target.map(|t| t.media_type.as_str().into()),
                _ => None,
            },
            [f, ..] if f == "annotations" => target.and_then(|t| {
                labels::map_field(&t.annotations, "annotations", path).map(Into::into)
            }),
            _ => labels::field(&self.0.labels, path).map(Into::into),
        }
    }
}

/// Adds `image` to `lease` if it expires (`containerd.io/gc.expire`), as containerd 2.x
/// does: only an expiring image needs a lease, and only then must the lease exist.
fn lease_expiring(
    w: &mut Writer,
    namespace: &str,
    image: &Image,
    lease: Option<&str>,
) -> Result<()> {
    let Some(lease) = lease else {
        return Ok(());
    };
    if !image.labels.contains_key(api::labels::GC_EXPIRE) {
        return Ok(());
    }
    if !w.lease_exists(namespace, lease)? {
        return Err(StoreError::NotFound(format!(
            "lease {lease:?} does not exist"
        )));
    }
    w.add_resource(namespace, lease, RESOURCE_IMAGES, &image.name)
}

/// containerd's checks of a stored image.
fn validate(image: &Image) -> Result<()> {
    if image.name.is_empty() {
        return Err(StoreError::InvalidArgument(
            "image name must not be empty".into(),
        ));
    }
    labels::validate(&image.labels)?;
    let target = image.target.clone().unwrap_or_default();
    validate_target(&target)
}

fn validate_target(target: &Descriptor) -> Result<()> {
    if differ::Digest::parse(&target.digest).is_err() {
        return Err(StoreError::InvalidArgument(format!(
            "Target.Digest {:?} invalid",
            target.digest
        )));
    }
    if target.size <= 0 {
        return Err(StoreError::InvalidArgument(
            "Target.Size must be greater than zero".into(),
        ));
    }
    if target.media_type.is_empty() {
        return Err(StoreError::InvalidArgument(
            "Target.MediaType must not be empty".into(),
        ));
    }
    Ok(())
}

impl ImageStore {
    /// Image `name` of `namespace`.
    pub fn image_get(&self, namespace: &str, name: &str) -> Result<Image> {
        self.meta.read(|r| {
            r.get(Kind::Image, &key(namespace, &[name]))?
                .ok_or_else(|| StoreError::NotFound(format!("image {name:?}")))
        })
    }

    /// The images of `namespace` that match `filters`, by name.
    pub fn image_list(&self, namespace: &str, filters: &Filters) -> Result<Vec<Image>> {
        let all = self
            .meta
            .read(|r| r.list::<Image>(Kind::Image, namespace))?;
        Ok(all
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| filters.matches(&Fields(i)))
            .collect())
    }

    /// Creates `image`; AlreadyExists if its name is taken. An image that expires
    /// (`containerd.io/gc.expire`) joins the caller's `lease`, which must exist.
    pub fn image_create(
        &self,
        namespace: &str,
        mut image: Image,
        lease: Option<&str>,
    ) -> Result<Image> {
        validate(&image)?;
        image.labels.retain(|_, v| !v.is_empty());
        let now = Some(timestamp(SystemTime::now()));
        image.created_at = now;
        image.updated_at = now;
        self.meta.write(|w| {
            let k = key(namespace, &[&image.name]);
            if w.get::<Image>(Kind::Image, &k)?.is_some() {
                return Err(StoreError::AlreadyExists(format!("image {:?}", image.name)));
            }
            lease_expiring(w, namespace, &image, lease)?;
            w.put(Kind::Image, &k, &image)?;
            Ok(image)
        })
    }

    /// Updates `image.name` by field paths (`labels`, `labels.<k>`, `target`,
    /// `annotations`, `annotations.<k>`; none: everything).
    pub fn image_update(
        &self,
        namespace: &str,
        image: Image,
        paths: &[String],
        lease: Option<&str>,
    ) -> Result<Image> {
        if image.name.is_empty() {
            return Err(StoreError::InvalidArgument(
                "image name is required for update".into(),
            ));
        }
        self.meta.write(|w| {
            let k = key(namespace, &[&image.name]);
            let current: Image = w
                .get(Kind::Image, &k)?
                .ok_or_else(|| StoreError::NotFound(format!("image {:?}", image.name)))?;
            let mut updated = if paths.is_empty() {
                image.clone()
            } else {
                current.clone()
            };
            for path in paths {
                if labels::apply_path(&mut updated.labels, &image.labels, path) {
                    continue;
                }
                let new_target = image.target.clone().unwrap_or_default();
                let target = updated.target.get_or_insert_with(Default::default);
                match path.as_str() {
                    "target" => *target = new_target,
                    "annotations" => target.annotations = new_target.annotations,
                    p => match p.strip_prefix("annotations.") {
                        Some(key) => match new_target.annotations.get(key) {
                            Some(v) if !v.is_empty() => {
                                target.annotations.insert(key.to_string(), v.clone());
                            }
                            _ => {
                                target.annotations.remove(key);
                            }
                        },
                        None => {
                            return Err(StoreError::InvalidArgument(format!(
                                "cannot update {path:?} field on image {:?}",
                                image.name
                            )));
                        }
                    },
                }
            }
            validate(&updated)?;
            updated.labels.retain(|_, v| !v.is_empty());
            updated.name = current.name.clone();
            updated.created_at = current.created_at;
            updated.updated_at = Some(timestamp(SystemTime::now()));
            lease_expiring(w, namespace, &updated, lease)?;
            w.put(Kind::Image, &k, &updated)?;
            Ok(updated)
        })
    }

    /// Deletes image `name`; with `target`, only if the image still points there.
    pub fn image_delete(
        &self,
        namespace: &str,
        name: &str,
        target: Option<&Descriptor>,
        lease: Option<&str>,
    ) -> Result<()> {
        self.meta.write(|w| {
            let k = key(namespace, &[name]);
            let current: Image = w
                .get(Kind::Image, &k)?
                .ok_or_else(|| StoreError::NotFound(format!("image {name:?}")))?;
            if let Some(target) = target
                && current.target.as_ref().map(|t| &t.digest) != Some(&target.digest)
            {
                return Err(StoreError::NotFound(format!(
                    "image {name:?} with target {}",
                    target.digest
                )));
            }
            w.delete(Kind::Image, &k)?;
            if let Some(lease) = lease
                && w.lease_exists(namespace, lease)?
            {
                w.delete_resource(namespace, lease, RESOURCE_IMAGES, name)?;
            }
            Ok(())
        })
    }
}
