//! `strata snapshot ...`: the `ctr snapshots` commands against Strata's socket, with
//! `--json` output for machines.

use std::collections::HashMap;
use std::io::Write;

use clap::{Args, Subcommand};
use prost_types::FieldMask;
use serde_json::json;
use tonic::Status;

use super::SnapshotsClient;
use api::services::snapshots::v1 as pb;
use api::types::Mount;

/// Options shared by the snapshot commands.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Snapshotter instance name (matters only when the daemon serves several).
    #[arg(long, default_value = "strata")]
    pub snapshotter: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// One snapshot command.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots, optionally filtered (containerd filter syntax; several = OR).
    #[command(alias = "list")]
    Ls {
        /// Filters such as `kind==active` or `labels."a"==b`.
        filters: Vec<String>,
    },
    /// Show a snapshot's info.
    Info {
        /// Key or name.
        key: String,
    },
    /// Prepare an active snapshot and print its mounts.
    Prepare(NewSnapshot),
    /// Create a read-only view and print its mounts.
    View(NewSnapshot),
    /// Commit an active snapshot under a name.
    Commit {
        /// New committed name.
        name: String,
        /// Active key.
        key: String,
        /// Rebase onto this parent (only for a snapshot prepared without one).
        #[arg(long)]
        parent: Option<String>,
        /// Labels, `key=value`.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove snapshots.
    #[command(alias = "remove", alias = "delete")]
    Rm {
        /// Keys or names.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print the mount commands for a snapshot at a target.
    Mounts {
        /// Where the mounts would go.
        target: String,
        /// Key.
        key: String,
    },
    /// Show disk usage.
    Usage {
        /// Key or name; all snapshots if omitted.
        key: Option<String>,
    },
    /// Set (`k=v`) or delete (`k=`) labels and print the result.
    Label {
        /// Key or name.
        key: String,
        /// `k=v` pairs; an empty value deletes.
        labels: Vec<String>,
    },
    /// Reclaim the disk space of removed snapshots.
    Cleanup,
}

/// Arguments of `prepare` and `view`.
#[derive(Debug, Args)]
pub struct NewSnapshot {
    /// New key.
    pub key: String,
    /// Committed parent.
    pub parent: Option<String>,
    /// Labels, `key=value`.
    #[arg(long = "label")]
    pub labels: Vec<String>,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The daemon answered with an error.
    #[error("{}", .0.message())]
    Rpc(Status),
    /// A label argument is not `key=value`.
    #[error("label {0:?} is not key=value")]
    BadLabel(String),
    /// Writing the output failed.
    #[error("write output")]
    Output(#[from] std::io::Error),
}

impl From<Status> for CommandError {
    fn from(s: Status) -> Self {
        CommandError::Rpc(s)
    }
}

fn parse_labels(labels: &[String]) -> Result<HashMap<String, String>, CommandError> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CommandError::BadLabel(l.clone()))
        })
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::View) => "View",
        Ok(pb::Kind::Active) => "Active",
        Ok(pb::Kind::Committed) => "Committed",
        _ => "Unknown",
    }
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(|t| t.to_string()).unwrap_or_default()
}

fn info_json(i: &pb::Info) -> serde_json::Value {
    json!({
        "name": i.name,
        "parent": i.parent,
        "kind": kind_name(i.kind),
        "created": timestamp(&i.created_at),
        "updated": timestamp(&i.updated_at),
        "labels": i.labels,
    })
}

