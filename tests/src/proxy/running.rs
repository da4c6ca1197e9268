//! The running `drawbridge` process: [`DrawbridgeBuilder::start`] writes the config, spawns it
//! and waits until it is ready; [`Drawbridge`] then reads `/status` and `/metrics`, waits for
//! gate states, sends signals, restarts, and reads its logs. [`run_drawbridge`] runs the binary
//! to completion instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use drawbridge_core::gate::Mode;
use drawbridge_core::status::StatusReport;
use nix::sys::signal::Signal;

use super::client::{test_client, tls_test_client, tls_test_client_http1};
use super::config::{DrawbridgeBuilder, Ready};
use super::metrics::Metrics;
use crate::eventually::{eventually, try_eventually};
use crate::process::{workspace_bin, ChildGuard, TestDir, TAIL_LINES};
use crate::upstream::Upstream;

/// How long the proxy may take to answer on its admin listener after spawn.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a gate change may take to reach the proxy (a blocking query returns at once).
pub const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// The path of the `drawbridge` binary: `DRAWBRIDGE_BIN`, else next to the test executable
/// (its directory, minus a trailing `deps`).
///
/// # Panics
/// When neither exists, with the command that builds it.
pub fn drawbridge_bin() -> PathBuf {
    workspace_bin("drawbridge", "DRAWBRIDGE_BIN")
}

impl DrawbridgeBuilder {
    /// Writes the config into `dir`, starts the proxy and waits until it is ready.
    ///
    /// # Panics
    /// When the binary is missing, or the proxy exits or is not ready within
    /// [`START_DEADLINE`] (with its log tail).
    pub async fn start(self, dir: &TestDir) -> Drawbridge {
        let config_path = self.write_config(dir.path());
        let mut edge = Drawbridge {
            client: test_client(None),
            dir: dir.path().to_path_buf(),
            config_path,
            builder: self,
            child: None,
        };
        edge.spawn();
        edge.wait_ready(edge.builder.ready).await;
        edge
    }
}

/// A running `drawbridge` process; SIGKILL on drop (see its `Drop` impl).
#[derive(Debug)]
pub struct Drawbridge {
    client: reqwest::Client,
    dir: PathBuf,
    config_path: PathBuf,
    builder: DrawbridgeBuilder,
    child: Option<ChildGuard>,
}

