//! `strata image ...`: pulls, pushes, imports, exports and tags through containerd's
//! Transfer service (run in the daemon, as for ctr 2.x: [`super::transfer`]); unpacking
//! through Strata's admin API; listing, inspecting and removing images through containerd's
//! Images service.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Subcommand;
use tonic::transport::Channel;

use super::transfer::{self, Session, image_store, platform};
use super::{Error, StoreArgs, request};
use api::admin::v1 as admin;
use api::any;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;
use api::types::transfer as t;

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
    /// Push an image to a registry (the blobs it lacks, then the manifests).
    Push {
        /// Where to, `registry/repository[:tag]`.
        reference: String,
        /// The image to push (default: the reference).
        local: Option<String>,
        /// Platforms of an index to push (default: all).
        #[arg(long)]
        platform: Vec<String>,
        /// Plain HTTP (always for registries on loopback).
        #[arg(long)]
        plain_http: bool,
        /// Credentials, `user[:password]` (default: the docker config file's, or none).
        #[arg(long)]
        user: Option<String>,
    },
    /// Import an image archive (an OCI layout, as a directory or a tar; or a docker
    /// archive; compressed or not) and unpack its images.
    Import {
        path: PathBuf,
        /// Only store the content.
        #[arg(long)]
        no_unpack: bool,
        /// Names for images the archive names by tag only: `<base>:<tag>` (default:
        /// `import-<date>`, as ctr).
        #[arg(long)]
        base_name: Option<String>,
    },
    /// Export images as an OCI layout tar (with docker's manifest.json).
    Export {
        /// The archive to write (`-`: standard output).
        out: PathBuf,
        names: Vec<String>,
        /// Platforms to include (default: this machine's).
        #[arg(long)]
        platform: Vec<String>,
        /// Every platform.
        #[arg(long)]
        all_platforms: bool,
    },
    /// Name an image's target again.
    Tag {
        source: String,
        targets: Vec<String>,
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
            platform: wanted,
            plain_http,
            user,
            quiet,
        } => {
            let platform = platform(&wanted.unwrap_or_else(imagestore::oci::this_platform))?;
            let store = t::ImageStore {
                name: reference.clone(),
                platforms: vec![platform.clone()],
                unpacks: vec![t::UnpackConfiguration {
                    platform: Some(platform),
                    snapshotter: args.snapshotter.clone(),
                }],
                ..Default::default()
            };
            let display = super::progress::PullDisplay::new(quiet);
            let remote = Remote {
                reference: &reference,
                plain_http,
                user,
            };
            let tally = registry_transfer(channel, args, remote, store, &display, Way::Pull).await;
            display.finish();
            let tally = tally?;
            writeln!(
                out,
                "pulled {reference}: {} blobs downloaded ({} bytes), {} present; {} layers applied, {} already present",
                tally.downloaded.len(),
                tally.downloaded.values().sum::<i64>(),
                tally.present.len(),
                tally.applied,
                tally.existed
            )?;
        }
        ImageCommand::Push {
            reference,
            local,
            platform: wanted,
            plain_http,
            user,
        } => {
            let mut store = image_store(local.as_deref().unwrap_or(&reference), Default::default());
            store.platforms = wanted
                .iter()
                .map(|p| platform(p))
                .collect::<Result<_, _>>()?;
            let display = super::progress::PullDisplay::new(false);
            let remote = Remote {
                reference: &reference,
                plain_http,
                user,
            };
            let pushed = registry_transfer(channel, args, remote, store, &display, Way::Push).await;
            display.finish();
            let tally = pushed?;
            writeln!(
                out,
                "pushed {reference}: {} blobs uploaded, {} present",
                tally.downloaded.len(),
                tally.present.len()
            )?;
        }
        ImageCommand::Import {
            path,
            no_unpack,
            base_name,
        } => {
            let tally = import(channel, args, &path, no_unpack, base_name).await?;
            for name in &tally.saved {
                writeln!(out, "imported {name}")?;
            }
            if !no_unpack {
                writeln!(
                    out,
                    "unpacked {}: {} layers applied, {} already present",
                    tally.saved.join(", "),
                    tally.applied,
                    tally.existed
                )?;
            }
        }
        ImageCommand::Export {
            out: path,
            names,
            platform: wanted,
            all_platforms,
        } => {
            let written = export(channel, args, &path, names, wanted, all_platforms).await?;
            if path.as_os_str() != "-" {
                writeln!(out, "exported {} ({written} bytes)", path.display())?;
            }
        }
        ImageCommand::Tag { source, targets } => {
            for target in targets {
                let session = Session::begin(channel.clone(), &args.namespace).await?;
                let from = any::pack(&image_store(&source, Default::default()));
                let to = any::pack(&image_store(&target, Default::default()));
                session.transfer(from, to, None).await?;
                writeln!(out, "{target}")?;
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

/// What a transfer's progress said: blobs transferred (with their sizes) and present,
/// images saved, layers applied and found.
#[derive(Default)]
struct Tally {
    downloaded: BTreeMap<String, i64>,
    present: BTreeMap<String, i64>,
    saved: Vec<String>,
    applied: usize,
    existed: usize,
}

impl Tally {
    fn note(&mut self, p: &t::Progress) {
        match p.event.as_str() {
            "complete" if p.desc.is_some() => {
                self.downloaded.insert(p.name.clone(), p.total);
            }
            "already exists" => {
                self.present.insert(p.name.clone(), p.total);
            }
            "saved" => self.saved.push(p.name.clone()),
            "applied" => self.applied += 1,
            "exists" => self.existed += 1,
            _ => {}
        }
    }
}

/// A registry reference and how to reach it.
struct Remote<'a> {
    reference: &'a str,
    plain_http: bool,
    /// `user[:password]`, else the docker config file's credentials, else none.
    user: Option<String>,
}

/// Which way an image goes between the registry and the store.
enum Way {
    Pull,
    Push,
}

/// Runs a transfer between the daemon's image store (`store`) and `remote`, showing its
/// progress; what it said.
async fn registry_transfer(
    channel: Channel,
    args: &StoreArgs,
    remote: Remote<'_>,
    store: t::ImageStore,
    display: &super::progress::PullDisplay,
    way: Way,
) -> Result<Tally, Error> {
    let session = Session::begin(channel, &args.namespace).await?;
    let progress = session.open("progress").await?;
    let creds = session.open("creds").await?;
    let registry = t::OciRegistry {
        reference: remote.reference.to_string(),
        resolver: Some(t::RegistryResolver {
            auth_stream: creds.id.clone(),
            default_scheme: if remote.plain_http {
                "http".into()
            } else {
                String::new()
            },
            ..Default::default()
        }),
    };
    let user = remote.user;
    transfer::answer_credentials(creds, move |host| {
        super::credentials::credentials(host, user.as_deref())
    });
    let progress_id = progress.id.clone();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let following = {
        let (tally, display) = (Arc::clone(&tally), display.clone());
        transfer::follow_progress(progress, move |p| {
            display.event(&p);
            tally.lock().expect("tally").note(&p);
        })
    };
    let (source, destination) = match way {
        Way::Pull => (any::pack(&registry), any::pack(&store)),
        Way::Push => (any::pack(&store), any::pack(&registry)),
    };
    let done = session
        .transfer(source, destination, Some(progress_id))
        .await;
    transfer::progress_done(following).await;
    done?;
    Ok(std::mem::take(&mut *tally.lock().expect("tally")))
}

/// Streams the archive (or the directory, packed as one as it goes) at `path` to the
/// daemon, which imports it (and unpacks its images for this machine unless `no_unpack`);
/// what its progress said.
async fn import(
    channel: Channel,
    args: &StoreArgs,
    path: &std::path::Path,
    no_unpack: bool,
    base_name: Option<String>,
) -> Result<Tally, Error> {
    let reader: Box<dyn std::io::Read + Send> = if path.is_dir() {
        let (reader, writer) = std::io::pipe()?;
        let dir = path.to_path_buf();
        std::thread::spawn(move || {
            let mut packed = tar::Builder::new(writer);
            let _ = packed
                .append_dir_all(".", &dir)
                .and_then(|()| packed.finish());
        });
        Box::new(reader)
    } else {
        Box::new(std::fs::File::open(path)?)
    };
    let here = platform(&imagestore::oci::this_platform())?;
    let (prefix, overwrite) = match base_name {
        Some(base) => (base, false),
        None => (
            format!(
                "import-{}",
                &api::time::rfc3339_utc(std::time::SystemTime::now())[..10]
            ),
            true,
        ),
    };
    let store = t::ImageStore {
        platforms: vec![here.clone()],
        unpacks: if no_unpack {
            Vec::new()
        } else {
            vec![t::UnpackConfiguration {
                platform: Some(here),
                snapshotter: args.snapshotter.clone(),
            }]
        },
        extra_references: vec![t::ImageReference {
            name: prefix,
            is_prefix: true,
            allow_overwrite: overwrite,
            ..Default::default()
        }],
        ..Default::default()
    };
    let session = Session::begin(channel, &args.namespace).await?;
    let progress = session.open("progress").await?;
    let bytes = session.open("import").await?;
    let source = t::ImageImportStream {
        stream: bytes.id.clone(),
        ..Default::default()
    };
    let sending = transfer::send_bytes(bytes, reader);
    let progress_id = progress.id.clone();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let following = {
        let tally = Arc::clone(&tally);
        transfer::follow_progress(progress, move |p| tally.lock().expect("tally").note(&p))
    };
    let done = session
        .transfer(any::pack(&source), any::pack(&store), Some(progress_id))
        .await;
    transfer::progress_done(following).await;
    let sent = sending.await?;
    done?;
    sent?;
    Ok(std::mem::take(&mut *tally.lock().expect("tally")))
}

/// Has the daemon export images `names` into `path` (`-`: standard output); the bytes
/// written.
async fn export(
    channel: Channel,
    args: &StoreArgs,
    path: &std::path::Path,
    names: Vec<String>,
    platforms: Vec<String>,
    all_platforms: bool,
) -> Result<u64, Error> {
    let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(path)?))
    };
    let mut store = image_store("", Default::default());
    store.extra_references = names
        .into_iter()
        .map(|name| t::ImageReference {
            name,
            ..Default::default()
        })
        .collect();
    let session = Session::begin(channel, &args.namespace).await?;
    let bytes = session.open("export").await?;
    let destination = t::ImageExportStream {
        stream: bytes.id.clone(),
        platforms: platforms
            .iter()
            .map(|p| platform(p))
            .collect::<Result<_, _>>()?,
        all_platforms,
        ..Default::default()
    };
    let receiving = transfer::receive_bytes(bytes, out);
    let done = session
        .transfer(any::pack(&store), any::pack(&destination), None)
        .await;
    let received = receiving.await?;
    done?;
    Ok(received?)
}
