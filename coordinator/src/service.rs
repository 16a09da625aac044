//! The coordinator's core: the job store, the blob store and the scheduler,
//! kept consistent behind one lock, and the rules for applying the
//! scheduler's actions to durable state.
//!
//! Submit order is the durability contract: image blobs are written and
//! synced, then the job and its tasks are committed, and only then is the
//! job handed to the scheduler and acknowledged. On start, every unfinished
//! task in the store is handed back to the scheduler with its attempt count,
//! so an acknowledged job finishes after a crash and fencing still holds.
//!
//! This module does no networking: the HTTP API ([`crate::api`]) and the
//! mesh glue ([`crate::mesh`]) call into it, and assignments and revocations
//! leave through an outbox the mesh glue drains.
//!
//! Enrolment: an agent is given tasks and blobs only once its peer id is
//! enrolled, which takes one `Hello` with a valid join token. Peers that
//! connect without one are recorded as `pending`, with a bad one as
//! `refused`; both get nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};
use pixmesh_agent::sandbox::{PluginHost, SandboxConfig};
use pixmesh_protocol::wire::{Advert, Assignment, Request, Response};
use pixmesh_protocol::{ContentId, JobSpec, PluginRef, Step};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::blobs::BlobStore;
use crate::metrics::Metrics;
use crate::scheduler::{
    Action, Event, Health, JobId, JobStatus, Millis, NodeReport, Scheduler, SchedulerConfig,
    TaskId, TaskSpec,
};
use crate::store::{Store, TaskRow, TokenRow};

/// A message for an agent, produced by the scheduler, sent by the mesh glue.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Hand a task to an agent.
    Assign {
        /// The agent's peer id.
        peer: String,
        /// The task.
        assignment: Assignment,
    },
    /// Tell an agent to stop an attempt.
    Revoke {
        /// The agent's peer id.
        peer: String,
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: u32,
    },
}

/// What the coordinator knows of a connected or enrolled peer, live.
#[derive(Debug, Clone, Default)]
struct NodeLive {
    connected: bool,
    address: Option<String>,
    rtt_ms: Option<f64>,
    advert: Option<Advert>,
    last_heard: Option<Instant>,
}

/// A node as `pixmesh nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Peer id.
    pub peer: String,
    /// `enrolled`, `pending` (connected, never presented a token) or
    /// `refused` (presented a bad token).
    pub status: String,
    /// `alive`, `suspect` or `dead`, for enrolled agents that have reported.
    pub health: Option<String>,
    /// Connected now.
    pub connected: bool,
    /// Remote address of the connection.
    pub address: Option<String>,
    /// Latest ping round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Milliseconds since the last heartbeat.
    pub last_seen_ms_ago: Option<u64>,
    /// Task slots.
    pub slots: Option<u32>,
    /// Tasks running.
    pub running: Option<u32>,
    /// Tasks queued on the agent.
    pub queue_depth: Option<u32>,
    /// Agent version.
    pub version: Option<String>,
    /// Plugins it holds, by hash.
    pub plugins: Vec<String>,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Why it was refused.
    pub reason: Option<String>,
}

/// A deployed plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    /// Name.
    pub name: String,
    /// BLAKE3 hash.
    pub hash: String,
    /// Module size.
    pub bytes: u64,
}

/// A new join token: the secret is shown once.
#[derive(Debug, Clone, Serialize)]
pub struct NewToken {
    /// Short id, for listing and revoking.
    pub id: String,
    /// The token to give agents (`--join-token`).
    pub token: String,
    /// Expiry, Unix ms.
    pub expires_ms: Option<i64>,
}

/// The coordinator's data directory layout.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.0.join("pixmesh.db")
    }
    /// The blob store.
    pub fn blobs(&self) -> PathBuf {
        self.0.join("blobs")
    }
    /// The API token file (mode 0600).
    pub fn token(&self) -> PathBuf {
        self.0.join("api-token")
    }
}

struct State {
    store: Store,
    scheduler: Scheduler,
    nodes: BTreeMap<String, NodeLive>,
    enrolled: HashSet<String>,
}

