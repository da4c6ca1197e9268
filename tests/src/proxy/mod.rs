//! The `drawbridge` process fixture: a config builder, the running proxy, and the gate helpers
//! the e2e cases share (write the key, wait until a proxy applied it, read its metrics).
//!
//! ```ignore
//! let consul = ConsulServer::start(&dir).await;
//! let ui = Upstream::builder("ui").kind(Kind::Page).start();
//! let edge = Drawbridge::builder(&consul.http_addr(), "drawbridge/t/gate")
//!     .static_pool("ui", &[&ui], None)
//!     .route(Route::page("ui", "/", "ui"))
//!     .start(&dir)
//!     .await;
//! let index = set_gate(&consul.client(), edge.key(), r#"{"mode":"maintenance"}"#).await;
//! edge.wait_applied(index).await;
//! assert_eq!(edge.get("/").await.status(), 503);
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use drawbridge_core::consul::{Client, PutMode, QueryOptions};
use drawbridge_core::gate::Mode;
use drawbridge_core::status::StatusReport;
use nix::sys::signal::Signal;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::consul::ConsulServer;
use crate::eventually::try_eventually;
use crate::ports::free_port;
use crate::process::{workspace_bin, ChildGuard, TestDir, TAIL_LINES};
use crate::upstream::{Kind, Upstream};

/// How long the proxy may take to answer on its admin listener after spawn.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a gate change may take to reach the proxy (a blocking query returns at once).
pub const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Timeout of one request from the test client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of the `drawbridge` binary: `DRAWBRIDGE_BIN`, else next to the test executable
/// (its directory, minus a trailing `deps`).
///
/// # Panics
/// When neither exists, with the command that builds it.
pub fn drawbridge_bin() -> PathBuf {
    workspace_bin("drawbridge", "DRAWBRIDGE_BIN")
}

/// The kind of a route: what a closed gate answers there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The HTML maintenance page.
    Page,
    /// `application/problem+json`.
    Api,
}

impl RouteKind {
    fn as_str(self) -> &'static str {
        match self {
            RouteKind::Page => "page",
            RouteKind::Api => "api",
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub kind: RouteKind,
    pub pool: String,
    pub exempt_paths: Vec<String>,
}

impl Route {
    /// A page route `name` for `path_prefix` on any host, to `pool`.
    pub fn page(name: &str, path_prefix: &str, pool: &str) -> Route {
        Route::new(name, path_prefix, RouteKind::Page, pool)
    }

    /// An API route `name` for `path_prefix` on any host, to `pool`.
    pub fn api(name: &str, path_prefix: &str, pool: &str) -> Route {
        Route::new(name, path_prefix, RouteKind::Api, pool)
    }

    fn new(name: &str, path_prefix: &str, kind: RouteKind, pool: &str) -> Route {
        Route {
            name: name.to_string(),
            hosts: Vec::new(),
            path_prefix: path_prefix.to_string(),
            kind,
            pool: pool.to_string(),
            exempt_paths: Vec::new(),
        }
    }

    /// Adds path prefixes that always pass.
    pub fn exempt(mut self, prefixes: &[&str]) -> Route {
        self.exempt_paths
            .extend(prefixes.iter().map(|p| p.to_string()));
        self
    }

    /// Limits the route to these host names.
    pub fn hosts(mut self, hosts: &[&str]) -> Route {
        self.hosts.extend(hosts.iter().map(|h| h.to_string()));
        self
    }
}

/// A pool's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `type = "none"`.
    None,
    /// `type = "tcp"` every `interval` (e.g. "500ms").
    Tcp { interval: String },
    /// `type = "http"`: GET `path` every `interval`.
    Http { path: String, interval: String },
}

impl HealthCheck {
    /// An HTTP check of `/healthz` every 500 ms.
    pub fn http_fast() -> HealthCheck {
        HealthCheck::Http {
            path: "/healthz".to_string(),
            interval: "500ms".to_string(),
        }
    }

