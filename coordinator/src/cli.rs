//! Command-line arguments and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pixmesh_agent::pipeline::Limits;
use pixmesh_protocol::JobSpec;

/// Exit status when every image succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status when at least one image failed (the others were written).
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for bad arguments, a bad spec, or nothing to do.
pub const EXIT_USAGE: u8 = 2;

/// pixmesh: serverless image processing on a mesh of edge devices.
///
/// `pixmesh run` processes images on this machine. On a mesh, `pixmesh
/// coordinator` runs the coordinator, agents join it with `pixmesh-agent
/// run`, and `pixmesh submit` / `status` / `results` work with jobs there.
#[derive(Debug, Parser)]
#[command(name = "pixmesh", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log lines as readable text or as JSON objects (one per line).
    #[arg(
        long,
        value_enum,
        default_value_t,
        env = "PIXMESH_LOG_FORMAT",
        global = true
    )]
    pub log_format: pixmesh_agent::logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline over images on this machine, in parallel on all cores.
    ///
    /// Inputs are files or directories (searched recursively for .jpg, .jpeg,
    /// .png, .webp and .gif; files named explicitly are always read). Formats
    /// are detected from the bytes, not the names. Outputs go to OUTDIR under
    /// the input's name (directories keep their structure) with the output
    /// format's extension. A failed image is reported with its reason and the
    /// rest still run; the exit status is 1 if any failed.
    #[command(after_help = "Examples:
  pixmesh run --steps \"orient | resize 800x600 fit=cover | webp q=80\" photos/ -o out/
  pixmesh run --pipeline spec.json a.jpg b.png -o out/ --json")]
    Run(RunArgs),
    /// Run the coordinator daemon: durable job store, the HTTP API for the
    /// CLI, and the libp2p node agents enrol with and take tasks from.
    ///
    /// On first start it creates an API token (file api-token in the data
    /// directory, mode 0600); make join tokens for agents with `pixmesh
    /// token create`. It prints its mesh addresses for agents' --bootstrap.
    Coordinator(crate::daemon::CoordinatorArgs),
    /// Submit a job to the coordinator: a pipeline and images.
    #[command(after_help = "Examples:
  pixmesh submit --steps \"orient | resize 800x600 fit=cover | webp q=80\" photos/ --wait
  pixmesh submit --pipeline spec.toml a.jpg b.png --json")]
    Submit(crate::client::SubmitArgs),
    /// Show a job: counts, why it waits, and every image with its state.
    Status {
        /// Job id.
        job: u64,
        /// Refresh every second until the job is finished (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// List jobs, newest first.
    Jobs {
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// Download a job's results into a directory (named as `pixmesh run` names them).
    Results {
        /// Job id.
        job: u64,
        /// Directory for the results (created if missing).
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// Cancel a job's unfinished images (agents working on them are told to stop).
    Cancel {
        /// Job id.
        job: u64,
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// The coordinator's node table: enrolled agents with health, RTT and
    /// load, and pending or refused peers.
    Nodes {
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// Join tokens that let agents enrol with the coordinator.
    #[command(subcommand)]
    Token(crate::client::TokenCommand),
    /// Manage the local plugin registry (WebAssembly transform plugins).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// A local testnet: a coordinator and agents as background processes on
    /// this machine, with commands to kill, restart and partition them.
    #[command(
        subcommand,
        after_help = "Examples:
  pixmesh testnet demo                # start, process the sample photos, stop
  pixmesh testnet up --agents 3       # then: eval \"$(pixmesh testnet env)\"
  pixmesh testnet kill agent-2
  pixmesh testnet down"
    )]
    Testnet(crate::testnet::TestnetCommand),
    /// Benchmark pixmesh against vipsthumbnail and ImageMagick on the same photos.
    ///
    /// Makes 256 px JPEG q80 thumbnails of every photo in DIR with each tool,
    /// each using every core, and prints throughput and the ratios.
    Bench(crate::bench::BenchArgs),
}

/// `pixmesh plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a plugin (interface, ABI version, a dry run on a 1x1 frame) and register it.
    Add {
        /// The .wasm module (or WebAssembly text).
        file: PathBuf,
        /// Name to refer to it by (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        home: HomeArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// List registered plugins.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Validate a plugin on the coordinator and deploy it there; agents
    /// fetch it by hash when a job needs it.
    Deploy {
        /// The .wasm module.
        file: PathBuf,
        /// Name jobs refer to it by (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// List the plugins deployed on the coordinator.
    Deployed {
        #[command(flatten)]
        remote: crate::client::Remote,
    },
    /// Remove a plugin by name, or by hash with all its names.
    Remove {
        /// Name or 64-hex-digit hash.
        what: String,
        #[command(flatten)]
        home: HomeArgs,
    },
}

/// Where pixmesh keeps its data.
#[derive(Debug, Clone, Args)]
pub struct HomeArgs {
    /// Data directory (plugins, compiled-code cache). Default: $PIXMESH_HOME,
    /// else $XDG_DATA_HOME/pixmesh, else ~/.local/share/pixmesh.
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
}

/// Plugin sandbox limits.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Largest linear memory of one plugin instance, in MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 1024,
        env = "PIXMESH_PLUGIN_MEMORY_MIB"
    )]
    pub plugin_memory_mib: usize,
    /// Deadline for one plugin call, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "PIXMESH_PLUGIN_TIMEOUT_MS"
    )]
    pub plugin_timeout_ms: u64,
    /// Plugin memory kept mapped per instance slot between images, in MiB:
    /// faster large frames, at the cost of that much resident memory per slot.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 64,
        env = "PIXMESH_PLUGIN_KEEP_RESIDENT_MIB"
    )]
    pub plugin_keep_resident_mib: usize,
}