fn mounts_json(mounts: &[Mount]) -> serde_json::Value {
    mounts
        .iter()
        .map(|m| json!({"type": m.r#type, "source": m.source, "options": m.options}))
        .collect()
}

fn mount_commands(out: &mut impl Write, target: &str, mounts: &[Mount]) -> std::io::Result<()> {
    for m in mounts {
        writeln!(
            out,
            "mount -t {} {} {} -o {}",
            m.r#type,
            m.source,
            target,
            m.options.join(",")
        )?;
    }
    Ok(())
}

/// Prints rows as aligned columns, like `ctr`'s tabwriter output.
fn table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}    ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

async fn list_all(
    client: &mut SnapshotsClient,
    snapshotter: &str,
    filters: Vec<String>,
) -> Result<Vec<pb::Info>, Status> {
    let mut stream = client
        .list(pb::ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters,
        })
        .await?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(msg) = stream.message().await? {
        infos.extend(msg.info);
    }
    Ok(infos)
}

/// Runs one snapshot command, writing its output to `out`.
pub async fn run(
    client: &mut SnapshotsClient,
    args: SnapshotArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let sn = args.snapshotter;
    match args.command {
        SnapshotCommand::Ls { filters } => {
            let infos = list_all(client, &sn, filters).await?;
            if args.json {
                let v: Vec<_> = infos.iter().map(info_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"))?;
            } else {
                let mut rows = vec![vec!["KEY".into(), "PARENT".into(), "KIND".into()]];
                rows.extend(
                    infos
                        .iter()
                        .map(|i| vec![i.name.clone(), i.parent.clone(), kind_name(i.kind).into()]),
                );
                table(out, &rows)?;
            }
        }
        SnapshotCommand::Info { key } => {
            let info = client
                .stat(pb::StatSnapshotRequest {
                    snapshotter: sn,
                    key,
                })
                .await?
                .into_inner()
                .info
                .unwrap_or_default();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&info_json(&info)).expect("json")
            )?;
        }
        SnapshotCommand::Prepare(new) => {
            let r = pb::PrepareSnapshotRequest {
                snapshotter: sn,
                key: new.key,
                parent: new.parent.unwrap_or_default(),
                labels: parse_labels(&new.labels)?,
            };
            let mounts = client.prepare(r).await?.into_inner().mounts;
            print_mounts(out, args.json, &mounts)?;
        }
        SnapshotCommand::View(new) => {
            let r = pb::ViewSnapshotRequest {
                snapshotter: sn,
                key: new.key,
                parent: new.parent.unwrap_or_default(),
                labels: parse_labels(&new.labels)?,
            };
            let mounts = client.view(r).await?.into_inner().mounts;
            print_mounts(out, args.json, &mounts)?;
        }
        SnapshotCommand::Commit {
            name,
            key,
            parent,
            labels,
        } => {
            client
                .commit(pb::CommitSnapshotRequest {
                    snapshotter: sn,
                    name,
                    key,
                    labels: parse_labels(&labels)?,
                    parent: parent.unwrap_or_default(),
                })
                .await?;
        }
        SnapshotCommand::Rm { keys } => {
            for key in keys {
                client
                    .remove(pb::RemoveSnapshotRequest {
                        snapshotter: sn.clone(),
                        key,
                    })
                    .await?;
            }
        }
        SnapshotCommand::Mounts { target, key } => {
            let mounts = client
                .mounts(pb::MountsRequest {
                    snapshotter: sn,
                    key,
                })
                .await?
                .into_inner()
                .mounts;
            if args.json {
                writeln!(out, "{}", mounts_json(&mounts))?;
            } else {
                mount_commands(out, &target, &mounts)?;
            }
        }
        SnapshotCommand::Usage { key } => {
            let keys = match key {
                Some(k) => vec![k],
                None => list_all(client, &sn, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect(),
            };
            let mut rows = vec![vec!["KEY".into(), "SIZE".into(), "INODES".into()]];
            let mut json_rows = Vec::new();
            for key in keys {
                let u = client
                    .usage(pb::UsageRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    })
                    .await?
                    .into_inner();
                json_rows.push(json!({"key": key, "size": u.size, "inodes": u.inodes}));
                rows.push(vec![key, u.size.to_string(), u.inodes.to_string()]);
            }
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json_rows).expect("json")
                )?;
            } else {
                table(out, &rows)?;
            }
        }
        SnapshotCommand::Label { key, labels } => {
            let labels = parse_labels(&labels)?;
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let info = client
                .update(pb::UpdateSnapshotRequest {
                    snapshotter: sn,
                    info: Some(pb::Info {
                        name: key,
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask { paths }),
                })
                .await?
                .into_inner()
                .info
                .unwrap_or_default();
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&info.labels).expect("json")
                )?;
            } else {
                let mut labels: Vec<_> = info.labels.into_iter().collect();
                labels.sort();
                for (k, v) in labels {
                    writeln!(out, "{k}={v}")?;
                }
            }
        }
        SnapshotCommand::Cleanup => {
            client
                .cleanup(pb::CleanupRequest { snapshotter: sn })
                .await?;
        }
    }
    Ok(())
}

fn print_mounts(out: &mut impl Write, json: bool, mounts: &[Mount]) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", mounts_json(mounts))
    } else {
        mount_commands(out, "<target>", mounts)
    }
}
