//! Observability with real processes: Prometheus metrics on the
//! coordinator (behind the API token) and on an agent, JSON logs whose
//! lines carry the task's span, and the dashboard in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::helpers::*;
use crate::mesh::{Mesh, submit};
use crate::testnet::Testnet;

fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().expect("body"))
}

/// The value of one sample, `series` being its name and labels exactly.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn has_libp2p_metrics(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("libp2p_") && !l.starts_with('#'))
}

/// Photos copied into `dir`, plus a file that is not an image.
fn job_inputs(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut v: Vec<PathBuf> = photos()
        .into_iter()
        .take(n)
        .map(|p| {
            let to = dir.join(p.file_name().expect("name"));
            std::fs::copy(&p, &to).expect("copy");
            to
        })
        .collect();
    let bad = dir.join("broken.jpg");
    std::fs::write(&bad, noise(4000, 3)).expect("write");
    v.push(bad);
    v
}

#[test]
fn metrics_and_json_logs_describe_the_work() {
    let mut mesh = Mesh::start(0, 1);
    let log = mesh.dir.path().join("agent.log");
    let token = mesh.join_token.clone();
    let (_, banner) = mesh.add_agent_with(
        "observed",
        Some(&token),
        1,
        &["--log-format", "json", "--metrics-listen", "127.0.0.1:0"],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let agent_metrics = banner
        .iter()
        .find_map(|l| l.strip_prefix("metrics on "))
        .unwrap_or_else(|| panic!("no metrics address in {banner:?}"))
        .to_owned();
    mesh.wait_alive(1);

    let (_, hash) = mesh.deploy("sepia");
    let inputs = job_inputs(&mesh.dir.path().join("in"), 3);
    let (job, _) = submit(
        &mesh,
        "resize 320 | plugin sepia | jpeg q=80",
        &inputs,
        true,
    );

    // The coordinator: behind the token.
    let url = format!("{}/metrics", mesh.base);
    assert_eq!(http_get(&url, None).0, 401);
    let (status, text) = http_get(&url, Some(&mesh.api_token));
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "pixmesh_tasks{state=\"done\"}"), 3.0);
    assert_eq!(sample(&text, "pixmesh_tasks{state=\"failed\"}"), 1.0);
    assert_eq!(sample(&text, "pixmesh_jobs_submitted_total"), 1.0);
    assert_eq!(sample(&text, "pixmesh_task_queue_seconds_count"), 4.0);
    assert_eq!(sample(&text, "pixmesh_task_process_seconds_count"), 3.0);
    assert_eq!(sample(&text, "pixmesh_task_upload_seconds_count"), 3.0);
    assert!(
        sample(
            &text,
            "pixmesh_blob_transferred_bytes_total{direction=\"out\"}"
        ) > 0.0
    );
    assert!(
        sample(
            &text,
            "pixmesh_blob_transferred_bytes_total{direction=\"in\"}"
        ) > 0.0
    );
    assert_eq!(sample(&text, "pixmesh_late_results_refused_total"), 0.0);
    assert_eq!(sample(&text, "pixmesh_connected_peers"), 1.0);
    assert!(has_libp2p_metrics(&text), "{text}");

    // The agent: its own view, and the plugin's.
    let (status, text) = http_get(&agent_metrics, None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, "pixmesh_agent_tasks_total{outcome=\"done\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "pixmesh_agent_tasks_total{outcome=\"failed\"}"),
        1.0
    );
    // One per image, plus the dry run when the agent loaded the plugin.
    assert_eq!(
        sample(
            &text,
            &format!("pixmesh_plugin_instantiations_total{{plugin=\"{hash}\"}}")
        ),
        4.0
    );
    assert!(
        sample(
            &text,
            "pixmesh_agent_blob_transferred_bytes_total{direction=\"in\"}"
        ) > 0.0
    );
    assert_eq!(
        sample(&text, "pixmesh_agent_task_process_seconds_count"),
        3.0
    );
    assert_eq!(sample(&text, "pixmesh_connected_peers"), 1.0);
    assert!(has_libp2p_metrics(&text), "{text}");

    // JSON logs: one object per line, and the task's lines carry its span.
    let text = std::fs::read_to_string(&log).expect("log");
    let events: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "task done")
        .collect();
    assert_eq!(done.len(), 3, "{text}");
    for e in done {
        assert_eq!(e["span"]["name"], "task", "{e:#}");
        assert_eq!(e["span"]["job"], job, "{e:#}");
        assert!(e["span"]["image"].is_string(), "{e:#}");
        assert!(e["fields"]["process_ms"].is_number(), "{e:#}");
    }
}

