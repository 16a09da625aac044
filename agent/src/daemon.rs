//! The agent daemon: enrol with the coordinator(s), heartbeat, take tasks,
//! fetch what they need by content id, run the pipeline, send results back.
//!
//! Every task is fenced by its attempt number: Progress, Completed and
//! Failed quote it, and a Revoke for that attempt stops the work. Tasks are
//! accepted only from the configured coordinators and only while a slot is
//! free (otherwise the answer is `Busy` and the coordinator places the task
//! elsewhere). On SIGINT/SIGTERM the agent stops taking tasks, hands every
//! in-flight one back (a retryable failure, so it is reassigned at once
//! rather than after a lease expires), says `Bye` and exits.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pixmesh_mesh::blob;
use pixmesh_mesh::{Node, NodeConfig, NodeEvent, PeerId};
use pixmesh_protocol::wire::{Advert, Assignment, Request, Response, TaskId};
use pixmesh_protocol::{ContentId, PluginRef, Step};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tracing::Instrument as _;

use crate::config::AgentConfig;
use crate::metrics::{AgentMetrics, TaskCost};
use crate::pipeline::{Pipeline, PluginSet};
use crate::sandbox::{Plugin, PluginHost};

/// Largest plugin module fetched.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// The agent's version, sent in identify and adverts.
pub const VERSION: &str = concat!("pixmesh-agent/", env!("CARGO_PKG_VERSION"));

struct Running {
    attempt: u32,
    abort: AbortHandle,
}

