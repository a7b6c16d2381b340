//! `strata content ...` and `strata lease ...`: blobs and leases of a namespace.

use std::io::Write;

use clap::Subcommand;
use tonic::transport::Channel;

use super::{Error, StoreArgs, request};
use api::services::content::v1 as ctpb;
use api::services::content::v1::content_client::ContentClient;
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;

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
