//! The mesh with real processes on loopback: a coordinator, agents that
//! enrol with a join token, jobs submitted and fetched with the CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// A coordinator and its agents, all killed on drop.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    coordinator: Child,
    pub base: String,
    pub api_token: String,
    pub mesh_addr: String,
    pub join_token: String,
    pub agents: Vec<(String, Child)>,
    /// Each agent's listen addresses, by peer id.
    pub agent_addrs: Vec<(String, Vec<String>)>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, a) in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }
}

fn read_until(child: &mut Child, marker: &str) -> Vec<String> {
    pixmesh::bench::mesh::read_lines_until(child, marker).expect("the process's banner")
}

impl Mesh {
    /// A coordinator with `agents` agents of `concurrency` slots each,
    /// waiting until all of them are alive in the node table.
    pub fn start(agents: usize, concurrency: usize) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("coordinator");
        let mut coordinator = coordinator_command(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start coordinator");
        let lines = read_until(&mut coordinator, "mesh address");
        let base = lines
            .iter()
            .flat_map(|l| l.split_whitespace())
            .find(|w| w.starts_with("http://"))
            .expect("API address")
            .to_owned();
        let mesh_addr = lines
            .last()
            .and_then(|l| l.split_whitespace().last())
            .expect("mesh address")
            .to_owned();
        let api_token = std::fs::read_to_string(data.join("api-token"))
            .expect("api token")
            .trim()
            .to_owned();
        let mut mesh = Mesh {
            dir,
            coordinator,
            base,
            api_token,
            mesh_addr,
            join_token: String::new(),
            agents: Vec::new(),
            agent_addrs: Vec::new(),
        };
        let out = run(mesh.cli().args(["token", "create", "--ttl", "1h"]));
        assert!(out.status.success(), "token create: {}", stderr(&out));
        mesh.join_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(mesh.join_token.starts_with("pmj_"), "{}", mesh.join_token);
        for i in 0..agents {
            let token = mesh.join_token.clone();
            mesh.add_agent(&format!("agent{i}"), Some(&token), concurrency);
        }
        mesh.wait_alive(agents);
        mesh
    }

    /// Start an agent; returns its peer id.
    pub fn add_agent(&mut self, name: &str, token: Option<&str>, concurrency: usize) -> String {
        self.add_agent_with(name, token, concurrency, &[], Stdio::null())
            .0
    }

