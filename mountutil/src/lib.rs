//! Typed, safe wrappers over the Linux syscalls Strata needs: mount(2)/umount2, the new
//! mount API, file metadata calls used when copying or writing trees (xattrs, device nodes,
//! timestamps, sparse copies), and the exclusive lock plus memory-mapped index of a
//! snapshotter root.
//!
//! This is the only crate of the workspace allowed to contain `unsafe`; every block carries
//! a `// SAFETY:` comment. Everything else goes through `rustix`/`nix` safe wrappers.

pub mod at;
mod error;
pub mod fs;
pub mod lock;
pub mod mount;
pub mod probe;

pub use error::{Error, Result};
pub use mount::{Mount, TempMount, mount_all, unmount};
