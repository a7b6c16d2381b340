//! The image-store commands, against the daemon's socket in one containerd namespace:
//! `image import|ls|inspect|rm|unpack`, `rootfs prepare|unmount`, `content ls|rm`,
//! `lease ls`, `container create|ls|info|rm|label`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tonic::Request;
use tonic::transport::Channel;

use crate::unpack::Client;
use api::headers::NAMESPACE as NAMESPACE_HEADER;
use api::services::containers::v1 as cpb;
use api::services::containers::v1::containers_client::ContainersClient;
use api::services::content::v1 as ctpb;
use api::services::content::v1::content_client::ContentClient;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::snapshots::v1 as spb;
use api::services::snapshots::v1::snapshots_client::SnapshotsClient;

type Error = Box<dyn std::error::Error>;

/// Runs a pull in the daemon, showing its progress on `display`; its summary.
async fn follow_pull(
    channel: Channel,
    pull: Request<api::admin::v1::PullRequest>,
    display: &super::progress::PullDisplay,
) -> Result<api::admin::v1::PullSummary, Error> {
    let mut events = api::admin::v1::admin_client::AdminClient::new(channel)
        .pull(pull)
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        if let Some(summary) = event.summary {
            return Ok(summary);
        }
        display.event(&event.item, &event.state, event.done, event.total);
    }
    Err("the daemon ended the pull without a summary".into())
}

/// Where the commands work.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// containerd namespace.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Snapshotter instance for unpacking and root filesystems.
    #[arg(long, global = true, default_value = "strata")]
    pub snapshotter: String,
}

/// `strata image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry and unpack it (only missing blobs are downloaded,
    /// only missing layers applied).
    Pull {
        reference: String,
        /// Platform, `os/arch[/variant]` (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// Plain HTTP (always for registries on loopback).
        #[arg(long)]
        plain_http: bool,
        /// Credentials, `user[:password]` (default: the docker config file's, or none).
        #[arg(long)]
        user: Option<String>,
        /// Print only the final summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Import an OCI image layout (directory or tar archive) and unpack its images.
    Import {
        path: PathBuf,
        /// Only store the content.
        #[arg(long)]
        no_unpack: bool,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// containerd filters (several: any).
        filters: Vec<String>,
    },
    /// Show an image as JSON.
    Inspect { name: String },
    /// Remove images (their content and snapshots go with the next collection).
    Rm {
        names: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
    /// Unpack an image into snapshots (nothing to do if every layer is there).
    Unpack { name: String },
}

/// `strata rootfs ...`.
#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Prepare an active snapshot KEY on image NAME's layers; print its mounts, or mount it.
    Prepare {
        name: String,
        key: String,
        /// Mount it on this directory.
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Unmount a root filesystem mounted by `rootfs prepare --mount`.
    Unmount { dir: PathBuf },
}

/// `strata content ...`.
#[derive(Debug, Subcommand)]
pub enum ContentCommand {
    /// List blobs.
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
    /// Remove blobs from the namespace.
    Rm { digests: Vec<String> },
}

/// `strata lease ...`.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// List leases.
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
}

/// `strata container ...`.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create container ID on image NAME, with a snapshot ID on the image's layers.
    Create { name: String, id: String },
    /// List containers.
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
    /// Show a container as JSON.
    Info { id: String },
    /// Remove containers and their snapshots.
    Rm { ids: Vec<String> },
    /// Set labels (`key=value`; `key=` removes).
    Label { id: String, labels: Vec<String> },
}

fn request<T>(ns: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(NAMESPACE_HEADER, ns.parse().expect("namespace"));
    r
}