    fn to_toml(&self) -> toml::Table {
        let mut t = toml::Table::new();
        match self {
            HealthCheck::None => {
                t.insert("type".into(), "none".into());
            }
            HealthCheck::Tcp { interval } => {
                t.insert("type".into(), "tcp".into());
                t.insert("interval".into(), interval.as_str().into());
            }
            HealthCheck::Http { path, interval } => {
                t.insert("type".into(), "http".into());
                t.insert("path".into(), path.as_str().into());
                t.insert("interval".into(), interval.as_str().into());
            }
        }
        t
    }
}

/// One `[pools.<name>]` entry.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    /// `servers = [...]`, "ip:port" each.
    pub servers: Option<Vec<String>>,
    /// `consul_service = "..."`.
    pub consul_service: Option<String>,
    /// `None` leaves the key out (the proxy's default).
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: String,
    pub read_timeout: String,
}

/// How far [`DrawbridgeBuilder::start`] and [`Drawbridge::restart`] wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Until the admin `/healthz` answers 200 and the proxy listener accepts connections.
    Healthz,
    /// Also until `/status` shows a first answer from Consul (the key's state is applied).
    ConsulAnswered,
}

/// Everything that goes into the proxy's TOML file; fields are public so a test can set any.
#[derive(Debug, Clone)]
pub struct DrawbridgeBuilder {
    /// Names the log files (`<name>.stderr.log`) and the config file in the test dir.
    pub name: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<String>,
    /// `consul.address`: one address is written as a string, several as a list.
    pub consul_addresses: Vec<String>,
    pub key: String,
    pub consul_wait: String,
    pub stale_after: String,
    pub register: bool,
    pub service_name: Option<String>,
    pub service_id: Option<String>,
    pub threads: usize,
    pub grace_period: String,
    pub shutdown_timeout: String,
    pub access_log: String,
    pub default_retry_after: Option<String>,
    pub page_refresh_max: Option<String>,
    pub default_message: Option<String>,
    pub cors_allowed_origins: Vec<String>,
    pub trusted_cidrs: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub bypass_environment: Option<String>,
    pub bypass_max_ttl: Option<String>,
    /// `(id, secret)` pairs of `[[bypass.keys]]`.
    pub bypass_keys: Vec<(String, String)>,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    pub ready: Ready,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
}

impl DrawbridgeBuilder {
    /// Names the process and its files (several proxies in one test need distinct names).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Adds a pool of fixed servers (the upstreams' addresses).
    pub fn static_pool(
        mut self,
        name: &str,
        servers: &[&Upstream],
        health_check: Option<HealthCheck>,
    ) -> Self {
        self.pools.push(Pool {
            name: name.to_string(),
            servers: Some(servers.iter().map(|u| u.addr().to_string()).collect()),
            consul_service: None,
            health_check,
            connect_timeout: "1s".to_string(),
            read_timeout: "10s".to_string(),
        });
        self
    }

    /// Adds a pool following the passing instances of Consul service `service`.
    pub fn consul_pool(
        mut self,
        name: &str,
        service: &str,
        health_check: Option<HealthCheck>,
    ) -> Self {
        self.pools.push(Pool {
            name: name.to_string(),
            servers: None,
            consul_service: Some(service.to_string()),
            health_check,
            connect_timeout: "1s".to_string(),
            read_timeout: "10s".to_string(),
        });
        self
    }

