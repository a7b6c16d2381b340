//! Compiles `proto/` into Rust with protox (no system protoc) and tonic-prost-build, when the
//! `grpc` feature is on: containerd's API (clients and servers), Strata's own admin API, and
//! the CRI subset the end-to-end tests drive containerd with (clients only).

const PROTOS: &[&str] = &[
    "containerd/types/mount.proto",
    "containerd/types/descriptor.proto",
    "containerd/services/snapshots/v1/snapshots.proto",
    "containerd/services/diff/v1/diff.proto",
    "containerd/services/content/v1/content.proto",
    "containerd/services/leases/v1/leases.proto",
    "containerd/services/images/v1/images.proto",
    "containerd/services/containers/v1/containers.proto",
    "containerd/services/namespaces/v1/namespace.proto",
    "containerd/services/introspection/v1/introspection.proto",
    "containerd/services/version/v1/version.proto",
    "containerd/services/transfer/v1/transfer.proto",
    "containerd/services/streaming/v1/streaming.proto",
    "containerd/types/transfer/registry.proto",
    "containerd/types/transfer/imagestore.proto",
    "containerd/types/transfer/importexport.proto",
    "containerd/types/transfer/progress.proto",
    "containerd/types/transfer/streaming.proto",
    "strata/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    let cri = protox::compile(["k8s/cri/runtime/v1/api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(cri)?;
    Ok(())
}