/// Runs an image command.
pub async fn image(
    channel: Channel,
    args: &StoreArgs,
    command: ImageCommand,
    out: &mut impl Write,
) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    let mut images = ImagesClient::new(channel.clone());
    match command {
        ImageCommand::Pull {
            reference,
            platform,
            plain_http,
            user,
            quiet,
        } => {
            let registry = crate::unpack::pull::registry_of(&reference)?;
            let (username, password) =
                crate::unpack::pull::credentials(&registry, user.as_deref()).unwrap_or_default();
            let pull = request(
                ns,
                api::admin::v1::PullRequest {
                    reference: reference.clone(),
                    platform: platform.unwrap_or_default(),
                    plain_http,
                    username,
                    password,
                    snapshotter: args.snapshotter.clone(),
                    holder: crate::unpack::this_client(),
                },
            );
            let display = super::progress::PullDisplay::new(quiet);
            let pulled = follow_pull(channel, pull, &display).await;
            display.finish();
            let summary = pulled?;
            writeln!(
                out,
                "pulled {reference}: {} blobs downloaded ({} bytes), {} present; {} layers applied, {} already present",
                summary.downloaded,
                summary.bytes,
                summary.present,
                summary.applied,
                summary.existed
            )?;
        }
        ImageCommand::Import { path, no_unpack } => {
            let mut client = Client::new(channel, ns, &args.snapshotter);
            client.take_lease().await?;
            let names = client.import(&path).await?;
            for name in &names {
                writeln!(out, "imported {name}")?;
                if !no_unpack {
                    report_unpack(&mut client, name, out).await?;
                }
            }
            client.release_lease().await?;
        }
        ImageCommand::Ls { filters } => {
            let list = images
                .list(request(ns, ipb::ListImagesRequest { filters }))
                .await?
                .into_inner()
                .images;
            writeln!(out, "NAME\tTYPE\tDIGEST\tSIZE")?;
            for i in list {
                let t = i.target.unwrap_or_default();
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    i.name, t.media_type, t.digest, t.size
                )?;
            }
        }
        ImageCommand::Inspect { name } => {
            let image = images
                .get(request(ns, ipb::GetImageRequest { name }))
                .await?
                .into_inner()
                .image
                .unwrap_or_default();
            let t = image.target.unwrap_or_default();
            let json = serde_json::json!({
                "name": image.name,
                "labels": image.labels,
                "target": {"mediaType": t.media_type, "digest": t.digest, "size": t.size},
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
        ImageCommand::Rm { names, sync } => {
            let count = names.len();
            for (i, name) in names.into_iter().enumerate() {
                let r = ipb::DeleteImageRequest {
                    name: name.clone(),
                    sync: sync && i + 1 == count,
                    target: None,
                };
                images.delete(request(ns, r)).await?;
                writeln!(out, "{name}")?;
            }
        }
        ImageCommand::Unpack { name } => {
            let mut client = Client::new(channel, ns, &args.snapshotter);
            client.take_lease().await?;
            report_unpack(&mut client, &name, out).await?;
            client.release_lease().await?;
        }
    }
    Ok(())
}

/// Unpacks `name`, printing each layer's state and a total.
async fn report_unpack(client: &mut Client, name: &str, out: &mut impl Write) -> Result<(), Error> {
    let mut lines = Vec::new();
    let done = client
        .unpack(name, |layer, state| lines.push(format!("{layer}\t{state}")))
        .await?;
    for l in lines {
        writeln!(out, "{l}")?;
    }
    writeln!(
        out,
        "unpacked {name}: {} layers applied, {} already present",
        done.applied, done.existed
    )?;
    Ok(())
}

/// Runs a rootfs command.
pub async fn rootfs(
    channel: Channel,
    args: &StoreArgs,
    command: RootfsCommand,
    out: &mut impl Write,
) -> Result<(), Error> {
    match command {
        RootfsCommand::Prepare { name, key, mount } => {
            let mut client = Client::new(channel.clone(), &args.namespace, &args.snapshotter);
            client.take_lease().await?;
            let done = client.unpack(&name, |_, _| {}).await?;
            client.release_lease().await?;
            // Outside the lease: the root filesystem is the user's to remove (`strata
            // snapshot rm`), never the collector's; while it exists, its layers stay.
            let r = spb::PrepareSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                key: key.clone(),
                parent: done.chain,
                labels: HashMap::new(),
            };
            let mounts = SnapshotsClient::new(channel)
                .prepare(request(&args.namespace, r))
                .await?
                .into_inner()
                .mounts;
            match mount {
                Some(dir) => {
                    let mounts: Vec<snapshotter::Mount> = mounts
                        .into_iter()
                        .map(crate::convert::mount_from_pb)
                        .collect();
                    std::fs::create_dir_all(&dir)?;
                    mountutil::mount::mount_all(&mounts, &dir)?;
                    writeln!(out, "{key} mounted on {}", dir.display())?;
                }
                None => {
                    for m in mounts {
                        writeln!(out, "{} {} {}", m.r#type, m.source, m.options.join(","))?;
                    }
                }
            }
        }
        RootfsCommand::Unmount { dir } => {
            mountutil::mount::unmount(&dir)?;
            writeln!(out, "{}", dir.display())?;
        }
    }
    Ok(())
}

/// Runs a content command.
pub async fn content(
    channel: Channel,
    args: &StoreArgs,
    command: ContentCommand,
    out: &mut impl Write,
) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    let mut client = ContentClient::new(channel);
    match command {
        ContentCommand::Ls { filters } => {
            let mut stream = client
                .list(request(ns, ctpb::ListContentRequest { filters }))
                .await?
                .into_inner();
            writeln!(out, "DIGEST\tSIZE\tLABELS")?;
            while let Some(batch) = stream.message().await? {
                for i in batch.info {
                    let mut labels: Vec<String> =
                        i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    writeln!(out, "{}\t{}\t{}", i.digest, i.size, labels.join(","))?;
                }
            }
        }
        ContentCommand::Rm { digests } => {
            for digest in digests {
                let r = ctpb::DeleteContentRequest {
                    digest: digest.clone(),
                };
                client.delete(request(ns, r)).await?;
                writeln!(out, "{digest}")?;
            }
        }
    }
    Ok(())
}

