//! `pixmesh bench --suite failover`: what failures cost on a loopback
//! testnet of a coordinator and three agents (one slot each), with the
//! default reliability settings.
//!
//! Each round submits a job over the photos, SIGKILLs an agent while it
//! holds a task, and times how long until that task runs elsewhere with the
//! next attempt; the agent is restarted and the job must finish with every
//! task done exactly once. Then the coordinator is SIGKILLed mid-job and
//! restarted: the time until every agent is healthy again and until the job
//! finishes. Tasks lost and duplicate results are counted; both must be 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{BenchArgs, median};
use crate::client::Client;
use crate::testnet::{self, DirArg, State, UpArgs};

const STEPS: &str = "orient | resize 2400 | sharpen 1.2 | jpeg q=90";

/// Run the suite.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let corpus = args
        .corpus
        .clone()
        .or_else(super::default_corpus)
        .context("no photos: give --corpus DIR")?;
    let tmp = tempfile::tempdir().context("cannot make a temporary directory")?;
    let dir = tmp.path().join("testnet");
    let up = UpArgs {
        agents: 3,
        concurrency: Some(1),
        netns: false,
        dir: DirArg {
            dir: Some(dir.clone()),
        },
    };
    let state = testnet::up(&up)?;
    let outcome = measure(&args, &dir, &state, &corpus, tmp.path());
    let stopped = testnet::down(&dir);
    let report = outcome?;
    stopped?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let kills: Vec<f64> = report["reassign_s"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        println!(
            "agent SIGKILL -> task reassigned: median {:.2} s over {} kills ({})",
            median(&kills),
            kills.len(),
            kills
                .iter()
                .map(|k| format!("{k:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "coordinator SIGKILL + restart -> agents healthy {:.2} s, job finished {:.2} s after the restart",
            report["restart_healthy_s"].as_f64().unwrap_or_default(),
            report["restart_job_s"].as_f64().unwrap_or_default()
        );
        println!(
            "tasks lost {}, duplicate results {}, late results refused {}",
            report["lost"], report["duplicates"], report["late_results_refused"]
        );
    }
    let clean = report["lost"] == 0 && report["duplicates"] == 0;
    Ok(ExitCode::from(if clean { 0 } else { 1 }))
}

fn measure(
    args: &BenchArgs,
    dir: &Path,
    state: &State,
    corpus: &Path,
    tmp: &Path,
) -> Result<Value> {
    let spec = pixmesh_protocol::JobSpec::from_compact(STEPS).context("the bench pipeline")?;
    let inputs = vec![corpus.to_path_buf()];
    let mut reassign = Vec::new();
    let (mut lost, mut duplicates, mut fenced) = (0u64, 0u64, 0u64);
    for round in 0..args.rounds.max(1) {
        let client = state.client()?;
        let job = submit(&client, &spec, &inputs)?;
        // An agent holding a task.
        let (victim, task) = poll(&client, job, |v| {
            tasks(v)
                .iter()
                .find(|t| t["state"] == "running")
                .and_then(|t| {
                    let peer = t["node"].as_str()?;
                    let node = state
                        .nodes
                        .iter()
                        .find(|n| n.peer.as_deref() == Some(peer))?;
                    Some((node.name.clone(), t["name"].as_str()?.to_owned()))
                })
        })?;
        let victim_peer = state.nodes[state.node(&victim)?].peer.clone();
        testnet::kill_node(dir, &victim)?;
        let killed = Instant::now();
        poll(&client, job, |v| {
            tasks(v)
                .iter()
                .find(|t| t["name"] == task.as_str())
                .filter(|t| {
                    t["attempt"].as_u64() >= Some(2) && t["node"].as_str() != victim_peer.as_deref()
                })
                .map(|_| ())
        })?;
        let secs = killed.elapsed().as_secs_f64();
        eprintln!(
            "round {}: killed {victim}; its task reassigned after {secs:.2} s",
            round + 1
        );
        reassign.push(secs);
        testnet::restart(dir, &victim)?;
        let (l, d, f) = check(&client, job, tmp)?;
        (lost, duplicates, fenced) = (lost + l, duplicates + d, fenced + f);
    }

    // The coordinator dies mid-job.
    let client = state.client()?;
    let job = submit(&client, &spec, &inputs)?;
    poll(&client, job, |v| {
        (v["done"].as_u64() >= Some(1)).then_some(())
    })?;
    testnet::kill_node(dir, "coordinator")?;
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    testnet::restart(dir, "coordinator")?;
    let healthy = restarted.elapsed().as_secs_f64();
    // Same API address after the restart.
    poll(&client, job, |v| {
        (v["queued"] == 0 && v["running"] == 0).then_some(())
    })?;
    let finished = restarted.elapsed().as_secs_f64();
    eprintln!(
        "coordinator restarted: agents healthy after {healthy:.2} s, job finished after {finished:.2} s"
    );
    let (l, d, f) = check(&client, job, tmp)?;
    (lost, duplicates, fenced) = (lost + l, duplicates + d, fenced + f);
    Ok(serde_json::json!({
        "reassign_s": reassign,
        "reassign_median_s": median(&reassign),
        "restart_healthy_s": healthy,
        "restart_job_s": finished,
        "lost": lost,
        "duplicates": duplicates,
        "late_results_refused": fenced,
    }))
}

fn submit(client: &Client, spec: &pixmesh_protocol::JobSpec, inputs: &[PathBuf]) -> Result<u64> {
    let (resp, _) = client.submit(spec, inputs)?;
    resp["job"].as_u64().context("no job id in the answer")
}

fn tasks(view: &Value) -> Vec<Value> {
    view["tasks"].as_array().cloned().unwrap_or_default()
}

/// Poll a job every 20 ms until `found` returns something (two minutes at most).
fn poll<T>(client: &Client, job: u64, found: impl Fn(&Value) -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(t) = found(&client.job(job)?) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("job {job} did not get there within two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for the job; tasks not done, results beyond one per task, late
/// results refused.
fn check(client: &Client, job: u64, tmp: &Path) -> Result<(u64, u64, u64)> {
    let view = poll(client, job, |v| {
        (v["queued"] == 0 && v["running"] == 0).then(|| v.clone())
    })?;
    let all = tasks(&view);
    let lost = all.iter().filter(|t| t["state"] != "done").count() as u64;
    let out = tmp.join(format!("results-{job}"));
    let written = client.download(job, &out)?.len() as u64;
    let done = all.len() as u64 - lost;
    Ok((
        lost,
        written.saturating_sub(done),
        view["late_results_refused"].as_u64().unwrap_or_default(),
    ))
}
