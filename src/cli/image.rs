//! `strata image ...`: pulls, imports and unpacks run in the daemon (Strata's admin API);
//! listing, inspecting and removing images through containerd's Images service.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use tonic::transport::Channel;

use super::{Error, StoreArgs, request};
use api::admin::v1 as admin;
use api::admin::v1::admin_client::AdminClient;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;

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

/// Runs a pull in the daemon, showing its progress on `display`; its summary.
async fn follow_pull(
    channel: Channel,
    pull: tonic::Request<admin::PullRequest>,
    display: &super::progress::PullDisplay,
) -> Result<admin::PullSummary, Error> {
    let mut events = AdminClient::new(channel).pull(pull).await?.into_inner();
    while let Some(event) = events.message().await? {
        if let Some(summary) = event.summary {
            return Ok(summary);
        }
        display.event(&event.item, &event.state, event.done, event.total);
    }
    Err("the daemon ended the pull without a summary".into())
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
            let registry = super::credentials::registry_of(&reference)?;
            let (username, password) =
                super::credentials::credentials(&registry, user.as_deref()).unwrap_or_default();
            let pull = request(
                ns,
                admin::PullRequest {
                    reference: reference.clone(),
                    platform: platform.unwrap_or_default(),
                    plain_http,
                    username,
                    password,
                    snapshotter: args.snapshotter.clone(),
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
            let images = import(channel, args, &path, no_unpack).await?;
            for image in images {
                writeln!(out, "imported {}", image.name)?;
                if !no_unpack {
                    report_unpack(&image, out)?;
                }
            }
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
            let image = super::unpack(channel, args, &name).await?;
            report_unpack(&image, out)?;
        }
    }
    Ok(())
}

/// Prints an unpack's layers' states and a total.
fn report_unpack(image: &admin::Unpacked, out: &mut impl Write) -> Result<(), Error> {
    for l in &image.layers {
        writeln!(out, "{}\t{}", l.digest, l.state)?;
    }
    writeln!(
        out,
        "unpacked {}: {} layers applied, {} already present",
        image.name, image.applied, image.existed
    )?;
    Ok(())
}

/// Streams the archive (or the directory, packed as one) at `path` to the daemon, which
/// imports it (and unpacks its images unless `no_unpack`); the images.
async fn import(
    channel: Channel,
    args: &StoreArgs,
    path: &std::path::Path,
    no_unpack: bool,
) -> Result<Vec<admin::Unpacked>, Error> {
    let archive = if path.is_dir() {
        let mut packed = tar::Builder::new(Vec::new());
        packed.append_dir_all(".", path)?;
        std::io::Cursor::new(packed.into_inner()?).into_inner()
    } else {
        std::fs::read(path)?
    };
    const CHUNK: usize = 1 << 20;
    let mut requests = vec![admin::ImportRequest {
        snapshotter: args.snapshotter.clone(),
        no_unpack,
        data: Vec::new(),
    }];
    requests.extend(archive.chunks(CHUNK).map(|c| admin::ImportRequest {
        data: c.to_vec(),
        ..Default::default()
    }));
    let answer = AdminClient::new(channel)
        .max_encoding_message_size(api::headers::MAX_MESSAGE_SIZE)
        .import(request(&args.namespace, tokio_stream::iter(requests)))
        .await?
        .into_inner();
    Ok(answer.images)
}
