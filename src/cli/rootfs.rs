//! `strata rootfs ...`: a root filesystem on an image's layers (unpacked first, in the
//! daemon), printed as mounts or mounted; and unmounting it.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use tonic::transport::Channel;

use super::{Error, StoreArgs, request};
use api::services::snapshots::v1 as spb;
use api::services::snapshots::v1::snapshots_client::SnapshotsClient;

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

/// Runs a rootfs command.
pub async fn rootfs(
    channel: Channel,
    args: &StoreArgs,
    command: RootfsCommand,
    out: &mut impl Write,
) -> Result<(), Error> {
    match command {
        RootfsCommand::Prepare { name, key, mount } => {
            let done = super::unpack(channel.clone(), args, &name).await?;
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
