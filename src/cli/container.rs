//! `strata container ...`: containerd's container records, with their snapshots.

use std::collections::HashMap;
use std::io::Write;

use clap::Subcommand;
use tonic::transport::Channel;

use super::{Error, StoreArgs, request};
use api::services::containers::v1 as cpb;
use api::services::containers::v1::containers_client::ContainersClient;
use api::services::snapshots::v1 as spb;
use api::services::snapshots::v1::snapshots_client::SnapshotsClient;

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
            let done = super::unpack(channel.clone(), args, &name).await?;
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
