//! `pixmesh testnet`: a coordinator and agents on this machine, as
//! background processes, to try pixmesh and to break it on purpose.
//!
//! Everything about a testnet lives in its directory: `testnet.json` (pids,
//! command lines, addresses, tokens, the namespaces and links it created),
//! one data directory and one log per node. Separate CLI calls work on it,
//! and `down` cleans up after a CLI that crashed half-way, because every
//! resource is written down before it is created.
//!
//! Two modes:
//! - loopback (default): every node on 127.0.0.1; agents get the
//!   coordinator's address as a bootstrap peer, since libp2p's mDNS skips
//!   loopback interfaces. `partition` freezes a node (SIGSTOP): it stops
//!   answering, as behind a cut link; `heal` resumes it (SIGCONT).
//! - `--netns` (root, Linux): every node in its own network namespace with
//!   its own address on a private bridge; agents are told only the
//!   coordinator's peer id and find it with mDNS. `partition` takes the
//!   node's link down; `heal` brings it back.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::EXIT_OK;
use crate::client::{Client, Remote};

/// `pixmesh testnet ...`.
#[derive(Debug, Subcommand)]
pub enum TestnetCommand {
    /// Start a coordinator and N agents as background processes and wait
    /// until every agent is healthy.
    ///
    /// Each node gets a data directory and a log in the testnet directory.
    /// Loopback by default; --netns (root) gives every node its own network
    /// namespace and address, and agents find the coordinator with mDNS.
    Up(UpArgs),
    /// Show the testnet's nodes: process, address, health, load.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print shell exports that point `pixmesh` at the testnet's coordinator:
    /// `eval "$(pixmesh testnet env)"`.
    Env {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Stop every process the testnet started (SIGTERM, then SIGKILL after
    /// 15 s) and remove the namespaces and links it created. Data
    /// directories and logs stay.
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// SIGKILL a node (`coordinator` or `agent-N`): a device that dies.
    Kill {
        /// `coordinator` or `agent-N`.
        node: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Start a node again (stopping it first if it runs), same data and addresses.
    Restart {
        /// `coordinator` or `agent-N`.
        node: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Cut a node off the network: its link goes down (--netns) or it is
    /// frozen (loopback).
    Partition {
        /// `coordinator` or `agent-N`.
        node: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Undo `partition`.
    Heal {
        /// `coordinator` or `agent-N`.
        node: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// The whole tour: start a testnet, process photos with native ops and a
    /// WebAssembly plugin across its agents, fetch the results, stop it.
    Demo(DemoArgs),
}

/// Where the testnet lives.
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// Testnet directory. Default: <pixmesh home>/testnet.
    #[arg(long, value_name = "DIR", env = "PIXMESH_TESTNET_DIR")]
    pub dir: Option<PathBuf>,
}

impl DirArg {
    /// The directory.
    pub fn path(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| crate::registry::home(None).join("testnet"))
    }
}

/// `pixmesh testnet up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Agents to start.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub agents: usize,
    /// Task slots per agent. Default: the machine's cores shared among the
    /// agents (at least 1).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Give every node its own network namespace and address on a private
    /// bridge (needs root); agents find the coordinator with mDNS.
    #[arg(long)]
    pub netns: bool,
    #[command(flatten)]
    pub dir: DirArg,
}

/// `pixmesh testnet demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Photos to process (files or directories). Default: the sample
    /// photos shipped in the repository (samples/photos).
    #[arg(value_name = "DIR")]
    pub photos: Vec<PathBuf>,
    /// Where the results go.
    #[arg(short, long, value_name = "DIR", default_value = "demo-results")]
    pub output: PathBuf,
    /// Leave the testnet running afterwards (stop it with `pixmesh testnet down`).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub up: UpArgs,
}

/// The state file.
const STATE_FILE: &str = "testnet.json";
/// The example plugin the demo deploys (built from plugins/vignette; see
/// samples/README.md).
const DEMO_PLUGIN: &[u8] = include_bytes!("../../samples/plugins/vignette.wasm");
/// The demo's pipeline: native ops around the plugin.
const DEMO_STEPS: &str =
    "orient | resize 1280x1280 fit=inside | plugin vignette strength=0.6 | sharpen 0.6 | webp q=80";
/// How long `up` and `restart` wait for nodes to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// A testnet as written in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Namespaces and bridge, in --netns mode.
    pub netns: Option<Netns>,
    /// The coordinator's API.
    pub api: String,
    /// Its API token.
    pub api_token: String,
    /// The join token the agents enrol with.
    pub join_token: String,
    /// The coordinator's peer id.
    pub coordinator_peer: String,
    /// The coordinator first, then the agents.
    pub nodes: Vec<NodeState>,
}

/// The private network of a --netns testnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Netns {
    /// Prefix of every name it created (`pm1a2b`).
    pub prefix: String,
    /// The bridge in the host namespace.
    pub bridge: String,
    /// The /24 the nodes live in, as its first three octets.
    pub subnet: String,
}

