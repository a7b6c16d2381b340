//! Integration tests: the daemon over its real socket, real mounts, real containerd.

mod containerd;
mod crash;
mod crash_loop;
mod diff;
mod errors;
mod load;
mod suite;
mod tree;
mod util;