impl SandboxArgs {
    /// As sandbox settings (cache dir unset).
    pub fn config(&self) -> pixmesh_agent::sandbox::SandboxConfig {
        pixmesh_agent::sandbox::SandboxConfig {
            max_memory_bytes: self.plugin_memory_mib.saturating_mul(1 << 20),
            timeout: std::time::Duration::from_millis(self.plugin_timeout_ms),
            keep_resident_bytes: self.plugin_keep_resident_mib.saturating_mul(1 << 20),
            ..Default::default()
        }
    }
}

/// Where the spec comes from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SpecSource {
    /// A job spec file: JSON, or TOML when the name ends in .toml.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// The spec as one line, e.g. "orient | resize 800x600 fit=cover | webp q=80".
    #[arg(long, value_name = "STEPS")]
    pub steps: Option<String>,
}

impl SpecSource {
    /// Read and validate the spec.
    pub fn load(&self) -> Result<JobSpec> {
        match (&self.pipeline, &self.steps) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read pipeline file {}", path.display()))?;
                let name = path.to_string_lossy();
                JobSpec::from_file_text(&name, &text)
                    .with_context(|| format!("bad pipeline file {}", path.display()))
            }
            (None, Some(line)) => JobSpec::from_compact(line).context("bad --steps"),
            (None, None) => anyhow::bail!("give --pipeline FILE or --steps \"...\""),
        }
    }
}

/// Per-image limits, shared by every command that decodes images.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Refuse images with more pixels than this (checked from the header).
    #[arg(long, value_name = "PIXELS", default_value_t = Limits::DEFAULT_MAX_PIXELS, env = "PIXMESH_MAX_PIXELS")]
    pub max_pixels: u64,
    /// Refuse input files larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::DEFAULT_MAX_INPUT_BYTES, env = "PIXMESH_MAX_INPUT_BYTES")]
    pub max_input_bytes: u64,
}

impl LimitArgs {
    /// As engine limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_input_bytes: self.max_input_bytes,
            max_pixels: self.max_pixels,
        }
    }
}

/// `pixmesh run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecSource,
    /// Image files or directories.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Directory for the results (created if missing).
    #[arg(short, long, value_name = "OUTDIR")]
    pub output: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print a machine-readable JSON report on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub home: HomeArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Set up `tracing` to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8, format: pixmesh_agent::logging::LogFormat) {
    let default = match verbose {
        0 => "warn,libp2p_kad=error",
        1 => "info,libp2p_kad=error",
        _ => "debug",
    };
    pixmesh_agent::logging::init(default, format);
}

/// Run a parsed command line; the exit code says how it went.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => crate::local::run_command(args),
        Command::Bench(args) => crate::bench::run_command(args),
        Command::Plugin(cmd) => plugin_command(cmd),
        Command::Coordinator(args) => crate::daemon::run_command(args),
        Command::Submit(args) => crate::client::submit(args),
        Command::Status { job, watch, remote } => crate::client::status(job, &remote, watch),
        Command::Jobs { remote } => crate::client::jobs(&remote),
        Command::Results {
            job,
            output,
            remote,
        } => crate::client::results(job, &output, &remote),
        Command::Cancel { job, remote } => crate::client::cancel(job, &remote),
        Command::Nodes { watch, remote } => crate::client::nodes(&remote, watch),
        Command::Token(cmd) => crate::client::token(cmd),
        Command::Testnet(cmd) => crate::testnet::command(cmd),
    }
}

/// A plugin file's bytes, and the name to give it: `--name`, else the file
/// name without its extension.
pub(crate) fn read_plugin(
    file: &std::path::Path,
    name: Option<String>,
) -> Result<(Vec<u8>, String)> {
    let wasm =
        std::fs::read(file).with_context(|| format!("cannot read plugin {}", file.display()))?;
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("give --name")?,
    };
    Ok((wasm, name))
}

fn plugin_command(cmd: PluginCommand) -> Result<ExitCode> {
    use crate::registry::{Registry, home};
    use pixmesh_agent::sandbox::PluginHost;
    match cmd {
        PluginCommand::Add {
            file,
            name,
            home: h,
            sandbox,
        } => {
            let registry = Registry::open(&home(h.home.as_deref()))?;
            let (wasm, name) = read_plugin(&file, name)?;
            let host = PluginHost::new(registry.sandbox_config(sandbox.config()))?;
            let hash = registry
                .add(&host, &wasm, &name)
                .with_context(|| format!("{} was not added", file.display()))?;
            println!("added {name} ({hash}, {} bytes)", wasm.len());
        }
        PluginCommand::List { json, home: h } => {
            let entries = Registry::open(&home(h.home.as_deref()))?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                println!("no plugins; add one with `pixmesh plugin add FILE`");
            } else {
                println!("{:<20} {:<64} {:>9}", "NAME", "HASH (BLAKE3)", "BYTES");
                for e in entries {
                    let names = if e.names.is_empty() {
                        "-".into()
                    } else {
                        e.names.join(",")
                    };
                    println!("{names:<20} {:<64} {:>9}", e.hash, e.bytes);
                }
            }
        }
        PluginCommand::Deploy { file, name, remote } => {
            return crate::client::deploy(&file, name, &remote);
        }
        PluginCommand::Deployed { remote } => return crate::client::deployed(&remote),
        PluginCommand::Remove { what, home: h } => {
            let removed = Registry::open(&home(h.home.as_deref()))?.remove(&what)?;
            println!(
                "removed {}",
                if removed.is_empty() {
                    what
                } else {
                    removed.join(", ")
                }
            );
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}
