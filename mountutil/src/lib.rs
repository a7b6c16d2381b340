//! Typed, safe wrappers over the Linux syscalls Strata needs: mount(2)/umount2, the new
//! mount API, file metadata calls used when copying or writing trees (xattrs, device nodes,
//! timestamps, sparse copies), and the exclusive lock of a snapshotter root.
//!
//! Syscalls only. Nearly everything goes through the safe wrappers of `rustix` (and `nix`
//! for `unshare`); the few calls neither wraps (fork into a user namespace, mount_setattr,
//! ioctls, quotactl_fd) are `libc` calls in `idmap`, `quota` and `sys`, each in a function
//! allowed `unsafe` on its own with a `// SAFETY:` comment. The workspace lints
//! deny unsafe code everywhere else.

pub mod at;
pub mod btrfs;
mod error;
pub mod fdtable;
pub mod fs;
pub mod idmap;
pub mod lock;
pub mod mount;
mod options;
pub mod overlay;
pub mod probe;
pub mod quota;
mod sys;

pub use error::{Error, IoError, Result};
pub use mount::{Mount, TempMount, mount_all, unmount};
