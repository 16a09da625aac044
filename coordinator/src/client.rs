//! The CLI's side of the coordinator's HTTP API: `submit`, `status`,
//! `jobs`, `results`, `cancel`, `nodes`, `token`, `plugin deploy`.
//!
//! Where the coordinator is: `--coordinator URL`, else `$PIXMESH_COORDINATOR`,
//! else `coordinator = "..."` in `<pixmesh home>/config.toml`, else
//! `http://127.0.0.1:7700`. The API token: `--token`, else `$PIXMESH_TOKEN`,
//! else `token = "..."` in the config file, else the file a coordinator on
//! this machine writes (`<pixmesh home>/coordinator/api-token`).

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::blocking::{Client as Http, RequestBuilder};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{EXIT_OK, EXIT_SOME_FAILED, SpecSource};
use pixmesh_protocol::JobSpec;

/// The default coordinator address.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7700";

/// How to reach the coordinator; flattened into every remote command.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Coordinator API address.
    #[arg(long, value_name = "URL", env = "PIXMESH_COORDINATOR", global = true)]
    pub coordinator: Option<String>,
    /// API token (default: from the config file, or the coordinator's data
    /// directory on this machine).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PIXMESH_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// pixmesh home (config.toml, the local coordinator's data). Default:
    /// $PIXMESH_HOME, else $XDG_DATA_HOME/pixmesh, else ~/.local/share/pixmesh.
    #[arg(long = "home", value_name = "DIR", global = true)]
    pub home: Option<PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    coordinator: Option<String>,
    token: Option<String>,
}

/// A connection to the coordinator's API.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: Http,
    /// Built on the first upload: commands that send no images need no
    /// runtime of their own.
    uploader: std::sync::OnceLock<Uploader>,
}

impl Remote {
    /// Resolve address and token and build a client.
    pub fn connect(&self) -> Result<Client> {
        let home = crate::registry::home(self.home.as_deref());
        let config_path = home.join("config.toml");
        let config: ClientConfig = match std::fs::read_to_string(&config_path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("bad config file {}", config_path.display()))?,
            Err(_) => ClientConfig::default(),
        };
        let base = self
            .coordinator
            .clone()
            .or(config.coordinator)
            .unwrap_or_else(|| DEFAULT_COORDINATOR.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let token = self.token.clone().or(config.token).or_else(|| {
            std::fs::read_to_string(home.join("coordinator").join("api-token"))
                .ok()
                .map(|t| t.trim().to_owned())
        });
        let http = Http::builder()
            .timeout(None)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            base,
            token,
            http,
            uploader: std::sync::OnceLock::new(),
        })
    }
}

impl Client {
    fn send(&self, what: &str, req: RequestBuilder) -> Result<reqwest::blocking::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().map_err(|e| self.unreachable(what, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        Err(refused(what, status, resp.text().unwrap_or_default()))
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the coordinator at {} ({what}): {e}\n  is `pixmesh coordinator` running? give its address with --coordinator or PIXMESH_COORDINATOR",
            self.base
        )
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        let resp = self.send(what, self.http.get(format!("{}{path}", self.base)))?;
        resp.json().with_context(|| format!("{what}: bad answer"))
    }