/// One node of a testnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// `coordinator` or `agent-N`.
    pub name: String,
    /// Its command line (with `ip netns exec NS` in front in --netns mode).
    pub argv: Vec<String>,
    /// Environment given to it (the join token stays off the command line).
    pub env: Vec<(String, String)>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Process id while started by us.
    pub pid: Option<u32>,
    /// Its libp2p peer id.
    pub peer: Option<String>,
    /// Its network namespace (--netns).
    pub netns: Option<String>,
    /// The host side of its link to the bridge (--netns).
    pub link: Option<String>,
    /// Its IP address.
    pub address: String,
    /// Cut off by `partition`.
    pub partitioned: bool,
}

impl State {
    fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no testnet in {} (cannot read {}); start one with `pixmesh testnet up`",
                dir.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("bad testnet state {}", path.display()))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The index of node `name`, or an error listing the nodes there are.
    pub fn node(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                format!(
                    "no node {name:?} in this testnet; it has {}",
                    names.join(", ")
                )
            })
    }

    /// A client for the testnet's coordinator.
    pub fn client(&self) -> Result<Client> {
        Remote {
            coordinator: Some(self.api.clone()),
            token: Some(self.api_token.clone()),
            home: None,
            json: false,
        }
        .connect()
    }
}

impl NodeState {
    /// Is the process we started still running (and still ours)?
    fn running(&self) -> bool {
        self.pid
            .is_some_and(|pid| process_alive(pid, &self.data_dir))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let err = log
            .try_clone()
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let (program, args) = self
            .argv
            .split_first()
            .context("empty command line in the testnet state")?;
        let child = Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl-C in the terminal that ran
            // `testnet up` does not reach the testnet.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} ({program})", self.name))?;
        self.pid = Some(child.id());
        self.partitioned = false;
        Ok(())
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        if let Some(pid) = self.pid.filter(|_| self.running()) {
            kill(Pid::from_raw(pid as i32), signal)
                .with_context(|| format!("cannot send {signal} to {} (pid {pid})", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.running() {
            self.signal(Signal::SIGCONT)?;
            self.signal(Signal::SIGTERM)?;
            let deadline = Instant::now() + grace;
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.running() {
                self.signal(Signal::SIGKILL)?;
                while self.running() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.pid = None;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Is `pid` a live (not zombie) process whose command line mentions
/// `data_dir` — so a recycled pid is never taken for our node?
fn process_alive(pid: u32, data_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if cmdline.is_empty() {
        // Read in the middle of an exec (`ip netns exec` becoming the node).
        return true;
    }
    let want = data_dir.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == want)
}

/// Run a command that sets up or tears down the network; its stderr in the error.
fn sh(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("cannot run {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A TCP port free on 127.0.0.1 whose UDP twin is free too.
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("cannot find a free TCP and UDP port on 127.0.0.1")
}

/// The `pixmesh-agent` binary: beside this one.
fn agent_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let agent = me.with_file_name("pixmesh-agent");
    if !agent.is_file() {
        bail!(
            "{} not found beside {}; build both with `cargo build --release -p pixmesh`",
            agent.display(),
            me.display()
        );
    }
    Ok(agent)
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Run a `pixmesh testnet` command.
pub fn command(cmd: TestnetCommand) -> Result<ExitCode> {
    match cmd {
        TestnetCommand::Up(args) => {
            let dir = args.dir.path();
            let state = up(&args)?;
            print_next_steps(&dir, &state);
        }
        TestnetCommand::Status { dir, json } => status(&dir.path(), json)?,
        TestnetCommand::Env { dir } => {
            let state = State::load(&dir.path())?;
            println!("export PIXMESH_COORDINATOR={}", state.api);
            println!("export PIXMESH_TOKEN={}", state.api_token);
        }
        TestnetCommand::Down { dir } => {
            let dir = dir.path();
            down(&dir)?;
            println!("testnet in {} stopped (data and logs kept)", dir.display());
        }
        TestnetCommand::Kill { node, dir } => {
            let pid = kill_node(&dir.path(), &node)?;
            println!("killed {node} (pid {pid})");
        }
        TestnetCommand::Restart { node, dir } => {
            let dir = dir.path();
            restart(&dir, &node)?;
            println!("{node} restarted");
        }
        TestnetCommand::Partition { node, dir } => {
            let dir = dir.path();
            let how = partition(&dir, &node, true)?;
            println!("{node} partitioned ({how})");
        }
        TestnetCommand::Heal { node, dir } => {
            let dir = dir.path();
            let how = partition(&dir, &node, false)?;
            println!("{node} healed ({how})");
        }
        TestnetCommand::Demo(args) => return demo(args),
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// Start a testnet; on failure, everything started so far is stopped again.
pub fn up(args: &UpArgs) -> Result<State> {
    let dir = args.dir.path();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Ok(old) = State::load(&dir) {
        if old.nodes.iter().any(NodeState::running) {
            bail!(
                "a testnet is already running in {} (stop it with `pixmesh testnet down --dir {}`)",
                dir.display(),
                dir.display()
            );
        }
        // Leftovers of a crashed run: namespaces and links.
        teardown_network(&old);
    }
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    if args.netns && !nix::unistd::geteuid().is_root() {
        bail!(
            "--netns needs root (it creates network namespaces); run without it for a loopback testnet"
        );
    }
    let mut state = State {
        netns: None,
        api: String::new(),
        api_token: String::new(),
        join_token: String::new(),
        coordinator_peer: String::new(),
        nodes: Vec::new(),
    };
    match start(args, &dir, &mut state) {
        Ok(()) => Ok(state),
        Err(e) => {
            let _ = state.save(&dir);
            let _ = down(&dir);
            Err(e.context(format!(
                "the testnet did not start (logs in {})",
                dir.display()
            )))
        }
    }
}

fn start(args: &UpArgs, dir: &Path, state: &mut State) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let agent = agent_binary()?;
    if args.netns {
        state.netns = Some(create_bridge(dir, state)?);
    }
    let slots = args.concurrency.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / args.agents).max(1)
    });

    // The coordinator.
    let data_dir = dir.join("coordinator");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data = path_str(&data_dir)?;
    let mut node = NodeState {
        name: "coordinator".into(),
        argv: Vec::new(),
        env: Vec::new(),
        log: dir.join("coordinator.log"),
        data_dir,
        pid: None,
        peer: None,
        netns: None,
        link: None,
        address: "127.0.0.1".into(),
        partitioned: false,
    };
    let (api, p2p) = match &state.netns {
        None => {
            let (http, p2p) = (free_port()?, free_port()?);
            node.argv = vec![
                path_str(&exe)?,
                "coordinator".into(),
                "--data-dir".into(),
                data,
                "--listen".into(),
                format!("127.0.0.1:{http}"),
                "--p2p-listen".into(),
                format!("/ip4/127.0.0.1/udp/{p2p}/quic-v1,/ip4/127.0.0.1/tcp/{p2p}"),
                "--no-mdns".into(),
            ];
            (
                format!("http://127.0.0.1:{http}"),
                format!("/ip4/127.0.0.1/udp/{p2p}/quic-v1"),
            )
        }
        Some(net) => {
            let ip = format!("{}.2", net.subnet);
            attach(dir, state, &mut node, 0, &ip)?;
            node.argv.extend([
                path_str(&exe)?,
                "coordinator".into(),
                "--data-dir".into(),
                data,
                "--listen".into(),
                format!("{ip}:7700"),
                "--p2p-listen".into(),
                format!("/ip4/{ip}/udp/7701/quic-v1,/ip4/{ip}/tcp/7701"),
            ]);
            (
                format!("http://{ip}:7700"),
                format!("/ip4/{ip}/udp/7701/quic-v1"),
            )
        }
    };
    state.api = api;
    node.spawn()?;
    state.nodes.push(node);
    state.save(dir)?;
    let (token, info) = wait_for_api(state, &state.nodes[0])?;
    state.api_token = token;
    state.coordinator_peer = info["peer_id"]
        .as_str()
        .context("the coordinator's /v1/info has no peer_id")?
        .to_owned();
    let created: Value = state.client()?.post(
        "/v1/tokens",
        "create a join token",
        Some(serde_json::json!({ "ttl_secs": 86_400 })),
    )?;
    state.join_token = created["token"]
        .as_str()
        .context("no token in the coordinator's answer")?
        .to_owned();
    state.nodes[0].peer = Some(state.coordinator_peer.clone());
    state.save(dir)?;

    // The agents.
    for i in 1..=args.agents {
        let name = format!("agent-{i}");
        let data_dir = dir.join(&name);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let data = path_str(&data_dir)?;
        let mut node = NodeState {
            name: name.clone(),
            argv: Vec::new(),
            env: vec![("PIXMESH_JOIN_TOKEN".into(), state.join_token.clone())],
            log: dir.join(format!("{name}.log")),
            data_dir,
            pid: None,
            peer: Some(agent_id(&agent, &data)?),
            netns: None,
            link: None,
            address: "127.0.0.1".into(),
            partitioned: false,
        };
        let common = |argv: &mut Vec<String>| -> Result<()> {
            argv.extend([
                path_str(&agent)?,
                "run".into(),
                "--data-dir".into(),
                data.clone(),
                "--concurrency".into(),
                slots.to_string(),
            ]);
            Ok(())
        };
        match &state.netns {
            None => {
                common(&mut node.argv)?;
                node.argv.extend([
                    "--listen".into(),
                    "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                    "--listen".into(),
                    "/ip4/127.0.0.1/tcp/0".into(),
                    "--no-mdns".into(),
                    "--bootstrap".into(),
                    format!("{p2p}/p2p/{}", state.coordinator_peer),
                ]);
            }
            Some(net) => {
                let ip = format!("{}.{}", net.subnet, 10 + i);
                attach(dir, state, &mut node, i, &ip)?;
                common(&mut node.argv)?;
                node.argv.extend([
                    "--listen".into(),
                    format!("/ip4/{ip}/udp/7701/quic-v1"),
                    "--listen".into(),
                    format!("/ip4/{ip}/tcp/7701"),
                    // No bootstrap: mDNS finds the coordinator.
                    "--coordinator".into(),
                    state.coordinator_peer.clone(),
                ]);
            }
        }
        node.spawn()?;
        state.nodes.push(node);
        state.save(dir)?;
    }
    wait_healthy(state, None)
}

/// The peer id an agent's data directory holds (created when missing).
fn agent_id(agent: &Path, data_dir: &str) -> Result<String> {
    let out = Command::new(agent)
        .args(["id", "--data-dir", data_dir])
        .output()
        .with_context(|| format!("cannot run {}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "`pixmesh-agent id` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Wait until the coordinator answers its API; its token and `/v1/info`.
fn wait_for_api(state: &State, node: &NodeState) -> Result<(String, Value)> {
    let token_file = node.data_dir.join("api-token");
    let deadline = Instant::now() + HEALTHY_WITHIN;
    let mut last = String::from("not started");
    while Instant::now() < deadline {
        if !node.running() {
            bail!(
                "the coordinator exited; its log ({}):\n{}",
                node.log.display(),
                node.log_tail()
            );
        }
        if let Ok(token) = std::fs::read_to_string(&token_file) {
            let probe = State {
                api_token: token.trim().to_owned(),
                ..state.clone()
            };
            match probe
                .client()
                .and_then(|c| c.get::<Value>("/v1/info", "info"))
            {
                Ok(info) => return Ok((probe.api_token, info)),
                Err(e) => last = format!("{e:#}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the coordinator's API did not answer within {HEALTHY_WITHIN:?}: {last}")
}

/// Wait until every running agent (or just `only`) is enrolled and alive.
fn wait_healthy(state: &State, only: Option<&str>) -> Result<()> {
    let client = state.client()?;
    let deadline = Instant::now() + HEALTHY_WITHIN;
    let mut shown = usize::MAX;
    loop {
        let nodes: Vec<Value> = client.get("/v1/nodes", "nodes")?;
        let want: Vec<&NodeState> = state
            .nodes
            .iter()
            .filter(|n| n.name != "coordinator" && only.is_none_or(|o| o == n.name))
            .filter(|n| n.running())
            .collect();
        let mut missing = Vec::new();
        for n in &want {
            let healthy = nodes.iter().any(|v| {
                v["peer"].as_str() == n.peer.as_deref()
                    && v["status"] == "enrolled"
                    && v["health"] == "alive"
            });
            if !healthy {
                missing.push(n);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if missing.len() != shown {
            eprintln!(
                "waiting for agents: {} of {} healthy",
                want.len() - missing.len(),
                want.len()
            );
            shown = missing.len();
        }
        for n in &missing {
            if n.pid.is_some() && !n.running() {
                bail!(
                    "{} exited; its log ({}):\n{}",
                    n.name,
                    n.log.display(),
                    n.log_tail()
                );
            }
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = missing.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "{} not healthy within {HEALTHY_WITHIN:?}; see their logs in the testnet directory",
                names.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Create the bridge of a --netns testnet, recording it first.
fn create_bridge(dir: &Path, state: &mut State) -> Result<Netns> {
    let random = crate::service::random_hex(3)?;
    let prefix = format!("pm{}", &random[..4]);
    let third = u16::from_str_radix(&random[4..], 16).unwrap_or_default();
    let taken = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .context("cannot run `ip` (install iproute2)")?;
    let subnet = (0..=255u16)
        .map(|k| format!("10.213.{}", (third + k) % 256))
        .find(|s| !taken.contains(&format!("{s}.")))
        .context("no free 10.213.x.0/24 subnet for the testnet")?;
    let net = Netns {
        bridge: format!("{prefix}br"),
        prefix,
        subnet,
    };
    state.netns = Some(net.clone());
    state.save(dir)?;
    sh(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{}.1/24", net.subnet),
        "dev",
        &net.bridge,
    ])?;
    sh(&["ip", "link", "set", &net.bridge, "up"])?;
    Ok(net)
}

/// Give `node` a namespace with a link to the bridge and address `ip`, and
/// make its command run inside it.
fn attach(
    dir: &Path,
    state: &mut State,
    node: &mut NodeState,
    index: usize,
    ip: &str,
) -> Result<()> {
    let net = state.netns.clone().context("not a --netns testnet")?;
    let ns = format!("{}-{}", net.prefix, node.name);
    let link = format!("{}v{index}", net.prefix);
    node.netns = Some(ns.clone());
    node.link = Some(link.clone());
    node.address = ip.to_owned();
    // Record before creating, so `down` finds it after a crash.
    state.nodes.push(node.clone());
    state.save(dir)?;
    state.nodes.pop();
    sh(&["ip", "netns", "add", &ns])?;
    sh(&[
        "ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    sh(&["ip", "link", "set", &link, "master", &net.bridge, "up"])?;
    sh(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ])?;
    sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    // mDNS sends to 224.0.0.251: multicast needs a route out of eth0.
    sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "eth0",
    ])?;
    node.argv = vec!["ip".into(), "netns".into(), "exec".into(), ns];
    Ok(())
}

/// Remove the namespaces and bridge a testnet created (ignoring what is
/// already gone).
fn teardown_network(state: &State) {
    for n in &state.nodes {
        // Deleting the namespace would take its link along, but only once
        // the kernel has finished with it; delete the link now.
        if let Some(link) = &n.link {
            let _ = sh(&["ip", "link", "del", link]);
        }
        if let Some(ns) = &n.netns {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
    if let Some(net) = &state.netns {
        let _ = sh(&["ip", "link", "del", &net.bridge]);
    }
}

/// Stop every node, agents first, and remove the network.
pub fn down(dir: &Path) -> Result<()> {
    let mut state = State::load(dir)?;
    for i in (0..state.nodes.len()).rev() {
        state.nodes[i].stop(Duration::from_secs(15))?;
        state.save(dir)?;
    }
    teardown_network(&state);
    Ok(())
}

/// SIGKILL a node; its pid.
pub fn kill_node(dir: &Path, name: &str) -> Result<u32> {
    let mut state = State::load(dir)?;
    let i = state.node(name)?;
    let n = &mut state.nodes[i];
    if !n.running() {
        bail!("{name} is not running");
    }
    n.signal(Signal::SIGKILL)?;
    let pid = n.pid.unwrap_or_default();
    while n.running() {
        std::thread::sleep(Duration::from_millis(10));
    }
    n.pid = None;
    state.save(dir)?;
    Ok(pid)
}

/// Stop (if running) and start a node again.
pub fn restart(dir: &Path, name: &str) -> Result<()> {
    let mut state = State::load(dir)?;
    let i = state.node(name)?;
    state.nodes[i].stop(Duration::from_secs(15))?;
    if let Some(link) = state.nodes[i].link.clone() {
        sh(&["ip", "link", "set", &link, "up"])?;
    }
    state.nodes[i].spawn()?;
    state.save(dir)?;
    if i == 0 {
        wait_for_api(&state, &state.nodes[0])?;
        // Agents come back on their own (they keep saying hello).
        wait_healthy(&state, None)?;
    } else {
        wait_healthy(&state, Some(name))?;
    }
    Ok(())
}

/// Cut a node off (`cut`) or reconnect it; says how.
pub fn partition(dir: &Path, name: &str, cut: bool) -> Result<&'static str> {
    let mut state = State::load(dir)?;
    let i = state.node(name)?;
    let node = &mut state.nodes[i];
    if !node.running() {
        bail!("{name} is not running");
    }
    let how = match &node.link {
        Some(link) => {
            sh(&["ip", "link", "set", link, if cut { "down" } else { "up" }])?;
            if cut {
                "its link is down"
            } else {
                "its link is up"
            }
        }
        None => {
            node.signal(if cut {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            })?;
            if cut {
                "frozen with SIGSTOP: loopback mode cannot cut one node's traffic; use --netns for a real link cut"
            } else {
                "resumed with SIGCONT"
            }
        }
    };
    node.partitioned = cut;
    state.save(dir)?;
    Ok(how)
}

fn status(dir: &Path, json: bool) -> Result<()> {
    let state = State::load(dir)?;
    let table: Vec<Value> = state
        .client()
        .and_then(|c| c.get("/v1/nodes", "nodes"))
        .unwrap_or_default();
    let rows: Vec<Value> = state
        .nodes
        .iter()
        .map(|n| {
            let seen = table
                .iter()
                .find(|v| v["peer"].as_str() == n.peer.as_deref());
            serde_json::json!({
                "name": n.name,
                "pid": n.pid.filter(|_| n.running()),
                "running": n.running(),
                "partitioned": n.partitioned,
                "address": n.address,
                "peer": n.peer,
                "netns": n.netns,
                "health": seen.and_then(|v| v.get("health")).cloned(),
                "running_tasks": seen.and_then(|v| v.get("running")).cloned(),
                "log": n.log,
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": dir,
                "api": state.api,
                "mode": if state.netns.is_some() { "netns" } else { "loopback" },
                "nodes": rows,
            }))?
        );
        return Ok(());
    }
    println!(
        "testnet in {} ({}), API {}",
        dir.display(),
        if state.netns.is_some() {
            "network namespaces"
        } else {
            "loopback"
        },
        state.api
    );
    println!(
        "{:<12} {:>8} {:<12} {:<16} {:<8} {:>5}  PEER",
        "NODE", "PID", "PROCESS", "ADDRESS", "HEALTH", "TASKS"
    );
    for r in &rows {
        let process = if !r["running"].as_bool().unwrap_or(false) {
            "stopped"
        } else if r["partitioned"].as_bool().unwrap_or(false) {
            "partitioned"
        } else {
            "running"
        };
        let health = if r["name"] == "coordinator" {
            "-".to_owned()
        } else {
            r["health"].as_str().unwrap_or("unknown").to_owned()
        };
        println!(
            "{:<12} {:>8} {:<12} {:<16} {:<8} {:>5}  {}",
            r["name"].as_str().unwrap_or_default(),
            r["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            process,
            r["address"].as_str().unwrap_or_default(),
            health,
            r["running_tasks"]
                .as_u64()
                .map_or("-".into(), |t| t.to_string()),
            r["peer"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

fn print_next_steps(dir: &Path, state: &State) {
    let agents = state.nodes.len().saturating_sub(1);
    println!(
        "testnet up in {}: a coordinator and {agents} agents ({})",
        dir.display(),
        if state.netns.is_some() {
            "each in its own network namespace"
        } else {
            "on loopback"
        }
    );
    println!("  API {}", state.api);
    let flag = format!(" --dir {}", dir.display());
    println!("next:");
    println!("  eval \"$(pixmesh testnet env{flag})\"   # point pixmesh at it");
    println!(
        "  pixmesh submit --steps \"orient | resize 800x600 fit=cover | webp q=80\" samples/photos --wait"
    );
    println!("  pixmesh nodes");
    println!("  pixmesh testnet kill agent-1{flag}     # or restart / partition / heal");
    println!("  pixmesh testnet down{flag}");
}

/// The sample photos shipped in the repository, looked for from the
/// current directory and from the executable's location (target/release).
fn sample_photos() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("samples/photos")];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("samples/photos"));
        }
    }
    candidates.into_iter().find(|p| p.is_dir()).context(
        "no sample photos found (samples/photos in the repository); give a directory of photos: `pixmesh testnet demo DIR`",
    )
}

fn demo(args: DemoArgs) -> Result<ExitCode> {
    let photos = if args.photos.is_empty() {
        vec![sample_photos()?]
    } else {
        args.photos.clone()
    };
    let spec =
        pixmesh_protocol::JobSpec::from_compact(DEMO_STEPS).context("the demo's pipeline")?;
    let dir = args.up.dir.path();
    eprintln!("starting a testnet in {} …", dir.display());
    let state = up(&args.up)?;
    let outcome = demo_job(&state, &spec, &photos, &args.output);
    if args.keep {
        print_next_steps(&dir, &state);
    } else {
        down(&dir)?;
        println!("testnet stopped (logs in {})", dir.display());
    }
    outcome
}

fn demo_job(
    state: &State,
    spec: &pixmesh_protocol::JobSpec,
    photos: &[PathBuf],
    out: &Path,
) -> Result<ExitCode> {
    let client = state.client()?;
    let deployed = client.deploy(
        DEMO_PLUGIN.to_vec(),
        "vignette",
        "the example plugin vignette",
    )?;
    println!(
        "deployed the example plugin vignette ({})",
        deployed["hash"].as_str().unwrap_or("?")
    );
    let started = Instant::now();
    let (resp, bytes) = client.submit(spec, photos)?;
    let job = resp["job"]
        .as_u64()
        .context("no job id in the coordinator's answer")?;
    println!(
        "job {job}: {} images ({:.1} MB) through `{DEMO_STEPS}`",
        resp["tasks"].as_u64().unwrap_or_default(),
        bytes as f64 / 1e6
    );
    let view = crate::client::wait(&client, job, false)?;
    let secs = started.elapsed().as_secs_f64();
    let written = client.download(job, out)?;
    let tasks = view["tasks"].as_array().cloned().unwrap_or_default();
    let count = |s: &str| tasks.iter().filter(|t| t["state"] == s).count();
    println!(
        "job {job}: {} done, {} failed in {secs:.1} s; {} results in {}",
        count("done"),
        count("failed"),
        written.len(),
        out.display()
    );
    println!("tasks per agent:");
    for n in state.nodes.iter().skip(1) {
        let did = tasks
            .iter()
            .filter(|t| t["state"] == "done" && t["node"].as_str() == n.peer.as_deref())
            .count();
        println!("  {:<10} {did}", n.name);
    }
    for t in tasks.iter().filter(|t| t["state"] == "failed") {
        println!(
            "  failed: {}: {}",
            t["name"].as_str().unwrap_or("?"),
            t["error"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::from(if count("failed") > 0 {
        crate::cli::EXIT_SOME_FAILED
    } else {
        EXIT_OK
    }))
}
