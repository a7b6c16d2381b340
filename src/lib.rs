//! Strata: a snapshotter daemon for containerd.
//!
//! The daemon serves containerd's Snapshots gRPC API on a unix socket for one or more
//! snapshotter instances ([`server`]), and the CLI ([`cli`]) talks to it over the same
//! socket. The snapshot logic itself lives in the `snapshotter` crate; this crate converts
//! between protobuf and domain types ([`convert`]), maps errors to gRPC codes in one place
//! ([`status`]), and wires configuration ([`config`]) to instances.

pub mod cli;
pub mod config;
pub mod content;
pub mod convert;
pub mod instances;
pub mod layers;
pub mod metrics;
pub mod server;
pub mod status;
pub mod systemd;
pub mod unpack;
