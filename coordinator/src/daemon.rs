//! `pixmesh coordinator`: the coordinator daemon.
//!
//! It serves the HTTP API over the durable job store, runs the libp2p node
//! agents enrol with and take tasks from, and drives the scheduler's clock
//! (health, lease expiry, backoff) every 100 ms.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use pixmesh_agent::daemon::shutdown_signal;
use pixmesh_agent::say;
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
    /// libp2p listen address for agents; repeat for several.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "PIXMESH_P2P_LISTEN",
        value_delimiter = ',',
        default_value = "/ip4/0.0.0.0/udp/7701/quic-v1,/ip4/0.0.0.0/tcp/7701"
    )]
    pub p2p_listen: Vec<pixmesh_mesh::Multiaddr>,
    /// Do not announce or discover peers on the LAN with mDNS.
    #[arg(long, env = "PIXMESH_NO_MDNS")]
    pub no_mdns: bool,
    /// Silence after which an agent is dead and its tasks are reassigned, ms.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 4000,
        env = "PIXMESH_DEAD_AFTER_MS"
    )]
    pub dead_after_ms: u64,
    /// Silence after which an agent gets no new work, ms.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        env = "PIXMESH_SUSPECT_AFTER_MS"
    )]
    pub suspect_after_ms: u64,
    /// How long an assignment holds without a progress report, ms.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "PIXMESH_LEASE_MS"
    )]
    pub lease_ms: u64,
    /// Attempts per task before it fails for good.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        env = "PIXMESH_MAX_ATTEMPTS"
    )]
    pub max_attempts: u32,
    /// Memory for recently stored or served blobs (job inputs waiting for
    /// agents, fresh results), MiB; 0 turns the cache off.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        env = "PIXMESH_BLOB_CACHE_MB"
    )]
    pub blob_cache_mb: usize,
}

/// Run the daemon until SIGINT or SIGTERM.
pub fn run_command(args: CoordinatorArgs) -> Result<ExitCode> {
    let dir = DataDir(
        args.data_dir
            .unwrap_or_else(|| crate::registry::home(None).join("coordinator")),
    );
    if args.suspect_after_ms >= args.dead_after_ms {
        anyhow::bail!("--suspect-after-ms must be less than --dead-after-ms");
    }
    let config = SchedulerConfig {
        lease_ms: args.lease_ms,
        max_attempts: args.max_attempts.max(1),
        suspect_after_ms: args.suspect_after_ms,
        dead_after_ms: args.dead_after_ms,
        ..SchedulerConfig::default()
    };
    let coordinator = Arc::new(Coordinator::open(&dir, config)?);
    coordinator.set_blob_cache(args.blob_cache_mb.saturating_mul(1 << 20));
    let keypair = pixmesh_mesh::identity::load_or_create(&dir.0.join("identity.key"))?;
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
        let (node, mesh_addrs) = crate::mesh::start(
            coordinator.clone(),
            keypair,
            args.p2p_listen.clone(),
            !args.no_mdns,
        )
        .await?;
        say!(
            "pixmesh coordinator listening on http://{addr} (data in {}, API token in {})",
            dir.0.display(),
            dir.token().display()
        );
        say!("peer id {}", node.peer_id());
        for a in &mesh_addrs {
            say!("mesh address {a}");
        }
        let info = Arc::new(crate::api::Info {
            peer_id: node.peer_id().to_string(),
            mesh_addrs: mesh_addrs.iter().map(|a| a.to_string()).collect(),
            version: crate::mesh::VERSION.to_owned(),
        });
        let ticker = {
            let c = coordinator.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
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
        let served = axum::serve(listener, crate::api::router(coordinator, &token, info))
            .with_graceful_shutdown(shutdown_signal())
            .await;
        ticker.abort();
        // Agents notice the restart at once and say hello again.
        node.close_all().await;
        served.context("the HTTP server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