    /// Adds a route; routes are written in the order added.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// `bypass.trusted_cidrs`.
    pub fn trusted_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.trusted_cidrs = cidrs.iter().map(|c| c.to_string()).collect();
        self
    }

    /// `bypass.trusted_proxies`.
    pub fn trusted_proxies(mut self, cidrs: &[&str]) -> Self {
        self.trusted_proxies = cidrs.iter().map(|c| c.to_string()).collect();
        self
    }

    /// `bypass.environment` and one `[[bypass.keys]]` entry.
    pub fn bypass_key(mut self, environment: &str, id: &str, secret: &str) -> Self {
        self.bypass_environment = Some(environment.to_string());
        self.bypass_keys.push((id.to_string(), secret.to_string()));
        self
    }

    /// `admin.token`.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_string());
        self
    }

    /// `maintenance.cors_allowed_origins`.
    pub fn cors_allowed_origins(mut self, origins: &[&str]) -> Self {
        self.cors_allowed_origins = origins.iter().map(|o| o.to_string()).collect();
        self
    }

    /// `consul.address` as a list of agents to fail over along.
    pub fn consul_addresses(mut self, addresses: &[String]) -> Self {
        self.consul_addresses = addresses.to_vec();
        self
    }

    /// `consul.wait`: how long one blocking read waits.
    pub fn consul_wait(mut self, wait: &str) -> Self {
        self.consul_wait = wait.to_string();
        self
    }

    /// `consul.stale_after`.
    pub fn stale_after(mut self, stale_after: &str) -> Self {
        self.stale_after = stale_after.to_string();
        self
    }

    /// `consul.register = true` with this service name.
    pub fn register_as(mut self, service_name: &str) -> Self {
        self.register = true;
        self.service_name = Some(service_name.to_string());
        self
    }

    /// How far `start` waits.
    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// The configuration as a TOML table, with the proxy's files under `dir`.
    pub fn to_toml(&self, dir: &Path) -> toml::Table {
        let path = |name: &str| dir.join(name).display().to_string();
        let mut server = toml::Table::new();
        server.insert("listen".into(), vec![self.listen.to_string()].into());
        server.insert("threads".into(), (self.threads as i64).into());
        server.insert(
            "pid_file".into(),
            path(&format!("{}.pid", self.name)).into(),
        );
        server.insert(
            "upgrade_sock".into(),
            path(&format!("{}.upgrade.sock", self.name)).into(),
        );
        server.insert("grace_period".into(), self.grace_period.as_str().into());
        server.insert(
            "shutdown_timeout".into(),
            self.shutdown_timeout.as_str().into(),
        );
        server.insert(
            "state_file".into(),
            path(&format!("{}.gate-state.json", self.name)).into(),
        );
        server.insert("access_log".into(), self.access_log.as_str().into());

        let mut admin = toml::Table::new();
        admin.insert("listen".into(), self.admin_listen.to_string().into());
        if let Some(token) = &self.admin_token {
            admin.insert("token".into(), token.as_str().into());
        }

        let mut consul = toml::Table::new();
        match self.consul_addresses.as_slice() {
            [one] => consul.insert("address".into(), one.as_str().into()),
            many => consul.insert("address".into(), many.to_vec().into()),
        };
        consul.insert("key".into(), self.key.as_str().into());
        consul.insert("wait".into(), self.consul_wait.as_str().into());
        consul.insert("stale_after".into(), self.stale_after.as_str().into());
        consul.insert("register".into(), self.register.into());
        if let Some(name) = &self.service_name {
            consul.insert("service_name".into(), name.as_str().into());
        }
        if let Some(id) = &self.service_id {
            consul.insert("service_id".into(), id.as_str().into());
        }

        let mut maintenance = toml::Table::new();
        let opt = |t: &mut toml::Table, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                t.insert(k.into(), v.as_str().into());
            }
        };
        opt(
            &mut maintenance,
            "default_retry_after",
            &self.default_retry_after,
        );
        opt(&mut maintenance, "page_refresh_max", &self.page_refresh_max);
        opt(&mut maintenance, "default_message", &self.default_message);
        maintenance.insert(
            "cors_allowed_origins".into(),
            self.cors_allowed_origins.clone().into(),
        );

        let mut bypass = toml::Table::new();
        bypass.insert("trusted_cidrs".into(), self.trusted_cidrs.clone().into());
        bypass.insert(
            "trusted_proxies".into(),
            self.trusted_proxies.clone().into(),
        );
        opt(&mut bypass, "environment", &self.bypass_environment);
        opt(&mut bypass, "max_ttl", &self.bypass_max_ttl);
        if !self.bypass_keys.is_empty() {
            let keys: Vec<toml::Value> = self
                .bypass_keys
                .iter()
                .map(|(id, secret)| {
                    let mut k = toml::Table::new();
                    k.insert("id".into(), id.as_str().into());
                    k.insert("secret".into(), secret.as_str().into());
                    toml::Value::Table(k)
                })
                .collect();
            bypass.insert("keys".into(), keys.into());
        }

        let mut pools = toml::Table::new();
        for pool in &self.pools {
            let mut p = toml::Table::new();
            if let Some(servers) = &pool.servers {
                p.insert("servers".into(), servers.clone().into());
            }
            if let Some(service) = &pool.consul_service {
                p.insert("consul_service".into(), service.as_str().into());
            }
            if let Some(check) = &pool.health_check {
                p.insert("health_check".into(), check.to_toml().into());
            }
            p.insert(
                "connect_timeout".into(),
                pool.connect_timeout.as_str().into(),
            );
            p.insert("read_timeout".into(), pool.read_timeout.as_str().into());
            pools.insert(pool.name.clone(), p.into());
        }

        let routes: Vec<toml::Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut t = toml::Table::new();
                t.insert("name".into(), r.name.as_str().into());
                if !r.hosts.is_empty() {
                    t.insert("hosts".into(), r.hosts.clone().into());
                }
                t.insert("path_prefix".into(), r.path_prefix.as_str().into());
                t.insert("kind".into(), r.kind.as_str().into());
                t.insert("pool".into(), r.pool.as_str().into());
                if !r.exempt_paths.is_empty() {
                    t.insert("exempt_paths".into(), r.exempt_paths.clone().into());
                }
                toml::Value::Table(t)
            })
            .collect();

        let mut root = toml::Table::new();
        root.insert("server".into(), server.into());
        root.insert("admin".into(), admin.into());
        root.insert("consul".into(), consul.into());
        root.insert("maintenance".into(), maintenance.into());
        root.insert("bypass".into(), bypass.into());
        root.insert("pools".into(), pools.into());
        root.insert("routes".into(), routes.into());
        root
    }

    /// Writes the configuration to `<dir>/<name>.toml` and returns its path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_config(&self, dir: &Path) -> PathBuf {
        let text = toml::to_string(&self.to_toml(dir)).expect("a TOML table always serialises");
        let file = dir.join(format!("{}.toml", self.name));
        std::fs::write(&file, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        file
    }

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