    pub(crate) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(what, req)?
            .json()
            .with_context(|| format!("{what}: bad answer"))
    }

    /// `GET /v1/jobs/{id}`.
    pub fn job(&self, id: u64) -> Result<Value> {
        self.get(&format!("/v1/jobs/{id}"), &format!("job {id}"))
    }

    /// A job's status once it has changed: the coordinator answers when
    /// the number of finished tasks is no longer `finished`, when nothing
    /// is left to run, or after `wait` (a long poll).
    pub fn job_changed(&self, id: u64, finished: u64, wait: Duration) -> Result<Value> {
        self.get(
            &format!(
                "/v1/jobs/{id}?finished={finished}&wait_ms={}",
                wait.as_millis()
            ),
            &format!("job {id}"),
        )
    }

    /// Submit a job over the images found in `inputs` (files or
    /// directories); the coordinator's answer and the bytes uploaded.
    /// Files are read as they are sent, largest first, so a job of any
    /// size uploads in bounded memory and the coordinator can start the
    /// first images while the rest are still on their way.
    pub fn submit(&self, spec: &JobSpec, inputs: &[PathBuf]) -> Result<(Value, u64)> {
        self.submit_with(spec, inputs, &ProgressBar::hidden())
    }

    /// [`Client::submit`], counting the bytes sent on `bar`.
    pub fn submit_with(
        &self,
        spec: &JobSpec,
        inputs: &[PathBuf],
        bar: &ProgressBar,
    ) -> Result<(Value, u64)> {
        let found = crate::local::discover(inputs)?;
        if found.is_empty() {
            bail!("no images found in the inputs");
        }
        let mut names = HashSet::new();
        let mut images = Vec::with_capacity(found.len());
        for (path, _) in found {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{} has no file name", path.display()))?;
            if !names.insert(name.clone()) {
                bail!(
                    "two inputs are named {name:?}; a job's images need distinct file names (submit them as separate jobs)"
                );
            }
            let len = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            images.push((name, Source::File(path, len)));
        }
        // Largest first: the coordinator queues each image as it arrives,
        // so the biggest start while the rest upload (as `pixmesh run`
        // starts its largest inputs first).
        images.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
        let bytes_total = images.iter().map(|(_, s)| s.len()).sum();
        let upload = MultipartUpload::new("spec", &spec.to_json(), images);
        let resp = self.upload(upload, bar)?;
        Ok((resp, bytes_total))
    }

    /// `POST /v1/jobs` with `upload`; the coordinator's answer.
    pub fn upload(&self, upload: MultipartUpload, bar: &ProgressBar) -> Result<Value> {
        let uploader = match self.uploader.get() {
            Some(u) => u,
            None => {
                let built = Uploader::new().context("cannot build the HTTP client")?;
                self.uploader.get_or_init(|| built)
            }
        };
        let url = format!("{}/v1/jobs", self.base);
        let (status, body) = upload
            .post(uploader, &url, self.token.as_deref(), bar.clone())
            .map_err(|e| match e {
                UploadError::Source(cause) => anyhow::anyhow!("submit: {cause}"),
                UploadError::Http(e) => self.unreachable("submit", &e),
                other => anyhow::anyhow!("submit: {other}"),
            })?;
        if !status.is_success() {
            return Err(refused("submit", status, body));
        }
        serde_json::from_str(&body).context("submit: bad answer")
    }

    /// Deploy a plugin under `name`; the coordinator's answer (with its hash).
    pub fn deploy(&self, wasm: Vec<u8>, name: &str, what: &str) -> Result<Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/v1/plugins", self.base),
            &[("name", name)],
        )
        .context("bad coordinator address")?;
        self.send(&format!("deploy {what}"), self.http.post(url).body(wasm))?
            .json()
            .context("deploy: bad answer")
    }

    /// Download a job's finished results into `outdir`; the files written.
    pub fn download(&self, job: u64, outdir: &Path) -> Result<Vec<PathBuf>> {
        let resp = self.send(
            &format!("results of job {job}"),
            self.http
                .get(format!("{}/v1/jobs/{job}/results", self.base)),
        )?;
        std::fs::create_dir_all(outdir)
            .with_context(|| format!("cannot create {}", outdir.display()))?;
        let mut archive = tar::Archive::new(resp);
        let mut written = Vec::new();
        for entry in archive.entries().context("bad results archive")? {
            let mut entry = entry.context("bad results archive")?;
            let name = entry.path().context("bad name in archive")?.into_owned();
            // unpack_in refuses names that would escape the directory.
            if !entry
                .unpack_in(outdir)
                .with_context(|| format!("cannot write {}", outdir.join(&name).display()))?
            {
                bail!(
                    "the archive names a path outside {}: {}",
                    outdir.display(),
                    name.display()
                );
            }
            written.push(outdir.join(name));
        }
        Ok(written)
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn short(peer: &str) -> String {
    if peer.len() > 16 {
        format!("{}…{}", &peer[..8], &peer[peer.len() - 6..])
    } else {
        peer.to_owned()
    }
}

/// Where an uploaded image's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file, read as it is sent; its size when the upload was planned.
    File(PathBuf, u64),
    /// Bytes in memory.
    Memory(bytes::Bytes),
}

impl Source {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Source::File(_, len) => *len,
            Source::Memory(b) => b.len() as u64,
        }
    }
}

/// A `multipart/form-data` body (the spec, then one `image` field per
/// image) read part by part as it is sent: files are opened and read only
/// when their turn comes, so memory stays bounded whatever the job's size.
/// Its length is known up front (sent as Content-Length); a file that
/// changes size meanwhile fails the upload, naming the file.
pub struct MultipartUpload {
    content_type: String,
    len: u64,
    reader: PartsReader,
}

