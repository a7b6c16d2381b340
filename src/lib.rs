//! Strata: a snapshotter daemon for containerd.
//!
//! The daemon serves containerd's Snapshots gRPC API on a unix socket for one or more
//! snapshotter instances ([`server`]), and the CLI ([`cli`]) talks to it over the same
//! socket. The snapshot logic itself lives in the `snapshotter` crate; this crate converts
//! between protobuf and domain types ([`convert`]), maps errors to gRPC codes in one place
//! ([`status`]), and wires configuration ([`config`]) to instances.

pub mod cli;
pub mod config;
pub mod content;
pub mod convert;
pub mod imagestore;
pub mod instances;
pub mod layers;
pub mod metrics;
pub mod server;
pub mod status;
pub mod systemd;
pub mod unpack;

/// `google.rpc` (the Status of a plugin's initialisation error in Introspection), where
/// the code generated for containerd's packages (`api`, standing for `containerd`) finds it.
pub mod google {
    /// `google.rpc`.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// `strata.admin.v1`: Strata's own administration calls (garbage collection, pull).
pub mod admin {
    /// `strata.admin.v1`.
    pub mod v1 {
        tonic::include_proto!("strata.admin.v1");
    }
}

/// Code generated from `proto/` (containerd's wire API, and the CRI subset the tests use).
pub mod api {
    /// `runtime.v1`: the part of Kubernetes' CRI the end-to-end tests call containerd's CRI
    /// plugin with, as kubelet does (clients only).
    pub mod cri {
        tonic::include_proto!("runtime.v1");
    }
    /// `containerd.types`.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.diff`.
        pub mod diff {
            /// `containerd.services.diff.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.diff.v1");
            }
        }
        /// `containerd.services.content`.
        pub mod content {
            /// `containerd.services.content.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        /// `containerd.services.leases`.
        pub mod leases {
            /// `containerd.services.leases.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        /// `containerd.services.images`.
        pub mod images {
            /// `containerd.services.images.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        /// `containerd.services.containers`.
        pub mod containers {
            /// `containerd.services.containers.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        /// `containerd.services.namespaces`.
        pub mod namespaces {
            /// `containerd.services.namespaces.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.namespaces.v1");
            }
        }
        /// `containerd.services.introspection`.
        pub mod introspection {
            /// `containerd.services.introspection.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.introspection.v1");
            }
        }
        /// `containerd.services.version`.
        pub mod version {
            /// `containerd.services.version.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}