/// The coordinator.
pub struct Coordinator {
    state: Mutex<State>,
    blobs: BlobStore,
    started: Instant,
    dir: DataDir,
    lease_ms: u64,
    outbox: Mutex<Option<mpsc::UnboundedSender<Outbound>>>,
    plugin_host: OnceLock<Arc<PluginHost>>,
    metrics: Metrics,
    /// Bumped whenever a task finishes (done, failed or cancelled), so
    /// clients waiting on a job are answered at once instead of polling.
    finished: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// Images finished over time, for the dashboard's chart.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Width of one bucket, seconds.
    pub bucket_s: u64,
    /// Buckets, oldest first; the last one is still filling.
    pub points: Vec<ThroughputPoint>,
}

/// One bucket of [`Throughput`].
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputPoint {
    /// Bucket start, Unix ms.
    pub start_ms: f64,
    /// Images finished in it.
    pub images: u64,
    /// Images per second.
    pub per_second: f64,
}

/// One task as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// Input file name.
    pub name: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Attempts made.
    pub attempt: u32,
    /// Agent of the latest attempt.
    pub node: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Output content id when done.
    pub output: Option<String>,
    /// The result's file name (as `pixmesh run` would name it).
    pub output_name: String,
    /// When the latest attempt was assigned, Unix ms.
    pub assigned_ms: Option<f64>,
    /// When it finished, Unix ms.
    pub finished_ms: Option<f64>,
    /// Late results from superseded attempts refused by fencing.
    pub late_results_refused: u32,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Job id.
    pub id: JobId,
    /// The spec in the one-line form.
    pub steps: String,
    /// Tasks per state (from the database) and why queued ones wait (from
    /// the scheduler).
    #[serde(flatten)]
    pub status: JobStatus,
    /// Attempts beyond each task's first, summed: tasks handed to another
    /// agent after a lease expired, an agent died or left, or a retryable
    /// failure.
    pub reassignments: u32,
    /// Late results from superseded attempts refused by fencing.
    pub late_results_refused: u32,
    /// True while the job's upload is still arriving (its task list grows;
    /// the job is not acknowledged yet).
    pub receiving: bool,
    /// Every task, in submission order.
    pub tasks: Vec<TaskView>,
}

fn plugin_ids(spec: &JobSpec) -> Vec<String> {
    spec.steps
        .iter()
        .filter_map(|s| match s {
            Step::Plugin(p) => Some(p.plugin.to_string()),
            _ => None,
        })
        .collect()
}

fn task_spec(row: &TaskRow, plugins: Vec<String>) -> TaskSpec {
    TaskSpec {
        id: row.id,
        job: row.job,
        input: row.input.to_string(),
        plugins,
        attempt: row.attempt,
    }
}

impl Coordinator {
    /// Open the data directory and recover every unfinished task.
    pub fn open(dir: &DataDir, config: SchedulerConfig) -> Result<Coordinator> {
        std::fs::create_dir_all(&dir.0)
            .with_context(|| format!("cannot create data directory {}", dir.0.display()))?;
        let mut store = Store::open(&dir.database()).context("cannot open the job database")?;
        let dropped = store.drop_unsealed_jobs()?;
        if dropped > 0 {
            tracing::warn!(
                jobs = dropped,
                "dropped jobs whose upload never completed (never acknowledged)"
            );
        }
        let blobs = BlobStore::open(dir.blobs()).context("cannot open the blob store")?;
        let mut scheduler = Scheduler::new(config.clone());
        let unfinished = store.unfinished_tasks()?;
        for row in &unfinished {
            let plugins = store
                .job_spec(row.job)?
                .map(|s| plugin_ids(&s))
                .unwrap_or_default();
            scheduler.handle(0, Event::Submitted(task_spec(row, plugins)));
        }
        if !unfinished.is_empty() {
            tracing::info!(tasks = unfinished.len(), "recovered unfinished tasks");
        }
        let enrolled = store
            .nodes()?
            .into_iter()
            .filter(|n| n.status == "enrolled")
            .map(|n| n.peer)
            .collect();
        let lease_ms = config.lease_ms;
        let coordinator = Coordinator {
            state: Mutex::new(State {
                store,
                scheduler,
                nodes: BTreeMap::new(),
                enrolled,
            }),
            blobs,
            started: Instant::now(),
            dir: dir.clone(),
            lease_ms,
            outbox: Mutex::new(None),
            plugin_host: OnceLock::new(),
            metrics: Metrics::new(),
            finished: tokio::sync::watch::Sender::new(0),
        };
        Ok(coordinator)
    }

