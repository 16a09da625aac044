//! The coordinator's Prometheus metrics, served at `/metrics` (behind the
//! API token): tasks by state, where task time goes, bytes moved,
//! reassignments and fenced late results, plus libp2p's own metrics and
//! connected peers from the node (registered in the same registry).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::scheduler::TaskId;

/// A task state label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
}

/// A transfer direction label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` (uploads to the coordinator) or `out` (served to agents).
    pub direction: &'static str,
}

/// Seconds from 1 ms to about 4.5 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// Everything the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    tasks: Family<StateLabel, Gauge>,
    queue: Histogram,
    fetch: Histogram,
    process: Histogram,
    upload: Histogram,
    blob_bytes: Family<DirectionLabel, Counter>,
    reassignments: Counter,
    late_results: Counter,
    jobs: Counter,
    /// When each queued task entered the queue (Unix ms), for the queue histogram.
    queued_since: Mutex<HashMap<TaskId, f64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("pixmesh");
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            tasks: Family::default(),
            queue: seconds(),
            fetch: seconds(),
            process: seconds(),
            upload: seconds(),
            blob_bytes: Family::default(),
            reassignments: Counter::default(),
            late_results: Counter::default(),
            jobs: Counter::default(),
            queued_since: Mutex::new(HashMap::new()),
        };
        r.register(
            "tasks",
            "Tasks by state (from the database)",
            m.tasks.clone(),
        );
        r.register_with_unit(
            "task_queue",
            "Time from entering the queue to being assigned",
            Unit::Seconds,
            m.queue.clone(),
        );
        r.register_with_unit(
            "task_fetch",
            "Time an agent spent fetching a task's input and plugins",
            Unit::Seconds,
            m.fetch.clone(),
        );
        r.register_with_unit(
            "task_process",
            "Time an agent spent running a task's pipeline",
            Unit::Seconds,
            m.process.clone(),
        );
        r.register_with_unit(
            "task_upload",
            "Time an agent spent uploading a task's output",
            Unit::Seconds,
            m.upload.clone(),
        );
        r.register_with_unit(
            "blob_transferred",
            "Blob bytes moved over the mesh (in: uploaded by agents; out: served to agents)",
            Unit::Bytes,
            m.blob_bytes.clone(),
        );
        r.register(
            "task_reassignments",
            "Tasks queued again after an agent died or left, a lease expired or a retryable failure",
            m.reassignments.clone(),
        );
        r.register(
            "late_results_refused",
            "Results and failures for a superseded attempt, refused by fencing",
            m.late_results.clone(),
        );
        r.register("jobs_submitted", "Jobs accepted", m.jobs.clone());
        *m.lock() = root;
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The registry, for the libp2p node to add its metrics to.
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        self.registry.clone()
    }

    /// A job with `tasks` was accepted at `now_ms`.
    pub fn submitted(&self, tasks: &[TaskId], now_ms: f64) {
        self.jobs.inc();
        let mut q = self.queued_since.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks {
            q.insert(*t, now_ms);
        }
    }

    /// A task went back to the queue.
    pub fn requeued(&self, task: TaskId, now_ms: f64) {
        self.reassignments.inc();
        self.queued_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task, now_ms);
    }

    /// A task was assigned.
    pub fn assigned(&self, task: TaskId, now_ms: f64) {
        let since = self
            .queued_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task);
        if let Some(since) = since {
            self.queue.observe(((now_ms - since) / 1e3).max(0.0));
        }
    }

    /// A task ended for good (done, failed or cancelled) — forget its queue time.
    pub fn finished(&self, task: TaskId) {
        self.queued_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task);
    }

    /// An agent reported where a finished task's time went.
    pub fn task_times(&self, fetch_ms: f64, process_ms: f64, upload_ms: Option<f64>) {
        self.fetch.observe(fetch_ms.max(0.0) / 1e3);
        self.process.observe(process_ms.max(0.0) / 1e3);
        if let Some(u) = upload_ms {
            self.upload.observe(u.max(0.0) / 1e3);
        }
    }

    /// Blob bytes moved.
    pub fn blob(&self, direction: &'static str, bytes: usize) {
        self.blob_bytes
            .get_or_create(&DirectionLabel { direction })
            .inc_by(bytes as u64);
    }

    /// A late result was refused.
    pub fn fenced(&self) {
        self.late_results.inc();
    }

    /// The text exposition, with task counts by state set from `counts`.
    pub fn render(&self, counts: &[(String, u64)]) -> Result<String, std::fmt::Error> {
        for state in ["queued", "running", "done", "failed", "cancelled"] {
            let n = counts
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.tasks
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.lock())?;
        Ok(out)
    }
}
