//! The coordinator's HTTP API (JSON), for the CLI. See `docs/api.md`.
//!
//! Every request needs `Authorization: Bearer <token>`; the token is created
//! on the coordinator's first start in its data directory (mode 0600).
//! Handlers run the blocking work (fsync, SQLite) on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pixmesh_protocol::{ContentId, JobSpec};
use serde_json::json;
use tokio::sync::mpsc;

use crate::scheduler::JobId;
use crate::service::{Coordinator, ResultLookup};

/// Largest submit body accepted.
pub const MAX_SUBMIT_BYTES: usize = 1 << 30;

#[derive(Clone)]
struct AppState {
    coordinator: Arc<Coordinator>,
    token: Arc<str>,
    info: Arc<Info>,
}

/// What `GET /v1/info` says: how agents reach this coordinator.
#[derive(Debug, Clone, serde::Serialize, Default)]
pub struct Info {
    /// The coordinator's libp2p peer id.
    pub peer_id: String,
    /// Its libp2p listen addresses, each ending in `/p2p/<peer id>`.
    pub mesh_addrs: Vec<String>,
    /// Its version.
    pub version: String,
}

/// Largest plugin module accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// An API error: a status and a message naming the problem.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(cause = %format!("{e:#}"), "request failed");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

/// The router, with authentication on every route.
pub fn router(coordinator: Arc<Coordinator>, token: &str, info: Arc<Info>) -> Router {
    let state = AppState {
        coordinator,
        token: Arc::from(token),
        info,
    };
    Router::new()
        .route("/v1/info", get(info_handler))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/results", get(archive))
        .route("/v1/jobs/{id}/results/{name}", get(result))
        .route("/v1/nodes", get(nodes))
        .route("/v1/throughput", get(throughput))
        .route("/metrics", get(metrics))
        .route("/v1/plugins", post(deploy).get(plugins))
        .route("/v1/tokens", post(create_token).get(tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .layer(DefaultBodyLimit::max(MAX_SUBMIT_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // The dashboard's page holds no data: it asks for the token and
        // reads everything through the authenticated API above.
        .route("/", get(dashboard))
        .with_state(state)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let message = match given {
        Some(t) if same(t.trim().as_bytes(), state.token.as_bytes()) => {
            return next.run(req).await;
        }
        Some(_) => "wrong API token",
        None => {
            "missing API token: send `Authorization: Bearer <token>` (the token is in the coordinator's data directory, file api-token)"
        }
    };
    // Read and discard the upload (up to the submit limit) before answering,
    // so the client sees the 401 rather than a connection reset mid-upload.
    let mut body = req.into_body().into_data_stream();
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
        drained += chunk.len();
        if drained > MAX_SUBMIT_BYTES {
            break;
        }
    }
    ApiError(StatusCode::UNAUTHORIZED, message.into()).into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("worker failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// `POST /v1/jobs`: multipart with one `spec` (JSON) or `steps` (one-line
/// form) field and one or more `image` file fields.
async fn submit(State(state): State<AppState>, mut form: Multipart) -> Result<Response, ApiError> {
    let mut upload = Upload::new(state.coordinator.clone());
    match upload.read(&mut form).await {
        Ok(()) => {}
        Err(e) => {
            // Drop what arrived (the job was never acknowledged), and read
            // the rest of the upload before answering, so the client gets
            // this message rather than a connection reset mid-upload.
            upload.abort().await;
            while let Ok(Some(field)) = form.next_field().await {
                let _ = field.bytes().await;
            }
            return Err(e);
        }
    }
    match upload.seal().await {
        Ok((job, tasks)) => Ok((
            StatusCode::CREATED,
            Json(json!({ "job": job, "tasks": tasks })),
        )
            .into_response()),
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// A stored input: its name, id and size.
type Image = (String, ContentId, u64);

/// A worker storing one image.
type Storing = tokio::task::JoinHandle<anyhow::Result<Image>>;

/// A submit in progress. Each image is hashed and stored durably on the
/// blocking pool as soon as it has arrived, while the next one uploads.
/// Once the spec is known and the job written, a queuer task adds stored
/// images to the job in upload order, each time every consecutive image
/// already stored in one batch, so agents start on the first (largest, if
/// the client sends them so) images before the last ones are in, and a job
/// of many small images costs a few transactions rather than one per
/// image. The job is acknowledged only when [`Upload::seal`] has written
/// that every image arrived; an upload that fails or is cut off drops the
/// job and revokes its tasks, and a restart drops it too.
struct Upload {
    coordinator: Arc<Coordinator>,
    /// The job, once the spec has been read and the job written.
    job: Option<JobId>,
    /// Each image's storing worker, in upload order (closed at the seal).
    stored: Option<mpsc::UnboundedSender<Storing>>,
    /// Images not yet queued: the queuer takes it once the job exists.
    backlog: Option<mpsc::UnboundedReceiver<Storing>>,
    /// The queuer, once the job exists.
    queuer: Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
    names: std::collections::HashSet<String>,
    seen_spec: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // The request went away (the client hung up) before the job was
        // sealed or aborted: drop it off the request's task.
        if let Some(job) = self.job.take() {
            let c = self.coordinator.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = c.abort_job(job) {
                    tracing::error!(job, cause = %format!("{e:#}"), "cannot drop an abandoned upload");
                }
            });
        }
    }
}

fn worker_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("worker failed: {e}"),
    )
}

/// Add stored images to `job` in upload order as they are stored, each
/// time with every consecutive one already stored, until the last.
async fn queue_images(
    coordinator: Arc<Coordinator>,
    job: JobId,
    mut storing: mpsc::UnboundedReceiver<Storing>,
) -> Result<(), ApiError> {
    let mut next = storing.recv().await;
    while let Some(first) = next.take() {
        let mut batch = vec![first.await.map_err(worker_failed)??];
        loop {
            match storing.try_recv() {
                Ok(worker) if worker.is_finished() => {
                    batch.push(worker.await.map_err(worker_failed)??);
                }
                Ok(worker) => {
                    next = Some(worker);
                    break;
                }
                Err(_) => break,
            }
        }
        let c = coordinator.clone();
        blocking(move || c.add_inputs(job, &batch)).await?;
        if next.is_none() {
            next = storing.recv().await;
        }
    }
    Ok(())
}

impl Upload {
    fn new(coordinator: Arc<Coordinator>) -> Upload {
        let (tx, rx) = mpsc::unbounded_channel();
        Upload {
            coordinator,
            job: None,
            stored: Some(tx),
            backlog: Some(rx),
            queuer: None,
            names: std::collections::HashSet::new(),
            seen_spec: false,
        }
    }

    async fn read(&mut self, form: &mut Multipart) -> Result<(), ApiError> {
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| bad(format!("bad multipart body: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            match name.as_str() {
                "spec" | "steps" => {
                    if self.seen_spec {
                        return Err(bad("give one `spec` or `steps` field, not several"));
                    }
                    self.seen_spec = true;
                    let text = field
                        .text()
                        .await
                        .map_err(|e| bad(format!("bad {name} field: {e}")))?;
                    let parsed = if name == "spec" {
                        JobSpec::from_json(&text)
                    } else {
                        JobSpec::from_compact(&text)
                    };
                    let spec = parsed.map_err(|e| bad(e.to_string()))?;
                    let c = self.coordinator.clone();
                    let spec = blocking(move || c.resolve_plugins(&spec))
                        .await?
                        .map_err(bad)?;
                    let c = self.coordinator.clone();
                    let job = blocking(move || c.open_job(&spec)).await?;
                    self.job = Some(job);
                    if let Some(backlog) = self.backlog.take() {
                        let c = self.coordinator.clone();
                        self.queuer = Some(tokio::spawn(queue_images(c, job, backlog)));
                    }
                }
                "image" => {
                    let file = field.file_name().map(str::to_owned).unwrap_or_default();
                    // Keep the last path component only: names become result file names.
                    let file = file
                        .rsplit(['/', '\\'])
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if file.is_empty() || file == "." || file == ".." {
                        return Err(bad("every image field needs a file name"));
                    }
                    if !self.names.insert(file.clone()) {
                        return Err(bad(format!(
                            "two images are named {file:?}; names must be unique in a job"
                        )));
                    }
                    // Keep the chunks as they come: the blob store hashes,
                    // writes and serves them piece by piece (joining them
                    // cost a fresh buffer and a copy per photo).
                    let mut chunks = Vec::new();
                    while let Some(chunk) = field
                        .chunk()
                        .await
                        .map_err(|e| bad(format!("cannot read image {file}: {e}")))?
                    {
                        chunks.push(chunk);
                    }
                    let c = self.coordinator.clone();
                    let worker = tokio::task::spawn_blocking(move || {
                        let size = chunks.iter().map(bytes::Bytes::len).sum::<usize>() as u64;
                        c.store_input(chunks)
                            .with_context(|| format!("cannot store {file}"))
                            .map(|id| (file, id, size))
                    });
                    if let Some(queue) = &self.stored {
                        // Closed only once the upload is over.
                        let _ = queue.send(worker);
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown field {other:?} (expected spec, steps or image)"
                    )));
                }
            }
        }
        if !self.seen_spec {
            return Err(bad(
                "missing `spec` (JSON) or `steps` (one-line form) field",
            ));
        }
        if self.names.is_empty() {
            return Err(bad("no `image` fields: a job needs at least one image"));
        }
        Ok(())
    }

    /// Wait until every image is stored and queued, then acknowledge.
    async fn seal(&mut self) -> Result<(JobId, usize), ApiError> {
        // The queuer ends once the last storing worker has reported.
        self.stored = None;
        if let Some(queuer) = self.queuer.take() {
            queuer.await.map_err(worker_failed)??;
        }
        let job = self
            .job
            .ok_or_else(|| bad("missing `spec` (JSON) or `steps` (one-line form) field"))?;
        let c = self.coordinator.clone();
        let tasks = blocking(move || c.seal_job(job)).await?;
        self.job = None;
        Ok((job, tasks))
    }

    /// Drop the job, once the images still being stored are done.
    async fn abort(&mut self) {
        self.stored = None;
        if let Some(queuer) = self.queuer.take() {
            let _ = queuer.await;
        }
        if let Some(job) = self.job.take() {
            let c = self.coordinator.clone();
            if let Err(e) = blocking(move || c.abort_job(job)).await {
                tracing::error!(job, cause = %e.1, "cannot drop a failed upload");
            }
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    Ok(Json(blocking(move || c.jobs(q.limit)).await?).into_response())
}

/// Longest a status request may be held open.
const MAX_WAIT_MS: u64 = 30_000;

/// A long poll that saw some tasks finish (but not the whole job) answers
/// no sooner than this after it arrived, so a job of many quick tasks costs
/// a follower a few requests a second, not one per task.
const COALESCE: Duration = Duration::from_millis(100);

#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    /// Hold the answer up to this long until the job changes.
    wait_ms: Option<u64>,
    /// Tasks finished (done + failed + cancelled) the client has seen.
    finished: Option<usize>,
}

/// A job's status. With `wait_ms`, a long poll: the answer comes as soon
/// as nothing is left queued or running; when the number of finished tasks
/// differs from `finished` (default: the number now), at least 100 ms after
/// the request came; else after `wait_ms` (at most 30 s). A client follows
/// a job this way with a few requests a second and learns of its end at once.
async fn status(
    State(state): State<AppState>,
    Path(id): Path<JobId>,
    Query(q): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let mut changes = state.coordinator.finished_tasks();
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let start = tokio::time::Instant::now();
    let deadline = start + wait;
    let mut seen = q.finished;
    loop {
        changes.borrow_and_update();
        let c = state.coordinator.clone();
        let Some(view) = blocking(move || c.job(id)).await? else {
            return Err(not_found(format!("no job {id}")));
        };
        let s = &view.status;
        let finished = s.done + s.failed + s.cancelled;
        let changed = finished != *seen.get_or_insert(finished);
        let now = tokio::time::Instant::now();
        if wait.is_zero()
            || (s.queued + s.running == 0 && !view.receiving)
            || now >= deadline
            || (changed && now >= start + COALESCE)
        {
            return Ok(Json(view).into_response());
        }
        // Wake on the next finished task, or when a change already seen
        // may be answered, or at the deadline.
        let until = if changed {
            deadline.min(start + COALESCE)
        } else {
            deadline
        };
        if let Ok(Err(_)) = tokio::time::timeout_at(until, changes.changed()).await {
            // The coordinator is going away: answer with what we have.
            return Ok(Json(view).into_response());
        }
    }
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<JobId>,
) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    match blocking(move || c.cancel(id)).await? {
        Some(n) => Ok(Json(json!({ "job": id, "cancelled": n })).into_response()),
        None => Err(not_found(format!("no job {id}"))),
    }
}

