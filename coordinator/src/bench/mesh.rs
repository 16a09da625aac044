//! `pixmesh bench --suite mesh`: the mesh against `pixmesh run` on the same
//! photos and cores, dispatch latency, and the agents' memory.
//!
//! Everything runs here, on loopback, as real processes: one coordinator
//! and three agents (`pixmesh-agent`, from the same directory as this
//! binary), enrolled with a join token. Figures:
//!
//! - **Throughput**: the thumbnail job (as `--suite thumbnails`) submitted
//!   to the mesh, timed from the start of the upload until every result is
//!   downloaded, against `pixmesh run`'s engine on the same files, reading
//!   and writing files, with one worker per core. Median of `rounds`.
//!   Two figures: one job of the photos (its makespan, which on a small
//!   corpus is bounded by the largest photo, processed on one agent while
//!   two other agents share its cores), and a sustained batch: one job of
//!   [`COPIES`] distinct copies of every photo, so the mesh and `pixmesh
//!   run` are compared at full load rather than on one job's tail.
//! - **Dispatch latency**: a job of 1x1 PNGs; per task, the time from the
//!   coordinator's assignment to its acceptance of the result (assign
//!   request, input fetch, pipeline, output upload, completion, fsync).
//!   Also the whole round trip of a one-image job as a client sees it
//!   (submit, run, a long-polled status answered when the task finishes).
//! - **Agent memory**: resident set of each agent once enrolled and idle,
//!   and its peak (VmHWM) after the runs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use reqwest::blocking::Client;
use serde::Serialize;
use serde_json::Value;

use super::{BenchArgs, median, percentile};
use crate::client::{MultipartUpload, Source, Uploader};
use crate::local;

/// Copies of each photo in the sustained batch.
pub const COPIES: usize = 4;

/// The report.
#[derive(Debug, Serialize)]
pub struct MeshReport {
    /// Photos used.
    pub images: usize,
    /// Cores for `pixmesh run`.
    pub jobs: usize,
    /// Agents and slots per agent.
    pub agents: usize,
    /// Slots per agent.
    pub slots_per_agent: usize,
    /// The transport between coordinator and agents.
    pub transport: super::Transport,
    /// `pixmesh run`, median seconds.
    pub local_seconds: f64,
    /// The mesh, median seconds (upload to last result downloaded).
    pub mesh_seconds: f64,
    /// Of which: the submit (upload, durable store), median seconds.
    pub mesh_upload_seconds: f64,
    /// Of which: downloading the results archive, median seconds.
    pub mesh_download_seconds: f64,
    /// Mesh throughput / local throughput, one job of the photos.
    pub throughput_ratio: f64,
    /// Images in the sustained batch (every photo, [`COPIES`] times).
    pub batch_images: usize,
    /// `pixmesh run` over the batch, median seconds.
    pub batch_local_seconds: f64,
    /// The mesh over the batch as one job, median seconds.
    pub batch_mesh_seconds: f64,
    /// Sustained throughput ratio: mesh / `pixmesh run` over the batch.
    pub batch_throughput_ratio: f64,
    /// Tasks spread per agent in the last mesh pass.
    pub tasks_per_agent: Vec<u64>,
    /// 1x1 tasks timed.
    pub latency_tasks: usize,
    /// Assignment to accepted result, ms, p50.
    pub dispatch_p50_ms: f64,
    /// p99.
    pub dispatch_p99_ms: f64,
    /// One-image job as the client sees it, ms, p50.
    pub job_round_trip_p50_ms: f64,
    /// p99.
    pub job_round_trip_p99_ms: f64,
    /// Each agent's resident memory when idle, MB.
    pub agent_idle_rss_mb: Vec<f64>,
    /// Each agent's peak resident memory, MB.
    pub agent_peak_rss_mb: Vec<f64>,
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Read a child's stdout up to and including the first line containing
/// `marker`; keep draining the rest on a thread so the child never blocks
/// on a full pipe. Used by the mesh tests too.
pub fn read_lines_until(child: &mut Child, marker: &str) -> Result<Vec<String>> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("process exited early; it printed: {lines:?}");
        }
        let done = line.contains(marker);
        lines.push(line.trim_end().to_owned());
        if done {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    Ok(lines)
}

fn rss_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Api {
    base: String,
    token: String,
    http: Client,
    uploader: Uploader,
}

