//! Strata: a snapshotter, differ and image store for containerd, as one daemon and its CLI.
//!
//! The domain work lives in the library crates (`snapshotter`, `differ`, `imagestore`);
//! this crate wires them into a daemon. Its modules, from the bottom up (each uses only
//! those above it in this list):
//!
//! - [`config`]: the TOML configuration and flags; [`systemd`]: socket activation and
//!   readiness notices; [`convert`]: protobuf ↔ domain types.
//! - [`instances`]: the snapshotter instances, opened from the configuration.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`layers`]: the Diff service's work without gRPC (Apply and Diff, content stores).
//! - [`status`]: the one place errors become gRPC statuses.
//! - [`collector`]: when garbage is collected; [`applier`]: layers as the image store's
//!   transfers apply them.
//! - [`server`]: one gRPC adapter per service; [`transport`]: what stands between the
//!   socket and them.
//! - [`daemon`]: start-up, serving and shutdown.
//! - [`cli`]: the command-line client (a client of the socket, and local layer commands).

pub mod applier;
pub mod cli;
pub mod collector;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod fleet;
pub mod http;
pub mod instances;
pub mod layers;
pub mod metrics;
pub mod server;
pub mod status;
pub mod systemd;
pub mod transport;
