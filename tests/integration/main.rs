//! Integration tests: the daemon over its real socket, real mounts, real containerd.

mod collection;
mod containerd;
mod crash;
mod crash_loop;
mod diff;
mod errors;
mod fleet;
mod imagestore;
mod load;
mod operations;
mod pull;
mod quota;
mod requests;
mod suite;
mod systemd;
mod tree;
mod userns;
mod util;
