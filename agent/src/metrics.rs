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
    /// `in` or `out`, as the metric's help says for its side.
    pub direction: &'static str,
}

/// The content type of the text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A histogram of seconds from 1 ms to about 4.5 minutes.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// The text exposition of `registry`.
pub fn encode(registry: &Mutex<Registry>) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Where a finished task's time went: `task_fetch_seconds`,
/// `task_process_seconds` and `task_upload_seconds`, on the agent that ran
/// it and (as reported) on the coordinator.
#[derive(Debug, Clone)]
pub struct TaskTimes {
    fetch: Histogram,
    process: Histogram,
    upload: Histogram,
}

impl TaskTimes {
    /// The three histograms, registered in `r`.
    pub fn register(r: &mut Registry) -> TaskTimes {
        let t = TaskTimes {
            fetch: seconds_histogram(),
            process: seconds_histogram(),
            upload: seconds_histogram(),
        };
        for (name, help, h) in [
            (
                "task_fetch",
                "Time fetching a task's input and plugins",
                &t.fetch,
            ),
            (
                "task_process",
                "Time running a task's pipeline (it starts with the input fetch and overlaps it)",
                &t.process,
            ),
            ("task_upload", "Time uploading a task's output", &t.upload),
        ] {
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
        }
        t
    }

    /// One task's times, in milliseconds (upload unknown from older agents).
    pub fn observe(&self, fetch_ms: f64, process_ms: f64, upload_ms: Option<f64>) {
        self.fetch.observe(fetch_ms.max(0.0) / 1e3);
        self.process.observe(process_ms.max(0.0) / 1e3);
        if let Some(u) = upload_ms {
            self.upload.observe(u.max(0.0) / 1e3);
        }
    }
}

/// What one finished task cost.
#[derive(Debug, Clone)]
pub struct TaskCost {
    /// Fetching the input and plugins, ms.
    pub fetch_ms: f64,
    /// The pipeline, ms; it starts with the input fetch and overlaps it.
    pub process_ms: f64,
    /// Uploading the output, ms.
    pub upload_ms: f64,
    /// Input bytes fetched.
    pub bytes_in: usize,
    /// Output bytes uploaded.
    pub bytes_out: usize,
}

/// Everything the agent exports.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Arc<Mutex<Registry>>,
    tasks: Family<OutcomeLabel, Counter>,
    times: TaskTimes,
    bytes: Family<DirectionLabel, Counter>,
}

impl AgentMetrics {
    /// Register everything, including the sandbox's per-plugin counters.
    pub fn new(plugins: &PluginMetrics) -> AgentMetrics {
        let mut root = Registry::default();
        plugins.register(&mut root);
        let r = root.sub_registry_with_prefix("pixmesh_agent");
        let tasks = Family::default();
        r.register("tasks", "Tasks finished here, by outcome", tasks.clone());
        let times = TaskTimes::register(r);
        let bytes = Family::default();
        r.register_with_unit(
            "blob_transferred",
            "Image bytes moved (in: inputs fetched; out: outputs uploaded)",
            Unit::Bytes,
            bytes.clone(),
        );
        AgentMetrics {
            registry: Arc::new(Mutex::new(root)),
            tasks,
            times,
            bytes,
        }
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
        self.times
            .observe(cost.fetch_ms, cost.process_ms, Some(cost.upload_ms));
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
        encode(&self.registry).unwrap_or_else(|_| "# metrics could not be encoded\n".into())
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
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(cause = %e, "the metrics server stopped");
        }
    });
    Ok(bound)
}
