//! Real Consul 1.8.7 agents for e2e tests: a single-node server on 127.0.0.1, client agents
//! ("boxes") on 127.0.0.2, 127.0.0.3, …, and a 3-server cluster on 127.0.1.1–127.0.1.3 for
//! leader elections and server restarts; every port from [`crate::ports`], all on loopback.
//!
//! ```ignore
//! let dir = TestDir::new("my_test");
//! let server = ConsulServer::start(&dir).await;          // waits for a leader
//! let api1 = ConsulClientAgent::start(&dir, &server, "api1", Ipv4Addr::new(127, 0, 0, 2)).await;
//! server.stop();  server.restart().await;                 // outage: SIGKILL, same ports and data
//!
//! let mut cluster = ConsulCluster::start(&dir).await;    // 3 voters and a leader
//! let old = cluster.kill_leader().await;                  // waits for a new leader
//! cluster.restart(old).await;                             // back as a healthy voter
//! ```

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use drawbridge_core::consul::{
    Client, Consistency, PutMode, QueryOptions, ServiceCheck, ServiceRegistration,
};
use serde::de::DeserializeOwned;

use crate::upstream::Upstream;
use serde::Deserialize;

use crate::eventually::try_eventually;
use crate::ports::ConsulPorts;
use crate::process::{ChildGuard, TestDir, TAIL_LINES};

/// The server's node name.
pub const SERVER_NODE: &str = "consul-server";

/// How long an agent may take to be ready (leader elected, node registered), and a
/// [`ConsulCluster`] to form or to elect a new leader.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The number of servers in a [`ConsulCluster`].
pub const CLUSTER_SIZE: usize = 3;

/// How long a restarted [`ConsulCluster`] server may take to be a healthy voter again. Most
/// restarts take under 4 s; one that autopilot removed during its outage comes back as a
/// non-voter and is promoted at the first 10 s autopilot tick after 10 s of stability (~22 s).
pub const REJOIN_DEADLINE: Duration = Duration::from_secs(60);

/// Pause between two tries of a readiness check.
const POLL: Duration = Duration::from_millis(50);

/// The KV prefix a [`ConsulCluster`] writes its readiness probes under.
const PROBE_PREFIX: &str = "drawbridge-tests/cluster-probe/";

/// Settings for a fast cluster: short gossip intervals so joins and failures show in
/// milliseconds, no update check. `leave_on_terminate` is off so SIGTERM stops an agent at once
/// instead of spending seconds on a graceful leave.
const FAST_CONFIG: &str = r#"
disable_update_check = true
leave_on_terminate = false
skip_leave_on_interrupt = true
performance { raft_multiplier = 1 }
gossip_lan {
  gossip_interval = "100ms"
  probe_interval = "200ms"
  probe_timeout = "100ms"
  suspicion_mult = 3
  retransmit_mult = 2
  gossip_nodes = 3
}
"#;

/// The consul binary: `CONSUL_BIN`, else `<workspace>/.tools/consul/usr/bin/consul`.
///
/// # Panics
/// When neither exists, with the command that installs it.
pub fn consul_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONSUL_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return bin;
        }
        panic!(
            "consul not found: CONSUL_BIN={} is not a file; run scripts/setup.sh (installs \
             Consul 1.8.7 into .tools/consul) or set CONSUL_BIN",
            bin.display()
        );
    }
    let bin = workspace_root().join(".tools/consul/usr/bin/consul");
    if bin.is_file() {
        return bin;
    }
    panic!(
        "consul not found: run scripts/setup.sh (installs Consul 1.8.7 into .tools/consul) or \
         set CONSUL_BIN"
    )
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Whether this is a server or a client agent, and what it joins.
#[derive(Debug, Clone)]
enum Role {
    /// A server that waits for `expect` servers before bootstrapping raft, and joins the serf
    /// LAN addresses in `join` (the other servers of its cluster; none for a single server).
    Server {
        expect: usize,
        join: Vec<String>,
    },
    Client {
        join: String,
    },
}

/// One agent process with everything needed to restart it identically.
#[derive(Debug)]
struct Agent {
    role: Role,
    node: String,
    ip: Ipv4Addr,
    ports: ConsulPorts,
    home: PathBuf,
    logs: PathBuf,
    child: Option<ChildGuard>,
    /// Spawned and not stopped on purpose: a cluster waits only on running agents.
    running: bool,
    /// A configuration file read after `fast.hcl`, and the token the harness's own calls send
    /// (see [`ConsulServer::start_with_config`]).
    extra_config: Option<PathBuf>,
    token: Option<String>,
}