    /// Milliseconds since start: the scheduler's clock.
    pub fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state itself
        // is still consistent with the database, so carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a job whose images are still arriving: it is written (not
    /// yet acknowledged), and its tasks run as [`Coordinator::add_inputs`]
    /// adds them, so work starts while the upload goes on.
    /// [`Coordinator::seal_job`] acknowledges it; [`Coordinator::abort_job`]
    /// (or a restart before the seal) drops it.
    pub fn open_job(&self, spec: &JobSpec) -> Result<JobId> {
        let now = self.now();
        Ok(self.lock().store.open_job(spec, now)?)
    }

    /// Add stored inputs (name, id, size; stored with
    /// [`Coordinator::store_input`]) to a job that is still receiving, in
    /// this order, and queue them, largest first. Returns false if the job
    /// was dropped.
    pub fn add_inputs(&self, job: JobId, images: &[(String, ContentId, u64)]) -> Result<bool> {
        let inputs: Vec<(String, ContentId)> = images
            .iter()
            .map(|(name, id, _)| (name.clone(), *id))
            .collect();
        let now = self.now();
        let mut state = self.lock();
        let Some(spec) = state.store.job_spec(job)? else {
            return Ok(false);
        };
        let Some(tasks) = state.store.add_tasks(job, &inputs)? else {
            return Ok(false);
        };
        self.metrics.queued(&tasks, crate::store::unix_ms());
        let plugins = plugin_ids(&spec);
        let mut actions = Vec::new();
        // Largest first (LPT), as `pixmesh run` orders its work: the big
        // images start early instead of finishing last on one agent.
        let mut order: Vec<usize> = (0..tasks.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(images[i].2));
        for (task, (_, input)) in order.iter().map(|&i| (&tasks[i], &inputs[i])) {
            let spec = TaskSpec {
                id: *task,
                job,
                input: input.to_string(),
                plugins: plugins.clone(),
                attempt: 0,
            };
            actions.extend(state.scheduler.handle(now, Event::Submitted(spec)));
        }
        self.apply(&mut state, actions)?;
        Ok(true)
    }

    /// Every image of the job is in: acknowledge it. The number of tasks.
    pub fn seal_job(&self, job: JobId) -> Result<usize> {
        let mut state = self.lock();
        state.store.seal_job(job)?;
        self.metrics.job_submitted();
        Ok(state.store.job_tasks(job)?.len())
    }