/// Debian's Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Chromium, headless, with the flags this machine needs (no sandbox as
/// root; no background traffic to a closed network).
fn headless(browser: &Path, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null());
    c
}

/// The page's DOM after its scripts ran for a few seconds of virtual time.
fn dom(browser: &Path, profile: &Path, url: &str) -> String {
    let out = headless(browser, profile)
        .args(["--virtual-time-budget=4000", "--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_shows_every_agent_and_a_job_reaching_100_percent() {
    let net = Testnet::up(2, false);
    // The page itself holds no data; the data needs the token.
    let (status, page) = http_get(&format!("{}/", net.api), None);
    assert_eq!(status, 200);
    assert!(page.contains("<title>pixmesh</title>"));
    assert!(!page.contains("src=\"http"), "no external scripts");
    assert_eq!(http_get(&format!("{}/v1/throughput", net.api), None).0, 401);

    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: the browser half needs Debian's chromium (apt-get install chromium)");
        return;
    };
    let profile = tempfile::tempdir().expect("profile");
    // Without a token: the login form.
    let html = dom(&browser, profile.path(), &format!("{}/", net.api));
    assert!(html.contains("<div id=\"login\">"), "{html}");
    // With a wrong one: told so.
    let html = dom(
        &browser,
        profile.path(),
        &format!("{}/#token=wrong", net.api),
    );
    assert!(html.contains("That token was refused."), "{html}");

    // A job over the photos and a file that is not an image, watched while
    // it runs and after it finished.
    let inputs = job_inputs(&net.dir.path().join("in"), 6);
    let out = run(net
        .cli()
        .args([
            "submit",
            "--json",
            "--steps",
            "orient | resize 640 | webp q=70",
        ])
        .args(&inputs));
    assert!(out.status.success(), "submit: {}", stderr(&out));
    let job = serde_json::from_slice::<Value>(&out.stdout).expect("submit JSON")["job"]
        .as_u64()
        .expect("job id");
    let url = format!("{}/#token={}", net.api, net.token);
    let html = dom(&browser, profile.path(), &url);
    assert!(html.contains(&format!("data-job=\"{job}\"")), "{html}");
    net.finished(job);
    let html = dom(&browser, profile.path(), &url);
    for agent in ["agent-1", "agent-2"] {
        let peer = net.peer(agent);
        assert!(
            html.contains(&format!("data-peer=\"{peer}\"")),
            "{agent} ({peer}) missing from\n{html}"
        );
    }
    let at = html
        .find(&format!("data-job=\"{job}\""))
        .unwrap_or_else(|| panic!("job {job} missing from\n{html}"));
    let block = &html[at..html.len().min(at + 2500)];
    assert!(block.contains(">100%<"), "{block}");
    assert!(
        block.contains("not a recognised image"),
        "the failure and its reason: {block}"
    );
    assert!(html.contains(" images</title>"), "a throughput bar: {html}");

    // A screenshot, kept as an artifact of the run.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let started = Instant::now();
    let out = headless(&browser, profile.path())
        .args(["--virtual-time-budget=4000", "--window-size=1400,900"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!(
        "dashboard screenshot: {} ({} bytes, {:.1} s)",
        shot.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );
}