    /// Start an agent with extra arguments and its stderr going to
    /// `stderr`; its peer id and the banner it printed.
    pub fn add_agent_with(
        &mut self,
        name: &str,
        token: Option<&str>,
        concurrency: usize,
        extra: &[&str],
        stderr: Stdio,
    ) -> (String, Vec<String>) {
        let data = self.dir.path().join(name);
        let mut cmd = pixmesh_agent();
        cmd.args([
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .args(["--bootstrap", &self.mesh_addr])
        .args(["--concurrency", &concurrency.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr);
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        let mut child = cmd.spawn().expect("start agent");
        let lines = read_until(&mut child, " ready");
        let peer = lines
            .last()
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("peer id")
            .to_owned();
        let addrs = lines
            .iter()
            .filter_map(|l| l.strip_prefix("listening on "))
            .map(str::to_owned)
            .collect();
        self.agent_addrs.push((peer.clone(), addrs));
        self.agents.push((peer.clone(), child));
        (peer, lines)
    }

    /// The data directory of agent `i`.
    pub fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent{i}"))
    }

    /// A `pixmesh` CLI command pointed at this coordinator.
    pub fn cli(&self) -> Command {
        let mut c = pixmesh();
        c.env("PIXMESH_COORDINATOR", &self.base)
            .env("PIXMESH_TOKEN", &self.api_token)
            .env("PIXMESH_HOME", self.dir.path().join("cli-home"));
        c
    }

    /// `pixmesh nodes --json`.
    pub fn nodes(&self) -> Vec<Value> {
        let out = run(self.cli().args(["nodes", "--json"]));
        assert!(out.status.success(), "nodes: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("nodes JSON")
    }

    /// Wait until `n` enrolled agents are alive.
    pub fn wait_alive(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = self.nodes();
            let alive = nodes
                .iter()
                .filter(|x| x["status"] == "enrolled" && x["health"] == "alive")
                .count();
            if alive >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {alive} of {n} agents alive: {nodes:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deploy the example plugin `name` (built by plugins/build.sh) under
    /// that name; its file and BLAKE3 hash.
    pub fn deploy(&self, name: &str) -> (PathBuf, String) {
        let wasm = dist().join(format!("{name}.wasm"));
        let out = run(self
            .cli()
            .args(["plugin", "deploy"])
            .arg(&wasm)
            .args(["--name", name]));
        assert!(out.status.success(), "deploy: {}", stderr(&out));
        let hash = blake3::hash(&std::fs::read(&wasm).expect("wasm"))
            .to_hex()
            .to_string();
        (wasm, hash)
    }

    /// `pixmesh status JOB --json`.
    pub fn job(&self, job: u64) -> Value {
        let out = run(self.cli().args(["status", &job.to_string(), "--json"]));
        assert!(out.status.success(), "status: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

/// `pixmesh submit --json`: the job id and the command's output.
pub fn submit(
    mesh: &Mesh,
    steps: &str,
    inputs: &[PathBuf],
    wait: bool,
) -> (u64, std::process::Output) {
    let mut cmd = mesh.cli();
    cmd.args(["submit", "--json", "--steps", steps])
        .args(inputs);
    if wait {
        cmd.arg("--wait");
    }
    let out = run(&mut cmd);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("submit JSON ({e}): {}", stderr(&out)));
    let job = v["job"]
        .as_u64()
        .or_else(|| v["id"].as_u64())
        .expect("job id");
    (job, out)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_job_with_a_plugin_runs_across_agents_byte_identical_to_pixmesh_run() {
    let mut mesh = Mesh::start(3, 1);
    // A peer with a wrong join token, and one with none: neither gets work.
    let refused = mesh.add_agent("stranger", Some("pmj_not-a-token"), 2);
    let pending = mesh.add_agent("newcomer", None, 2);

    let (sepia, hash) = mesh.deploy("sepia");
    // A broken plugin is refused at deploy with the reason.
    let junk = mesh.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0garbage").expect("write");
    let out = run(mesh.cli().args(["plugin", "deploy"]).arg(&junk));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("plugin junk"), "{}", stderr(&out));

    let inputs = mesh.dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).expect("mkdir");
    let mut photos = photos();
    photos.truncate(8);
    for p in &photos {
        std::fs::copy(p, inputs.join(p.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(inputs.join("broken.jpg"), noise(5000, 7)).expect("write");
    let steps = "orient | resize 320x240 fit=cover | plugin sepia strength=0.7 | jpeg q=80";

    let (job, out) = submit(&mesh, steps, std::slice::from_ref(&inputs), true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one image is bad: {}",
        stderr(&out)
    );
    let view = mesh.job(job);
    assert_eq!(view["done"], photos.len() as u64, "{view:#}");
    assert_eq!(view["failed"], 1, "{view:#}");

    // The bad image fails alone, with its reason in `pixmesh status`.
    let text = run(mesh.cli().args(["status", &job.to_string()]));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("broken.jpg"))
        .unwrap_or_else(|| panic!("no broken.jpg line in:\n{text}"));
    assert!(
        line.contains("failed") && line.contains("not a recognised image"),
        "{line}"
    );

    // Work was spread, and only over enrolled agents.
    let tasks = view["tasks"].as_array().expect("tasks");
    let mut used: Vec<&str> = tasks.iter().filter_map(|t| t["node"].as_str()).collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 2, "tasks ran on {used:?}");
    assert!(!used.contains(&refused.as_str()) && !used.contains(&pending.as_str()));
    let nodes = mesh.nodes();
    let status_of = |peer: &str| {
        nodes
            .iter()
            .find(|n| n["peer"] == peer)
            .map(|n| n["status"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        status_of(&refused).as_deref(),
        Some("refused"),
        "{nodes:#?}"
    );
    assert_eq!(
        status_of(&pending).as_deref(),
        Some("pending"),
        "{nodes:#?}"
    );

    // Agents that ran the job fetched the plugin they did not have.
    let fetched = (0..3)
        .filter(|i| {
            mesh.agent_dir(*i)
                .join("plugins")
                .join(format!("{hash}.wasm"))
                .exists()
        })
        .count();
    assert!(fetched >= 2, "only {fetched} agents hold the plugin");
    // ...and say so in their adverts: the node table lists it (the next
    // heartbeat, within about a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let nodes = mesh.nodes();
        let advertised = nodes
            .iter()
            .filter(|n| {
                n["plugins"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|h| h == hash.as_str()))
            })
            .count();
        if advertised >= fetched {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{advertised} adverts list the plugin: {nodes:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Results download, and match `pixmesh run` on the same inputs byte for byte.
    let results = mesh.dir.path().join("results");
    let out = run(mesh
        .cli()
        .args(["results", &job.to_string(), "-o"])
        .arg(&results));
    assert_eq!(
        out.status.code(),
        Some(1),
        "one image failed: {}",
        stderr(&out)
    );
    let home = mesh.dir.path().join("local-home");
    let out = run(pixmesh()
        .args(["plugin", "add"])
        .arg(&sepia)
        .args(["--name", "sepia", "--home"])
        .arg(&home));
    assert!(out.status.success(), "{}", stderr(&out));
    let local = mesh.dir.path().join("local");
    let out = run(pixmesh()
        .args(["run", "-q", "--steps", steps, "--home"])
        .arg(&home)
        .arg(&inputs)
        .arg("-o")
        .arg(&local));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mesh_files = files(&results);
    let local_files = files(&local);
    assert_eq!(mesh_files.len(), photos.len(), "{mesh_files:?}");
    assert_eq!(
        mesh_files.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        local_files
            .iter()
            .map(|p| p.file_name())
            .collect::<Vec<_>>()
    );
    for (m, l) in mesh_files.iter().zip(&local_files) {
        let (a, b) = (
            std::fs::read(m).expect("read"),
            std::fs::read(l).expect("read"),
        );
        assert!(
            a == b,
            "{} differs from pixmesh run's {}",
            m.display(),
            l.display()
        );
    }
}

#[test]
fn a_long_polled_status_answers_when_tasks_finish() {
    let mesh = Mesh::start(1, 1);
    let inputs: Vec<PathBuf> = photos().into_iter().take(4).collect();
    let (job, out) = submit(&mesh, "orient | resize 300 | blur 2 | png", &inputs, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let http = reqwest::blocking::Client::new();
    let ask = |finished: u64| -> Value {
        http.get(format!(
            "{}/v1/jobs/{job}?finished={finished}&wait_ms=30000",
            mesh.base
        ))
        .bearer_auth(&mesh.api_token)
        .send()
        .expect("send")
        .json()
        .expect("json")
    };
    let n = |v: &Value, k: &str| v[k].as_u64().expect("count");
    // Follow the job: every answer reports a change from what was seen,
    // or the end; so following 4 tasks takes at most 4 requests after the
    // first, however long they run.
    let (mut seen, mut requests) = (0, 0);
    let last = loop {
        let v = ask(seen);
        requests += 1;
        let finished = n(&v, "done") + n(&v, "failed") + n(&v, "cancelled");
        let over = n(&v, "queued") + n(&v, "running") == 0;
        assert!(finished > seen || over, "answered without a change: {v:#}");
        if over {
            break v;
        }
        seen = finished;
    };
    assert_eq!(n(&last, "done"), 4, "{last:#}");
    assert!(requests <= 4, "{requests} requests for 4 tasks");
    // Once the job is over, a long poll answers at once.
    let asked = Instant::now();
    let again = ask(4);
    assert_eq!(n(&again, "done"), 4);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "held a finished job"
    );
}

#[test]
fn cancel_stops_the_remaining_tasks_and_a_wrong_token_gets_401() {
    let mesh = Mesh::start(2, 1);
    let out = run(mesh
        .cli()
        .env("PIXMESH_TOKEN", "wrong")
        .args(["submit", "--steps", "resize 100 | png"])
        .arg(&photos()[0]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));

    // Twenty slow tasks (full-size blur) on two one-slot agents: cancel
    // right after the submit is acknowledged.
    let inputs: Vec<PathBuf> = {
        let dir = mesh.dir.path().join("many");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let src = largest_photo();
        (0..20)
            .map(|i| {
                let p = dir.join(format!("p{i:02}.jpg"));
                std::fs::copy(&src, &p).expect("copy");
                p
            })
            .collect()
    };
    let (job, out) = submit(&mesh, "blur 8 | png", &inputs, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(mesh.cli().args(["cancel", &job.to_string()]));
    assert!(out.status.success(), "{}", stderr(&out));
    let after_cancel = mesh.job(job);
    let cancelled = after_cancel["cancelled"].as_u64().expect("count");
    assert!(
        cancelled >= 15,
        "most tasks were still to do: {after_cancel:#}"
    );
    assert_eq!(after_cancel["queued"], 0);
    assert_eq!(after_cancel["running"], 0);
    // Nothing cancelled comes back to life: late results are refused.
    std::thread::sleep(Duration::from_secs(3));
    let later = mesh.job(job);
    assert_eq!(later["done"], after_cancel["done"], "{later:#}");
    assert_eq!(later["cancelled"], after_cancel["cancelled"]);
    // The agents are free again: a new job runs to the end.
    let (job2, out) = submit(&mesh, "resize 64 | png", &inputs[..2], true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mesh.job(job2)["done"], 2);
}

#[test]
fn agents_refuse_tasks_from_peers_that_are_not_their_coordinator() {
    use pixmesh_mesh::{Node, NodeConfig};
    use pixmesh_protocol::wire::{Assignment, Request, Response};
    let mesh = Mesh::start(1, 1);
    let (peer, addrs) = mesh.agent_addrs[0].clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answer = runtime.block_on(async {
        let mut config = NodeConfig::new(
            pixmesh_mesh::identity::Keypair::generate_ed25519(),
            "stranger/0",
        );
        config.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")];
        config.bootstrap = addrs
            .iter()
            .map(|a| a.parse().expect("agent addr"))
            .collect();
        config.mdns = false;
        let (node, _events) = Node::start(config).expect("stranger node");
        let assignment = Assignment {
            task: 1,
            attempt: 1,
            job: 1,
            name: "x.jpg".into(),
            spec: pixmesh_protocol::JobSpec::from_compact("resize 8 | png").expect("spec"),
            input: pixmesh_protocol::ContentId::of(b"x"),
            lease_ms: 1000,
        };
        node.request(peer.parse().expect("peer id"), Request::Assign(assignment))
            .await
            .expect("the agent answers")
    });
    match answer {
        Response::Refused { reason } => {
            assert!(reason.contains("configured coordinators"), "{reason}")
        }
        other => panic!("a stranger's task was not refused: {other:?}"),
    }
}

#[test]
fn a_sigterm_agent_hands_its_tasks_back_at_once() {
    let mut mesh = Mesh::start(1, 1);
    let photo = largest_photo();
    let dir = mesh.dir.path().join("slow");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let inputs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.join(format!("s{i}.jpg"));
            std::fs::copy(&photo, &p).expect("copy");
            p
        })
        .collect();
    let (job, out) = submit(&mesh, "blur 8 | png", &inputs, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh.job(job)["running"] == 0 {
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, mut agent) = mesh.agents.remove(0);
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = agent.wait().expect("agent exits");
    assert!(status.success(), "the agent exited with {status}");
    // Handed back: queued again well before the 4 s dead-agent timeout
    // or the 10 s lease could have done it.
    let view = mesh.job(job);
    assert_eq!(view["running"], 0, "{view:#}");
    assert_eq!(view["queued"], 2, "{view:#}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "{:?}",
        signalled.elapsed()
    );
    // A new agent finishes the job; the handed-back task ran a second attempt.
    let token = mesh.join_token.clone();
    mesh.add_agent("agent-late", Some(&token), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = mesh.job(job);
        if view["done"] == 2 {
            let attempts: Vec<u64> = view["tasks"]
                .as_array()
                .expect("tasks")
                .iter()
                .map(|t| t["attempt"].as_u64().unwrap_or(0))
                .collect();
            assert!(attempts.contains(&2), "{attempts:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{view:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_identity_persists_and_id_prints_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = |d: &Path| {
        let out = run(pixmesh_agent().arg("id").arg("--data-dir").arg(d));
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let first = id(dir.path());
    assert!(first.starts_with("12D3KooW"), "an ed25519 peer id: {first}");
    assert_eq!(id(dir.path()), first, "the same identity on the next start");
    assert!(dir.path().join("identity.key").is_file());
    // A damaged key is an error naming the file, not a new identity.
    std::fs::write(dir.path().join("identity.key"), b"junk").expect("write");
    let out = run(pixmesh_agent().arg("id").arg("--data-dir").arg(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("identity.key"), "{}", stderr(&out));
}
