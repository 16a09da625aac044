//! `pixmesh bench`: benchmarks measured as ratios against a baseline run in
//! the same process, never as timed assertions in tests.
//!
//! - [`thumbnails`] (default): pixmesh against `vipsthumbnail` and
//!   ImageMagick making JPEG thumbnails of the same photos.
//! - [`plugins`]: the WebAssembly sandbox's per-call overhead, and a plugin
//!   against the same transform compiled natively.
//! - [`mesh`]: a 3-agent loopback mesh against `pixmesh run`, dispatch
//!   latency, agent memory.
//! - [`failover`]: what an agent SIGKILL and a coordinator crash cost on a
//!   loopback testnet.

pub mod failover;
pub mod mesh;
pub mod plugins;
pub mod thumbnails;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// 256 px JPEG thumbnails: pixmesh vs vipsthumbnail vs ImageMagick.
    Thumbnails,
    /// Plugin call overhead and wasm sepia vs native sepia.
    Plugins,
    /// A 3-agent loopback mesh vs pixmesh run; dispatch latency; agent memory.
    Mesh,
    /// Failures on a loopback testnet: agent SIGKILL to reassignment,
    /// coordinator restart to recovery; tasks lost and duplicated.
    Failover,
}

/// A libp2p transport for the mesh benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC (quinn): TLS 1.3, streams in the transport.
    Quic,
    /// TCP with noise and yamux.
    Tcp,
}

impl Transport {
    /// A loopback listen address on any free port.
    pub fn loopback(self) -> &'static str {
        match self {
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
        }
    }
}

/// `pixmesh bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(long, value_enum, default_value_t = Suite::Thumbnails)]
    pub suite: Suite,
    /// Directory of photos (JPEGs). Default: $PIXMESH_CORPUS, else
    /// ../shared/corpus/photos, else the sample photos shipped in samples/.
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<PathBuf>,
    /// Thumbnail box size in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// JPEG quality.
    #[arg(long, default_value_t = 80)]
    pub quality: u8,
    /// Timed passes per tool (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Cores each tool may use (default: all).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Thumbnails: only run pixmesh (no baselines needed).
    #[arg(long)]
    pub pixmesh_only: bool,
    /// Plugins: directory holding the built example plugins.
    #[arg(long, value_name = "DIR", default_value = "plugins/dist")]
    pub plugins: PathBuf,
    /// Plugins: timed calls for the 1x1 overhead figure.
    #[arg(long, default_value_t = 5000)]
    pub calls: usize,
    /// Mesh: the transport between coordinator and agents.
    #[arg(long, value_enum, default_value_t = Transport::Quic)]
    pub transport: Transport,
    #[command(flatten)]
    pub sandbox: crate::cli::SandboxArgs,
}

/// `pixmesh bench`.
pub fn run_command(args: BenchArgs) -> Result<ExitCode> {
    match args.suite {
        Suite::Thumbnails => thumbnails::run(args),
        Suite::Plugins => plugins::run(args),
        Suite::Mesh => mesh::run(args),
        Suite::Failover => failover::run(args),
    }
}

fn default_corpus() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PIXMESH_CORPUS") {
        return Some(PathBuf::from(dir));
    }
    ["../shared/corpus/photos", "samples/photos"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
}

/// The median of some timings (the upper one for an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The p-th percentile (0..=100), nearest rank.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.saturating_sub(1).min(s.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 50.0), 50.0);
    }
}