impl Agent {
    fn new(dir: &TestDir, role: Role, node: &str, ip: Ipv4Addr) -> Agent {
        let home = dir.join(format!("consul-{node}"));
        std::fs::create_dir_all(home.join("data"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", home.display()));
        std::fs::write(home.join("fast.hcl"), FAST_CONFIG)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", home.display()));
        Agent {
            role,
            node: node.to_owned(),
            ip,
            ports: ConsulPorts::allocate(ip),
            home,
            logs: dir.path().to_path_buf(),
            child: None,
            running: false,
            extra_config: None,
            token: None,
        }
    }

    fn command(&self) -> Command {
        let ip = self.ip.to_string();
        let p = self.ports;
        let mut cmd = Command::new(consul_bin());
        cmd.arg("agent")
            .args(["-node", &self.node])
            .args(["-datacenter", "dc1"])
            .args(["-bind", &ip, "-advertise", &ip, "-client", &ip])
            .arg(format!("-data-dir={}", self.home.join("data").display()))
            .arg(format!(
                "-config-file={}",
                self.home.join("fast.hcl").display()
            ))
            .arg(format!("-http-port={}", p.http))
            .arg(format!("-serf-lan-port={}", p.serf_lan))
            .arg(format!("-serf-wan-port={}", p.serf_wan))
            .arg(format!("-server-port={}", p.server))
            .arg(format!("-dns-port={}", p.dns))
            .arg("-grpc-port=-1")
            .arg("-https-port=-1")
            .arg("-disable-host-node-id")
            .args(
                self.extra_config
                    .iter()
                    .map(|file| format!("-config-file={}", file.display())),
            )
            .arg("-log-level=info")
            // The agent reads CONSUL_HTTP_* itself in some code paths; keep the test's out.
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE");
        match &self.role {
            Role::Server { expect, join } => {
                cmd.arg("-server")
                    .arg(format!("-bootstrap-expect={expect}"));
                for addr in join {
                    cmd.arg(format!("-retry-join={addr}"));
                }
                if !join.is_empty() {
                    cmd.arg("-retry-interval=200ms");
                }
            }
            Role::Client { join } => {
                cmd.arg(format!("-retry-join={join}"))
                    .arg("-retry-interval=200ms");
            }
        }
        cmd
    }

    fn spawn(&mut self) {
        let name = format!("consul-{}", self.node);
        self.child = Some(ChildGuard::spawn(&name, self.command(), &self.logs));
        self.running = true;
    }

    fn http_addr(&self) -> String {
        format!("http://{}:{}", self.ip, self.ports.http)
    }

    /// The serf LAN address other agents join, e.g. `127.0.0.1:25011`.
    fn serf_lan_addr(&self) -> String {
        format!("{}:{}", self.ip, self.ports.serf_lan)
    }

    /// The server RPC address, as `/v1/status/leader` and `/v1/status/peers` name servers.
    fn server_addr(&self) -> String {
        format!("{}:{}", self.ip, self.ports.server)
    }

    fn client(&self) -> Client {
        Client::new(&self.http_addr(), self.token.clone())
            .expect("a loopback http address is valid")
    }

    fn log_tail(&self) -> String {
        match &self.child {
            Some(child) => child.log_tail(TAIL_LINES),
            None => format!("--- consul-{}: not running ---\n", self.node),
        }
    }

    fn stop(&mut self) {
        self.running = false;
        if let Some(child) = self.child.as_mut() {
            child.kill_hard();
        }
    }

    fn terminate(&mut self) {
        self.running = false;
        if let Some(child) = self.child.as_mut() {
            child.terminate();
        }
    }

    /// Fails fast with the log when the process died during a wait.
    fn check_alive(&mut self) -> Result<(), String> {
        let what = format!("consul {}", self.node);
        self.child
            .as_mut()
            .map_or(Ok(()), |c| c.still_running(&what))
    }

    /// Waits until `check` holds, panicking with the agent's log tail on timeout.
    async fn wait<F, Fut>(&mut self, what: &str, mut check: F)
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let client = self.client();
        wait_for(&mut [self], READY_DEADLINE, what, || check(client.clone())).await
    }

    /// Leader elected and this node's `serfHealth` passing in the catalog.
    async fn wait_ready(&mut self, server_http: &str) {
        self.wait("leader elected", |c| async move {
            match c.status_leader().await {
                Ok(leader) if !leader.is_empty() => Ok(()),
                Ok(_) => Err("no leader yet".to_owned()),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await;
        let server =
            Client::new(server_http, self.token.clone()).expect("a loopback http address is valid");
        let node = self.node.clone();
        self.wait("node registered in the catalog", move |_| {
            node_is_healthy(server.clone(), node.clone())
        })
        .await;
    }

    /// Starts the process (stopping it first if it runs) and waits until it is ready in the
    /// catalog of the server at `server_http`.
    async fn start_ready(&mut self, server_http: &str) {
        self.stop();
        self.spawn();
        self.wait_ready(server_http).await;
    }
}

/// Waits until `check` holds (up to `deadline`) and returns its value.
///
/// # Panics
/// At once, with its log, when one of `agents` exits (a dead agent never becomes ready); on
/// timeout, with the last failure and the log tail of every agent.
async fn wait_for<T, F, Fut>(
    agents: &mut [&mut Agent],
    deadline: Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let result = {
        let agents = &mut *agents;
        try_eventually(deadline, POLL, || {
            let alive = agents.iter_mut().try_for_each(|a| a.check_alive());
            let fut = check();
            async move {
                if let Err(dead) = alive {
                    panic!("{dead}");
                }
                fut.await
            }
        })
        .await
    };
    match result {
        Ok(value) => value,
        Err(last) => {
            let nodes: Vec<&str> = agents.iter().map(|a| a.node.as_str()).collect();
            let tails: String = agents.iter().map(|a| a.log_tail()).collect();
            panic!(
                "consul {}: {what} not within {deadline:?}; last: {last}\n{tails}",
                nodes.join(", ")
            )
        }
    }
}

/// A plain HTTP client for the agent endpoints the core client does not cover.
fn http() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// A bare GET of a JSON answer, accepted with one of the `ok` statuses.
async fn get_json<T: DeserializeOwned>(url: &str, ok: &[u16]) -> Result<T, String> {
    let response = http()?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !ok.contains(&status.as_u16()) {
        return Err(format!("GET {url}: {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))
}

/// A bare PUT to the agent API (for endpoints the core client does not need, like join).
async fn put(url: &str) -> Result<(), String> {
    let response = http()?
        .put(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = response.text().await.unwrap_or_default();
        Err(format!("PUT {url}: {status}: {body}"))
    }
}

/// Whether `node` has a passing `serfHealth` check in the catalog of `server`.
async fn node_is_healthy(server: Client, node: String) -> Result<(), String> {
    let checks = server
        .health_node(&node)
        .await
        .map_err(|e| format!("{e}"))?;
    let serf = checks.iter().find(|c| c.check_id == "serfHealth");
    match serf {
        Some(c) if c.status == drawbridge_core::consul::CheckStatus::Passing => Ok(()),
        Some(c) => Err(format!("{node} serfHealth is {:?}", c.status)),
        None => Err(format!("{node} not in the catalog yet")),
    }
}

/// A Consul agent process of the tests, on its own ports and data directory; SIGTERM, then
/// SIGKILL, on drop. `S` is its side: a [`ConsulServer`] or a [`ConsulClientAgent`].
#[derive(Debug)]
pub struct ConsulAgent<S> {
    agent: Agent,
    side: S,
}

/// What only a [`ConsulServer`] keeps.
#[derive(Debug)]
pub struct ServerSide {
    /// Node name and serf LAN address of every client agent started against this server.
    clients: Mutex<Vec<(String, String)>>,
}

/// What only a [`ConsulClientAgent`] keeps.
#[derive(Debug)]
pub struct ClientSide {
    /// The HTTP API address of the server it joined.
    server_http: String,
}

/// A single-node Consul server (`-server -bootstrap-expect=1`) on 127.0.0.1, with its own
/// ports and data directory; SIGTERM, then SIGKILL, on drop.
pub type ConsulServer = ConsulAgent<ServerSide>;

/// A Consul client agent standing for one box: its own loopback address (127.0.0.N), node
/// name, ports and data directory, joined to a [`ConsulServer`].
pub type ConsulClientAgent = ConsulAgent<ClientSide>;

impl<S> ConsulAgent<S> {
    /// The HTTP API address, e.g. `http://127.0.0.1:24817`; a client agent's is where node
    /// maintenance for its box must be sent.
    pub fn http_addr(&self) -> String {
        self.agent.http_addr()
    }

    /// The node name (the server's is `consul-server`).
    pub fn node_name(&self) -> &str {
        &self.agent.node
    }

    /// The ports it listens on.
    pub fn ports(&self) -> ConsulPorts {
        self.agent.ports
    }

    /// A client for its HTTP API.
    pub fn client(&self) -> Client {
        self.agent.client()
    }

    /// The tail of its logs, for failure messages.
    pub fn log_tail(&self) -> String {
        self.agent.log_tail()
    }

    /// Whether node `node` is in maintenance, as the catalog's health has it.
    ///
    /// # Panics
    /// When the agent does not answer.
    pub async fn node_in_maintenance(&self, node: &str) -> bool {
        self.client()
            .health_node(node)
            .await
            .unwrap_or_else(|e| panic!("consul health node {node}: {e}"))
            .iter()
            .any(|c| c.is_node_maintenance())
    }

    /// Kills the agent with SIGKILL, as in a crash: connections are refused from now on.
    pub fn stop(&mut self) {
        self.agent.stop();
    }
}

impl ConsulAgent<ServerSide> {
    /// Starts the server in `dir` and waits until it has elected itself leader and registered
    /// its own node (about 2 s).
    ///
    /// # Panics
    /// When consul is missing, or not ready within [`READY_DEADLINE`] (with its log).
    pub async fn start(dir: &TestDir) -> ConsulServer {
        let role = Role::Server {
            expect: 1,
            join: Vec::new(),
        };
        let mut agent = Agent::new(dir, role, SERVER_NODE, Ipv4Addr::LOCALHOST);
        agent.start_ready(&agent.http_addr()).await;
        ConsulAgent {
            agent,
            side: ServerSide {
                clients: Mutex::new(Vec::new()),
            },
        }
    }

    /// As [`ConsulServer::start`], with `config` (HCL, e.g. an `acl` block) added to the agent's
    /// configuration as a file, and `token` sent by [`ConsulAgent::client`] and the readiness
    /// checks (with ACLs on, an anonymous read of the catalog finds nothing).
    ///
    /// # Panics
    /// As [`ConsulServer::start`], or when the file cannot be written.
    pub async fn start_with_config(dir: &TestDir, config: &str, token: &str) -> ConsulServer {
        let role = Role::Server {
            expect: 1,
            join: Vec::new(),
        };
        let mut agent = Agent::new(dir, role, SERVER_NODE, Ipv4Addr::LOCALHOST);
        let file = agent.home.join("extra.hcl");
        std::fs::write(&file, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        agent.extra_config = Some(file);
        agent.token = Some(token.to_owned());
        agent.start_ready(&agent.http_addr()).await;
        ConsulAgent {
            agent,
            side: ServerSide {
                clients: Mutex::new(Vec::new()),
            },
        }
    }

    /// The serf LAN address client agents join, e.g. `127.0.0.1:25011`.
    pub fn serf_lan_addr(&self) -> String {
        self.agent.serf_lan_addr()
    }

    /// The data directory (kept across [`ConsulServer::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.agent.home.join("data")
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after the grace).
    pub fn terminate(&mut self) {
        self.agent.terminate();
    }

    /// Starts it again on the same ports and data directory (KV, sessions and the raft log
    /// survive), waits for a leader, then joins the client agents started against it and waits
    /// until they are healthy in its catalog. Stops it first if it still runs.
    ///
    /// Why the explicit join: the server rejoins the members in its serf snapshot, but a
    /// client that joined shortly before a SIGKILL may not be in it yet ("Failed to re-join any
    /// previously known node"), and the catalog then reaps that node. The client would only
    /// come back at its serf reconnect, up to 30 s later. A real cluster has several servers;
    /// the tests should not wait on that timer.
    ///
    /// # Panics
    /// When not ready within [`READY_DEADLINE`].
    pub async fn restart(&mut self) {
        let http = self.agent.http_addr();
        self.agent.start_ready(&http).await;
        let clients = self
            .side
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (node, serf) in clients {
            let join = format!("{http}/v1/agent/join/{serf}");
            self.agent
                .wait("client agent joined again", |_| {
                    let join = join.clone();
                    async move { put(&join).await }
                })
                .await;
            self.wait_for_node(&node).await;
        }
    }

    /// Waits until `node` is in the catalog with a passing `serfHealth`.
    ///
    /// # Panics
    /// When not within [`READY_DEADLINE`].
    pub async fn wait_for_node(&mut self, node: &str) {
        let server = self.client();
        let node = node.to_owned();
        self.agent
            .wait("node registered in the catalog", move |_| {
                node_is_healthy(server.clone(), node.clone())
            })
            .await;
    }
}

impl ConsulAgent<ClientSide> {
    /// Starts a client agent `node` bound to `ip` (a 127.0.0.x address other than 127.0.0.1)
    /// that joins `server`, and waits until the server's catalog shows it healthy.
    ///
    /// # Panics
    /// When consul is missing, or the agent has not joined within [`READY_DEADLINE`].
    pub async fn start(
        dir: &TestDir,
        server: &ConsulServer,
        node: &str,
        ip: Ipv4Addr,
    ) -> ConsulClientAgent {
        let role = Role::Client {
            join: server.serf_lan_addr(),
        };
        let mut agent = Agent::new(dir, role, node, ip);
        let server_http = server.http_addr();
        agent.start_ready(&server_http).await;
        server
            .side
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((node.to_owned(), format!("{ip}:{}", agent.ports.serf_lan)));
        ConsulAgent {
            agent,
            side: ClientSide { server_http },
        }
    }

    /// Its loopback address.
    pub fn ip(&self) -> Ipv4Addr {
        self.agent.ip
    }

    /// Registers `up` on this agent as instance `id` of service `service`, at its address, with
    /// `check` when given.
    ///
    /// # Panics
    /// When the agent refuses it.
    pub async fn register_upstream(
        &self,
        id: &str,
        service: &str,
        up: &Upstream,
        check: Option<ServiceCheck>,
    ) {
        let reg = ServiceRegistration {
            id: id.to_owned(),
            name: service.to_owned(),
            address: up.addr().ip().to_string(),
            port: up.addr().port(),
            check,
            ..ServiceRegistration::default()
        };
        self.client()
            .agent_service_register(&reg)
            .await
            .unwrap_or_else(|e| panic!("register {id} of {service} on {}: {e}", self.node_name()));
    }

    /// Starts it again on the same ports and data directory and waits until it is back in
    /// the server's catalog.
    ///
    /// # Panics
    /// When not within [`READY_DEADLINE`].
    pub async fn restart(&mut self) {
        self.agent.start_ready(&self.side.server_http).await;
    }
}

/// The loopback address of cluster server `i`: 127.0.1.(i+1), apart from 127.0.0.x, where
/// [`ConsulServer`] and the boxes of other tests in the same process live.
fn cluster_ip(i: usize) -> Ipv4Addr {
    let last = u8::try_from(i + 1).expect("a cluster has few servers");
    Ipv4Addr::new(127, 0, 1, last)
}

/// What a readiness check needs to know about one running server, apart from its process.
#[derive(Debug, Clone)]
struct Member {
    index: usize,
    node: String,
    /// `ip:server-port`, as `/v1/status/leader` names the leader.
    server: String,
    /// `ip:serf-lan-port`, what other agents join.
    serf: String,
    client: Client,
}

/// One agent in the answer of `/v1/agent/members` (the fields used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LanMember {
    name: String,
    /// Serf's member status: 1 alive, 2 leaving, 3 left, 4 failed.
    status: u8,
}

/// One server in the answer of `/v1/operator/autopilot/health` (the fields used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServerHealth {
    name: String,
    serf_status: String,
    healthy: bool,
    voter: bool,
}

/// The answer of `/v1/operator/autopilot/health`: the leader's view of every server.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AutopilotHealth {
    servers: Vec<ServerHealth>,
}

/// The leader's autopilot view, asked through `member` (it forwards to the leader). Consul
/// answers 429 with the same body while any server is unhealthy.
async fn autopilot_health(member: &Member) -> Result<AutopilotHealth, String> {
    let url = format!("{}/v1/operator/autopilot/health", member.client.address());
    get_json(&url, &[200, 429]).await
}

/// The index of the leader that every one of `members` names; it must be one of them.
async fn agreed_leader(members: &[Member]) -> Result<usize, String> {
    let mut agreed: Option<(String, &str)> = None;
    for m in members {
        let leader = m
            .client
            .status_leader()
            .await
            .map_err(|e| format!("{}: status/leader: {e:#}", m.node))?;
        if leader.is_empty() {
            return Err(format!("{} knows no leader", m.node));
        }
        match &agreed {
            Some((first, by)) if *first != leader => {
                return Err(format!(
                    "{by} names leader {first}, {} names {leader}",
                    m.node
                ));
            }
            Some(_) => {}
            None => agreed = Some((leader, &m.node)),
        }
    }
    let (leader, _) = agreed.ok_or("no server is running")?;
    members
        .iter()
        .find(|m| m.server == leader)
        .map(|m| m.index)
        .ok_or_else(|| format!("the leader {leader} is not a running server"))
}

/// The voters in the `latest_configuration` string of `/v1/agent/self` (`Stats.raft`), e.g.
/// `[{Suffrage:Voter ID:2fbe… Address:127.0.1.1:24001} …]`, as `ip:port`, sorted.
fn voters_in(configuration: &str) -> Vec<String> {
    let mut voters: Vec<String> = configuration
        .split('{')
        .filter(|server| server.starts_with("Suffrage:Voter "))
        .filter_map(|server| server.split("Address:").nth(1)?.split('}').next())
        .map(str::to_owned)
        .collect();
    voters.sort();
    voters
}

/// Every one of `members` but `me` sees `me` alive in its LAN gossip; one that does not is
/// asked to join `me` (and the check fails, to be tried again).
///
/// Why: a restarted agent comes back with a fresh serf incarnation, lower than the one the
/// others hold it "failed" under. It refutes that by gossip (UDP), and a server that misses it
/// keeps it failed until serf's 30 s reconnect. Autopilot on the leader removes a failed server
/// from raft at its next 10 s tick (1 of 3 may go), even when that server runs and replicates
/// again; seen in 1 run of 6. A join is a TCP push-pull that carries the refuted incarnation.
async fn seen_alive_by_others(members: &[Member], me: &Member) -> Result<(), String> {
    for m in members.iter().filter(|m| m.index != me.index) {
        let url = format!("{}/v1/agent/members", m.client.address());
        let lan: Vec<LanMember> = get_json(&url, &[200]).await?;
        let status = lan.iter().find(|l| l.name == me.node).map(|l| l.status);
        if status != Some(1) {
            put(&format!("{}/v1/agent/join/{}", m.client.address(), me.serf)).await?;
            return Err(format!(
                "{} has {} in serf status {status:?}, not alive (1); asked it to join",
                m.node, me.node
            ));
        }
    }
    Ok(())
}

/// `member` itself, as its process sees it now: a raft follower (that has heard from the
/// leader) or the leader, with exactly `servers` as voters in its raft configuration.
///
/// Why its own view: the leader's autopilot refreshes every 2 s, so right after a quick
/// restart it still shows the state from before the kill.
async fn raft_self_view(member: &Member, servers: &[String]) -> Result<(), String> {
    let url = format!("{}/v1/agent/self", member.client.address());
    let me: serde_json::Value = get_json(&url, &[200]).await?;
    let raft = &me["Stats"]["raft"];
    let field = |name: &str| raft[name].as_str().unwrap_or("").to_owned();
    let (state, contact) = (field("state"), field("last_contact"));
    match state.as_str() {
        "Leader" => {}
        "Follower" if contact != "never" => {}
        _ => {
            return Err(format!(
                "{}: raft state {state:?}, last contact {contact:?}",
                member.node
            ))
        }
    }
    let voters = voters_in(&field("latest_configuration"));
    let mut want = servers.to_vec();
    want.sort();
    if voters != want {
        return Err(format!(
            "{} has raft voters {voters:?}, want {want:?}",
            member.node
        ));
    }
    Ok(())
}

/// `member` has all of `servers` as voters in its own raft configuration, follows the leader
/// (or is it), and the leader's autopilot counts it as a healthy voter (serf alive, in contact
/// with the leader, log caught up).
async fn is_healthy_voter(member: &Member, servers: &[String]) -> Result<(), String> {
    let url = format!("{}/v1/status/peers", member.client.address());
    let mut peers: Vec<String> = get_json(&url, &[200]).await?;
    peers.sort();
    let mut want = servers.to_vec();
    want.sort();
    if peers != want {
        return Err(format!(
            "{} has raft peers {peers:?}, want {want:?}",
            member.node
        ));
    }
    raft_self_view(member, servers).await?;
    let health = autopilot_health(member).await?;
    match health.servers.iter().find(|s| s.name == member.node) {
        Some(s) if s.voter && s.healthy => Ok(()),
        Some(s) => Err(format!(
            "autopilot: {} voter={} healthy={} serf={}",
            s.name, s.voter, s.healthy, s.serf_status
        )),
        None => Err(format!("autopilot does not list {}", member.node)),
    }
}

/// A KV write through `member`, then a `?consistent` read through it, round-trips: the write
/// reached a quorum, and the leader still holds one.
async fn kv_round_trip(member: &Member) -> Result<(), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = format!("{PROBE_PREFIX}{}", member.node);
    let value = NEXT.fetch_add(1, Ordering::Relaxed).to_string();
    let wrote = member
        .client
        .kv_put(&key, value.as_bytes(), PutMode::Always)
        .await
        .map_err(|e| format!("{}: PUT {key}: {e:#}", member.node))?;
    if !wrote {
        return Err(format!("{}: PUT {key} answered false", member.node));
    }
    let q = QueryOptions::default().with_consistency(Consistency::Consistent);
    let read = member
        .client
        .kv_get(&key, &q)
        .await
        .map_err(|e| format!("{}: consistent GET {key}: {e:#}", member.node))?;
    let got = read.entry.and_then(|e| e.value);
    if got.as_deref() == Some(value.as_bytes()) {
        Ok(())
    } else {
        Err(format!(
            "{}: consistent GET {key} read {got:?}, wrote {value}",
            member.node
        ))
    }
}

/// The leader all `members` agree on, once a KV write plus a `?consistent` read has
/// round-tripped through each of them and the leader is still the same.
async fn commits_writes(members: &[Member]) -> Result<usize, String> {
    let leader = agreed_leader(members).await?;
    for m in members {
        kv_round_trip(m).await?;
    }
    match agreed_leader(members).await? {
        again if again == leader => Ok(leader),
        again => Err(format!("the leader changed from {leader} to {again}")),
    }
}

/// A real 3-server Consul cluster (`-bootstrap-expect=3`, each server `-retry-join`ing the
/// other two) on 127.0.1.1–127.0.1.3, with production raft timing (`raft_multiplier = 1`), for
/// leader elections and server restarts. Server `i` is node `server-{i+1}`; each keeps its
/// ports and data directory across [`ConsulCluster::restart`]. SIGTERM, then SIGKILL, on drop.
///
/// Autopilot keeps Consul's defaults (`cleanup_dead_servers`, 10 s stabilization): a server
/// that is down long enough to be marked failed *and* spans an autopilot tick (every 10 s) is
/// removed from raft, and on restart comes back as a non-voter, promoted after 10 s.
/// [`ConsulCluster::restart`] waits for that too (within [`REJOIN_DEADLINE`]).
#[derive(Debug)]
pub struct ConsulCluster {
    servers: Vec<Agent>,
}

impl ConsulCluster {
    /// Starts three servers in `dir` and waits until they agree on a leader, each has all three
    /// in its raft configuration and is a healthy voter for autopilot, and a KV write plus a
    /// `?consistent` read round-trips through each.
    ///
    /// # Panics
    /// When consul is missing, or the cluster is not formed within [`READY_DEADLINE`] (with
    /// every server's log).
    pub async fn start(dir: &TestDir) -> ConsulCluster {
        let mut servers: Vec<Agent> = (0..CLUSTER_SIZE)
            .map(|i| {
                let role = Role::Server {
                    expect: CLUSTER_SIZE,
                    join: Vec::new(),
                };
                Agent::new(dir, role, &format!("server-{}", i + 1), cluster_ip(i))
            })
            .collect();
        // The join list needs every server's serf port, known only once all are allocated.
        let serf: Vec<String> = servers.iter().map(Agent::serf_lan_addr).collect();
        for (i, agent) in servers.iter_mut().enumerate() {
            let join = serf
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, addr)| addr.clone())
                .collect();
            agent.role = Role::Server {
                expect: CLUSTER_SIZE,
                join,
            };
            agent.spawn();
        }
        let mut cluster = ConsulCluster { servers };
        let all = cluster.server_addrs();
        cluster
            .wait_members(READY_DEADLINE, "3 healthy voters and a leader", |members| {
                let all = all.clone();
                async move {
                    for m in &members {
                        is_healthy_voter(m, &all).await?;
                    }
                    commits_writes(&members).await.map(drop)
                }
            })
            .await;
        cluster
    }

    /// The HTTP API address of each server, e.g. `http://127.0.1.1:24817`, by index.
    pub fn http_addrs(&self) -> Vec<String> {
        self.servers.iter().map(Agent::http_addr).collect()
    }

    /// A client for the HTTP API of server `i`.
    ///
    /// # Panics
    /// When `i` is not below [`CLUSTER_SIZE`].
    pub fn client(&self, i: usize) -> Client {
        self.servers[i].client()
    }

    /// The node name of server `i` (`server-{i+1}`).
    ///
    /// # Panics
    /// When `i` is not below [`CLUSTER_SIZE`].
    pub fn node_name(&self, i: usize) -> &str {
        &self.servers[i].node
    }

    /// The log tails of all servers, for failure messages.
    pub fn log_tail(&self) -> String {
        self.servers.iter().map(Agent::log_tail).collect()
    }

    /// Which server leads now: waits until every running server names the same leader, one of
    /// them.
    ///
    /// # Panics
    /// When they do not agree within [`READY_DEADLINE`].
    pub async fn leader_index(&mut self) -> usize {
        self.wait_members(
            READY_DEADLINE,
            "running servers agree on a leader",
            |members| async move { agreed_leader(&members).await },
        )
        .await
    }

    /// Indexes of the servers the leader's autopilot counts as healthy voters, ascending (asked
    /// through the first running server).
    ///
    /// # Errors
    /// When no server is running, or the request fails (no leader, for one).
    pub async fn healthy_voters(&self) -> Result<Vec<usize>, String> {
        let members = self.members();
        let via = members.first().ok_or("no server is running")?;
        let health = autopilot_health(via).await?;
        let mut voters: Vec<usize> = health
            .servers
            .iter()
            .filter(|s| s.voter && s.healthy)
            .filter_map(|s| self.servers.iter().position(|a| a.node == s.name))
            .collect();
        voters.sort_unstable();
        Ok(voters)
    }

    /// Indexes of the servers in the raft configuration (voters or not), ascending, as the
    /// first running server has it (`/v1/status/peers`).
    ///
    /// # Errors
    /// When no server is running, or the request fails.
    pub async fn raft_members(&self) -> Result<Vec<usize>, String> {
        let members = self.members();
        let via = members.first().ok_or("no server is running")?;
        let url = format!("{}/v1/status/peers", via.client.address());
        let peers: Vec<String> = get_json(&url, &[200]).await?;
        let mut indexes: Vec<usize> = peers
            .iter()
            .filter_map(|p| self.servers.iter().position(|a| a.server_addr() == *p))
            .collect();
        indexes.sort_unstable();
        Ok(indexes)
    }

    /// Kills server `i` with SIGKILL, as in a crash; its raft state stays on disk.
    ///
    /// # Panics
    /// When `i` is not below [`CLUSTER_SIZE`].
    pub fn stop(&mut self, i: usize) {
        self.servers[i].stop();
    }

    /// Starts server `i` again on the same ports and data directory (stopping it first if it
    /// still runs) and waits until it has rejoined: every running server sees it alive in its
    /// LAN gossip (joining it where not, see `seen_alive_by_others`), it has all three as
    /// voters in its raft configuration, is a healthy voter for the leader's autopilot, and
    /// the cluster commits writes through every running server (as in
    /// [`ConsulCluster::wait_for_leader`]).
    ///
    /// # Panics
    /// When `i` is not below [`CLUSTER_SIZE`], or it has not rejoined within
    /// [`REJOIN_DEADLINE`].
    pub async fn restart(&mut self, i: usize) {
        self.servers[i].stop();
        self.servers[i].spawn();
        let all = self.server_addrs();
        let node = self.servers[i].node.clone();
        self.wait_members(
            REJOIN_DEADLINE,
            &format!("{node} rejoined as a voter"),
            |members| {
                let all = all.clone();
                async move {
                    let me = members
                        .iter()
                        .find(|m| m.index == i)
                        .expect("a restarted server is running");
                    seen_alive_by_others(&members, me).await?;
                    is_healthy_voter(me, &all).await?;
                    commits_writes(&members).await.map(drop)
                }
            },
        )
        .await;
    }

    /// Waits until the running servers agree on a leader and commit writes again: a KV write
    /// plus a `?consistent` read round-trips through each of them, and the leader is the same
    /// after; returns its index. Use it after [`ConsulCluster::stop`]: the moment both
    /// survivors name a new leader, a write forwarded to it can still fail (seen: HTTP 500
    /// "rpc error making call: stream closed" 14 ms after the election).
    ///
    /// # Panics
    /// When not within [`READY_DEADLINE`].
    pub async fn wait_for_leader(&mut self) -> usize {
        self.wait_members(
            READY_DEADLINE,
            "a leader that commits writes",
            |members| async move { commits_writes(&members).await },
        )
        .await
    }

    /// Kills the leader with SIGKILL and waits until the two others have elected a new one
    /// that commits writes ([`ConsulCluster::wait_for_leader`]); returns the index of the
    /// killed leader.
    ///
    /// # Panics
    /// When there is no leader, or no new one within [`READY_DEADLINE`].
    pub async fn kill_leader(&mut self) -> usize {
        let old = self.leader_index().await;
        self.stop(old);
        self.wait_for_leader().await;
        old
    }

    /// The running servers, as the readiness checks see them.
    fn members(&self) -> Vec<Member> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, a)| a.running)
            .map(|(index, a)| Member {
                index,
                node: a.node.clone(),
                server: a.server_addr(),
                serf: a.serf_lan_addr(),
                client: a.client(),
            })
            .collect()
    }

    /// The server RPC address of every server, running or not: the full raft configuration.
    fn server_addrs(&self) -> Vec<String> {
        self.servers.iter().map(Agent::server_addr).collect()
    }

    /// Waits until `check` holds for the servers running now (each try gets its own copy of
    /// them); a running server that exits fails the wait at once.
    async fn wait_members<T, F, Fut>(&mut self, deadline: Duration, what: &str, check: F) -> T
    where
        F: Fn(Vec<Member>) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let members = self.members();
        let mut running: Vec<&mut Agent> = self.servers.iter_mut().filter(|a| a.running).collect();
        wait_for(&mut running, deadline, what, || check(members.clone())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_are_read_from_the_raft_configuration_string() {
        // As Consul 1.8.7 prints it in `/v1/agent/self` (`Stats.raft.latest_configuration`).
        let config = "[{Suffrage:Voter ID:2fbe0e80-a4e1 Address:127.0.1.2:21460} \
                      {Suffrage:Nonvoter ID:9c1d Address:127.0.1.3:21461} \
                      {Suffrage:Voter ID:77aa Address:127.0.1.1:21462}]";
        assert_eq!(
            voters_in(config),
            vec!["127.0.1.1:21462".to_owned(), "127.0.1.2:21460".to_owned()]
        );
        assert!(voters_in("[]").is_empty());
        assert!(voters_in("").is_empty());
    }
}