/// Runs a lease command.
pub async fn lease(
    channel: Channel,
    args: &StoreArgs,
    command: LeaseCommand,
    out: &mut impl Write,
) -> Result<(), Error> {
    let LeaseCommand::Ls { filters } = command;
    let leases = LeasesClient::new(channel)
        .list(request(&args.namespace, lpb::ListRequest { filters }))
        .await?
        .into_inner()
        .leases;
    writeln!(out, "ID\tLABELS")?;
    for l in leases {
        let mut labels: Vec<String> = l.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        writeln!(out, "{}\t{}", l.id, labels.join(","))?;
    }
    Ok(())
}

/// Runs a container command.
pub async fn container(
    channel: Channel,
    args: &StoreArgs,
    command: ContainerCommand,
    out: &mut impl Write,
) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    let mut containers = ContainersClient::new(channel.clone());
    match command {
        ContainerCommand::Create { name, id } => {
            let mut client = Client::new(channel.clone(), ns, &args.snapshotter);
            client.take_lease().await?;
            let done = client.unpack(&name, |_, _| {}).await?;
            let r = spb::PrepareSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                key: id.clone(),
                parent: done.chain,
                labels: HashMap::new(),
            };
            SnapshotsClient::new(channel)
                .prepare(request(ns, r))
                .await?;
            let spec = serde_json::json!({
                "ociVersion": "1.1.0",
                "root": {"path": "rootfs"},
                "process": {"args": ["/bin/sh"], "cwd": "/"},
            });
            let c = cpb::Container {
                id: id.clone(),
                image: name,
                runtime: Some(cpb::container::Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: serde_json::to_vec(&spec)?,
                }),
                snapshotter: args.snapshotter.clone(),
                snapshot_key: id.clone(),
                ..Default::default()
            };
            containers
                .create(request(
                    ns,
                    cpb::CreateContainerRequest { container: Some(c) },
                ))
                .await?;
            client.release_lease().await?;
            writeln!(out, "{id}")?;
        }
        ContainerCommand::Ls { filters } => {
            let list = containers
                .list(request(ns, cpb::ListContainersRequest { filters }))
                .await?
                .into_inner()
                .containers;
            writeln!(out, "ID\tIMAGE\tRUNTIME")?;
            for c in list {
                let runtime = c.runtime.map(|r| r.name).unwrap_or_default();
                writeln!(out, "{}\t{}\t{runtime}", c.id, c.image)?;
            }
        }
        ContainerCommand::Info { id } => {
            let c = containers
                .get(request(ns, cpb::GetContainerRequest { id }))
                .await?
                .into_inner()
                .container
                .unwrap_or_default();
            let json = serde_json::json!({
                "id": c.id,
                "image": c.image,
                "labels": c.labels,
                "runtime": c.runtime.map(|r| r.name),
                "snapshotter": c.snapshotter,
                "snapshotKey": c.snapshot_key,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
        ContainerCommand::Rm { ids } => {
            let mut snaps = SnapshotsClient::new(channel);
            for id in ids {
                let c = containers
                    .get(request(ns, cpb::GetContainerRequest { id: id.clone() }))
                    .await?
                    .into_inner()
                    .container
                    .unwrap_or_default();
                if !c.snapshot_key.is_empty() {
                    let r = spb::RemoveSnapshotRequest {
                        snapshotter: c.snapshotter.clone(),
                        key: c.snapshot_key.clone(),
                    };
                    match snaps.remove(request(ns, r)).await {
                        Ok(_) => {}
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) => return Err(s.into()),
                    }
                }
                containers
                    .delete(request(ns, cpb::DeleteContainerRequest { id: id.clone() }))
                    .await?;
                writeln!(out, "{id}")?;
            }
        }
        ContainerCommand::Label { id, labels } => {
            let mut map = HashMap::new();
            let mut paths = Vec::new();
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                paths.push(format!("labels.{k}"));
                map.insert(k.to_string(), v.to_string());
            }
            let c = cpb::Container {
                id: id.clone(),
                labels: map,
                ..Default::default()
            };
            let updated = containers
                .update(request(
                    ns,
                    cpb::UpdateContainerRequest {
                        container: Some(c),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    },
                ))
                .await?
                .into_inner()
                .container
                .unwrap_or_default();
            let mut labels: Vec<String> = updated
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            writeln!(out, "{id}\t{}", labels.join(","))?;
        }
    }
    Ok(())
}