/// A reqwest client for the tests: no redirects, no proxy, bounded, optionally bound to a
/// local address (e.g. 127.0.0.2, to be an untrusted client).
pub fn test_client(local_address: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .local_address(local_address)
        .build()
        .expect("a client with these settings always builds")
}

/// A running `drawbridge` process; SIGTERM, then SIGKILL, on drop.
#[derive(Debug)]
pub struct Drawbridge {
    client: reqwest::Client,
    dir: PathBuf,
    config_path: PathBuf,
    builder: DrawbridgeBuilder,
    child: Option<ChildGuard>,
}

impl Drawbridge {
    /// A builder for a proxy watching `key` at the Consul agent `consul_address`, with fresh
    /// loopback ports, short timeouts for tests, no registration, no pools and no routes.
    pub fn builder(consul_address: &str, key: &str) -> DrawbridgeBuilder {
        DrawbridgeBuilder {
            name: "drawbridge".to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin_token: None,
            consul_addresses: vec![consul_address.to_string()],
            key: key.to_string(),
            consul_wait: "10s".to_string(),
            stale_after: "11s".to_string(),
            register: false,
            service_name: None,
            service_id: None,
            threads: 2,
            grace_period: "2s".to_string(),
            shutdown_timeout: "1s".to_string(),
            access_log: "text".to_string(),
            default_retry_after: None,
            page_refresh_max: None,
            default_message: None,
            cors_allowed_origins: Vec::new(),
            trusted_cidrs: Vec::new(),
            trusted_proxies: Vec::new(),
            bypass_environment: None,
            bypass_max_ttl: None,
            bypass_keys: Vec::new(),
            pools: Vec::new(),
            routes: Vec::new(),
            ready: Ready::ConsulAnswered,
            env: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(drawbridge_bin());
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("DRAWBRIDGE_LOG", "info")
            .env("RUST_LOG", "info")
            // The config names the Consul address; keep the developer's own Consul out.
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE");
        for (k, v) in &self.builder.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(&mut self) {
        let cmd = self.command();
        self.child = Some(ChildGuard::spawn(&self.builder.name, cmd, &self.dir));
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
        self.dir
            .join(format!("{}.gate-state.json", self.builder.name))
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

    /// `http://<admin listener><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.builder.admin_listen)
    }

    /// The test client (from 127.0.0.1).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
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

/// How long the [`Site`] upstreams take to answer paths under `/slow` (ui) and `/api/slow` (api).
pub const SLOW_PATH_DELAY: Duration = Duration::from_millis(1500);

/// The usual scene of a proxy test: a Consul server, a page upstream `ui` and a JSON upstream
/// `api` (both slow under `/slow`, see [`SLOW_PATH_DELAY`]), and a proxy with routes `/api/` ->
/// pool `api` (kind api) and `/` -> pool `ui` (kind page). Fields drop in order: the proxy
/// first, the test directory last.
#[derive(Debug)]
pub struct Site {
    pub edge: Drawbridge,
    pub ui: Upstream,
    pub api: Upstream,
    pub consul: ConsulServer,
    pub key: String,
    pub dir: TestDir,
}

impl Site {
    /// Starts the scene for test `test` with the default proxy settings.
    pub async fn start(test: &str) -> Site {
        Site::start_with(test, |b| b).await
    }

    /// Starts the scene; `customize` may change the proxy's settings before it starts (pools
    /// `ui` and `api` and the two routes are already set).
    pub async fn start_with(
        test: &str,
        customize: impl FnOnce(DrawbridgeBuilder) -> DrawbridgeBuilder,
    ) -> Site {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let ui = Upstream::builder("ui")
            .kind(Kind::Page)
            .delay("/slow", SLOW_PATH_DELAY)
            .start();
        let api = Upstream::builder("api")
            .kind(Kind::Api)
            .delay("/api/slow", SLOW_PATH_DELAY)
            .start();
        let key = test_key(test);
        let builder = Drawbridge::builder(&consul.http_addr(), &key)
            .static_pool("ui", &[&ui], None)
            .static_pool("api", &[&api], None)
            .route(Route::api("api", "/api/", "api"))
            .route(Route::page("ui", "/", "ui"));
        let edge = customize(builder).start(&dir).await;
        Site {
            edge,
            ui,
            api,
            consul,
            key,
            dir,
        }
    }

    /// Writes `value` at the gate key and waits until the proxy applied it.
    pub async fn put_gate(&self, value: impl AsRef<[u8]>) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.key, value).await;
        self.edge.wait_applied(index).await
    }

    /// Writes `value` at the gate key and waits until the proxy refused it.
    pub async fn put_rejected(&self, value: impl AsRef<[u8]>) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.key, value).await;
        self.edge.wait_rejected(index).await
    }

    /// Deletes the gate key and waits until the proxy applied that.
    pub async fn delete_gate(&self) -> StatusReport {
        let index = clear_gate(&self.consul.client(), &self.key).await;
        self.edge.wait_applied(index).await
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

/// A Prometheus text exposition, parsed into samples.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The raw text.
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text format (comments skipped; label values without escaped quotes).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(parts) => parts,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.trim_end_matches('}');
                    let mut labels = BTreeMap::new();
                    for pair in split_labels(inner) {
                        if let Some((k, v)) = pair.split_once('=') {
                            labels.insert(
                                k.trim().to_string(),
                                v.trim().trim_matches('"').to_string(),
                            );
                        }
                    }
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The sum of every sample of `name` whose labels include all of `labels`; `None` when no
    /// sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, l, v) in &self.samples {
            if n == name
                && labels
                    .iter()
                    .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// As [`Metrics::get`], 0 when no sample matches (counters not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Splits `a="x",b="y,z"` on the commas outside quotes.
fn split_labels(inner: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        out.push(&inner[start..]);
    }
    out
}

