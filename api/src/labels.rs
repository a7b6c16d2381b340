//! Label and annotation keys with a meaning to containerd (its garbage collector, unpacker and
//! distribution code) or to OCI.

/// A blob or snapshot labelled with a key starting with this is a root of collection.
pub const GC_ROOT: &str = "containerd.io/gc.root";
/// RFC 3339 time after which a lease (or, in containerd 2.x, an image) is collected.
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// On a lease: it holds its resources without following their references.
pub const GC_FLAT: &str = "containerd.io/gc.flat";
/// `<this>[.|/anything]` = digest: the labelled object references that blob.
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// `<this>[.|/anything]` = image name: the labelled object references that image (2.x).
pub const GC_REF_IMAGE: &str = "containerd.io/gc.ref.image";
/// `<this><snapshotter>[/anything]` = key: the labelled object references that snapshot.
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// `<this>[.|/anything]` = digest: that blob references the labelled object (2.2).
pub const GC_BREF_CONTENT: &str = "containerd.io/gc.bref.content";
/// `<this>[.|/anything]` = image name: that image references the labelled object (2.2).
pub const GC_BREF_IMAGE: &str = "containerd.io/gc.bref.image";
/// `<this>[.|/anything]` = container id: that container references the labelled object (2.2).
pub const GC_BREF_CONTAINER: &str = "containerd.io/gc.bref.container";
/// `<this><snapshotter>[/anything]` = key: that snapshot references the labelled object (2.2).
pub const GC_BREF_SNAPSHOT: &str = "containerd.io/gc.bref.snapshot.";
/// On a layer blob: the digest of its uncompressed tar (the diff ID).
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// On a snapshot being unpacked: the chain ID it will be committed as.
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// On a snapshot being unpacked: the layer's diff ID (containerd 2.3).
pub const SNAPSHOT_DIFF_ID: &str = "containerd.io/snapshot/diff-id";
/// On a snapshot being unpacked: the parent's chain ID (containerd 2.3).
pub const SNAPSHOT_PARENT_CHAIN_ID: &str = "containerd.io/snapshot/parent-chain-id";
/// `<this><registry host>` = repository: where a blob was pulled from.
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
/// On a namespace: the snapshotter its clients use by default.
pub const DEFAULT_SNAPSHOTTER: &str = "containerd.io/defaults/snapshotter";
/// OCI annotation naming an image in an OCI layout's index.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with an image's full name in an exported layout.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// The `gc.ref.content` label an image's index uses for its `i`th manifest.
pub fn ref_manifest(i: usize) -> String {
    format!("{GC_REF_CONTENT}.m.{i}")
}

/// The `gc.ref.content` label a manifest uses for its config.
pub fn ref_config() -> String {
    format!("{GC_REF_CONTENT}.config")
}

/// The `gc.ref.content` label a manifest uses for its `i`th layer.
pub fn ref_layer(i: usize) -> String {
    format!("{GC_REF_CONTENT}.l.{i}")
}

/// The `gc.ref.snapshot` label a config uses for its unpacked top layer in `snapshotter`.
pub fn ref_snapshot(snapshotter: &str) -> String {
    format!("{GC_REF_SNAPSHOT}{snapshotter}")
}