impl MultipartUpload {
    /// The body for `spec` sent as field `field` (`spec` for JSON, `steps`
    /// for the one-line form), then `images` in the order given.
    pub fn new(field: &str, spec: &str, images: Vec<(String, Source)>) -> MultipartUpload {
        // A fresh random boundary per body (RFC 2046); should an image
        // contain it by chance, the server rejects the upload rather than
        // mixing fields.
        let random = crate::service::random_hex(16).unwrap_or_else(|_| "0".repeat(32));
        let boundary = format!("pixmesh-{random}");
        let mut pieces = std::collections::VecDeque::new();
        let mut text = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{spec}\r\n"
        );
        for (name, source) in images {
            let name = name.replace(['"', '\r', '\n'], "_");
            text.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ));
            pieces.push_back(Piece::Memory(std::io::Cursor::new(bytes::Bytes::from(
                std::mem::take(&mut text),
            ))));
            pieces.push_back(match source {
                Source::File(path, len) => Piece::File {
                    path,
                    expected: len,
                    file: None,
                },
                Source::Memory(bytes) => Piece::Memory(std::io::Cursor::new(bytes)),
            });
            text.push_str("\r\n");
        }
        text.push_str(&format!("--{boundary}--\r\n"));
        pieces.push_back(Piece::Memory(std::io::Cursor::new(bytes::Bytes::from(
            text,
        ))));
        let len = pieces.iter().map(Piece::len).sum();
        MultipartUpload {
            content_type: format!("multipart/form-data; boundary={boundary}"),
            len,
            reader: PartsReader {
                pieces,
                failure: Default::default(),
                bar: ProgressBar::hidden(),
            },
        }
    }

    /// Send the body as `POST url` (with `token` as bearer), counting the
    /// bytes read on `bar`; the answer's status and body. The body goes
    /// out in chunks of up to [`UPLOAD_CHUNK`] bytes, read a few chunks
    /// ahead on a thread of its own (file reads block).
    pub(crate) fn post(
        mut self,
        uploader: &Uploader,
        url: &str,
        token: Option<&str>,
        bar: ProgressBar,
    ) -> Result<(reqwest::StatusCode, String), UploadError> {
        bar.set_length(self.len);
        self.reader.bar = bar;
        let failure = self.reader.failure.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut reader = self.reader;
        let feeder = std::thread::Builder::new()
            .name("upload-reader".into())
            .spawn(move || {
                loop {
                    let chunk = match read_chunk(&mut reader) {
                        Ok(c) if c.is_empty() => return,
                        other => other,
                    };
                    let failed = chunk.is_err();
                    // A closed channel: the request ended early; stop reading.
                    if tx.blocking_send(chunk).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(UploadError::Thread)?;
        let body = ChunkBody {
            chunks: rx,
            remaining: self.len,
        };
        let answer = uploader.runtime.block_on(async {
            let mut req = uploader
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, &self.content_type)
                .body(reqwest::Body::wrap(body));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            let status = resp.status();
            Ok((status, resp.text().await?))
        });
        let _ = feeder.join();
        // A file that could not be read ends the request; say which.
        if let Some(cause) = failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(UploadError::Source(cause));
        }
        answer.map_err(UploadError::Http)
    }
}

/// What sends streamed uploads: an HTTP client that takes a body of
/// chunks, and the runtime it runs on while a call waits for it. Kept for
/// the life of a [`Client`], so uploads reuse the connection. (reqwest's
/// blocking client can stream a reader too, but it hands the body to the
/// connection 8 KB at a time.)
#[derive(Debug)]
pub(crate) struct Uploader {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Uploader {
    pub(crate) fn new() -> Result<Uploader> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Uploader { runtime, http })
    }
}

/// The largest piece of an upload handed to the HTTP client at once.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// Why an upload did not get an answer.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// An image could not be read (the message names it).
    Source(String),
    /// The request failed.
    Http(reqwest::Error),
    /// No thread to read the body with.
    Thread(std::io::Error),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::Source(cause) => f.write_str(cause),
            UploadError::Http(e) => write!(f, "{e}"),
            UploadError::Thread(e) => write!(f, "cannot start the upload: {e}"),
        }
    }
}