async fn result(
    State(state): State<AppState>,
    Path((id, name)): Path<(JobId, String)>,
) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    let lookup_name = name.clone();
    match blocking(move || c.result(id, &lookup_name)).await? {
        ResultLookup::Ready(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        ResultLookup::NotReady(state) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("{name} in job {id} has no result: it is {state}"),
        )),
        ResultLookup::NoSuchTask => Err(not_found(format!("job {id} has no image named {name:?}"))),
    }
}

async fn info_handler(State(state): State<AppState>) -> Response {
    Json(state.info.as_ref().clone()).into_response()
}

async fn archive(
    State(state): State<AppState>,
    Path(id): Path<JobId>,
) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    match blocking(move || c.results_archive(id)).await? {
        Some((tar, count)) => Ok((
            [
                (header::CONTENT_TYPE, "application/x-tar".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"job-{id}.tar\""),
                ),
                (
                    header::HeaderName::from_static("x-pixmesh-files"),
                    count.to_string(),
                ),
            ],
            tar,
        )
            .into_response()),
        None => Err(not_found(format!("no job {id}"))),
    }
}

/// The dashboard: one self-contained page (no CDN, nothing fetched from
/// elsewhere).
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct ThroughputQuery {
    #[serde(default = "default_window")]
    seconds: u64,
    #[serde(default = "default_bucket")]
    bucket: u64,
}

