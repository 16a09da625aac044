//! `pixmesh coordinator`: the coordinator daemon.
//!
//! Today it serves the HTTP API over the durable job store and runs the
//! scheduler's clock; the libp2p side that hands tasks to agents is to come,
//! so submitted jobs wait with a status saying that no agent has joined.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;

use crate::scheduler::SchedulerConfig;
use crate::service::{Coordinator, DataDir, api_token};

/// `pixmesh coordinator` arguments.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Data directory: database, blobs, API token. Default: <pixmesh home>/coordinator.
    #[arg(long, value_name = "DIR", env = "PIXMESH_COORDINATOR_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for the HTTP API (keep it on loopback unless fronted by TLS).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:7700",
        env = "PIXMESH_API_LISTEN"
    )]
    pub listen: SocketAddr,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Run the daemon until SIGINT or SIGTERM.
pub fn run_command(args: CoordinatorArgs) -> Result<ExitCode> {
    let dir = DataDir(
        args.data_dir
            .unwrap_or_else(|| crate::registry::home(None).join("coordinator")),
    );
    let coordinator = Arc::new(Coordinator::open(&dir, SchedulerConfig::default())?);
    let token = api_token(&dir.token())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pixmesh-coordinator")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!(
            "pixmesh coordinator listening on http://{addr} (data in {}, API token in {})",
            dir.0.display(),
            dir.token().display()
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let ticker = {
            let c = coordinator.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    let c = c.clone();
                    match tokio::task::spawn_blocking(move || c.tick()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(cause = %format!("{e:#}"), "scheduler tick failed")
                        }
                        Err(e) => tracing::error!(cause = %e, "scheduler tick panicked"),
                    }
                }
            })
        };
        let served = axum::serve(listener, crate::api::router(coordinator, &token))
            .with_graceful_shutdown(shutdown_signal())
            .await;
        ticker.abort();
        served.context("the HTTP server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
