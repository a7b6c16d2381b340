//! `strata`: the daemon (`strata serve`) and its command-line client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use strata::cli::snapshot::SnapshotArgs;
use strata::config::{
    Config, DEFAULT_ADDRESS, DEFAULT_CONFIG, DEFAULT_TOML, InstanceConfig, SnapshotterKind,
};
use strata::status::chain;

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Snapshotter and differ daemon for containerd"
)]
struct Cli {
    /// The daemon's unix socket.
    #[arg(long, global = true, env = "STRATA_ADDRESS")]
    address: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Manage snapshots through a running daemon (like `ctr snapshots`).
    #[command(alias = "snapshots")]
    Snapshot(SnapshotArgs),
    /// Apply or create layers directly, without a daemon.
    Layer(strata::cli::layer::LayerArgs),
    /// Images in the daemon's image store (import, list, inspect, remove, unpack).
    #[command(alias = "images")]
    Image {
        #[command(flatten)]
        store: strata::cli::StoreArgs,
        #[command(subcommand)]
        command: strata::cli::image::ImageCommand,
    },
    /// Root filesystems from images (prepare on an image's layers, mount, unmount).
    Rootfs {
        #[command(flatten)]
        store: strata::cli::StoreArgs,
        #[command(subcommand)]
        command: strata::cli::rootfs::RootfsCommand,
    },
    /// Blobs in the daemon's content store.
    Content {
        #[command(flatten)]
        store: strata::cli::StoreArgs,
        #[command(subcommand)]
        command: strata::cli::content::ContentCommand,
    },
    /// Leases of the daemon's image store.
    #[command(alias = "leases")]
    Lease {
        #[command(flatten)]
        store: strata::cli::StoreArgs,
        #[command(subcommand)]
        command: strata::cli::content::LeaseCommand,
    },
    /// Container records in the daemon's image store.
    #[command(alias = "containers")]
    Container {
        #[command(flatten)]
        store: strata::cli::StoreArgs,
        #[command(subcommand)]
        command: strata::cli::container::ContainerCommand,
    },
    /// Collect the image store's garbage through a running daemon: print what would be
    /// removed, or with --force remove it (containerd's semantics: images, containers,
    /// leases and gc.root labels keep what they reference).
    Gc {
        /// Remove, rather than only print.
        #[arg(long)]
        force: bool,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print shell completions for this CLI.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) for this CLI.
    Man,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a complete configuration with every default, commented.
    Default,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Root directory for snapshots and the index.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Snapshotter implementation of the single instance (ignored when the config file
    /// lists instances).
    #[arg(long, value_enum)]
    snapshotter: Option<SnapshotterKind>,
    /// TOML configuration file [default: /etc/strata/config.toml when it exists]. Flags
    /// override what it sets.
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this `host:port` (`/metrics`).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Read and write layer blobs in this OCI-layout directory instead of containerd's
    /// Content service.
    #[arg(long)]
    content_dir: Option<PathBuf>,
    /// containerd's socket, whose Content service holds the layer blobs.
    #[arg(long)]
    containerd_address: Option<PathBuf>,
    /// Seconds a layer created by Diff stays protected from containerd's garbage collector
    /// when the request carries no lease (default 3600).
    #[arg(long)]
    diff_lease_expiry: Option<u64>,
    /// This node's address in the fleet (`host:port`), as its peers list it: overrides
    /// `[fleet].advertise` (in Kubernetes, the node's IP from the downward API).
    #[arg(long, env = "STRATA_FLEET_ADVERTISE")]
    fleet_advertise: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve_config(args: &ServeArgs, address: Option<PathBuf>) -> Result<Config, String> {
    let mut config =
        Config::locate(args.config.as_deref(), Path::new(DEFAULT_CONFIG)).map_err(|e| chain(&e))?;
    if let Some(addr) = &args.metrics_address {
        config.metrics_address = Some(addr.clone());
    }
    if let Some(root) = &args.root {
        config.root = root.clone();
    }
    if let Some(advertise) = &args.fleet_advertise {
        match &mut config.fleet {
            Some(fleet) => fleet.advertise = Some(advertise.clone()),
            None => {
                return Err(
                    "--fleet-advertise needs a [fleet] section in the configuration".into(),
                );
            }
        }
    }
    if let Some(address) = address {
        config.address = address;
    }
    if let Some(dir) = &args.content_dir {
        config.differ.content_dir = Some(dir.clone());
    }
    if let Some(addr) = &args.containerd_address {
        config.differ.containerd_address = Some(addr.clone());
    }
    if let Some(secs) = args.diff_lease_expiry {
        config.differ.lease_expiry_secs = secs;
    }
    if let Some(kind) = args.snapshotter {
        if config.snapshotters.is_empty() {
            config.snapshotters.push(InstanceConfig::default_of(kind));
        } else {
            return Err(
                "--snapshotter cannot be combined with a config file that lists snapshotters"
                    .into(),
            );
        }
    }
    Ok(config)
}

/// Descriptors the daemon's table holds from the start: the directories two applies at once
/// keep open (512 each), the content store's files, the clients' sockets, with room to spare.
const FD_TABLE_SLOTS: u64 = 4096;

fn main() -> ExitCode {
    // Before any thread exists: taking the activated socket edits the environment.
    let activated = match strata::systemd::take_activated_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("strata: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    // Before any thread: growing the descriptor table later waits for RCU each time.
    if matches!(cli.command, Command::Serve(_)) {
        mountutil::fdtable::grow(FD_TABLE_SLOTS);
    }
    // At least two runtime threads, also on one CPU: the Snapshots service may run one call
    // on a runtime thread (see `SnapshotsService::call`) while another keeps serving.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("start the async runtime");
    runtime.block_on(run(cli, activated))
}

/// The exit code of a command's result; the error printed.
fn report(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A channel to the daemon at `address` (or the default socket); the error is printed.
async fn connect(address: Option<PathBuf>) -> Option<tonic::transport::Channel> {
    let address = address.unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS));
    match api::channel::connect(&address).await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("strata: connect {}: {}", address.display(), chain(&e));
            None
        }
    }
}