    /// Drop a job whose upload failed: its running tasks are revoked and
    /// it disappears (it was never acknowledged).
    pub fn abort_job(&self, job: JobId) -> Result<()> {
        let now = self.now();
        let mut state = self.lock();
        let actions = state.scheduler.handle(now, Event::CancelJob(job));
        self.apply(&mut state, actions)?;
        for row in state.store.job_tasks(job)? {
            self.metrics.finished(row.id);
        }
        state.store.drop_job(job)?;
        self.finished.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Advance the scheduler's clock.
    pub fn tick(&self) -> Result<()> {
        let now = self.now();
        let mut state = self.lock();
        let actions = state.scheduler.tick(now);
        self.apply(&mut state, actions)
    }

    /// Cancel a job; returns the number of tasks cancelled, or None if unknown.
    pub fn cancel(&self, job: JobId) -> Result<Option<usize>> {
        let now = self.now();
        let mut state = self.lock();
        if state.store.job_spec(job)?.is_none() {
            return Ok(None);
        }
        let actions = state.scheduler.handle(now, Event::CancelJob(job));
        self.apply(&mut state, actions)?;
        let cancelled = state.store.cancel_job(job)?;
        for row in state.store.job_tasks(job)? {
            self.metrics.finished(row.id);
        }
        self.finished.send_modify(|n| *n += 1);
        Ok(Some(cancelled))
    }

    /// Changes whenever a task of any job finishes; for long polls.
    pub fn finished_tasks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// A job's status, or None if unknown.
    pub fn job(&self, job: JobId) -> Result<Option<JobView>> {
        let now = self.now();
        let state = self.lock();
        let Some(spec) = state.store.job_spec(job)? else {
            return Ok(None);
        };
        let rows = state.store.job_tasks(job)?;
        let waiting = state.scheduler.job_status(job, now).waiting;
        let names = output_names(&rows, spec.output.format.extension());
        let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
        Ok(Some(JobView {
            id: job,
            steps: spec.to_compact(),
            receiving: state.store.job_receiving(job)?,
            reassignments: rows.iter().map(|r| r.attempt.saturating_sub(1)).sum(),
            late_results_refused: rows.iter().map(|r| r.fenced).sum(),
            status: JobStatus {
                queued: count("queued"),
                running: count("running"),
                done: count("done"),
                failed: count("failed"),
                cancelled: count("cancelled"),
                waiting,
            },
            tasks: rows
                .into_iter()
                .zip(names)
                .map(|(r, output_name)| TaskView {
                    name: r.name,
                    state: r.state,
                    attempt: r.attempt,
                    node: r.node,
                    error: r.error,
                    output: r.output.map(|o| o.to_string()),
                    output_name,
                    assigned_ms: r.assigned_ms,
                    finished_ms: r.finished_ms,
                    late_results_refused: r.fenced,
                })
                .collect(),
        }))
    }

    /// Jobs, newest first (the newest `limit` when given).
    pub fn jobs(&self, limit: Option<usize>) -> Result<Vec<JobView>> {
        let ids = self.lock().store.job_ids()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.into_iter().rev().take(limit.unwrap_or(usize::MAX)) {
            if let Some(view) = self.job(id)? {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// The output of a finished task, by job and input name.
    pub fn result(&self, job: JobId, name: &str) -> Result<ResultLookup> {
        let rows = self.lock().store.job_tasks(job)?;
        let Some(row) = rows.into_iter().find(|r| r.name == name) else {
            return Ok(ResultLookup::NoSuchTask);
        };
        match row.output {
            Some(id) => Ok(ResultLookup::Ready(self.blobs.get(&id)?.to_bytes())),
            None => Ok(ResultLookup::NotReady(row.state)),
        }
    }

    /// Where assignments and revocations go (the mesh glue drains it).
    pub fn set_outbox(&self, outbox: mpsc::UnboundedSender<Outbound>) {
        *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(outbox);
    }

    fn send(&self, message: Outbound) {
        if let Some(tx) = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(message);
        }
    }

    /// Make the scheduler's decisions durable, then queue the messages for
    /// agents.
    fn apply(&self, state: &mut State, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Assign {
                    task,
                    attempt,
                    node,
                    ..
                } => {
                    self.metrics.assigned(task, crate::store::unix_ms());
                    state.store.record_assigned(task, attempt, &node)?;
                    let row = state.store.task(task)?;
                    let spec = match &row {
                        Some(r) => state.store.job_spec(r.job)?,
                        None => None,
                    };
                    if let (Some(row), Some(spec)) = (row, spec) {
                        self.send(Outbound::Assign {
                            peer: node,
                            assignment: Assignment {
                                task,
                                attempt,
                                job: row.job,
                                name: row.name,
                                spec,
                                input: row.input,
                                lease_ms: self.lease_ms,
                            },
                        });
                    }
                }
                Action::Accept {
                    task,
                    attempt,
                    output,
                } => {
                    let id: ContentId = output.parse().map_err(anyhow::Error::msg)?;
                    state.store.record_done(task, attempt, &id)?;
                    self.metrics.finished(task);
                    self.finished.send_modify(|n| *n += 1);
                }
                Action::GiveUp { task, reason } => {
                    state.store.record_failed(task, &reason)?;
                    self.metrics.finished(task);
                    self.finished.send_modify(|n| *n += 1);
                }
                Action::Requeued {
                    task,
                    attempt,
                    reason,
                } => {
                    state.store.record_requeued(task)?;
                    self.metrics.requeued(task, crate::store::unix_ms());
                    tracing::info!(task, attempt, %reason, "task requeued");
                }
                Action::Revoke {
                    task,
                    attempt,
                    node,
                } => {
                    self.send(Outbound::Revoke {
                        peer: node,
                        task,
                        attempt,
                    });
                }
                Action::Fenced {
                    task,
                    attempt,
                    node,
                } => {
                    tracing::warn!(task, attempt, peer = %node, "late result refused (fenced)");
                    state.store.record_fenced(task)?;
                    self.metrics.fenced();
                }
                Action::NodeHealth { node, health } => {
                    tracing::info!(peer = %node, ?health, "agent health changed");
                }
            }
        }
        Ok(())
    }

    /// The metrics, for the libp2p node and the blob server to add to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `/metrics`: the Prometheus text exposition.
    pub fn render_metrics(&self) -> Result<String> {
        let counts = self.lock().store.task_counts()?;
        self.metrics
            .render(&counts)
            .map_err(|_| anyhow::anyhow!("cannot encode the metrics"))
    }

    /// Scheduler counters (reassignments, fenced results).
    pub fn counters(&self) -> crate::scheduler::Counters {
        self.lock().scheduler.counters()
    }

    /// Is this peer an enrolled agent?
    pub fn is_enrolled(&self, peer: &str) -> bool {
        self.lock().enrolled.contains(peer)
    }

    /// A peer connected (before it has said anything).
    pub fn peer_connected(&self, peer: &str, address: &str) -> Result<()> {
        let mut state = self.lock();
        let live = state.nodes.entry(peer.to_owned()).or_default();
        live.connected = true;
        live.address = Some(address.to_owned());
        if state.store.node_status(peer)?.is_none() {
            state.store.set_node(peer, "pending", None, None)?;
            tracing::info!(%peer, %address, "unknown peer connected (pending enrolment)");
        }
        Ok(())
    }

    /// A peer's last connection closed.
    pub fn peer_disconnected(&self, peer: &str) {
        if let Some(live) = self.lock().nodes.get_mut(peer) {
            live.connected = false;
        }
    }

    /// A ping round trip.
    pub fn peer_rtt(&self, peer: &str, rtt_ms: f64) {
        if let Some(live) = self.lock().nodes.get_mut(peer) {
            live.rtt_ms = Some(rtt_ms);
        }
    }

    /// Handle a control request from a peer.
    pub fn on_request(&self, peer: &str, request: Request) -> Result<Response> {
        if let Request::Hello {
            version,
            join_token,
        } = request
        {
            return self.hello(peer, &version, join_token.as_deref());
        }
        if !self.is_enrolled(peer) {
            return Ok(Response::Refused {
                reason: "not enrolled: say hello with a join token first".into(),
            });
        }
        let now = self.now();
        let event = match request {
            Request::Heartbeat(advert) => {
                let report = NodeReport {
                    slots: advert.slots,
                    queue_depth: advert.queue_depth,
                    plugins: advert.plugins.iter().cloned().collect(),
                    inputs: BTreeSet::new(),
                };
                let mut state = self.lock();
                let live = state.nodes.entry(peer.to_owned()).or_default();
                live.advert = Some(advert);
                live.last_heard = Some(Instant::now());
                drop(state);
                Event::NodeSeen {
                    node: peer.to_owned(),
                    report,
                }
            }
            Request::Progress { task, attempt } => Event::Progress {
                task,
                attempt,
                node: peer.to_owned(),
            },
            Request::Completed {
                task,
                attempt,
                output,
                fetch_ms,
                process_ms,
                upload_ms,
            } => {
                self.metrics.task_times(fetch_ms, process_ms, upload_ms);
                if !self.blobs.has(&output) {
                    return Ok(Response::Refused {
                        reason: format!("output {output} was not uploaded"),
                    });
                }
                Event::Completed {
                    task,
                    attempt,
                    node: peer.to_owned(),
                    output: output.to_string(),
                }
            }
            Request::Failed {
                task,
                attempt,
                reason,
                retryable,
            } => Event::Failed {
                task,
                attempt,
                node: peer.to_owned(),
                reason,
                retryable,
            },
            Request::Bye => {
                tracing::info!(%peer, "agent said goodbye");
                Event::NodeLeft {
                    node: peer.to_owned(),
                }
            }
            Request::Hello { .. } | Request::Assign(_) | Request::Revoke { .. } => {
                return Ok(Response::Refused {
                    reason: "a coordinator does not take this request".into(),
                });
            }
        };
        let mut state = self.lock();
        let actions = state.scheduler.handle(now, event);
        self.apply(&mut state, actions)?;
        Ok(Response::Ok)
    }

    fn hello(&self, peer: &str, version: &str, token: Option<&str>) -> Result<Response> {
        let mut state = self.lock();
        if state.enrolled.contains(peer) {
            state
                .store
                .set_node(peer, "enrolled", Some(version), None)?;
            return Ok(Response::Welcome);
        }
        let Some(token) = token else {
            state.store.set_node(peer, "pending", Some(version), None)?;
            return Ok(Response::Refused {
                reason: "not enrolled: start the agent with --join-token (make one with `pixmesh token create`)".into(),
            });
        };
        match state.store.use_token(&token_hash(token))? {
            Ok(()) => {
                state
                    .store
                    .set_node(peer, "enrolled", Some(version), None)?;
                state.enrolled.insert(peer.to_owned());
                tracing::info!(%peer, %version, "agent enrolled");
                Ok(Response::Welcome)
            }
            Err(reason) => {
                let before = state.store.node_status(peer)?;
                state
                    .store
                    .set_node(peer, "refused", Some(version), Some(&reason))?;
                if before.as_deref() != Some("refused") {
                    tracing::warn!(%peer, %reason, "enrolment refused");
                }
                Ok(Response::Refused { reason })
            }
        }
    }

    /// An assignment could not be delivered (unreachable, busy, refused):
    /// the attempt fails as retryable and the task goes elsewhere.
    pub fn assign_failed(
        &self,
        task: TaskId,
        attempt: u32,
        peer: &str,
        reason: String,
    ) -> Result<()> {
        let now = self.now();
        let mut state = self.lock();
        let actions = state.scheduler.handle(
            now,
            Event::Failed {
                task,
                attempt,
                node: peer.to_owned(),
                reason,
                retryable: true,
            },
        );
        self.apply(&mut state, actions)
    }

    /// Every node seen, enrolled first.
    /// Images finished per `bucket_s` seconds over the last `window_s`
    /// seconds, oldest first, with empty buckets as zero.
    pub fn throughput(&self, window_s: u64, bucket_s: u64) -> Result<Throughput> {
        let bucket_s = bucket_s.clamp(1, 3600);
        let window_s = window_s.clamp(bucket_s, 24 * 3600);
        let bucket_ms = bucket_s * 1000;
        let now = crate::store::unix_ms();
        let first = ((now - window_s as f64 * 1e3) / bucket_ms as f64).floor() * bucket_ms as f64;
        let counts = self.lock().store.finished_per_bucket(first, bucket_ms)?;
        let mut points = Vec::new();
        let mut t = first;
        while t <= now {
            let images = counts
                .iter()
                .find(|(b, _)| (*b - t).abs() < 0.5)
                .map_or(0, |(_, n)| *n);
            points.push(ThroughputPoint {
                start_ms: t,
                images,
                per_second: images as f64 / bucket_s as f64,
            });
            t += bucket_ms as f64;
        }
        Ok(Throughput { bucket_s, points })
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>> {
        let state = self.lock();
        let mut out = Vec::new();
        for row in state.store.nodes()? {
            let live = state.nodes.get(&row.peer).cloned().unwrap_or_default();
            let advert = live.advert.clone();
            let health = if row.status == "enrolled" {
                state.scheduler.health(&row.peer).map(|h| {
                    match h {
                        Health::Alive => "alive",
                        Health::Suspect => "suspect",
                        Health::Dead => "dead",
                    }
                    .to_owned()
                })
            } else {
                None
            };
            out.push(NodeView {
                peer: row.peer,
                status: row.status,
                health,
                connected: live.connected,
                address: live.address,
                rtt_ms: live.rtt_ms,
                last_seen_ms_ago: live.last_heard.map(|t| t.elapsed().as_millis() as u64),
                slots: advert.as_ref().map(|a| a.slots),
                running: advert.as_ref().map(|a| a.running),
                queue_depth: advert.as_ref().map(|a| a.queue_depth),
                version: advert.as_ref().map(|a| a.version.clone()).or(row.version),
                plugins: advert
                    .as_ref()
                    .map(|a| a.plugins.clone())
                    .unwrap_or_default(),
                rss_bytes: advert.as_ref().and_then(|a| a.rss_bytes),
                reason: row.reason,
            });
        }
        out.sort_by_key(|n| (n.status != "enrolled", n.status.clone(), n.peer.clone()));
        Ok(out)
    }

    /// Make a join token valid for `ttl_secs` (None: until revoked).
    pub fn create_token(&self, ttl_secs: Option<u64>) -> Result<NewToken> {
        let token = format!("pmj_{}", random_hex(24).context("no join token")?);
        let expires_ms = ttl_secs.map(|s| crate::store::unix_ms() as i64 + (s as i64) * 1000);
        let id = self
            .lock()
            .store
            .create_token(&token_hash(&token), expires_ms)?;
        Ok(NewToken {
            id,
            token,
            expires_ms,
        })
    }

    /// Every join token (without secrets).
    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(self.lock().store.tokens()?)
    }

    /// Revoke a join token; false if unknown. Agents already enrolled stay.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        Ok(self.lock().store.revoke_token(id)?)
    }

