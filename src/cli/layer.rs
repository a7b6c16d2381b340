//! `strata layer ...`: apply a layer blob to a directory, create one from two trees, or
//! write a blob's tar out, directly (no daemon) — for scripting and benchmarks.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use differ::diff::{Changes, DiffOptions};
use differ::{Compression, WhiteoutMode};

/// Bytes `layer cat` reads and writes at a time, as an apply's pipeline does (256 KiB chunks
/// and more).
const CAT_CHUNK: usize = 1 << 20;

/// `strata layer` arguments.
#[derive(Debug, Args)]
pub struct LayerArgs {
    #[command(subcommand)]
    pub command: LayerCommand,
}

/// Whiteout handling on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// overlayfs upper directory: whiteout devices and opaque xattrs.
    Overlay,
    /// Plain tree: delete whited-out paths.
    Native,
}

/// Output compression on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// No compression.
    None,
}

/// One layer command.
#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Apply a layer blob (tar, tar.gz or tar.zst, sniffed) into DIR; prints the diffID.
    Apply {
        /// Whiteout mode.
        #[arg(long, value_enum, default_value = "native")]
        mode: Mode,
        /// Overlay mode: a lower layer's directory (repeat, nearest first); directories
        /// the layer needs but does not declare take their metadata from there.
        #[arg(long = "lower")]
        lowers: Vec<PathBuf>,
        /// The blob.
        blob: PathBuf,
        /// Target directory (created if missing).
        dir: PathBuf,
    },
    /// Write a layer blob's tar (tar, tar.gz or tar.zst, sniffed) to standard output, to
    /// inspect it with `tar -t`; the decompression alone, as an apply does it.
    Cat {
        /// The blob.
        blob: PathBuf,
    },
    /// Write the changes from LOWER to UPPER as a layer to OUT; prints digest and diffID.
    Diff {
        /// Treat UPPER as an overlay upper directory (LOWER is ignored).
        #[arg(long)]
        overlay: bool,
        /// Compression.
        #[arg(long, value_enum, default_value = "gzip")]
        compression: CompressionArg,
        /// Clamp newer mtimes to this Unix time.
        #[arg(long)]
        source_date_epoch: Option<i64>,
        /// The base tree.
        lower: PathBuf,
        /// The changed tree.
        upper: PathBuf,
        /// Output file.
        out: PathBuf,
    },
}

/// Runs a layer command.
pub fn run(args: LayerArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.command {
        LayerCommand::Apply {
            mode,
            lowers,
            blob,
            dir,
        } => {
            if matches!(mode, Mode::Native) && !lowers.is_empty() {
                return Err("--lower needs --mode overlay".into());
            }
            std::fs::create_dir_all(&dir)?;
            let mode = match mode {
                Mode::Overlay => WhiteoutMode::Overlay { userxattr: false },
                Mode::Native => WhiteoutMode::Native,
            };
            let file = std::fs::File::open(&blob)?;
            let applied = differ::apply_layer(
                file,
                None,
                &dir,
                mode,
                differ::Lowers::Present(&lowers),
                &differ::LayerLimits::default(),
            )?;
            println!("{} {}", applied.diff_id, applied.size);
        }
        LayerCommand::Cat { blob } => {
            let mut input = BufReader::with_capacity(CAT_CHUNK, std::fs::File::open(&blob)?);
            let compression = Compression::sniff(input.fill_buf()?);
            // Decompressed into a large buffer and written from it to standard output itself,
            // not its line-buffered writer: the time is the decompression's.
            let mut tar = BufReader::with_capacity(CAT_CHUNK, compression.decoder(input)?);
            let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
            std::io::copy(&mut tar, &mut out)?;
        }
        LayerCommand::Diff {
            overlay,
            compression,
            source_date_epoch,
            lower,
            upper,
            out,
        } => {
            let compression = match compression {
                CompressionArg::Gzip => Compression::Gzip,
                CompressionArg::Zstd => Compression::Zstd,
                CompressionArg::None => Compression::None,
            };
            let changes = if overlay {
                Changes::OverlayUpper(&upper)
            } else {
                Changes::Trees {
                    lower: &lower,
                    upper: &upper,
                }
            };
            let file = std::io::BufWriter::new(std::fs::File::create(&out)?);
            let created = differ::diff::write_layer(
                changes,
                file,
                DiffOptions {
                    compression,
                    source_date_epoch,
                },
            )?;
            println!("{} {} {}", created.digest, created.size, created.diff_id);
        }
    }
    Ok(())
}
