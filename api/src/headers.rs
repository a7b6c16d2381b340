//! gRPC request metadata and limits as containerd uses them.

/// Metadata key of the containerd namespace a call is made in.
pub const NAMESPACE: &str = "containerd-namespace";
/// Metadata key of the containerd lease a call is made under.
pub const LEASE: &str = "containerd-lease";
/// gRPC message size limit, as containerd's (16 MiB both ways).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Strata's: a Transfer call made with it (by Strata's CLI) also hears Strata's own progress
/// events (the unpack's layers), which containerd's clients are not sent.
pub const TRANSFER_DETAIL: &str = "strata-transfer-detail";