    fn plugin_host(&self) -> Result<Arc<PluginHost>> {
        if let Some(h) = self.plugin_host.get() {
            return Ok(h.clone());
        }
        let host = PluginHost::new(SandboxConfig {
            cache_dir: Some(self.dir.0.join("cache")),
            max_instances: 1,
            keep_resident_bytes: 0,
            ..SandboxConfig::default()
        })
        .context("cannot start the plugin sandbox")?;
        Ok(self.plugin_host.get_or_init(|| Arc::new(host)).clone())
    }

    /// Validate a plugin (exports, imports, ABI version, a dry run on a
    /// 1x1 frame), store it and name it. Err(message) when it is refused.
    pub fn deploy_plugin(&self, wasm: &[u8], name: &str) -> Result<Result<String, String>> {
        if !pixmesh_protocol::spec::is_valid_plugin_name(name) {
            return Ok(Err(format!(
                "plugin name must be 1-64 characters of A-Z a-z 0-9 . _ - (and not a hash), got {name:?}"
            )));
        }
        if let Err(e) = self.plugin_host()?.load(wasm) {
            return Ok(Err(e.to_string()));
        }
        let id = self
            .blobs
            .put(wasm.to_vec())
            .context("cannot store the plugin")?;
        self.lock().store.set_plugin(name, &id.to_string())?;
        tracing::info!(plugin = %name, hash = %id, "plugin deployed");
        Ok(Ok(id.to_string()))
    }