struct Agent {
    node: Node,
    config: AgentConfig,
    host: Arc<PluginHost>,
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<TaskId, Running>>,
    accepting: AtomicBool,
    /// Plugins in the plugin directory, by hash (advertised).
    on_disk: Mutex<BTreeSet<String>>,
    metrics: Arc<AgentMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Hashes of the `.wasm` files in the plugin directory.
fn plugins_on_disk(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".wasm").map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A finished task: its output and what it cost.
struct Done {
    output: ContentId,
    cost: TaskCost,
}

/// Why a task could not finish, and whether another try may succeed.
struct TaskFailure {
    reason: String,
    retryable: bool,
}

impl TaskFailure {
    fn retry(reason: impl Into<String>) -> TaskFailure {
        TaskFailure {
            reason: reason.into(),
            retryable: true,
        }
    }
    fn fatal(reason: impl Into<String>) -> TaskFailure {
        TaskFailure {
            reason: reason.into(),
            retryable: false,
        }
    }
}

/// Run the agent until SIGINT/SIGTERM. Prints its peer id and addresses.
pub async fn run(config: AgentConfig) -> Result<()> {
    std::fs::create_dir_all(config.plugin_dir())
        .with_context(|| format!("cannot create {}", config.plugin_dir().display()))?;
    let keypair = pixmesh_mesh::identity::load_or_create(&config.identity_path())?;
    let metrics = Arc::new(AgentMetrics::new(&config.sandbox.metrics));
    let mut node_config = NodeConfig::new(keypair, VERSION);
    node_config.metrics = Some(metrics.registry());
    node_config.listen = config.listen.clone();
    node_config.bootstrap = config.bootstrap.clone();
    node_config.mdns = config.mdns;
    let (node, mut events) = Node::start(node_config)?;
    let host = Arc::new(
        PluginHost::new(config.sandbox.clone()).context("cannot start the plugin sandbox")?,
    );
    let addrs = node.listen_addrs().await?;
    for a in &addrs {
        say!("listening on {a}");
    }
    if let Some(addr) = config.metrics_listen {
        let bound = crate::metrics::serve(metrics.clone(), addr).await?;
        say!("metrics on http://{bound}/metrics");
    }
    say!("pixmesh-agent {} ready", node.peer_id());
    let agent = Arc::new(Agent {
        slots: Arc::new(Semaphore::new(config.concurrency)),
        node,
        host,
        plugins: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        accepting: AtomicBool::new(true),
        on_disk: Mutex::new(plugins_on_disk(&config.plugin_dir())),
        metrics,
        config,
    });
    for coordinator in agent.config.coordinators.clone() {
        tokio::spawn(session(agent.clone(), coordinator));
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.recv() => match event {
                Some(NodeEvent::Request { peer, request, responder }) => {
                    responder.send(agent.clone().on_request(peer, request));
                }
                Some(NodeEvent::Connected { peer, address }) => {
                    tracing::debug!(%peer, %address, "connected");
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    agent.shut_down().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM: how both daemons are asked to stop.
pub async fn shutdown_signal() {
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

/// Keep one coordinator informed: Hello until welcomed, then a heartbeat
/// every second; back to Hello whenever the coordinator stops answering
/// or forgets us.
async fn session(agent: Arc<Agent>, coordinator: PeerId) {
    let mut welcomed = false;
    let mut last_refusal = String::new();
    let mut every = tokio::time::interval(agent.config.heartbeat_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while agent.accepting.load(Ordering::Relaxed) {
        every.tick().await;
        let request = if welcomed {
            Request::Heartbeat(agent.advert())
        } else {
            Request::Hello {
                version: VERSION.into(),
                join_token: agent.config.join_token.clone(),
            }
        };
        // A heartbeat that takes longer than a few intervals is lost: the
        // coordinator died or restarted behind a connection that has not
        // noticed yet. Drop that connection so the next hello dials afresh.
        let patience = agent.config.heartbeat_interval() * 2;
        let answer =
            match tokio::time::timeout(patience, agent.node.request(coordinator, request)).await {
                Ok(answer) => answer,
                Err(_) => Err(pixmesh_mesh::MeshError::Unreachable {
                    peer: coordinator,
                    reason: format!("no answer within {patience:?}"),
                }),
            };
        match answer {
            Ok(Response::Welcome) => {
                if !welcomed {
                    tracing::info!(%coordinator, "enrolled with the coordinator");
                    say!("enrolled with coordinator {coordinator}");
                    // Report slots and load now: work can start at once.
                    every.reset_immediately();
                }
                welcomed = true;
            }
            Ok(Response::Ok) => {}
            Ok(Response::Refused { reason }) => {
                if reason != last_refusal {
                    tracing::warn!(%coordinator, %reason, "the coordinator refused this agent");
                    say_err!("coordinator {coordinator} refused this agent: {reason}");
                    last_refusal = reason;
                }
                welcomed = false;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(other) => tracing::debug!(?other, "unexpected answer to a heartbeat"),
            Err(e) => {
                tracing::debug!(%coordinator, cause = %e, "coordinator unreachable");
                if welcomed {
                    // Drop the dead connection and say hello over a new one
                    // right away.
                    agent.node.disconnect(coordinator);
                    every.reset_immediately();
                }
                welcomed = false;
            }
        }
    }
}

impl Agent {
    fn advert(&self) -> Advert {
        let running = lock(&self.running).len() as u32;
        Advert {
            version: VERSION.into(),
            slots: self.config.concurrency as u32,
            running,
            // Tasks are accepted only into a free slot, never queued here.
            queue_depth: 0,
            plugins: lock(&self.on_disk).iter().cloned().collect(),
            rss_bytes: rss_bytes(),
        }
    }

    fn on_request(self: Arc<Self>, peer: PeerId, request: Request) -> Response {
        if !self.config.coordinators.contains(&peer) {
            tracing::warn!(%peer, "refused a request from a peer that is not a configured coordinator");
            return Response::Refused {
                reason: "this agent takes tasks only from its configured coordinators".into(),
            };
        }
        match request {
            Request::Assign(assignment) => self.accept(peer, assignment),
            Request::Revoke { task, attempt } => {
                let mut running = lock(&self.running);
                if running.get(&task).is_some_and(|r| r.attempt == attempt)
                    && let Some(r) = running.remove(&task)
                {
                    r.abort.abort();
                    tracing::info!(task, attempt, "task revoked");
                }
                Response::Ok
            }
            other => Response::Refused {
                reason: format!("an agent does not take {:?} requests", other.kind()),
            },
        }
    }

    fn accept(self: Arc<Self>, coordinator: PeerId, a: Assignment) -> Response {
        if !self.accepting.load(Ordering::Relaxed) {
            return Response::Refused {
                reason: "agent shutting down".into(),
            };
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Response::Busy;
        };
        let mut running = lock(&self.running);
        if let Some(r) = running.get(&a.task) {
            if r.attempt >= a.attempt {
                // A duplicate delivery of an assignment already being worked on.
                return Response::Ok;
            }
            r.abort.abort();
        }
        let (task, attempt) = (a.task, a.attempt);
        let me = self.clone();
        let span = tracing::info_span!(
            "task",
            job = a.job,
            task = a.task,
            attempt = a.attempt,
            image = %a.name,
            coordinator = %coordinator
        );
        let handle = tokio::spawn(
            async move {
                let outcome = me.work(coordinator, &a).await;
                // Free the slot before reporting: the coordinator may answer
                // the report by assigning the next task here at once.
                drop(permit);
                me.finish(coordinator, &a, outcome).await;
            }
            .instrument(span),
        );
        running.insert(
            task,
            Running {
                attempt,
                abort: handle.abort_handle(),
            },
        );
        Response::Ok
    }

    /// Fetch, process, upload. Progress reports renew the lease meanwhile.
    async fn work(&self, coordinator: PeerId, a: &Assignment) -> Result<Done, TaskFailure> {
        let progress = {
            let node = self.node.clone();
            let (task, attempt) = (a.task, a.attempt);
            let every = Duration::from_millis((a.lease_ms / 3).max(200));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _ = node
                        .request(coordinator, Request::Progress { task, attempt })
                        .await;
                }
            })
        };
        let result = self.work_inner(coordinator, a).await;
        progress.abort();
        result
    }

    async fn work_inner(&self, coordinator: PeerId, a: &Assignment) -> Result<Done, TaskFailure> {
        let started = Instant::now();
        let mut set = PluginSet::new(self.host.clone());
        for (i, step) in a.spec.steps.iter().enumerate() {
            let Step::Plugin(p) = step else { continue };
            let PluginRef::Hash(hash) = &p.plugin else {
                return Err(TaskFailure::fatal(format!(
                    "step {} (plugin): `{}` is a name; the coordinator sends plugins by hash",
                    i + 1,
                    p.plugin
                )));
            };
            let plugin = self
                .plugin(coordinator, hash)
                .await
                .map_err(|e| TaskFailure {
                    reason: format!("step {} (plugin): {}", i + 1, e.reason),
                    retryable: e.retryable,
                })?;
            set.insert(p.plugin.clone(), plugin);
        }
        let pipeline = Pipeline::with_plugins(a.spec.clone(), self.config.limits, set)
            .map_err(|e| TaskFailure::fatal(e.to_string()))?;
        // Decode while the input arrives: the fetch hands each chunk over as
        // soon as it is in (the channel holds what the decoder has not read
        // yet, so memory is as if the blob were fetched whole), and the
        // result counts only once every byte is in and the whole hashes to
        // the input's id. Dropping the sender (fetch over, failed or this
        // task aborted) ends the decoder's input.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut control = self.node.stream_control();
        let limit = self.config.limits.max_input_bytes;
        let fetch = async move {
            let fetched =
                blob::fetch_streaming(&mut control, coordinator, a.input, limit, |_, c| {
                    // The decoder may be done early (a progressive JPEG at 1/8
                    // scale needs only its DC scans); the rest is still hashed.
                    let _ = tx.send(c.to_vec());
                })
                .await;
            (fetched, started.elapsed().as_secs_f64() * 1e3)
        };
        // The pipeline starts with the fetch and overlaps it, so its time
        // includes waiting for bytes the decoder needs before they arrive.
        let began = Instant::now();
        let process = tokio::task::spawn_blocking(move || {
            let processed = pipeline.process_chunks(&mut || rx.recv().ok());
            (processed, began.elapsed().as_secs_f64() * 1e3)
        });
        let ((fetched, fetch_ms), processed) = tokio::join!(fetch, process);
        let input_len = fetched.map_err(|e| match e {
            blob::BlobError::TooLarge { .. } => TaskFailure::fatal(e.to_string()),
            _ => TaskFailure::retry(format!("cannot fetch the input: {e}")),
        })? as usize;
        let (processed, process_ms) =
            processed.map_err(|e| TaskFailure::retry(format!("worker failed: {e}")))?;
        let processed = processed.map_err(|e| TaskFailure::fatal(e.to_string()))?;
        let pushed = Instant::now();
        // A computed result is worth keeping through a network cut: keep
        // offering it while the link is down (the coordinator's fencing
        // decides whether it is still wanted).
        let bytes = &processed.bytes;
        let output = patiently(
            "upload the output",
            a.task,
            || {
                let mut control = self.node.stream_control();
                async move { blob::push(&mut control, coordinator, bytes).await }
            },
            |e| matches!(e, blob::BlobError::Open { .. } | blob::BlobError::Io { .. }),
        )
        .await
        .map_err(|e| TaskFailure::retry(format!("cannot upload the output: {e}")))?;
        let upload_ms = pushed.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(task = a.task, upload_ms, "output uploaded");
        Ok(Done {
            output,
            cost: TaskCost {
                fetch_ms,
                process_ms,
                upload_ms,
                bytes_in: input_len,
                bytes_out: bytes.len(),
            },
        })
    }

    /// A plugin by hash: from memory, from the plugin directory, or fetched
    /// from the coordinator (and kept). Validated and compiled by the host.
    async fn plugin(&self, coordinator: PeerId, hash: &str) -> Result<Arc<Plugin>, TaskFailure> {
        if let Some(p) = lock(&self.plugins).get(hash) {
            return Ok(p.clone());
        }
        let id: ContentId = hash
            .parse()
            .map_err(|e| TaskFailure::fatal(format!("bad plugin hash {hash}: {e}")))?;
        let path = self.config.plugin_dir().join(format!("{hash}.wasm"));
        let wasm = match std::fs::read(&path) {
            Ok(bytes) if id.matches(&bytes) => bytes,
            _ => {
                let mut control = self.node.stream_control();
                let bytes = blob::fetch(&mut control, coordinator, id, MAX_PLUGIN_BYTES)
                    .await
                    .map_err(|e| TaskFailure::retry(format!("cannot fetch plugin {hash}: {e}")))?;
                tracing::info!(plugin = %hash, bytes = bytes.len(), "plugin fetched from the coordinator");
                let tmp = path.with_extension("tmp");
                match std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
                    Ok(()) => {
                        lock(&self.on_disk).insert(hash.to_owned());
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), cause = %e, "cannot keep the plugin on disk")
                    }
                }
                bytes
            }
        };
        let host = self.host.clone();
        let plugin = tokio::task::spawn_blocking(move || host.load(&wasm))
            .await
            .map_err(|e| TaskFailure::retry(format!("worker failed: {e}")))?
            .map_err(|e| TaskFailure::fatal(format!("plugin {hash}: {e}")))?;
        let plugin = Arc::new(plugin);
        lock(&self.plugins).insert(hash.to_owned(), plugin.clone());
        Ok(plugin)
    }

    async fn finish(
        &self,
        coordinator: PeerId,
        a: &Assignment,
        outcome: Result<Done, TaskFailure>,
    ) {
        let request = match outcome {
            Ok(done) => {
                tracing::info!(
                    task = a.task,
                    attempt = a.attempt,
                    name = %a.name,
                    fetch_ms = done.cost.fetch_ms,
                    process_ms = done.cost.process_ms,
                    upload_ms = done.cost.upload_ms,
                    "task done"
                );
                self.metrics.done(&done.cost);
                Request::Completed {
                    task: a.task,
                    attempt: a.attempt,
                    output: done.output,
                    fetch_ms: done.cost.fetch_ms,
                    process_ms: done.cost.process_ms,
                    upload_ms: Some(done.cost.upload_ms),
                }
            }
            Err(f) => {
                tracing::warn!(task = a.task, attempt = a.attempt, name = %a.name, reason = %f.reason, "task failed");
                self.metrics.failed();
                Request::Failed {
                    task: a.task,
                    attempt: a.attempt,
                    reason: f.reason,
                    retryable: f.retryable,
                }
            }
        };
        // Report before forgetting the task, so a shutdown in between still
        // hands it back; keep trying across network trouble (a result that
        // arrives after its task was reassigned is refused by fencing).
        let delivered = patiently(
            "report the outcome",
            a.task,
            || self.node.request(coordinator, request.clone()),
            |_| true,
        )
        .await;
        if let Err(e) = delivered {
            tracing::warn!(task = a.task, cause = %e, "gave up reporting; the coordinator's lease will expire");
        }
        let mut running = lock(&self.running);
        if running.get(&a.task).is_some_and(|r| r.attempt == a.attempt) {
            running.remove(&a.task);
        }
    }

    /// Stop taking tasks, abandon the ones in flight and say goodbye: the
    /// coordinator requeues every task this agent held as soon as it reads
    /// the `Bye`, instead of waiting for leases to expire. Done in this order
    /// so no new task arrives between a hand-back and the goodbye.
    async fn shut_down(&self) {
        self.accepting.store(false, Ordering::Relaxed);
        let held: Vec<(TaskId, Running)> = lock(&self.running).drain().collect();
        say_err!(
            "pixmesh-agent: shutting down; handing back {} task(s)",
            held.len()
        );
        for (_, r) in &held {
            r.abort.abort();
        }
        for c in &self.config.coordinators {
            match tokio::time::timeout(Duration::from_secs(3), self.node.request(*c, Request::Bye))
                .await
            {
                Ok(Ok(_)) => tracing::info!(coordinator = %c, "said goodbye; tasks handed back"),
                Ok(Err(e)) => {
                    tracing::warn!(coordinator = %c, cause = %e, "cannot say goodbye; its leases will expire")
                }
                Err(_) => {
                    tracing::warn!(coordinator = %c, "goodbye timed out; its leases will expire")
                }
            }
        }
        self.node.close_all().await;
    }
}

/// How long a finished task's result is offered to an unreachable coordinator.
const RESULT_PATIENCE: Duration = Duration::from_secs(300);

/// Run `op` until it succeeds, fails for a reason `transient` says is not
/// worth retrying, or [`RESULT_PATIENCE`] runs out; pauses grow from 200 ms
/// to 2 s.
async fn patiently<T, E, F, Fut>(
    what: &str,
    task: TaskId,
    mut op: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + RESULT_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                tracing::debug!(task, cause = %e, "cannot {what}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}
