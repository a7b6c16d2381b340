//! The resource types a containerd lease holds (`Leases.AddResource`).

/// A blob, by digest.
pub const CONTENT: &str = "content";
/// A write in progress, by ref.
pub const INGESTS: &str = "ingests";
/// An image, by name (containerd 2.x).
pub const IMAGES: &str = "images";
/// Prefix of a snapshot's type, `snapshots/<snapshotter>`; the id is its key.
pub const SNAPSHOTS: &str = "snapshots/";