    /// Every deployed plugin.
    pub fn plugins(&self) -> Result<Vec<PluginView>> {
        let list = self.lock().store.plugins()?;
        Ok(list
            .into_iter()
            .map(|(name, hash)| {
                let bytes = hash
                    .parse::<ContentId>()
                    .ok()
                    .and_then(|id| std::fs::metadata(self.blobs.path(&id)).ok())
                    .map_or(0, |m| m.len());
                PluginView { name, hash, bytes }
            })
            .collect())
    }

    /// Rewrite plugin steps to name deployed plugins by hash. Err names the
    /// step and the problem.
    pub fn resolve_plugins(&self, spec: &JobSpec) -> Result<Result<JobSpec, String>> {
        let names: BTreeMap<String, String> = self.lock().store.plugins()?.into_iter().collect();
        let mut spec = spec.clone();
        for (i, step) in spec.steps.iter_mut().enumerate() {
            let Step::Plugin(p) = step else { continue };
            let hash = match &p.plugin {
                PluginRef::Name(n) => match names.get(n) {
                    Some(h) => h.clone(),
                    None => {
                        return Ok(Err(format!(
                            "step {} (plugin): no plugin named `{n}` is deployed (deploy it with `pixmesh plugin deploy FILE --name {n}`)",
                            i + 1
                        )));
                    }
                },
                PluginRef::Hash(h) => h.clone(),
            };
            let known = hash
                .parse::<ContentId>()
                .is_ok_and(|id| self.blobs.has(&id));
            if !known {
                return Ok(Err(format!(
                    "step {} (plugin): plugin {hash} is not deployed on this coordinator",
                    i + 1
                )));
            }
            p.plugin = PluginRef::Hash(hash);
        }
        Ok(Ok(spec))
    }

