//! `pixmesh-agent` settings: flags, `PIXMESH_*` environment variables and
//! an optional TOML file, in that order of precedence, then defaults.
//!
//! ```toml
//! # /etc/pixmesh/agent.toml
//! data_dir = "/var/lib/pixmesh-agent"
//! listen = ["/ip4/0.0.0.0/udp/7710/quic-v1", "/ip4/0.0.0.0/tcp/7710"]
//! bootstrap = ["/ip4/192.168.1.10/udp/7701/quic-v1/p2p/12D3KooW..."]
//! coordinators = ["12D3KooW..."]     # default: the peer ids in `bootstrap`
//! join_token = "pmj_..."              # from `pixmesh token create`; needed once
//! concurrency = 4                     # default: the number of cores
//! mdns = true
//! max_pixels = 100000000
//! max_input_bytes = 268435456
//! plugin_memory_mib = 1024
//! plugin_timeout_ms = 10000
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use pixmesh_mesh::{Multiaddr, PeerId};
use serde::Deserialize;

use crate::pipeline::Limits;
use crate::sandbox::SandboxConfig;

/// `pixmesh-agent run` flags. Every flag has a `PIXMESH_*` variable and a
/// key of the same name in the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// TOML config file (keys as the flags, with `_` for `-`).
    #[arg(long, value_name = "FILE", env = "PIXMESH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory: identity key, plugins, compiled-code cache.
    /// Default: $PIXMESH_HOME/agent, else ~/.local/share/pixmesh/agent.
    #[arg(long, value_name = "DIR", env = "PIXMESH_AGENT_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; repeat for several. Default: QUIC and TCP on
    /// every interface at ports the OS picks.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "PIXMESH_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<Multiaddr>,
    /// A peer to dial at start, normally the coordinator's address ending
    /// in /p2p/<peer id>; repeat for several.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "PIXMESH_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<Multiaddr>,
    /// Peer id of a coordinator this agent takes tasks from; repeat for
    /// several. Default: the peer ids in --bootstrap. Tasks from any other
    /// peer are refused.
    #[arg(
        long = "coordinator",
        value_name = "PEER_ID",
        env = "PIXMESH_COORDINATORS",
        value_delimiter = ','
    )]
    pub coordinators: Vec<PeerId>,
    /// Join token from `pixmesh token create`, presented once to enrol.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PIXMESH_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// Tasks run at once. Default: the number of cores.
    #[arg(long, value_name = "N", env = "PIXMESH_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long, env = "PIXMESH_NO_MDNS")]
    pub no_mdns: bool,
    /// Largest image accepted, in pixels (width x height). Default 100 MP.
    #[arg(long, value_name = "PIXELS", env = "PIXMESH_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Largest input accepted, in bytes. Default 256 MiB.
    #[arg(long, value_name = "BYTES", env = "PIXMESH_MAX_INPUT_BYTES")]
    pub max_input_bytes: Option<u64>,
    /// Largest linear memory of one plugin instance, in MiB. Default 1024.
    #[arg(long, value_name = "MIB", env = "PIXMESH_PLUGIN_MEMORY_MIB")]
    pub plugin_memory_mib: Option<usize>,
    /// Deadline for one plugin call, in milliseconds. Default 10000.
    #[arg(long, value_name = "MS", env = "PIXMESH_PLUGIN_TIMEOUT_MS")]
    pub plugin_timeout_ms: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics (no authentication:
    /// bind it to loopback or a trusted network). Default: off.
    #[arg(long, value_name = "ADDR", env = "PIXMESH_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default)]
    coordinators: Vec<String>,
    join_token: Option<String>,
    concurrency: Option<usize>,
    mdns: Option<bool>,
    max_pixels: Option<u64>,
    max_input_bytes: Option<u64>,
    plugin_memory_mib: Option<usize>,
    plugin_timeout_ms: Option<u64>,
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers.
    pub bootstrap: Vec<Multiaddr>,
    /// Coordinators whose tasks are accepted.
    pub coordinators: Vec<PeerId>,
    /// Join token.
    pub join_token: Option<String>,
    /// Task slots.
    pub concurrency: usize,
    /// LAN discovery.
    pub mdns: bool,
    /// Image limits.
    pub limits: Limits,
    /// Plugin sandbox.
    pub sandbox: SandboxConfig,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// The identity key file.
    pub fn identity_path(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }
    /// Where fetched plugins are kept, by hash.
    pub fn plugin_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
    }
    /// How long a heartbeat may be missing before the coordinator worries;
    /// the agent sends one every second.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

fn parse_all<T: std::str::FromStr>(values: &[String], key: &str, file: &Path) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    values
        .iter()
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| anyhow::anyhow!("{}: `{key}`: bad value `{v}`: {e}", file.display()))
        })
        .collect()
}

