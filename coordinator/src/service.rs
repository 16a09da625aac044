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
//! This module does no networking; the HTTP API and (to come) the mesh
//! event loop call into it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use pixmesh_protocol::{ContentId, JobSpec, Step};
use serde::Serialize;

use crate::blobs::BlobStore;
use crate::scheduler::{
    Action, Event, JobId, JobStatus, Millis, Scheduler, SchedulerConfig, TaskSpec,
};
use crate::store::{Store, TaskRow};

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
}

/// The coordinator.
pub struct Coordinator {
    state: Mutex<State>,
    blobs: BlobStore,
    started: Instant,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
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
        let store = Store::open(&dir.database()).context("cannot open the job database")?;
        let blobs = BlobStore::open(dir.blobs()).context("cannot open the blob store")?;
        let mut scheduler = Scheduler::new(config);
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
        let coordinator = Coordinator {
            state: Mutex::new(State { store, scheduler }),
            blobs,
            started: Instant::now(),
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

    /// Store the images and the job durably, then queue its tasks.
    pub fn submit(&self, spec: &JobSpec, images: &[(String, Vec<u8>)]) -> Result<(JobId, usize)> {
        let mut inputs = Vec::with_capacity(images.len());
        for (name, bytes) in images {
            let id = self
                .blobs
                .put(bytes)
                .with_context(|| format!("cannot store {name}"))?;
            inputs.push((name.clone(), id));
        }
        let now = self.now();
        let mut state = self.lock();
        let (job, tasks) = state.store.insert_job(spec, &inputs, now)?;
        let plugins = plugin_ids(spec);
        let mut actions = Vec::new();
        for (task, (_, input)) in tasks.iter().zip(&inputs) {
            let spec = TaskSpec {
                id: *task,
                job,
                input: input.to_string(),
                plugins: plugins.clone(),
                attempt: 0,
            };
            actions.extend(state.scheduler.handle(now, Event::Submitted(spec)));
        }
        apply(&mut state, actions)?;
        Ok((job, tasks.len()))
    }

    /// Advance the scheduler's clock.
    pub fn tick(&self) -> Result<()> {
        let now = self.now();
        let mut state = self.lock();
        let actions = state.scheduler.tick(now);
        apply(&mut state, actions)
    }

    /// Cancel a job; returns the number of tasks cancelled, or None if unknown.
    pub fn cancel(&self, job: JobId) -> Result<Option<usize>> {
        let now = self.now();
        let mut state = self.lock();
        if state.store.job_spec(job)?.is_none() {
            return Ok(None);
        }
        let actions = state.scheduler.handle(now, Event::CancelJob(job));
        apply(&mut state, actions)?;
        Ok(Some(state.store.cancel_job(job)?))
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
        let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
        Ok(Some(JobView {
            id: job,
            steps: spec.to_compact(),
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
                .map(|r| TaskView {
                    name: r.name,
                    state: r.state,
                    attempt: r.attempt,
                    node: r.node,
                    error: r.error,
                    output: r.output.map(|o| o.to_string()),
                })
                .collect(),
        }))
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<JobView>> {
        let ids = self.lock().store.job_ids()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.into_iter().rev() {
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
            Some(id) => Ok(ResultLookup::Ready(self.blobs.get(&id)?)),
            None => Ok(ResultLookup::NotReady(row.state)),
        }
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
    Ready(Vec<u8>),
    /// The task exists but has no output; its state.
    NotReady(String),
    /// No task of that name in the job.
    NoSuchTask,
}

/// Make the scheduler's decisions durable. (Sending them to agents belongs
/// to the mesh event loop, which is not built yet.)
fn apply(state: &mut State, actions: Vec<Action>) -> Result<()> {
    for action in actions {
        match action {
            Action::Assign {
                task,
                attempt,
                node,
                ..
            } => {
                state.store.record_assigned(task, attempt, &node)?;
            }
            Action::Accept {
                task,
                attempt,
                output,
            } => {
                let id: ContentId = output.parse().map_err(anyhow::Error::msg)?;
                state.store.record_done(task, attempt, &id)?;
            }
            Action::GiveUp { task, reason } => state.store.record_failed(task, &reason)?,
            Action::Revoke { task, .. } => {
                if matches!(
                    state.scheduler.task(task),
                    Some((crate::scheduler::TaskState::Queued { .. }, _))
                ) {
                    state.store.record_requeued(task)?;
                }
            }
            Action::Fenced {
                task,
                attempt,
                node,
            } => {
                tracing::warn!(task, attempt, peer = %node, "late result refused (fenced)");
            }
            Action::NodeHealth { node, health } => {
                tracing::info!(peer = %node, ?health, "agent health changed");
            }
        }
    }
    Ok(())
}

/// Read the API token, creating it (mode 0600) on first start.
pub fn api_token(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}
