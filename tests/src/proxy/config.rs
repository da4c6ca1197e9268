//! The proxy's configuration, written as TOML: [`DrawbridgeBuilder`] with its [`Pool`]s,
//! [`Route`]s ([`RouteKind`]), [`HealthCheck`]s and [`TlsCertificate`]s, the defaults
//! [`Drawbridge::builder`] starts from, and [`Ready`], how far a start waits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::running::Drawbridge;
use crate::ports::free_port;
use crate::upstream::Upstream;

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

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone)]
pub struct TlsCertificate {
    /// The PEM chain file.
    pub cert: PathBuf,
    /// The PEM key file.
    pub key: PathBuf,
    /// `default = true`: served to clients whose name matches no certificate.
    pub default: bool,
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
    /// `consul.consistency`; `None` leaves the key out (the proxy's default, "default").
    pub consistency: Option<String>,
    pub stale_after: String,
    pub register: bool,
    pub service_name: Option<String>,
    pub service_id: Option<String>,
    pub threads: usize,
    pub grace_period: String,
    pub shutdown_timeout: String,
    pub access_log: String,
    /// `server.unknown_state`; `None` leaves the key out (the proxy's default, "maintenance").
    pub unknown_state: Option<String>,
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
    /// `[limits]`, as written (empty: the defaults).
    pub limits: toml::Table,
    /// `server.tls_listen`: one TLS listener, or none.
    pub tls_listen: Option<SocketAddr>,
    /// `[[tls.certificates]]`, in order.
    pub tls_certificates: Vec<TlsCertificate>,
    /// `tls.watch_interval`; `None` leaves the key out (the proxy's default).
    pub tls_watch_interval: Option<String>,
    /// Other settings, `(section, key, value)`, written over the ones above.
    pub settings: Vec<(String, String, toml::Value)>,
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

    /// `consul.consistency`: "default" (the leader answers), "stale" (any server answers) or
    /// "consistent".
    pub fn consistency(mut self, consistency: &str) -> Self {
        self.consistency = Some(consistency.to_string());
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

    /// One `[limits]` setting, e.g. `limit("header_timeout", "2s")`.
    pub fn limit(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.limits.insert(key.into(), value.into());
        self
    }

    /// `server.unknown_state`: what the proxy serves while the gate state is unknown.
    pub fn unknown_state(mut self, mode: &str) -> Self {
        self.unknown_state = Some(mode.to_string());
        self
    }

    /// Adds a `[[tls.certificates]]` entry (a PEM chain and its key), and a TLS listener on a
    /// fresh loopback port if there is none yet.
    pub fn tls_certificate(mut self, cert: &Path, key: &Path, default: bool) -> Self {
        self.tls_listen
            .get_or_insert_with(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        self.tls_certificates.push(TlsCertificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            default,
        });
        self
    }

    /// `tls.watch_interval`: how often the certificate files are looked at for a change.
    pub fn tls_watch_interval(mut self, interval: &str) -> Self {
        self.tls_watch_interval = Some(interval.to_string());
        self
    }

    /// Any other setting, e.g. `setting("server", "h2c", true)`; written last, over the others.
    pub fn setting(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.settings
            .push((section.into(), key.into(), value.into()));
        self
    }

    /// The state file (`server.state_file`) a proxy of this builder uses in `dir`.
    pub fn state_file_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.gate-state.json", self.name))
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
        if let Some(tls_listen) = self.tls_listen {
            server.insert("tls_listen".into(), vec![tls_listen.to_string()].into());
        }
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
            self.state_file_in(dir).display().to_string().into(),
        );
        if let Some(mode) = &self.unknown_state {
            server.insert("unknown_state".into(), mode.as_str().into());
        }
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
        if let Some(consistency) = &self.consistency {
            consul.insert("consistency".into(), consistency.as_str().into());
        }
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
        if !self.limits.is_empty() {
            root.insert("limits".into(), self.limits.clone().into());
        }
        if !self.tls_certificates.is_empty() || self.tls_watch_interval.is_some() {
            let mut tls = toml::Table::new();
            opt(&mut tls, "watch_interval", &self.tls_watch_interval);
            let certificates: Vec<toml::Value> = self
                .tls_certificates
                .iter()
                .map(|c| {
                    let mut t = toml::Table::new();
                    t.insert("cert".into(), c.cert.display().to_string().into());
                    t.insert("key".into(), c.key.display().to_string().into());
                    t.insert("default".into(), c.default.into());
                    toml::Value::Table(t)
                })
                .collect();
            tls.insert("certificates".into(), certificates.into());
            root.insert("tls".into(), tls.into());
        }
        for (section, key, value) in &self.settings {
            let table = root
                .entry(section.as_str())
                .or_insert_with(|| toml::Table::new().into());
            if let toml::Value::Table(table) = table {
                table.insert(key.clone(), value.clone());
            }
        }
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
            consistency: None,
            stale_after: "11s".to_string(),
            register: false,
            service_name: None,
            service_id: None,
            threads: 2,
            grace_period: "2s".to_string(),
            shutdown_timeout: "1s".to_string(),
            access_log: "text".to_string(),
            unknown_state: None,
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
            limits: toml::Table::new(),
            tls_listen: None,
            tls_certificates: Vec::new(),
            tls_watch_interval: None,
            settings: Vec::new(),
            ready: Ready::ConsulAnswered,
            env: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