impl Api {
    fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()?;
        if !r.status().is_success() {
            bail!(
                "GET {path}: HTTP {}: {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(r.json()?)
    }

    /// Submit `images` as `pixmesh submit` does: one streamed multipart
    /// upload, files read as they are sent.
    fn submit(&self, steps: &str, images: &[(String, Source)]) -> Result<u64> {
        let upload = MultipartUpload::new("steps", steps, images.to_vec());
        let url = format!("{}/v1/jobs", self.base);
        let (status, body) = upload.post(
            &self.uploader,
            &url,
            Some(&self.token),
            ProgressBar::hidden(),
        )?;
        if !status.is_success() {
            bail!("submit: HTTP {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body).context("submit: bad answer")?;
        v["job"].as_u64().context("no job id")
    }

    /// Download a job's results archive (and check it is not empty).
    fn results(&self, job: u64) -> Result<()> {
        let archive = self
            .http
            .get(format!("{}/v1/jobs/{job}/results", self.base))
            .bearer_auth(&self.token)
            .send()?
            .bytes()?;
        if archive.is_empty() {
            bail!("empty results archive of job {job}");
        }
        Ok(())
    }

    /// Follow a job with long polls (one request per finished task) until
    /// nothing is queued or running.
    fn wait(&self, job: u64) -> Result<Value> {
        let mut path = format!("/v1/jobs/{job}");
        loop {
            let v = self.get(&path)?;
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            if n("queued") + n("running") == 0 {
                if n("failed") > 0 {
                    bail!("job {job} had failures: {v}");
                }
                return Ok(v);
            }
            let finished = n("done") + n("failed") + n("cancelled");
            path = format!("/v1/jobs/{job}?finished={finished}&wait_ms=30000");
        }
    }
}

/// Run the mesh benchmark.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let corpus = match &args.corpus {
        Some(c) => c.clone(),
        None => super::default_corpus().context("no photos: give --corpus DIR")?,
    };
    let found = local::discover(std::slice::from_ref(&corpus))?;
    if found.is_empty() {
        bail!("no photos in {}", corpus.display());
    }
    let jobs = args.jobs.unwrap_or_else(local::default_threads).max(1);
    let (agents, slots) = (3usize, jobs.div_ceil(3).max(1));
    let rounds = args.rounds.max(1);
    let steps = format!(
        "orient | resize {0}x{0} fit=inside | jpeg q={1}",
        args.size, args.quality
    );
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let agent_exe = exe.with_file_name("pixmesh-agent");
    if !agent_exe.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p pixmesh` (it ships beside pixmesh)",
            agent_exe.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());

    // The coordinator.
    let mut coordinator = Command::new(&exe)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", args.transport.loopback(), "--data-dir"])
        .arg(tmp.path().join("coordinator"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the coordinator")?;
    let lines = read_lines_until(&mut coordinator, "mesh address")?;
    procs.0.push(coordinator);
    let base = lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http://"))
        .context("no API address")?
        .to_owned();
    let mesh_addr = lines
        .last()
        .and_then(|l| l.split_whitespace().last())
        .context("no mesh address")?
        .to_owned();
    let token = std::fs::read_to_string(tmp.path().join("coordinator/api-token"))?
        .trim()
        .to_owned();
    let api = Api {
        base,
        token,
        http: Client::builder().timeout(None).build()?,
        uploader: Uploader::new()?,
    };
    let join: Value = api
        .http
        .post(format!("{}/v1/tokens", api.base))
        .bearer_auth(&api.token)
        .send()?
        .json()?;
    let join = join["token"].as_str().context("no join token")?.to_owned();

    // The agents.
    let mut agent_pids = Vec::new();
    for i in 0..agents {
        let mut child = Command::new(&agent_exe)
            .args(["run", "--no-mdns", "--listen", args.transport.loopback()])
            .args(["--bootstrap", &mesh_addr, "--join-token", &join])
            .args(["--concurrency", &slots.to_string(), "--data-dir"])
            .arg(tmp.path().join(format!("agent{i}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start an agent")?;
        read_lines_until(&mut child, " ready")?;
        agent_pids.push(child.id());
        procs.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = api.get("/v1/nodes")?;
        let alive = nodes
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["health"] == "alive").count());
        if alive == agents {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {alive} of {agents} agents came up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle: Vec<f64> = agent_pids.iter().map(|p| rss_mb(*p, "VmRSS:")).collect();

    // Throughput: pixmesh run's engine vs the mesh, alternating, both
    // reading the same files.
    let images = files(&found)?;
    let spec = pixmesh_protocol::JobSpec::from_compact(&steps)?;
    let pipeline = pixmesh_agent::pipeline::Pipeline::new(spec.clone(), Default::default())?;
    let out_local = tmp.path().join("local");
    std::fs::create_dir_all(&out_local)?;
    let planned = local::plan_outputs(&found, &out_local, spec.output.format.extension());
    let (mut local_s, mut mesh_s) = (Vec::new(), Vec::new());
    let (mut up_s, mut down_s) = (Vec::new(), Vec::new());
    let mut per_agent = Vec::new();
    eprintln!(
        "mesh bench: {} photos, {rounds} rounds; pixmesh run with {jobs} threads vs {agents} agents x {slots} slots",
        images.len()
    );
    for round in 0..=rounds {
        let (reports, took) = local::process_all(&pipeline, &planned, jobs, |_| {})?;
        if reports.iter().any(|r| !r.ok) {
            bail!("pixmesh run failed on some photos");
        }
        let started = Instant::now();
        let job = api.submit(&steps, &images)?;
        let uploaded = started.elapsed();
        let view = api.wait(job)?;
        let processed = started.elapsed();
        api.results(job)?;
        let mesh_took = started.elapsed();
        if round > 0 {
            // Round 0 warms caches (page cache, compiled code, connections).
            local_s.push(took.as_secs_f64());
            mesh_s.push(mesh_took.as_secs_f64());
            up_s.push(uploaded.as_secs_f64());
            down_s.push((mesh_took - processed).as_secs_f64());
        }
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for t in view["tasks"].as_array().into_iter().flatten() {
            *counts
                .entry(t["node"].as_str().unwrap_or("-").to_owned())
                .or_default() += 1;
        }
        per_agent = counts.into_values().collect();
    }

    // Sustained: the batch as one job vs pixmesh run over the same files.
    let batch_dir = tmp.path().join("batch");
    std::fs::create_dir_all(&batch_dir)?;
    for (path, _) in &found {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path.file_name().context("a photo without a file name")?;
        for copy in 1..=COPIES {
            let to = batch_dir.join(format!("c{copy}-{}", name.to_string_lossy()));
            std::fs::write(&to, distinct_copy(&bytes, copy))
                .with_context(|| format!("cannot write {}", to.display()))?;
        }
    }
    let batch_found = local::discover(std::slice::from_ref(&batch_dir))?;
    let batch = files(&batch_found)?;
    let batch_out = tmp.path().join("batch-out");
    std::fs::create_dir_all(&batch_out)?;
    let batch_planned =
        local::plan_outputs(&batch_found, &batch_out, spec.output.format.extension());
    let (mut batch_local, mut batch_mesh) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (reports, took) = local::process_all(&pipeline, &batch_planned, jobs, |_| {})?;
        if reports.iter().any(|r| !r.ok) {
            bail!("pixmesh run failed on some photos of the batch");
        }
        batch_local.push(took.as_secs_f64());
        let started = Instant::now();
        let job = api.submit(&steps, &batch)?;
        api.wait(job)?;
        api.results(job)?;
        batch_mesh.push(started.elapsed().as_secs_f64());
    }

    // Dispatch latency on 1x1 images.
    let mut one = Vec::new();
    image::DynamicImage::new_rgba8(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut one), image::ImageFormat::Png)?;
    let one = bytes::Bytes::from(one);
    let tiny: Vec<(String, Source)> = (0..200)
        .map(|i| (format!("px{i:03}.png"), Source::Memory(one.clone())))
        .collect();
    let job = api.submit("png", &tiny)?;
    let view = api.wait(job)?;
    let dispatch: Vec<f64> = view["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some(t["finished_ms"].as_f64()? - t["assigned_ms"].as_f64()?))
        .collect();
    let mut round_trips = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let job = api.submit(
            "png",
            &[(format!("rt{i}.png"), Source::Memory(one.clone()))],
        )?;
        api.wait(job)?;
        round_trips.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let peak: Vec<f64> = agent_pids.iter().map(|p| rss_mb(*p, "VmHWM:")).collect();

    let (l, m) = (median(&local_s), median(&mesh_s));
    let report = MeshReport {
        images: images.len(),
        jobs,
        agents,
        slots_per_agent: slots,
        transport: args.transport,
        local_seconds: l,
        mesh_seconds: m,
        mesh_upload_seconds: median(&up_s),
        mesh_download_seconds: median(&down_s),
        throughput_ratio: l / m,
        batch_images: batch.len(),
        batch_local_seconds: median(&batch_local),
        batch_mesh_seconds: median(&batch_mesh),
        batch_throughput_ratio: median(&batch_local) / median(&batch_mesh),
        tasks_per_agent: per_agent,
        latency_tasks: dispatch.len(),
        dispatch_p50_ms: percentile(&dispatch, 50.0),
        dispatch_p99_ms: percentile(&dispatch, 99.0),
        job_round_trip_p50_ms: percentile(&round_trips, 50.0),
        job_round_trip_p99_ms: percentile(&round_trips, 99.0),
        agent_idle_rss_mb: idle,
        agent_peak_rss_mb: peak,
    };
    drop(procs);
    print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The files of `found` to upload, named by file name, largest first (as
/// `pixmesh submit` sends them).
fn files(found: &[(PathBuf, PathBuf)]) -> Result<Vec<(String, Source)>> {
    let mut files = Vec::with_capacity(found.len());
    for (path, _) in found {
        let name = path.file_name().context("a photo without a file name")?;
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        files.push((
            name.to_string_lossy().into_owned(),
            Source::File(path.clone(), len),
        ));
    }
    files.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
    Ok(files)
}

/// A copy of a photo that content addressing cannot merge with the
/// original: a JPEG gets a comment segment (COM) naming the copy right
/// after its start-of-image marker, which decoders skip, so the pixels and
/// the work are the same. Other formats are returned unchanged.
fn distinct_copy(bytes: &[u8], copy: usize) -> Vec<u8> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return bytes.to_vec();
    }
    let comment = format!("pixmesh bench copy {copy}");
    let mut out = Vec::with_capacity(bytes.len() + comment.len() + 4);
    out.extend_from_slice(&bytes[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((comment.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out.extend_from_slice(&bytes[2..]);
    out
}

fn print(r: &MeshReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let mb = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{} photos; pixmesh run: {} threads; mesh: {} agents x {} slots (loopback, {:?})",
        r.images, r.jobs, r.agents, r.slots_per_agent, r.transport
    );
    let rate = |label: &str, seconds: f64, images: usize, note: &str| {
        println!(
            "{label:<16}{seconds:>8.3} s  {:>7.1} images/s{note}",
            images as f64 / seconds
        )
    };
    rate("  pixmesh run", r.local_seconds, r.images, "");
    rate(
        "  mesh",
        r.mesh_seconds,
        r.images,
        "  (upload to last result downloaded)",
    );
    println!(
        "    of which upload and durable store {:.3} s, results download {:.3} s",
        r.mesh_upload_seconds, r.mesh_download_seconds
    );
    println!(
        "  one job: ratio mesh / pixmesh run {:.2}  (its makespan: the largest photo's task bounds it)",
        r.throughput_ratio
    );
    println!(
        "  sustained, one job of {} images (each photo {} times, distinct copies):",
        r.batch_images, COPIES
    );
    rate("    pixmesh run", r.batch_local_seconds, r.batch_images, "");
    rate("    mesh", r.batch_mesh_seconds, r.batch_images, "");
    println!(
        "    throughput ratio mesh / pixmesh run: {:.2}  (target >= 0.8)",
        r.batch_throughput_ratio
    );
    println!("  tasks per agent: {:?}", r.tasks_per_agent);
    println!(
        "  dispatch latency, 1x1 PNG, assign -> result accepted ({} tasks): p50 {:.2} ms, p99 {:.2} ms  (target p50 <= 5 ms)",
        r.latency_tasks, r.dispatch_p50_ms, r.dispatch_p99_ms
    );
    println!(
        "  one-image job round trip as the client sees it: p50 {:.2} ms, p99 {:.2} ms",
        r.job_round_trip_p50_ms, r.job_round_trip_p99_ms
    );
    println!(
        "  agent RSS idle: {} MB (target <= 30 MB); peak: {} MB",
        mb(&r.agent_idle_rss_mb),
        mb(&r.agent_peak_rss_mb)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixmesh_agent::pipeline::{Pipeline, jpeg};
    use pixmesh_protocol::{ContentId, JobSpec};

    #[test]
    fn a_distinct_copy_has_its_own_id_and_the_same_pixels() {
        let rgb: Vec<u8> = (0..64 * 48 * 3).map(|i| (i % 251) as u8).collect();
        let original = jpeg::encode(&rgb, 64, 48, 85, None, None).expect("encode");
        let copy = distinct_copy(&original, 3);
        assert_ne!(ContentId::of(&original), ContentId::of(&copy));
        assert_ne!(distinct_copy(&original, 1), distinct_copy(&original, 2));
        let pipeline = Pipeline::new(
            JobSpec::from_compact("resize 32x24 | png").expect("spec"),
            Default::default(),
        )
        .expect("pipeline");
        let a = pipeline.process(&original).expect("original");
        let b = pipeline.process(&copy).expect("copy");
        assert_eq!(a.bytes, b.bytes);
        // Not a JPEG: left alone.
        assert_eq!(distinct_copy(b"\x89PNG", 2), b"\x89PNG");
    }
}
