//! Integration tests: the daemon over its real socket, real mounts, real containerd.

mod util;
mod suite;
mod tree;