/// Writes `value` at `key` and returns the key's new ModifyIndex.
///
/// # Panics
/// When Consul refuses or does not answer.
pub async fn set_gate(consul: &Client, key: &str, value: impl AsRef<[u8]>) -> u64 {
    let written = consul
        .kv_put(key, value.as_ref(), PutMode::Always)
        .await
        .unwrap_or_else(|e| panic!("consul kv put {key}: {e}"));
    assert!(written, "consul kv put {key} answered false");
    let read = consul
        .kv_get(key, &QueryOptions::default())
        .await
        .unwrap_or_else(|e| panic!("consul kv get {key}: {e}"));
    read.entry
        .unwrap_or_else(|| panic!("{key} missing right after the put"))
        .modify_index
}

/// Deletes `key` and returns the index Consul answers for the missing key.
///
/// # Panics
/// When Consul refuses or does not answer.
pub async fn clear_gate(consul: &Client, key: &str) -> u64 {
    consul
        .kv_delete(key, None)
        .await
        .unwrap_or_else(|e| panic!("consul kv delete {key}: {e}"));
    let read = consul
        .kv_get(key, &QueryOptions::default())
        .await
        .unwrap_or_else(|e| panic!("consul kv get {key}: {e}"));
    assert!(read.entry.is_none(), "{key} still there after the delete");
    read.meta.index
}