    /// A blob for an enrolled agent.
    pub fn blob(&self, id: &ContentId) -> Result<crate::blobs::Blob> {
        Ok(self.blobs.get(id)?)
    }

    /// Memory budget of the blob store's cache of recent blobs, bytes.
    pub fn set_blob_cache(&self, bytes: usize) {
        self.blobs.set_cache_budget(bytes);
    }

    /// Store a job's input durably (before the job that names it), in the
    /// pieces it arrived in.
    pub fn store_input(&self, pieces: Vec<bytes::Bytes>) -> Result<ContentId> {
        Ok(self.blobs.put(pieces)?)
    }

    /// Store a blob from an agent (an output), already checked by the
    /// blob stream to hash to `id`.
    pub fn put_blob(&self, id: ContentId, bytes: Vec<u8>) -> Result<()> {
        Ok(self.blobs.put_verified(id, bytes)?)
    }

    /// Every finished output of a job as a tar archive, with the names
    /// `pixmesh run` would give them. None for an unknown job.
    pub fn results_archive(&self, job: JobId) -> Result<Option<(Vec<u8>, usize)>> {
        let Some(view) = self.job(job)? else {
            return Ok(None);
        };
        let mut archive = tar::Builder::new(Vec::new());
        let mut count = 0;
        for t in &view.tasks {
            let Some(output) = &t.output else { continue };
            let id: ContentId = output.parse().map_err(anyhow::Error::msg)?;
            let bytes = self.blobs.get(&id)?.to_bytes();
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(t.finished_ms.map_or(0, |ms| (ms / 1000.0) as u64));
            archive
                .append_data(&mut header, &t.output_name, &bytes[..])
                .with_context(|| format!("cannot archive {}", t.output_name))?;
            count += 1;
        }
        Ok(Some((archive.into_inner()?, count)))
    }