impl std::error::Error for UploadError {}

/// Up to [`UPLOAD_CHUNK`] bytes from `reader`; empty at the end.
fn read_chunk(reader: &mut PartsReader) -> std::io::Result<bytes::Bytes> {
    let mut buf = vec![0; UPLOAD_CHUNK];
    let mut filled = 0;
    while filled < buf.len() {
        match std::io::Read::read(reader, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    Ok(buf.into())
}

/// An HTTP body of the chunks the upload's reader thread sends, of a
/// known length (so it goes with a Content-Length).
struct ChunkBody {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    remaining: u64,
}

impl http_body::Body for ChunkBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.chunks.poll_recv(cx).map(|chunk| {
            chunk.map(|c| {
                c.map(|bytes| {
                    self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                    http_body::Frame::data(bytes)
                })
            })
        })
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl std::fmt::Debug for MultipartUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartUpload")
            .field("content_type", &self.content_type)
            .field("len", &self.len)
            .field("parts", &self.reader.pieces.len())
            .finish()
    }
}

enum Piece {
    Memory(std::io::Cursor<bytes::Bytes>),
    File {
        path: PathBuf,
        expected: u64,
        /// Opened when its turn comes; the bytes still to read.
        file: Option<std::io::Take<std::fs::File>>,
    },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Memory(c) => c.get_ref().len() as u64,
            Piece::File { expected, .. } => *expected,
        }
    }
}

struct PartsReader {
    pieces: std::collections::VecDeque<Piece>,
    /// Why reading stopped, for the error message (the HTTP client only
    /// reports that the body failed).
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    bar: ProgressBar,
}

/// Keep `message` for the caller and make it the read error.
fn failed(slot: &std::sync::Mutex<Option<String>>, message: String) -> std::io::Error {
    if let Ok(mut f) = slot.lock() {
        *f = Some(message.clone());
    }
    std::io::Error::other(message)
}

impl std::io::Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(piece) = self.pieces.front_mut() {
            let n = match piece {
                Piece::Memory(c) => c.read(buf)?,
                Piece::File {
                    path,
                    expected,
                    file,
                } => {
                    let reader = match file {
                        Some(r) => r,
                        None => {
                            let opened = std::fs::File::open(&*path).map_err(|e| {
                                failed(
                                    &self.failure,
                                    format!("cannot read {}: {e}", path.display()),
                                )
                            })?;
                            file.insert(opened.take(*expected))
                        }
                    };
                    let n = match reader.read(buf) {
                        Ok(n) => n,
                        Err(e) => {
                            let message = format!("cannot read {}: {e}", path.display());
                            return Err(failed(&self.failure, message));
                        }
                    };
                    if n == 0 {
                        // Every planned byte read: the file must still be
                        // that long, or the upload would not match it.
                        let now = reader.get_ref().metadata().map(|m| m.len()).ok();
                        if reader.limit() > 0 || now != Some(*expected) {
                            let message = format!(
                                "{} changed while it was being uploaded (it was {} bytes)",
                                path.display(),
                                expected
                            );
                            return Err(failed(&self.failure, message));
                        }
                    }
                    n
                }
            };
            if n > 0 {
                self.bar.inc(n as u64);
                return Ok(n);
            }
            self.pieces.pop_front();
        }
        Ok(0)
    }
}

/// The coordinator's error answer to `what` as an error: its message,
/// the status, and for 401 where to find the token.
fn refused(what: &str, status: reqwest::StatusCode, body: String) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or(body);
    let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
        "\n  give the API token with --token or PIXMESH_TOKEN (it is in the coordinator's data directory, file api-token)"
    } else {
        ""
    };
    anyhow::anyhow!("{what}: {message} (HTTP {}){hint}", status.as_u16())
}

/// `pixmesh submit` arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub spec: SpecSource,
    /// Image files or directories (searched recursively for images).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Wait for the job to finish, with a progress bar; exit 1 if any image failed.
    #[arg(long)]
    pub wait: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub remote: Remote,
}

