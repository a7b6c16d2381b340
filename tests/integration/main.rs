//! Integration tests: the daemon over its real socket, real mounts, real containerd.

mod crash;
mod errors;
mod suite;
mod tree;
mod util;