    /// The blob store (for tests and the mesh).
    pub fn blob_path(&self, id: &ContentId) -> PathBuf {
        self.blobs.path(id)
    }
}

/// What `result` found.
#[derive(Debug)]
pub enum ResultLookup {
    /// The output bytes.
    Ready(bytes::Bytes),
    /// The task exists but has no output; its state.
    NotReady(String),
    /// No task of that name in the job.
    NoSuchTask,
}

/// Read the API token, creating it (mode 0600) on first start.
pub fn api_token(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = random_hex(32).context("no API token")?;
    pixmesh_mesh::identity::create_private(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// `bytes` random bytes from the OS, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// How join tokens are stored: their BLAKE3 hash, never the secret.
fn token_hash(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

/// Result names in task order: the input name with the output extension,
/// with `-2`, `-3`… on collisions, exactly as `pixmesh run` names them.
fn output_names(rows: &[TaskRow], extension: &str) -> Vec<String> {
    let found: Vec<(PathBuf, PathBuf)> = rows
        .iter()
        .map(|r| (PathBuf::from(&r.name), PathBuf::from(&r.name)))
        .collect();
    crate::local::plan_outputs(&found, Path::new(""), extension)
        .into_iter()
        .map(|j| j.output.to_string_lossy().into_owned())
        .collect()
}
