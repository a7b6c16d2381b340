//! Layers: applying OCI image layers (tar, gzip, zstd) into directories, and creating layers
//! from the difference between two trees.
//!
//! [`apply_layer`] streams a blob through a decompression thread into a tar writer that
//! resolves every path inside the target root ([`mountutil::at`]), writing whiteouts as
//! overlayfs expects them or deleting what they name ([`WhiteoutMode`]). [`diff`] walks an
//! overlay upper directory or compares two trees and writes a deterministic layer.
//! Blobs come from and go to a [`content`] store. No gRPC types live here.

pub mod apply;
pub mod compression;
pub mod content;
pub mod diff;
pub mod digest;
mod error;
pub mod parallel_gzip;
mod pipeline;
mod tarstream;

pub use apply::{
    Applied, ImplicitDirs, Inherited, LayerLimits, Lowers, WhiteoutMode, apply_layer,
    inherit_implicit_dirs,
};
pub use compression::Compression;
pub use digest::Digest;
pub use error::{Error, Result};
pub use pipeline::LayerSource;
