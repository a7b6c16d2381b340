//! The wire facts every Strata crate shares, in one leaf crate: request headers, label keys,
//! media types and message sizes as containerd has them ([`headers`], [`labels`],
//! [`media_types`]), RFC 3339 times as Go writes and reads them ([`time`]); with the `grpc`
//! feature (the default) also the code generated from `proto/` (containerd's API, written
//! here from its wire facts; Strata's admin API; the part of Kubernetes' CRI the end-to-end
//! tests drive containerd with) and the channel to a daemon's unix socket ([`channel`]).
//! The `snapshotter` and `differ` crates use it without `grpc`: constants only.

pub mod headers;
pub mod labels;
pub mod media_types;
pub mod resources;
pub mod time;

#[cfg(feature = "grpc")]
pub mod any;
#[cfg(feature = "grpc")]
pub mod channel;

#[cfg(feature = "grpc")]
pub use generated::containerd::{services, types};
#[cfg(feature = "grpc")]
pub use generated::google;
#[cfg(feature = "grpc")]
pub use generated::runtime::v1 as cri;
#[cfg(feature = "grpc")]
pub use generated::strata::admin;

/// The generated modules, nested as their proto packages are (the generated code refers to
/// other packages by relative paths).
#[cfg(feature = "grpc")]
#[allow(missing_docs)]
mod generated {
    /// `containerd.*`.
    pub mod containerd {

        /// `containerd.types`.
        pub mod types {
            tonic::include_proto!("containerd.types");
            /// `containerd.types.transfer`: what the Transfer service moves between.
            pub mod transfer {
                tonic::include_proto!("containerd.types.transfer");
            }
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
            /// `containerd.services.transfer`.
            pub mod transfer {
                /// `containerd.services.transfer.v1`.
                pub mod v1 {
                    tonic::include_proto!("containerd.services.transfer.v1");
                }
            }
            /// `containerd.services.streaming`.
            pub mod streaming {
                /// `containerd.services.streaming.v1`.
                pub mod v1 {
                    tonic::include_proto!("containerd.services.streaming.v1");
                }
            }
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`.
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }

    /// `google.rpc` (the Status of a plugin's initialisation error in Introspection).
    pub mod google {
        /// `google.rpc`.
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }

    /// `strata.*`: Strata's own API.
    pub mod strata {
        /// `strata.admin`.
        pub mod admin {
            /// `strata.admin.v1`: administration calls (garbage collection, pull).
            pub mod v1 {
                tonic::include_proto!("strata.admin.v1");
            }
        }
    }

    /// `runtime.v1`: the part of Kubernetes' CRI the end-to-end tests call containerd's CRI
    /// plugin with, as kubelet does (clients only).
    pub mod runtime {
        /// `runtime.v1`.
        pub mod v1 {
            tonic::include_proto!("runtime.v1");
        }
    }
}
