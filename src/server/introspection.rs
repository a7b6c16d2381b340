//! `containerd.services.introspection.v1.Introspection` and `containerd.services.version.v1
//! .Version`: what a client asks a containerd before using it (which snapshotters exist,
//! with which capabilities and root, and who the server is).

use std::borrow::Cow;
use std::path::Path;

use snapshotter::Filters;
use snapshotter::filter::Adaptor;
use tonic::{Request, Response, Status};

use crate::instances::Instances;
use crate::status::to_status;
use api::services::introspection::v1 as pb;
use api::services::introspection::v1::introspection_server::Introspection;
use api::services::version::v1 as version;
use api::services::version::v1::version_server::Version;
use api::types::Platform;

/// Introspection over the daemon's plugins.
pub struct IntrospectionService {
    plugins: Vec<pb::Plugin>,
    uuid: String,
}

/// A plugin seen through containerd's filter language.
struct PluginFields<'a>(&'a pb::Plugin);

impl Adaptor for PluginFields<'_> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path {
            [f] if f == "type" => Some(self.0.r#type.as_str().into()),
            [f] if f == "id" => Some(self.0.id.as_str().into()),
            _ => None,
        }
    }
}

/// This machine's platform as OCI names it.
fn platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: imagestore::oci::architecture().into(),
        ..Default::default()
    }
}

fn plugin(r#type: &str, id: &str) -> pb::Plugin {
    pb::Plugin {
        r#type: r#type.into(),
        id: id.into(),
        platforms: vec![platform()],
        ..Default::default()
    }
}

/// The server's identity, made once per root and kept in `<root>/uuid`.
fn server_uuid(root: &Path) -> std::io::Result<String> {
    let path = root.join("uuid");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    std::fs::write(&path, &uuid)?;
    Ok(uuid)
}

impl IntrospectionService {
    /// The plugins of `instances`, with the image store under `root`.
    pub fn new(instances: &Instances, root: &Path) -> std::io::Result<Self> {
        let mut plugins = Vec::new();
        for inst in instances.all() {
            let mut p = plugin("io.containerd.snapshotter.v1", &inst.name);
            p.exports
                .insert("root".into(), inst.root.to_string_lossy().into_owned());
            p.capabilities.push("rebase".into());
            plugins.push(p);
        }
        plugins.push(plugin("io.containerd.content.v1", "content"));
        plugins.push(plugin("io.containerd.differ.v1", "strata"));
        for service in [
            "content-service",
            "images-service",
            "containers-service",
            "leases-service",
            "namespaces-service",
            "snapshots-service",
            "diff-service",
            "introspection-service",
        ] {
            plugins.push(plugin("io.containerd.service.v1", service));
        }
        Ok(IntrospectionService {
            plugins,
            uuid: server_uuid(root)?,
        })
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        request: Request<pb::PluginsRequest>,
    ) -> Result<Response<pb::PluginsResponse>, Status> {
        let filters = Filters::parse(&request.into_inner().filters).map_err(to_status)?;
        let plugins = self
            .plugins
            .iter()
            .filter(|p| filters.matches(&PluginFields(p)))
            .cloned()
            .collect();
        Ok(Response::new(pb::PluginsResponse { plugins }))
    }

    async fn server(&self, _request: Request<()>) -> Result<Response<pb::ServerResponse>, Status> {
        Ok(Response::new(pb::ServerResponse {
            uuid: self.uuid.clone(),
            pid: std::process::id().into(),
            pidns: pid_namespace(),
            deprecations: Vec::new(),
        }))
    }

    async fn plugin_info(
        &self,
        request: Request<pb::PluginInfoRequest>,
    ) -> Result<Response<pb::PluginInfoResponse>, Status> {
        let r = request.into_inner();
        let found = self
            .plugins
            .iter()
            .find(|p| p.r#type == r.r#type && p.id == r.id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("plugin {}.{}: not found", r.r#type, r.id)))?;
        Ok(Response::new(pb::PluginInfoResponse {
            plugin: Some(found),
            extra: None,
        }))
    }
}

/// The inode of this process's PID namespace, as containerd reports it.
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// The Version service.
pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(
        &self,
        _request: Request<()>,
    ) -> Result<Response<version::VersionResponse>, Status> {
        Ok(Response::new(version::VersionResponse {
            version: format!("strata {}", env!("CARGO_PKG_VERSION")),
            revision: String::new(),
        }))
    }
}
