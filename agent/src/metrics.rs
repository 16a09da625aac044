//! The agent's Prometheus metrics, served on `--metrics-listen` at
//! `/metrics`: tasks by outcome, where task time goes, bytes moved, plugin
//! instances, traps and timeouts, and libp2p's own metrics with connected
//! peers (registered by the node into the same registry).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::sandbox::PluginMetrics;

/// How a task ended here.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `done` or `failed`.
    pub outcome: &'static str,
}

/// A transfer direction.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` (inputs fetched) or `out` (outputs uploaded).
    pub direction: &'static str,
}

/// What one finished task cost.
#[derive(Debug, Clone)]
pub struct TaskCost {
    /// Fetching the input and plugins, ms.
    pub fetch_ms: f64,
    /// The pipeline, ms.
    pub process_ms: f64,
    /// Uploading the output, ms.
    pub upload_ms: f64,
    /// Input bytes fetched.
    pub bytes_in: usize,
    /// Output bytes uploaded.
    pub bytes_out: usize,
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// Everything the agent exports.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Arc<Mutex<Registry>>,
    tasks: Family<OutcomeLabel, Counter>,
    fetch: Histogram,
    process: Histogram,
    upload: Histogram,
    bytes: Family<DirectionLabel, Counter>,
}

impl AgentMetrics {
    /// Register everything, including the sandbox's per-plugin counters.
    pub fn new(plugins: &PluginMetrics) -> AgentMetrics {
        let mut root = Registry::default();
        plugins.register(&mut root);
        let m = AgentMetrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            tasks: Family::default(),
            fetch: seconds(),
            process: seconds(),
            upload: seconds(),
            bytes: Family::default(),
        };
        let r = root.sub_registry_with_prefix("pixmesh_agent");
        r.register("tasks", "Tasks finished here, by outcome", m.tasks.clone());
        r.register_with_unit(
            "task_fetch",
            "Time fetching a task's input and plugins",
            Unit::Seconds,
            m.fetch.clone(),
        );
        r.register_with_unit(
            "task_process",
            "Time running a task's pipeline",
            Unit::Seconds,
            m.process.clone(),
        );
        r.register_with_unit(
            "task_upload",
            "Time uploading a task's output",
            Unit::Seconds,
            m.upload.clone(),
        );
        r.register_with_unit(
            "blob_transferred",
            "Image bytes moved (in: inputs fetched; out: outputs uploaded)",
            Unit::Bytes,
            m.bytes.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = root;
        m
    }

    /// The registry, for the libp2p node to add its metrics to.
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        self.registry.clone()
    }

    /// A task finished.
    pub fn done(&self, cost: &TaskCost) {
        self.tasks
            .get_or_create(&OutcomeLabel { outcome: "done" })
            .inc();
        self.fetch.observe(cost.fetch_ms / 1e3);
        self.process.observe(cost.process_ms / 1e3);
        self.upload.observe(cost.upload_ms / 1e3);
        self.bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(cost.bytes_in as u64);
        self.bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(cost.bytes_out as u64);
    }

    /// A task failed here.
    pub fn failed(&self) {
        self.tasks
            .get_or_create(&OutcomeLabel { outcome: "failed" })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out = "# metrics could not be encoded\n".into();
        }
        out
    }
}

/// Serve `/metrics` on `addr` until the process ends; returns the bound address.
pub async fn serve(metrics: Arc<AgentMetrics>, addr: SocketAddr) -> Result<SocketAddr> {
    use axum::http::header;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(cause = %e, "the metrics server stopped");
        }
    });
    Ok(bound)
}