fn default_window() -> u64 {
    300
}

fn default_bucket() -> u64 {
    5
}

async fn throughput(
    State(state): State<AppState>,
    Query(q): Query<ThroughputQuery>,
) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    Ok(Json(blocking(move || c.throughput(q.seconds, q.bucket)).await?).into_response())
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    let text = blocking(move || c.render_metrics()).await?;
    Ok((
        [(header::CONTENT_TYPE, pixmesh_agent::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

async fn nodes(State(state): State<AppState>) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    Ok(Json(blocking(move || c.nodes()).await?).into_response())
}

#[derive(Debug, serde::Deserialize)]
struct DeployQuery {
    name: String,
}

/// `POST /v1/plugins?name=NAME` with the module as the body.
async fn deploy(
    State(state): State<AppState>,
    Query(q): Query<DeployQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_PLUGIN_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "plugin is {} bytes, over the limit of {MAX_PLUGIN_BYTES}",
                body.len()
            ),
        ));
    }
    let c = state.coordinator.clone();
    let name = q.name.clone();
    let hash = blocking(move || c.deploy_plugin(&body, &name))
        .await?
        .map_err(|e| bad(format!("plugin {}: {e}", q.name)))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": q.name, "hash": hash })),
    )
        .into_response())
}

async fn plugins(State(state): State<AppState>) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    Ok(Json(blocking(move || c.plugins()).await?).into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
struct TokenRequest {
    /// Seconds the token stays valid; absent for no expiry.
    ttl_secs: Option<u64>,
}

async fn create_token(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("bad token request: {e}")))?
    };
    let c = state.coordinator.clone();
    let token = blocking(move || c.create_token(req.ttl_secs)).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

async fn tokens(State(state): State<AppState>) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    Ok(Json(blocking(move || c.tokens()).await?).into_response())
}

async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = state.coordinator.clone();
    let lookup = id.clone();
    if blocking(move || c.revoke_token(&lookup)).await? {
        Ok(Json(json!({ "revoked": id })).into_response())
    } else {
        Err(not_found(format!("no join token {id}")))
    }
}