impl Drawbridge {
    fn command(&self) -> Command {
        let mut cmd = Command::new(drawbridge_bin());
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("DRAWBRIDGE_LOG", "info")
            .env("RUST_LOG", "info")
            // The config names the Consul address; keep the developer's own Consul out.
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            // Tests that play systemd set their own; a test run under systemd must not leak its.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DRAWBRIDGE_GENERATE_DOCS");
        for (k, v) in &self.builder.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(&mut self) {
        let cmd = self.command();
        self.child = Some(ChildGuard::spawn(&self.builder.name, cmd, &self.dir));
    }

    /// A graceful upgrade: a new process started with `--upgrade` takes the listening sockets
    /// over from this one, which gets SIGQUIT once the new one waits on the upgrade socket, and
    /// drains. Returns the old process, still draining; this `Drawbridge` is the new one.
    ///
    /// # Panics
    /// When the new process does not open the upgrade socket within [`START_DEADLINE`] or is
    /// not ready after the hand-over (with its log tail).
    pub async fn upgrade(&mut self, generation: usize) -> ChildGuard {
        let sock = self.dir.join(format!("{}.upgrade.sock", self.builder.name));
        // The new process makes the socket afresh; a leftover would be taken for it.
        let _ = std::fs::remove_file(&sock);
        let mut cmd = self.command();
        cmd.arg("--upgrade");
        let name = format!("{}-upgrade-{generation}", self.builder.name);
        let mut new = ChildGuard::spawn(&name, cmd, &self.dir);
        let opened = try_eventually(START_DEADLINE, Duration::from_millis(5), || {
            let open = sock.exists();
            let exited = new.exit_status();
            async move {
                match (open, exited) {
                    (true, _) => Ok(()),
                    (false, Some(exit)) => Err(format!("drawbridge --upgrade exited with {exit}")),
                    (false, None) => Err("no upgrade socket yet".to_string()),
                }
            }
        })
        .await;
        if let Err(why) = opened {
            panic!("{why}\n{}", new.log_tail(30));
        }
        let mut old = self.child.replace(new).expect("a process to upgrade from");
        old.signal(Signal::SIGQUIT);
        self.wait_ready(Ready::Healthz).await;
        old
    }

    /// Waits until the proxy is `ready`; fails at once, with the log, if it exits.
    async fn wait_ready(&mut self, ready: Ready) {
        let client = self.client.clone();
        let healthz = self.admin_url("/healthz");
        let status = self.admin_url("/status");
        let token = self.builder.admin_token.clone();
        let listen = self.builder.listen;
        let child = self.child.as_mut().expect("spawned before waiting");
        let result = try_eventually(START_DEADLINE, Duration::from_millis(50), || {
            let exited = child.exit_status();
            let client = client.clone();
            let healthz = healthz.clone();
            let status = status.clone();
            let token = token.clone();
            async move {
                if let Some(exit) = exited {
                    return Err(format!("drawbridge exited with {exit}"));
                }
                let answer = client
                    .get(&healthz)
                    .send()
                    .await
                    .map_err(|e| format!("GET {healthz}: {e}"))?;
                if answer.status() != 200 {
                    return Err(format!("GET {healthz}: {}", answer.status()));
                }
                // The admin listener may answer before the proxy listener accepts (Pingora
                // starts the proxy service after its dependencies are ready).
                tokio::net::TcpStream::connect(listen)
                    .await
                    .map_err(|e| format!("proxy listener {listen}: {e}"))?;
                if ready == Ready::Healthz {
                    return Ok(());
                }
                let mut req = client.get(&status);
                if let Some(token) = token {
                    req = req.bearer_auth(token);
                }
                let report: StatusReport = decode_json(req.send().await).await?;
                if report.consul.last_answer_at.is_some() && report.gate.source == "consul" {
                    Ok(())
                } else {
                    Err(format!(
                        "no Consul answer applied yet: source {}, last error {:?}",
                        report.gate.source, report.consul.last_error
                    ))
                }
            }
        })
        .await;
        if let Err(last) = result {
            panic!(
                "drawbridge not ready ({ready:?}) within {START_DEADLINE:?}: {last}\n{}",
                self.log_tail()
            );
        }
    }

    /// The builder this proxy was started from.
    pub fn config(&self) -> &DrawbridgeBuilder {
        &self.builder
    }

    /// The written config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The gate key it watches.
    pub fn key(&self) -> &str {
        &self.builder.key
    }

    /// The state file path (`server.state_file`).
    pub fn state_file(&self) -> PathBuf {
        self.builder.state_file_in(&self.dir)
    }

    /// The proxy's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the proxy was spawned").pid()
    }