async fn run(cli: Cli, activated: Option<std::os::unix::net::UnixListener>) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_json);
            let config = match serve_config(&args, cli.address) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("strata: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = strata::daemon::run(config, activated).await {
                tracing::error!(error = %chain(&e), "daemon failed");
                return ExitCode::FAILURE;
            }
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => print!("{DEFAULT_TOML}"),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "strata", &mut std::io::stdout());
        }
        Command::Man => {
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                eprintln!("strata: {e}");
                return ExitCode::FAILURE;
            }
        }
        Command::Layer(args) => {
            if let Err(e) = strata::cli::layer::run(args) {
                eprintln!("strata: {}", chain(e.as_ref()));
                return ExitCode::FAILURE;
            }
        }
        command @ (Command::Image { .. }
        | Command::Rootfs { .. }
        | Command::Content { .. }
        | Command::Lease { .. }
        | Command::Container { .. }) => {
            let Some(channel) = connect(cli.address).await else {
                return ExitCode::FAILURE;
            };
            let mut out = std::io::stdout().lock();
            use strata::cli::{container, content, image, rootfs};
            return report(match command {
                Command::Image { store: s, command } => {
                    image::image(channel, &s, command, &mut out).await
                }
                Command::Rootfs { store: s, command } => {
                    rootfs::rootfs(channel, &s, command, &mut out).await
                }
                Command::Content { store: s, command } => {
                    content::content(channel, &s, command, &mut out).await
                }
                Command::Lease { store: s, command } => {
                    content::lease(channel, &s, command, &mut out).await
                }
                Command::Container { store: s, command } => {
                    container::container(channel, &s, command, &mut out).await
                }
                _ => unreachable!("matched above"),
            });
        }
        Command::Gc { force } => {
            let Some(channel) = connect(cli.address).await else {
                return ExitCode::FAILURE;
            };
            let mut out = std::io::stdout().lock();
            return report(strata::cli::gc::run(channel, force, &mut out).await);
        }
        Command::Snapshot(args) => {
            let Some(channel) = connect(cli.address).await else {
                return ExitCode::FAILURE;
            };
            let mut client = strata::cli::snapshots_client(channel);
            let mut out = std::io::stdout().lock();
            if let Err(e) = strata::cli::snapshot::run(&mut client, args, &mut out).await {
                eprintln!("strata: {}", chain(&e));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
