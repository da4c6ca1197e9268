//! Real Consul 1.8.7 agents for e2e tests: a single-node server on 127.0.0.1 and client agents
//! ("boxes") on 127.0.0.2, 127.0.0.3, …, every port from [`crate::ports`], all on loopback.
//!
//! ```ignore
//! let dir = TestDir::new("my_test");
//! let server = ConsulServer::start(&dir).await;          // waits for a leader
//! let api1 = ConsulClientAgent::start(&dir, &server, "api1", Ipv4Addr::new(127, 0, 0, 2)).await;
//! server.stop();  server.restart().await;                 // outage: SIGKILL, same ports and data
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use drawbridge_core::consul::Client;

use crate::eventually::try_eventually;
use crate::ports::ConsulPorts;
use crate::process::{ChildGuard, TestDir, TAIL_LINES};

/// The server's node name.
pub const SERVER_NODE: &str = "consul-server";

/// How long an agent may take to be ready (leader elected, node registered).
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

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

/// Whether this is the server or a client agent, and what a client joins.
#[derive(Debug, Clone)]
enum Role {
    Server,
    Client { join: String },
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
            .arg("-log-level=info")
            // The agent reads CONSUL_HTTP_* itself in some code paths; keep the test's out.
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE");
        match &self.role {
            Role::Server => {
                cmd.arg("-server").arg("-bootstrap-expect=1");
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
    }

    fn http_addr(&self) -> String {
        format!("http://{}:{}", self.ip, self.ports.http)
    }

    fn client(&self) -> Client {
        Client::new(&self.http_addr(), None).expect("a loopback http address is valid")
    }

    fn log_tail(&self) -> String {
        match &self.child {
            Some(child) => child.log_tail(TAIL_LINES),
            None => format!("--- consul-{}: not running ---\n", self.node),
        }
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.kill_hard();
        }
    }

    fn terminate(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.terminate();
        }
    }

    /// Fails fast with the log when the process died during a wait.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.exit_status()) {
            Some(Some(status)) => Err(format!(
                "consul {} exited with {status}\n{}",
                self.node,
                self.log_tail()
            )),
            _ => Ok(()),
        }
    }

    /// Waits until `check` holds, panicking with the agent's log tail on timeout.
    async fn wait<F, Fut>(&mut self, what: &str, mut check: F)
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let client = self.client();
        let result = {
            let this = &mut *self;
            try_eventually(READY_DEADLINE, Duration::from_millis(50), || {
                let alive = this.check_alive();
                let fut = check(client.clone());
                async move {
                    if let Err(dead) = alive {
                        // A dead agent never becomes ready: report at once, with its log.
                        panic!("{dead}");
                    }
                    fut.await
                }
            })
            .await
        };
        if let Err(last) = result {
            panic!(
                "consul {}: {what} not within {READY_DEADLINE:?}; last: {last}\n{}",
                self.node,
                self.log_tail()
            );
        }
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
        let server = Client::new(server_http, None).expect("a loopback http address is valid");
        let node = self.node.clone();
        self.wait("node registered in the catalog", move |_| {
            node_is_healthy(server.clone(), node.clone())
        })
        .await;
    }
}

/// A bare PUT to the agent API (for endpoints the core client does not need, like join).
async fn put(url: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let response = http
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

/// A single-node Consul server (`-server -bootstrap-expect=1`) on 127.0.0.1, with its own
/// ports and data directory; SIGTERM, then SIGKILL, on drop.
#[derive(Debug)]
pub struct ConsulServer {
    agent: Agent,
    /// Node name and serf LAN address of every client agent started against this server.
    clients: Mutex<Vec<(String, String)>>,
}

impl ConsulServer {
    /// Starts the server in `dir` and waits until it has elected itself leader and registered
    /// its own node (about 2 s).
    ///
    /// # Panics
    /// When consul is missing, or not ready within [`READY_DEADLINE`] (with its log).
    pub async fn start(dir: &TestDir) -> ConsulServer {
        let mut agent = Agent::new(dir, Role::Server, SERVER_NODE, Ipv4Addr::LOCALHOST);
        agent.spawn();
        let http = agent.http_addr();
        agent.wait_ready(&http).await;
        ConsulServer {
            agent,
            clients: Mutex::new(Vec::new()),
        }
    }

    /// The HTTP API address, e.g. `http://127.0.0.1:24817`.
    pub fn http_addr(&self) -> String {
        self.agent.http_addr()
    }

    /// The serf LAN address client agents join, e.g. `127.0.0.1:25011`.
    pub fn serf_lan_addr(&self) -> String {
        format!("{}:{}", self.agent.ip, self.agent.ports.serf_lan)
    }

    /// The node name (`consul-server`).
    pub fn node_name(&self) -> &str {
        &self.agent.node
    }

    /// The ports it listens on.
    pub fn ports(&self) -> ConsulPorts {
        self.agent.ports
    }

    /// The data directory (kept across [`ConsulServer::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.agent.home.join("data")
    }

    /// A client for its HTTP API.
    pub fn client(&self) -> Client {
        self.agent.client()
    }

    /// The tail of its logs, for failure messages.
    pub fn log_tail(&self) -> String {
        self.agent.log_tail()
    }

    /// Kills the server with SIGKILL, as in a crash: connections are refused from now on.
    pub fn stop(&mut self) {
        self.agent.stop();
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
        self.agent.stop();
        self.agent.spawn();
        let http = self.agent.http_addr();
        self.agent.wait_ready(&http).await;
        let clients = self
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

/// A Consul client agent standing for one box: its own loopback address (127.0.0.N), node
/// name, ports and data directory, joined to a [`ConsulServer`].
#[derive(Debug)]
pub struct ConsulClientAgent {
    agent: Agent,
    server_http: String,
}

impl ConsulClientAgent {
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
        agent.spawn();
        let server_http = server.http_addr();
        agent.wait_ready(&server_http).await;
        server
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((node.to_owned(), format!("{ip}:{}", agent.ports.serf_lan)));
        ConsulClientAgent { agent, server_http }
    }

    /// Its HTTP API address, e.g. `http://127.0.0.2:23001`: where node maintenance for this
    /// box must be sent.
    pub fn http_addr(&self) -> String {
        self.agent.http_addr()
    }

    /// Its node name.
    pub fn node_name(&self) -> &str {
        &self.agent.node
    }

    /// Its loopback address.
    pub fn ip(&self) -> Ipv4Addr {
        self.agent.ip
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

    /// Kills the agent with SIGKILL, as in a crash.
    pub fn stop(&mut self) {
        self.agent.stop();
    }

    /// Starts it again on the same ports and data directory and waits until it is back in
    /// the server's catalog.
    ///
    /// # Panics
    /// When not within [`READY_DEADLINE`].
    pub async fn restart(&mut self) {
        self.agent.stop();
        self.agent.spawn();
        let server_http = self.server_http.clone();
        self.agent.wait_ready(&server_http).await;
    }
}