    /// The address of the (first) proxy listener.
    pub fn listen_addr(&self) -> SocketAddr {
        self.builder.listen
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.builder.listen)
    }

    /// The address of the TLS listener.
    ///
    /// # Panics
    /// When the proxy has none.
    pub fn tls_addr(&self) -> SocketAddr {
        self.builder
            .tls_listen
            .expect("a TLS listener (DrawbridgeBuilder::tls_certificate)")
    }

    /// `https://<host>:<TLS listener port><path>`, for a client from [`Drawbridge::tls_client`]
    /// that reaches `host` at the TLS listener.
    pub fn tls_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls_addr().port())
    }

    /// An HTTPS client that trusts only the CA certificate in the PEM file `ca`, reaches each of
    /// `hosts` at the TLS listener (sending it in SNI), and keeps each answer's TLS details
    /// (`reqwest::tls::TlsInfo`). Its connections are kept alive and reused, as [`test_client`]'s.
    pub fn tls_client(&self, ca: &Path, hosts: &[&str]) -> reqwest::Client {
        let addr = self.tls_addr();
        let hosts: Vec<(&str, SocketAddr)> = hosts.iter().map(|h| (*h, addr)).collect();
        tls_test_client(ca, &hosts)
    }

    /// As [`Drawbridge::tls_client`], speaking HTTP/1.1 only.
    pub fn tls_client_http1(&self, ca: &Path, hosts: &[&str]) -> reqwest::Client {
        let addr = self.tls_addr();
        let hosts: Vec<(&str, SocketAddr)> = hosts.iter().map(|h| (*h, addr)).collect();
        tls_test_client_http1(ca, &hosts)
    }

    /// `http://<admin listener><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.builder.admin_listen)
    }

    /// The test client (from 127.0.0.1).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Starts `GET /slow/<n>` requests one after another until one reaches `up` (a pool's
    /// round robin sends the others elsewhere: give only `up` a delay for `/slow`); returns that
    /// one, in flight at the proxy.
    ///
    /// # Panics
    /// When none of 8 reaches `up`.
    pub async fn slow_request_at(
        &self,
        up: &Upstream,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        for n in 0..8 {
            let path = format!("/slow/{n}");
            let request = tokio::spawn(self.client.get(self.url(&path)).send());
            for _ in 0..50 {
                if up.requests_to(&path) == 1 {
                    return request;
                }
                if request.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no /slow request reached {}", up.addr());
    }

    /// A request to the proxy listener with the test client.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends `req`; a transport error panics with the proxy's log tail.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        match req.send().await {
            Ok(answer) => answer,
            Err(e) => panic!("request to drawbridge failed: {e:?}\n{}", self.log_tail()),
        }
    }

    /// `GET <path>` on the proxy listener.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// The upstream (`X-Upstream`) that answered each of `n` GETs of `/orders/<i>`.
    ///
    /// # Panics
    /// When an answer is not a 200.
    pub async fn upstreams_of(&self, n: usize) -> Vec<String> {
        let mut seen = Vec::new();
        for i in 0..n {
            let answer = self.get(&format!("/orders/{i}")).await;
            assert_eq!(
                answer.status(),
                200,
                "request {i} through {}",
                self.url("/")
            );
            seen.push(super::header(&answer, "x-upstream").unwrap_or_default());
        }
        seen
    }

    fn admin_get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.get(self.admin_url(path));
        match &self.builder.admin_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// `GET /status` as JSON (with the admin token when one is configured).
    pub async fn status_json(&self) -> serde_json::Value {
        let answer = self.send(self.admin_get("/status")).await;
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET /status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON: {e}: {body}"))
    }

    /// `GET /status` as the shared report type.
    pub async fn status(&self) -> StatusReport {
        let json = self.status_json().await;
        serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("/status is not a StatusReport: {e}: {json:#}"))
    }

    /// `GET /metrics` (with the admin token when one is configured).
    pub async fn metrics(&self) -> Metrics {
        let answer = self.send(self.admin_get("/metrics")).await;
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// Waits until metric `name` with `labels` reads `value` on `/metrics`.
    ///
    /// # Panics
    /// After 5 s, with the last value read.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        eventually(
            &format!("{name} {labels:?} = {value}"),
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async move {
                let now = self.metrics().await.get(name, labels);
                if now == Some(value) {
                    Ok(())
                } else {
                    Err(format!("{name} is {now:?}"))
                }
            },
        )
        .await;
    }

    /// Waits until `/status` satisfies `check`, and returns that report.
    ///
    /// # Panics
    /// After `deadline`, with the last report and the log tail.
    pub async fn wait_status<F>(&self, what: &str, deadline: Duration, check: F) -> StatusReport
    where
        F: Fn(&StatusReport) -> bool,
    {
        let client = self.client.clone();
        let url = self.admin_url("/status");
        let token = self.builder.admin_token.clone();
        let result = try_eventually(deadline, Duration::from_millis(50), || {
            let mut req = client.get(&url);
            if let Some(token) = &token {
                req = req.bearer_auth(token);
            }
            let check = &check;
            async move {
                let report: StatusReport = decode_json(req.send().await).await?;
                if check(&report) {
                    Ok(report)
                } else {
                    Err(format!("{report:#?}"))
                }
            }
        })
        .await;
        match result {
            Ok(report) => report,
            Err(last) => panic!(
                "{what}: not within {deadline:?}; last /status: {last}\n{}",
                self.log_tail()
            ),
        }
    }

    /// Waits until the proxy has applied the key's state at `index` or later.
    pub async fn wait_applied(&self, index: u64) -> StatusReport {
        self.wait_status(
            &format!("gate state at index {index} applied"),
            APPLY_DEADLINE,
            |r| r.gate.applied_index >= index,
        )
        .await
    }

    /// Waits until the proxy has refused the value written at `index`.
    pub async fn wait_rejected(&self, index: u64) -> StatusReport {
        self.wait_status(
            &format!("value at index {index} rejected"),
            APPLY_DEADLINE,
            |r| {
                r.consul
                    .last_rejected
                    .as_ref()
                    .is_some_and(|rej| rej.modify_index >= index)
            },
        )
        .await
    }

    /// Waits until the served mode is `mode`.
    pub async fn wait_mode(&self, mode: Mode) -> StatusReport {
        self.wait_status(&format!("mode {mode}"), APPLY_DEADLINE, |r| {
            r.gate.mode == mode
        })
        .await
    }

    /// Every gate state the running process applied, in order, as `(mode, index)`, read from
    /// its "gate state applied" log lines.
    ///
    /// # Panics
    /// When the log cannot be read.
    pub fn applied_states(&self) -> Vec<(String, u64)> {
        let Some(child) = &self.child else {
            return Vec::new();
        };
        let path = child.stderr_path();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let field = |line: &str, name: &str| -> Option<String> {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            let rest = &line[start..];
            Some(rest.split(' ').next().unwrap_or("").to_string())
        };
        text.lines()
            .filter(|line| line.contains("gate state applied"))
            .map(|line| {
                let mode = field(line, "mode").unwrap_or_default();
                let index = field(line, "index")
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("no index in the log line {line:?}"));
                (mode, index)
            })
            .collect()
    }

    /// Everything the proxy wrote to stderr, its log (a restart appends to it).
    ///
    /// # Panics
    /// When the log cannot be read.
    pub fn log(&self) -> String {
        let Some(child) = &self.child else {
            return String::new();
        };
        let path = child.stderr_path();
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// The tail of the proxy's logs.
    pub fn log_tail(&self) -> String {
        match &self.child {
            Some(child) => child.log_tail(TAIL_LINES),
            None => "--- drawbridge: not running ---\n".to_string(),
        }
    }

    /// Sends `signal` without waiting.
    pub fn signal(&mut self, signal: Signal) {
        if let Some(child) = self.child.as_mut() {
            child.signal(signal);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.wait_timeout(timeout))
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// SIGTERM, then (after the harness grace) SIGKILL; returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        self.child
            .as_mut()
            .expect("the proxy was spawned")
            .terminate()
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self) -> ExitStatus {
        self.child
            .as_mut()
            .expect("the proxy was spawned")
            .kill_hard()
    }

    /// Stops the proxy (SIGTERM) and starts it again with the same config, waiting as the
    /// builder said.
    pub async fn restart(&mut self) {
        let ready = self.builder.ready;
        self.restart_with(ready).await;
    }

    /// As [`Drawbridge::restart`], waiting until `ready`.
    pub async fn restart_with(&mut self, ready: Ready) {
        if let Some(mut child) = self.child.take() {
            child.terminate();
        }
        self.spawn();
        self.wait_ready(ready).await;
    }
}

impl Drop for Drawbridge {
    /// SIGKILL at the end of a test: graceful shutdown is tested on purpose, and waiting out
    /// `grace_period` in every teardown would only slow the suite down. The guard still prints
    /// the log tail when the test failed.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.kill_hard();
        }
    }
}

async fn decode_json<T: serde::de::DeserializeOwned>(
    answer: reqwest::Result<reqwest::Response>,
) -> Result<T, String> {
    let answer = answer.map_err(|e| format!("request failed: {e}"))?;
    let status = answer.status();
    let body = answer
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "not the expected JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// Runs `drawbridge --config <file> [args]` to completion, killed after `timeout`.
///
/// # Panics
/// When the binary cannot be started or does not exit within `timeout`.
pub async fn run_drawbridge(config: &Path, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(drawbridge_bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("DRAWBRIDGE_LOG", "info")
        .env_remove("CONSUL_HTTP_ADDR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = cmd.output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run drawbridge: {e}"),
        Err(_) => panic!(
            "drawbridge --config {} {args:?} did not exit within {timeout:?}",
            config.display()
        ),
    }
}