/// `pixmesh submit`.
pub fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let spec = args.spec.load()?;
    let client = args.remote.connect()?;
    let started = Instant::now();
    let bar = if args.quiet || args.remote.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "uploading {bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let submitted = client.submit_with(&spec, &args.inputs, &bar);
    bar.finish_and_clear();
    let (resp, bytes_total) = submitted?;
    let job = n(&resp, "job");
    if !args.wait {
        if args.remote.json {
            print_json(&resp)?;
        } else {
            println!(
                "job {job} submitted: {} images, {:.1} MB",
                n(&resp, "tasks"),
                bytes_total as f64 / 1e6
            );
            println!("  pixmesh status {job}    pixmesh results {job} -o DIR");
        }
        return Ok(ExitCode::from(EXIT_OK));
    }
    if !args.remote.json {
        eprintln!("job {job} submitted: {} images", n(&resp, "tasks"));
    }
    let view = wait(&client, job, args.quiet || args.remote.json)?;
    let failed = n(&view, "failed") + n(&view, "cancelled");
    if args.remote.json {
        print_json(&view)?;
    } else {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "job {job}: {} done, {} failed, {} cancelled in {secs:.1} s",
            n(&view, "done"),
            n(&view, "failed"),
            n(&view, "cancelled")
        );
        print_failures(&view);
        println!("  pixmesh results {job} -o DIR");
    }
    Ok(ExitCode::from(if failed > 0 {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    }))
}

/// Follow a job until nothing is queued or running, with a progress bar:
/// one long poll per finished task (or per second, to keep the bar's
/// clock and message fresh).
pub fn wait(client: &Client, job: u64, quiet: bool) -> Result<Value> {
    let bar = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut seen = None;
    loop {
        let view = match seen {
            None => client.job(job)?,
            Some(finished) => client.job_changed(job, finished, Duration::from_secs(1))?,
        };
        let total = view
            .get("tasks")
            .and_then(Value::as_array)
            .map_or(0, |t| t.len() as u64);
        let finished = n(&view, "done") + n(&view, "failed") + n(&view, "cancelled");
        bar.set_length(total);
        bar.set_position(finished);
        let msg = match view.get("waiting").and_then(Value::as_str) {
            Some(w) => w.to_owned(),
            None => format!(
                "{} running, {} failed",
                n(&view, "running"),
                n(&view, "failed")
            ),
        };
        bar.set_message(msg);
        if n(&view, "queued") + n(&view, "running") == 0 {
            bar.finish_and_clear();
            return Ok(view);
        }
        seen = Some(finished);
    }
}

fn print_failures(view: &Value) {
    for t in view
        .get("tasks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if s(t, "state") == "failed" {
            println!("  failed: {}: {}", s(t, "name"), s(t, "error"));
        }
    }
}