/// The value of header `name` of `answer` as text, if present.
pub fn header(answer: &reqwest::Response, name: &str) -> Option<String> {
    answer
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The `Retry-After` of `answer` in seconds.
///
/// # Panics
/// When it is missing or not a number of seconds.
pub fn retry_after(answer: &reqwest::Response) -> u64 {
    let value = header(answer, "retry-after").expect("the answer has Retry-After");
    value
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After {value:?} is not seconds: {e}"))
}

/// Now, as Unix seconds.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// `now + offset_secs` as RFC 3339 (whole seconds, UTC).
pub fn rfc3339_in(offset_secs: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp(now_unix() + offset_secs)
        .expect("a time near now is in range");
    at.format(&Rfc3339).expect("a UTC time always formats")
}

/// A gate key unique to one test, under `drawbridge/test/`.
pub fn test_key(test: &str) -> String {
    format!("drawbridge/test/{test}/gate")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_parsed_and_summed_by_label_subset() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE drawbridge_requests_total counter\n\
             drawbridge_requests_total{route=\"ui\",kind=\"page\",status=\"200\",mode=\"normal\"} 3\n\
             drawbridge_requests_total{route=\"ui\",kind=\"page\",status=\"503\",mode=\"maintenance\"} 2\n\
             drawbridge_gate_applied_index 42\n",
        );
        assert_eq!(
            m.get("drawbridge_requests_total", &[("route", "ui")]),
            Some(5.0)
        );
        assert_eq!(
            m.value("drawbridge_requests_total", &[("status", "503")]),
            2.0
        );
        assert_eq!(m.get("drawbridge_gate_applied_index", &[]), Some(42.0));
        assert_eq!(
            m.get("drawbridge_requests_total", &[("route", "api")]),
            None
        );
    }

    #[test]
    fn config_renders_every_section() {
        let b = Drawbridge::builder("http://127.0.0.1:1", "k")
            .route(Route::page("ui", "/", "ui").exempt(&["/x/"]))
            .bypass_key("test", "k1", "0123456789abcdef0123456789abcdef");
        let text = toml::to_string(&b.to_toml(Path::new("/tmp/d"))).unwrap();
        for needle in [
            "[server]",
            "[admin]",
            "[consul]",
            "[[routes]]",
            "[[bypass.keys]]",
            "exempt_paths",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
