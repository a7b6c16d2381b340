//! Typed, safe wrappers over the Linux syscalls Strata needs: mount(2)/umount2, the new
//! mount API, file metadata calls used when copying or writing trees (xattrs, device nodes,
//! timestamps, sparse copies), and the exclusive lock of a snapshotter root.
//!
//! Syscalls only, and no `unsafe`: everything goes through the safe wrappers of `rustix`
//! (and `nix` for the one call rustix only offers as unsafe, `unshare`); the workspace lints
//! deny unsafe code here.

pub mod at;
mod error;
pub mod fs;
pub mod lock;
pub mod mount;
mod options;
pub mod overlay;
pub mod probe;

pub use error::{Error, IoError, Result};
pub use mount::{Mount, TempMount, mount_all, unmount};
