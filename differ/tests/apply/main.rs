//! `apply_layer` on hand-made layers, by topic: whiteouts, the digests and sizes it reports,
//! the tar format, what entries do to the tree, and the configured limits.

#[path = "../common/mod.rs"]
mod common;

mod digests;
mod limits;
mod metadata;
mod order;
mod tar_format;
mod whiteouts;
