//! The `pixmesh-agent` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::AgentArgs;

/// pixmesh-agent: the device daemon of a pixmesh mesh. It enrols with a
/// coordinator, takes image tasks from it over libp2p, runs them (native
/// ops and sandboxed WebAssembly plugins) and sends the results back.
///
/// Settings come from flags, PIXMESH_* environment variables and a TOML
/// file (--config), in that order. Logs go to stderr; RUST_LOG filters them
/// (default: info).
#[derive(Debug, Parser)]
#[command(name = "pixmesh-agent", version)]
pub struct Cli {
    /// Log lines as readable text or as JSON objects (one per line).
    #[arg(
        long,
        value_enum,
        default_value_t,
        env = "PIXMESH_LOG_FORMAT",
        global = true
    )]
    log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM (in-flight tasks are handed
    /// back to the coordinator on the way out).
    Run(Box<AgentArgs>),
    /// Print this agent's peer id (creating its identity if there is none).
    Id {
        /// Data directory holding identity.key.
        #[arg(long, value_name = "DIR", env = "PIXMESH_AGENT_DIR")]
        data_dir: Option<std::path::PathBuf>,
    },
}

/// Parse arguments and run; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init("info,libp2p=warn", cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pixmesh-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Id { data_dir } => {
            let dir = data_dir.unwrap_or_else(crate::config::default_data_dir);
            let key = pixmesh_mesh::identity::load_or_create(&dir.join("identity.key"))?;
            println!("{}", key.public().to_peer_id());
            Ok(())
        }
        Command::Run(args) => {
            let config = args.resolve()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("pixmesh-agent")
                .build()?;
            runtime.block_on(crate::daemon::run(config))
        }
    }
}