/// `pixmesh status JOB [--watch]`.
pub fn status(job: u64, remote: &Remote, watching: bool) -> Result<ExitCode> {
    let client = remote.connect()?;
    let draw = || -> Result<(String, bool)> {
        let view = client.job(job)?;
        let done = n(&view, "queued") + n(&view, "running") == 0;
        let text = if remote.json {
            format!("{}\n", serde_json::to_string_pretty(&view)?)
        } else {
            status_text(job, &view)
        };
        Ok((text, done))
    };
    if watching {
        watch(draw)?;
    } else {
        print!("{}", draw()?.0);
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn status_text(job: u64, view: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let tasks = view
        .get("tasks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(out, "job {job}: {}", s(view, "steps"));
    let _ = writeln!(
        out,
        "  {} images: {} done, {} running, {} queued, {} failed, {} cancelled",
        tasks.len(),
        n(view, "done"),
        n(view, "running"),
        n(view, "queued"),
        n(view, "failed"),
        n(view, "cancelled")
    );
    if let Some(w) = view.get("waiting").and_then(Value::as_str) {
        let _ = writeln!(out, "  {w}");
    }
    let (moved, fenced) = (n(view, "reassignments"), n(view, "late_results_refused"));
    if moved + fenced > 0 {
        let _ = writeln!(
            out,
            "  {moved} reassigned or retried; {fenced} late results refused by fencing"
        );
    }
    let _ = writeln!(
        out,
        "{:<32} {:<10} {:>7} {:<18} RESULT / REASON",
        "IMAGE", "STATE", "ATTEMPT", "AGENT"
    );
    for t in &tasks {
        let detail = match s(t, "state") {
            "done" => s(t, "output_name").to_owned(),
            "failed" => s(t, "error").to_owned(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:>7} {:<18} {detail}",
            s(t, "name"),
            s(t, "state"),
            n(t, "attempt"),
            t.get("node")
                .and_then(Value::as_str)
                .map(short)
                .unwrap_or_else(|| "-".into()),
        );
    }
    out
}

/// Redraw every second until `draw` says it is done (or Ctrl-C): on a
/// terminal the screen is cleared first; elsewhere each refresh follows
/// the last.
fn watch(draw: impl Fn() -> Result<(String, bool)>) -> Result<()> {
    use std::io::Write as _;
    let tty = std::io::stdout().is_terminal();
    loop {
        let (text, done) = draw()?;
        let mut stdout = std::io::stdout().lock();
        if tty {
            write!(stdout, "\x1b[2J\x1b[H")?;
        }
        write!(stdout, "{text}")?;
        stdout.flush()?;
        drop(stdout);
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `pixmesh jobs`.
pub fn jobs(remote: &Remote) -> Result<ExitCode> {
    let list: Vec<Value> = remote.connect()?.get("/v1/jobs", "jobs")?;
    if remote.json {
        print_json(&list)?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    if list.is_empty() {
        println!("no jobs; submit one with `pixmesh submit --steps \"...\" IMAGES`");
        return Ok(ExitCode::from(EXIT_OK));
    }
    println!(
        "{:>5} {:>11} {:>7} {:>10}  STEPS",
        "JOB", "DONE/TOTAL", "FAILED", "STATE"
    );
    for j in &list {
        let total = j
            .get("tasks")
            .and_then(Value::as_array)
            .map_or(0, |t| t.len());
        let state = if n(j, "queued") + n(j, "running") > 0 {
            "running"
        } else if n(j, "cancelled") > 0 {
            "cancelled"
        } else {
            "finished"
        };
        println!(
            "{:>5} {:>11} {:>7} {:>10}  {}",
            n(j, "id"),
            format!("{}/{total}", n(j, "done")),
            n(j, "failed"),
            state,
            s(j, "steps")
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pixmesh results JOB -o DIR`: every finished output, named as `pixmesh
/// run` names them.
pub fn results(job: u64, outdir: &Path, remote: &Remote) -> Result<ExitCode> {
    let client = remote.connect()?;
    let view = client.job(job)?;
    let written = client.download(job, outdir)?;
    let pending = n(&view, "queued") + n(&view, "running");
    if remote.json {
        print_json(&serde_json::json!({
            "job": job,
            "written": written,
            "failed": n(&view, "failed"),
            "unfinished": pending,
        }))?;
    } else {
        println!(
            "{} results of job {job} written to {}",
            written.len(),
            outdir.display()
        );
        if pending > 0 {
            println!("  {pending} images are not finished yet");
        }
        print_failures(&view);
    }
    let failed = n(&view, "failed") > 0;
    Ok(ExitCode::from(if failed {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    }))
}

/// `pixmesh cancel JOB`.
pub fn cancel(job: u64, remote: &Remote) -> Result<ExitCode> {
    let resp: Value = remote.connect()?.post(
        &format!("/v1/jobs/{job}/cancel"),
        &format!("cancel job {job}"),
        None,
    )?;
    if remote.json {
        print_json(&resp)?;
    } else {
        println!(
            "job {job}: {} unfinished images cancelled",
            n(&resp, "cancelled")
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pixmesh nodes`.
pub fn nodes(remote: &Remote, watching: bool) -> Result<ExitCode> {
    let client = remote.connect()?;
    let draw = || -> Result<(String, bool)> {
        let list: Vec<Value> = client.get("/v1/nodes", "nodes")?;
        let text = if remote.json {
            format!("{}\n", serde_json::to_string_pretty(&list)?)
        } else {
            nodes_text(&list)
        };
        Ok((text, false))
    };
    if watching {
        watch(draw)?;
    } else {
        print!("{}", draw()?.0);
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn nodes_text(list: &[Value]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if list.is_empty() {
        let _ = writeln!(
            out,
            "no agents yet: start one with `pixmesh-agent run --bootstrap <coordinator mesh address> --join-token <token>`"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:<18} {:<9} {:<8} {:>8} {:>6} {:>8} {:>8} {:<20} {:>7}  NOTE",
        "PEER", "STATUS", "HEALTH", "RTT", "LOAD", "SEEN", "RSS", "VERSION", "PLUGINS"
    );
    for node in list {
        let rtt = node
            .get("rtt_ms")
            .and_then(Value::as_f64)
            .map_or("-".into(), |r| format!("{r:.2}ms"));
        let load = match (
            node.get("running").and_then(Value::as_u64),
            node.get("slots").and_then(Value::as_u64),
        ) {
            (Some(r), Some(sl)) => format!("{r}/{sl}"),
            _ => "-".into(),
        };
        let seen = node
            .get("last_seen_ms_ago")
            .and_then(Value::as_u64)
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1e3));
        let rss = node
            .get("rss_bytes")
            .and_then(Value::as_u64)
            .map_or("-".into(), |b| format!("{:.0}MB", b as f64 / 1e6));
        let plugins = node
            .get("plugins")
            .and_then(Value::as_array)
            .map_or(0, |p| p.len());
        let note = match node.get("reason").and_then(Value::as_str) {
            Some(r) => r.to_owned(),
            None if !node
                .get("connected")
                .and_then(Value::as_bool)
                .unwrap_or(false) =>
            {
                "disconnected".into()
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:<9} {:<8} {rtt:>8} {load:>6} {seen:>8} {rss:>8} {:<20} {plugins:>7}  {note}",
            short(s(node, "peer")),
            s(node, "status"),
            s(node, "health"),
            s(node, "version"),
        );
    }
    out
}

/// Parse a duration like `90s`, `15m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 90s, 15m, 24h, 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {text:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("bad duration {text:?}: must be positive and not absurd"))
}

/// `pixmesh token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a join token for agents (`pixmesh-agent run --join-token ...`).
    Create {
        /// How long it can be used to enrol, e.g. 1h, 7d. Default 24h.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
        ttl: u64,
        /// Never expire (until revoked).
        #[arg(long, conflicts_with = "ttl")]
        no_expiry: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List join tokens (never their secrets).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a join token by id; agents already enrolled stay enrolled.
    Revoke {
        /// The token's id, as `pixmesh token list` shows it.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `pixmesh token ...`.
pub fn token(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            ttl,
            no_expiry,
            remote,
        } => {
            let body = if no_expiry {
                serde_json::json!({})
            } else {
                serde_json::json!({ "ttl_secs": ttl })
            };
            let t: Value =
                remote
                    .connect()?
                    .post("/v1/tokens", "create a join token", Some(body))?;
            if remote.json {
                print_json(&t)?;
            } else {
                println!("{}", s(&t, "token"));
                eprintln!(
                    "join token {} created{}; give it to agents with --join-token or PIXMESH_JOIN_TOKEN",
                    s(&t, "id"),
                    if no_expiry {
                        ", no expiry".to_owned()
                    } else {
                        format!(", valid for {ttl} s")
                    }
                );
            }
        }
        TokenCommand::List { remote } => {
            let list: Vec<Value> = remote.connect()?.get("/v1/tokens", "join tokens")?;
            if remote.json {
                print_json(&list)?;
            } else {
                println!("{:<14} {:>6} {:<8} EXPIRES", "ID", "USED", "STATE");
                let now = crate::store::unix_ms() as i64;
                for t in &list {
                    let expires = t.get("expires_ms").and_then(Value::as_i64);
                    let state = if t.get("revoked").and_then(Value::as_bool).unwrap_or(false) {
                        "revoked"
                    } else if expires.is_some_and(|e| e < now) {
                        "expired"
                    } else {
                        "valid"
                    };
                    let when = expires.map_or("never".into(), |e| {
                        let secs = (e - now) / 1000;
                        if secs >= 0 {
                            format!("in {secs} s")
                        } else {
                            format!("{} s ago", -secs)
                        }
                    });
                    println!("{:<14} {:>6} {:<8} {when}", s(t, "id"), n(t, "used"), state);
                }
            }
        }
        TokenCommand::Revoke { id, remote } => {
            let _: Value = remote.connect()?.post(
                &format!("/v1/tokens/{id}/revoke"),
                &format!("revoke join token {id}"),
                None,
            )?;
            println!("join token {id} revoked");
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pixmesh plugin deploy FILE [--name NAME]`.
pub fn deploy(file: &Path, name: Option<String>, remote: &Remote) -> Result<ExitCode> {
    let (wasm, name) = crate::cli::read_plugin(file, name)?;
    let bytes = wasm.len();
    let resp = remote
        .connect()?
        .deploy(wasm, &name, &file.display().to_string())?;
    if remote.json {
        print_json(&resp)?;
    } else {
        println!(
            "deployed {name} ({}, {} bytes); agents fetch it when a job needs it",
            s(&resp, "hash"),
            bytes
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pixmesh plugin deployed`.
pub fn deployed(remote: &Remote) -> Result<ExitCode> {
    let list: Vec<Value> = remote.connect()?.get("/v1/plugins", "plugins")?;
    if remote.json {
        print_json(&list)?;
    } else if list.is_empty() {
        println!("no plugins deployed; deploy one with `pixmesh plugin deploy FILE --name NAME`");
    } else {
        println!("{:<20} {:<64} {:>9}", "NAME", "HASH (BLAKE3)", "BYTES");
        for p in &list {
            println!(
                "{:<20} {:<64} {:>9}",
                s(p, "name"),
                s(p, "hash"),
                n(p, "bytes")
            );
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(upload: &mut MultipartUpload) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut upload.reader, &mut body)?;
        Ok(body)
    }

    #[test]
    fn a_streamed_upload_is_the_multipart_body_it_declares() {
        let dir = tempfile::tempdir().expect("dir");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let path = dir.path().join("big.jpg");
        std::fs::write(&path, &big).expect("write");
        let images = vec![
            ("big.jpg".to_owned(), Source::File(path, big.len() as u64)),
            (
                "a\"b.png".to_owned(),
                Source::Memory(bytes::Bytes::from_static(b"tiny")),
            ),
        ];
        let mut upload = MultipartUpload::new("steps", "resize 10 | png", images);
        let bar = ProgressBar::hidden();
        upload.reader.bar = bar.clone();
        let declared = upload.len;
        let boundary = upload
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("boundary")
            .to_owned();
        let body = read_all(&mut upload).expect("read");
        assert_eq!(body.len() as u64, declared);
        assert_eq!(bar.position(), declared);

        // Split on the boundary: the spec, then each image, then the end.
        let delimiter = format!("--{boundary}");
        let mut parts = Vec::new();
        let mut rest = &body[..];
        while let Some(at) = rest
            .windows(delimiter.len())
            .position(|w| w == delimiter.as_bytes())
        {
            parts.push(&rest[..at]);
            rest = &rest[at + delimiter.len()..];
        }
        assert_eq!(rest, b"--\r\n", "closing delimiter");
        assert_eq!(parts.len(), 4, "preamble + 3 fields");
        assert!(parts[0].is_empty());
        let field = |part: &[u8]| {
            let sep = part
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("headers end");
            let headers = String::from_utf8_lossy(&part[..sep]).into_owned();
            let content = part[sep + 4..].strip_suffix(b"\r\n").expect("CRLF");
            (headers, content.to_vec())
        };
        let (h, c) = field(parts[1]);
        assert!(h.contains("name=\"steps\""), "{h}");
        assert_eq!(c, b"resize 10 | png");
        let (h, c) = field(parts[2]);
        assert!(h.contains("filename=\"big.jpg\""), "{h}");
        assert_eq!(c, big);
        let (h, c) = field(parts[3]);
        // A quote in a name cannot end the header early.
        assert!(h.contains("filename=\"a_b.png\""), "{h}");
        assert_eq!(c, b"tiny");
    }

    #[test]
    fn a_file_that_changes_or_vanishes_mid_upload_fails_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("photo.jpg");
        std::fs::write(&path, vec![7u8; 5000]).expect("write");
        let upload_of = |planned: u64| {
            MultipartUpload::new(
                "steps",
                "png",
                vec![("photo.jpg".to_owned(), Source::File(path.clone(), planned))],
            )
        };
        // Shorter than planned, and longer than planned.
        for planned in [8000, 3000] {
            let mut upload = upload_of(planned);
            let failure = upload.reader.failure.clone();
            let e = read_all(&mut upload).expect_err("changed file").to_string();
            assert!(
                e.contains("photo.jpg changed while it was being uploaded"),
                "{e}"
            );
            assert!(e.contains(&format!("it was {planned} bytes")), "{e}");
            assert_eq!(failure.lock().expect("lock").as_deref(), Some(e.as_str()));
        }
        // Gone before its turn.
        let mut upload = upload_of(5000);
        std::fs::remove_file(&path).expect("remove");
        let e = read_all(&mut upload).expect_err("missing file").to_string();
        assert!(
            e.starts_with(&format!("cannot read {}", path.display())),
            "{e}"
        );
    }

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("5w").is_err_and(|e| e.contains("unit")));
        assert!(parse_ttl("h").is_err());
    }
}
