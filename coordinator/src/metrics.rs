//! The coordinator's Prometheus metrics, served at `/metrics` (behind the
//! API token): tasks by state, where task time goes, bytes moved,
//! reassignments and fenced late results, plus libp2p's own metrics and
//! connected peers from the node (registered in the same registry).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pixmesh_agent::metrics::{DirectionLabel, TaskTimes, encode, seconds_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::scheduler::TaskId;

/// A task state label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
}

/// Everything the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    tasks: Family<StateLabel, Gauge>,
    queue: Histogram,
    times: TaskTimes,
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
        let tasks = Family::default();
        r.register("tasks", "Tasks by state (from the database)", tasks.clone());
        let queue = seconds_histogram();
        r.register_with_unit(
            "task_queue",
            "Time from entering the queue to being assigned",
            Unit::Seconds,
            queue.clone(),
        );
        // As agents report them.
        let times = TaskTimes::register(r);
        let blob_bytes = Family::default();
        r.register_with_unit(
            "blob_transferred",
            "Blob bytes moved over the mesh (in: uploaded by agents; out: served to agents)",
            Unit::Bytes,
            blob_bytes.clone(),
        );
        let reassignments = Counter::default();
        r.register(
            "task_reassignments",
            "Tasks queued again after an agent died or left, a lease expired or a retryable failure",
            reassignments.clone(),
        );
        let late_results = Counter::default();
        r.register(
            "late_results_refused",
            "Results and failures for a superseded attempt, refused by fencing",
            late_results.clone(),
        );
        let jobs = Counter::default();
        r.register("jobs_submitted", "Jobs accepted", jobs.clone());
        Metrics {
            registry: Arc::new(Mutex::new(root)),
            tasks,
            queue,
            times,
            blob_bytes,
            reassignments,
            late_results,
            jobs,
            queued_since: Mutex::new(HashMap::new()),
        }
    }

    /// The registry, for the libp2p node to add its metrics to.
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        self.registry.clone()
    }

    /// `tasks` were queued at `now_ms`.
    pub fn queued(&self, tasks: &[TaskId], now_ms: f64) {
        let mut q = self.queued_since.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks {
            q.insert(*t, now_ms);
        }
    }

    /// A job was acknowledged.
    pub fn job_submitted(&self) {
        self.jobs.inc();
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
        self.times.observe(fetch_ms, process_ms, upload_ms);
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
        encode(&self.registry)
    }
}
