//! The image store in process, without root: table-driven tests of its public API over a
//! store in a temporary directory (content and the Write protocol, images, containers,
//! leases, namespaces, and a collection over them). What needs the daemon's socket (gRPC
//! codes, streamed reads, headers) stays in the integration tests.

mod collection;
mod containers;
mod content;
mod images;
mod leases;
mod namespaces;
mod support;