/// The default data directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PIXMESH_HOME") {
        return PathBuf::from(p).join("agent");
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(p).join("pixmesh/agent");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/share/pixmesh/agent")
}

impl AgentArgs {
    /// Merge with the config file (if any) and defaults, and check.
    pub fn resolve(&self) -> Result<AgentConfig> {
        let (file, path) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let file: FileConfig = toml::from_str(&text)
                    .with_context(|| format!("config file {}", path.display()))?;
                (file, path.clone())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let pick = |flag: &Vec<Multiaddr>, from_file: &[String], key| -> Result<Vec<Multiaddr>> {
            if flag.is_empty() {
                parse_all(from_file, key, &path)
            } else {
                Ok(flag.clone())
            }
        };
        let mut listen = pick(&self.listen, &file.listen, "listen")?;
        if listen.is_empty() {
            listen = vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
                "/ip4/0.0.0.0/tcp/0".parse()?,
            ];
        }
        let bootstrap = pick(&self.bootstrap, &file.bootstrap, "bootstrap")?;
        let mut coordinators = if self.coordinators.is_empty() {
            parse_all(&file.coordinators, "coordinators", &path)?
        } else {
            self.coordinators.clone()
        };
        if coordinators.is_empty() {
            coordinators = bootstrap.iter().filter_map(pixmesh_mesh::peer_of).collect();
        }
        if coordinators.is_empty() {
            bail!(
                "no coordinator configured: give --coordinator PEER_ID, or a --bootstrap address ending in /p2p/<peer id> (the coordinator prints its addresses when it starts)"
            );
        }
        let concurrency = self
            .concurrency
            .or(file.concurrency)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_pixels: self
                .max_pixels
                .or(file.max_pixels)
                .unwrap_or(defaults.max_pixels),
            max_input_bytes: self
                .max_input_bytes
                .or(file.max_input_bytes)
                .unwrap_or(defaults.max_input_bytes),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let base = SandboxConfig::default();
        let sandbox = SandboxConfig {
            max_memory_bytes: self
                .plugin_memory_mib
                .or(file.plugin_memory_mib)
                .map_or(base.max_memory_bytes, |m| m.saturating_mul(1 << 20)),
            timeout: self
                .plugin_timeout_ms
                .or(file.plugin_timeout_ms)
                .map_or(base.timeout, Duration::from_millis),
            max_instances: concurrency as u32,
            cache_dir: Some(data_dir.join("cache")),
            keep_resident_bytes: base.keep_resident_bytes,
            metrics: base.metrics,
        };
        Ok(AgentConfig {
            listen,
            bootstrap,
            coordinators,
            join_token: self.join_token.clone().or(file.join_token),
            concurrency,
            mdns: !self.no_mdns && file.mdns.unwrap_or(true),
            limits,
            sandbox,
            data_dir,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COORD: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            format!(
                "concurrency = 3\nmax_pixels = 5000\nbootstrap = [\"/ip4/10.0.0.1/tcp/7701/p2p/{COORD}\"]\nmdns = false\nmetrics_listen = \"127.0.0.1:9101\"\n"
            ),
        )
        .expect("write");
        let args = AgentArgs {
            config: Some(file.clone()),
            concurrency: Some(7),
            ..AgentArgs::default()
        };
        let c = args.resolve().expect("resolve");
        assert_eq!(c.concurrency, 7, "the flag wins");
        assert_eq!(c.limits.max_pixels, 5000, "the file beats the default");
        assert_eq!(c.limits.max_input_bytes, Limits::DEFAULT_MAX_INPUT_BYTES);
        assert!(!c.mdns);
        assert_eq!(c.coordinators.len(), 1, "coordinator taken from bootstrap");
        assert_eq!(c.coordinators[0].to_string(), COORD);
        assert_eq!(c.listen.len(), 2, "QUIC and TCP by default");
        assert_eq!(
            c.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9101")
        );
    }

    #[test]
    fn bad_config_files_and_missing_coordinators_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "concurency = 3\n").expect("write");
        let args = AgentArgs {
            config: Some(file.clone()),
            ..AgentArgs::default()
        };
        let err = format!("{:#}", args.resolve().expect_err("typo"));
        assert!(
            err.contains("agent.toml") && err.contains("concurency"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            AgentArgs::default().resolve().expect_err("no coordinator")
        );
        assert!(err.contains("no coordinator configured"), "{err}");
        std::fs::write(&file, "bootstrap = [\"not an address\"]\n").expect("write");
        let err = format!("{:#}", args.resolve().expect_err("bad addr"));
        assert!(
            err.contains("bootstrap") && err.contains("not an address"),
            "{err}"
        );
    }
}
