//! The proxy's configuration: one TOML file, read into `FileConfig` (serde, unknown keys refused)
//! and checked into `Config`, the only form the rest of the proxy sees.
//!
//! ```text
//!   drawbridge.toml  ->  FileConfig (raw, optional fields)  ->  Config (typed, validated)
//! ```
//!
//! Values come from the file; where the file is silent, Consul's own environment variables
//! (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`) fill the Consul address and
//! token, then the documented defaults apply. Every problem found is reported with the path of its
//! key, not just the first one.

use crate::page::PageTemplate;
use drawbridge_core::bypass::Keyring;
use drawbridge_core::consul::{Consistency, DEFAULT_ADDRESS};
pub use drawbridge_core::settings::ConfigError;
use drawbridge_core::settings::{load_config, parse_config, FileBypassKey, Problems};
use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The header a bypass token is read from unless `bypass.header` names another.
const DEFAULT_BYPASS_HEADER: &str = "x-drawbridge-bypass";

/// Longest blocking-query wait Consul accepts.
const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

// === the file, as written ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: FileServer,
    #[serde(default)]
    admin: FileAdmin,
    consul: FileConsul,
    #[serde(default)]
    maintenance: FileMaintenance,
    #[serde(default)]
    bypass: FileBypass,
    #[serde(default)]
    pools: BTreeMap<String, FilePool>,
    #[serde(default)]
    routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    #[serde(default)]
    listen: Vec<String>,
    threads: Option<usize>,
    pid_file: Option<PathBuf>,
    upgrade_sock: Option<PathBuf>,
    grace_period: Option<String>,
    shutdown_timeout: Option<String>,
    state_file: Option<PathBuf>,
    access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    advertise_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConsul {
    address: Option<OneOrMany>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    key: Option<String>,
    wait: Option<String>,
    consistency: Option<String>,
    stale_after: Option<String>,
    register: Option<bool>,
    service_name: Option<String>,
    service_id: Option<String>,
}

/// `consul.address`: one address, or a list to fail over along.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMaintenance {
    default_retry_after: Option<String>,
    page_refresh_max: Option<String>,
    page: Option<PathBuf>,
    default_message: Option<String>,
    #[serde(default)]
    cors_allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBypass {
    #[serde(default)]
    trusted_cidrs: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    header: Option<String>,
    cookie: Option<String>,
    environment: Option<String>,
    max_ttl: Option<String>,
    #[serde(default)]
    keys: Vec<FileBypassKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    servers: Option<Vec<String>>,
    consul_service: Option<String>,
    health_check: Option<FileHealthCheck>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealthCheck {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    path_prefix: Option<String>,
    kind: String,
    pool: String,
    #[serde(default)]
    exempt_paths: Vec<String>,
}

// === the validated configuration ===

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Settings that were corrected rather than refused, each naming its key; logged at start
    /// and printed by `--check`.
    pub warnings: Vec<String>,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub consul: ConsulSettings,
    pub maintenance: MaintenanceSettings,
    pub bypass: BypassSettings,
    pub pools: Vec<PoolSettings>,
    pub routes: Vec<RouteSettings>,
}

/// Listeners, threads, process files.
#[derive(Debug)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub state_file: PathBuf,
    pub access_log: AccessLog,
}

/// How requests are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Text,
    Json,
    Off,
}

/// The admin listener.
#[derive(Debug)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub advertise_url: String,
}

/// The watch on the gate key and the proxy's own registration.
#[derive(Debug)]
pub struct ConsulSettings {
    /// The agents to read from, in order of preference (the first also registers the proxy).
    pub addresses: Vec<String>,
    pub token: Option<String>,
    pub key: String,
    pub wait: Duration,
    pub consistency: Consistency,
    pub stale_after: Duration,
    pub register: bool,
    pub service_name: String,
    pub service_id: String,
}

/// What maintenance answers look like.
#[derive(Debug)]
pub struct MaintenanceSettings {
    pub default_retry_after: Duration,
    pub page_refresh_max: Duration,
    pub page: PageTemplate,
    pub default_message: String,
    pub cors: CorsPolicy,
}

/// Which browser origins may read maintenance answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// Echo no CORS headers.
    None,
    /// Echo the request's origin whatever it is.
    AnyOrigin,
    /// Echo the request's origin when it is one of these (compared case-insensitively).
    Origins(Vec<String>),
}

/// Who passes a closed gate.
#[derive(Debug)]
pub struct BypassSettings {
    pub trusted_cidrs: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// The header the token is read from (parsed once here, not per request).
    pub header: HeaderName,
    pub cookie: String,
    pub environment: String,
    pub max_ttl: Duration,
    pub keyring: Option<Keyring>,
}

/// One upstream pool.
#[derive(Debug)]
pub struct PoolSettings {
    pub name: String,
    pub source: PoolSource,
    pub health_check: HealthCheckSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// Where a pool's servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    Static(Vec<SocketAddr>),
    ConsulService(String),
}

/// A pool's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckSettings {
    None,
    Tcp { interval: Duration },
    Http { path: String, interval: Duration },
}

/// Whether a route serves browsers or API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Page,
    Api,
}

impl RouteKind {
    /// The kind's name as written in the config and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Page => "page",
            RouteKind::Api => "api",
        }
    }
}

/// One route: which requests go to which pool, and how they are answered in maintenance.
#[derive(Debug)]
pub struct RouteSettings {
    pub name: String,
    /// Lower-case host names; empty means any host.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub kind: RouteKind,
    /// Index into `Config::pools`.
    pub pool: usize,
    pub exempt_paths: Vec<String>,
}

impl Config {
    /// Reads and checks a config file, taking Consul's variables from the process environment.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML of the expected shape, or fails a check; the error
    /// lists every problem with its key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        load_config(path, |file, problems| check(file, problems, &env))
    }

    /// Checks the text of a config file; `env` looks up environment variables.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        parse_config(path, text, |file, problems| check(file, problems, env))
    }

    /// The index of the route with this name.
    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }
}

fn check(file: FileConfig, p: &mut Problems, env: &dyn Fn(&str) -> Option<String>) -> Config {
    let server = check_server(file.server, p);
    let admin = check_admin(file.admin, p);
    let mut warnings = Vec::new();
    let consul = check_consul(file.consul, &server, p, &mut warnings, env);
    let maintenance = check_maintenance(file.maintenance, p);
    let bypass = check_bypass(file.bypass, p);
    let pools: Vec<PoolSettings> = file
        .pools
        .into_iter()
        .map(|(name, pool)| check_pool(name, pool, p))
        .collect();
    let routes = check_routes(file.routes, &pools, p);
    Config {
        warnings,
        server,
        admin,
        consul,
        maintenance,
        bypass,
        pools,
        routes,
    }
}

fn socket_addr(p: &mut Problems, key: &str, raw: &str) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.add(key, format!("{raw:?} is not an \"ip:port\" address"));
            None
        }
    }
}

fn existing_parent(p: &mut Problems, key: &str, path: &Path) {
    if !path.is_absolute() {
        p.add(key, format!("{} must be an absolute path", path.display()));
        return;
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => p.add(
            key,
            format!(
                "the folder of {} does not exist: create it or choose another path",
                path.display()
            ),
        ),
    }
}

fn check_server(s: FileServer, p: &mut Problems) -> ServerSettings {
    if s.listen.is_empty() {
        p.add(
            "server.listen",
            "at least one \"ip:port\" listener is required",
        );
    }
    let listen: Vec<SocketAddr> = s
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| socket_addr(p, &format!("server.listen[{i}]"), raw))
        .collect();
    let threads = s.threads.unwrap_or(2);
    if !(1..=64).contains(&threads) {
        p.add(
            "server.threads",
            format!("{threads} is not between 1 and 64"),
        );
    }
    let pid_file = s
        .pid_file
        .unwrap_or_else(|| PathBuf::from("/run/drawbridge/drawbridge.pid"));
    existing_parent(p, "server.pid_file", &pid_file);
    let upgrade_sock = s
        .upgrade_sock
        .unwrap_or_else(|| PathBuf::from("/run/drawbridge/upgrade.sock"));
    existing_parent(p, "server.upgrade_sock", &upgrade_sock);
    let state_file = s
        .state_file
        .unwrap_or_else(|| PathBuf::from("/var/lib/drawbridge/gate-state.json"));
    existing_parent(p, "server.state_file", &state_file);
    let access_log = match s.access_log.as_deref() {
        None | Some("text") => AccessLog::Text,
        Some("json") => AccessLog::Json,
        Some("off") => AccessLog::Off,
        Some(other) => {
            p.add(
                "server.access_log",
                format!("{other:?} is not one of \"text\", \"json\", \"off\""),
            );
            AccessLog::Text
        }
    };
    ServerSettings {
        listen,
        threads,
        pid_file,
        upgrade_sock,
        grace_period: p.duration(
            "server.grace_period",
            s.grace_period.as_deref(),
            Duration::from_secs(10),
        ),
        shutdown_timeout: p.duration(
            "server.shutdown_timeout",
            s.shutdown_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        state_file,
        access_log,
    }
}

fn check_admin(a: FileAdmin, p: &mut Problems) -> AdminSettings {
    let raw = a.listen.as_deref().unwrap_or("127.0.0.1:9180");
    let listen = socket_addr(p, "admin.listen", raw)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9180)));
    let token = p.secret("admin.token", a.token, a.token_file.as_deref());
    if matches!(&token, Some(t) if t.is_empty()) {
        p.add("admin.token", "is empty");
    }
    if !listen.ip().is_loopback() && token.is_none() {
        p.add(
            "admin.listen",
            format!("{listen} is not a loopback address: set admin.token (the admin listener shows the gate state and metrics)"),
        );
    }
    let advertise_url = a
        .advertise_url
        .unwrap_or_else(|| format!("http://{listen}"));
    if !advertise_url.starts_with("http://") && !advertise_url.starts_with("https://") {
        p.add(
            "admin.advertise_url",
            format!("{advertise_url:?} must start with http:// or https://"),
        );
    }
    AdminSettings {
        listen,
        token,
        advertise_url,
    }
}

fn check_consul(
    c: FileConsul,
    server: &ServerSettings,
    p: &mut Problems,
    warnings: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> ConsulSettings {
    let addresses = match c.address {
        Some(OneOrMany::One(a)) => vec![a],
        Some(OneOrMany::Many(list)) => list,
        None => vec![env("CONSUL_HTTP_ADDR").unwrap_or_else(|| DEFAULT_ADDRESS.to_string())],
    };
    if addresses.is_empty() {
        p.add(
            "consul.address",
            "the list is empty: give the local agent's address, e.g. \"http://127.0.0.1:8500\"",
        );
    }
    for (i, address) in addresses.iter().enumerate() {
        if let Err(e) = drawbridge_core::consul::Client::new(address, None) {
            p.add(format!("consul.address[{i}]"), e);
        }
    }
    let token = p.consul_token("consul.token", c.token, c.token_file.as_deref(), env);
    let key = c.key.unwrap_or_default();
    if key.is_empty() {
        p.add(
            "consul.key",
            "the gate key is required, e.g. \"drawbridge/prod/gate\"",
        );
    } else if key.starts_with('/') || key.ends_with('/') || key.contains("//") {
        p.add(
            "consul.key",
            format!("{key:?} must not start or end with '/' or contain '//'"),
        );
    }
    let wait = p.duration("consul.wait", c.wait.as_deref(), Duration::from_secs(60));
    if wait < Duration::from_secs(1) || wait > MAX_CONSUL_WAIT {
        p.add("consul.wait", "must be between \"1s\" and \"10m\"");
    }
    let consistency = match c.consistency.as_deref() {
        Some("stale") => Consistency::Stale,
        None | Some("default") => Consistency::Default,
        Some("consistent") => Consistency::Consistent,
        Some(other) => {
            p.add(
                "consul.consistency",
                format!("{other:?} is not one of \"stale\", \"default\", \"consistent\""),
            );
            Consistency::Default
        }
    };
    // A healthy watch answers every wait + wait/16 (Consul's jitter); below that, idle proxies
    // would be reported stale between two answers.
    let stale_floor = wait + wait / 16;
    let mut stale_after = p.duration("consul.stale_after", c.stale_after.as_deref(), stale_floor);
    if stale_after < stale_floor {
        warnings.push(format!(
            "consul.stale_after: {} is below consul.wait + wait/16, raised to {}",
            humantime::format_duration(stale_after),
            humantime::format_duration(stale_floor)
        ));
        stale_after = stale_floor;
    }
    let service_name = c.service_name.unwrap_or_else(|| "drawbridge".to_string());
    if service_name.is_empty() {
        p.add("consul.service_name", "is empty");
    }
    let service_id = c.service_id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        let port = server.listen.first().map_or(0, SocketAddr::port);
        format!("{service_name}-{host}-{port}")
    });
    ConsulSettings {
        addresses,
        token,
        key,
        wait,
        consistency,
        stale_after,
        register: c.register.unwrap_or(true),
        service_name,
        service_id,
    }
}

fn check_maintenance(m: FileMaintenance, p: &mut Problems) -> MaintenanceSettings {
    let page = match &m.page {
        None => PageTemplate::builtin(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => PageTemplate::parse(&text).unwrap_or_else(|e| {
                p.add("maintenance.page", format!("{}: {e}", path.display()));
                PageTemplate::builtin()
            }),
            Err(e) => {
                p.add(
                    "maintenance.page",
                    format!("cannot read {}: {e}", path.display()),
                );
                PageTemplate::builtin()
            }
        },
    };
    let cors = if m.cors_allowed_origins.is_empty() {
        CorsPolicy::None
    } else if m.cors_allowed_origins.iter().any(|o| o == "*") {
        CorsPolicy::AnyOrigin
    } else {
        for (i, origin) in m.cors_allowed_origins.iter().enumerate() {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            if !scheme_ok || origin.ends_with('/') {
                p.add(
                    format!("maintenance.cors_allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin like \"https://app.example.com\""),
                );
            }
        }
        CorsPolicy::Origins(
            m.cors_allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        )
    };
    MaintenanceSettings {
        default_retry_after: p.duration(
            "maintenance.default_retry_after",
            m.default_retry_after.as_deref(),
            Duration::from_secs(300),
        ),
        page_refresh_max: p.duration(
            "maintenance.page_refresh_max",
            m.page_refresh_max.as_deref(),
            Duration::from_secs(300),
        ),
        page,
        default_message: m.default_message.unwrap_or_else(|| {
            "We are doing planned maintenance and will be back soon.".to_string()
        }),
        cors,
    }
}

fn cidrs(p: &mut Problems, key: &str, raw: &[String]) -> Vec<IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    p.add(
                        format!("{key}[{i}]"),
                        format!("{text:?} is not a CIDR like \"10.0.0.0/8\" or an address"),
                    );
                    None
                }
            }
        })
        .collect()
}

fn check_bypass(b: FileBypass, p: &mut Problems) -> BypassSettings {
    let header_text = b
        .header
        .unwrap_or_else(|| DEFAULT_BYPASS_HEADER.to_string());
    let header = HeaderName::from_bytes(header_text.as_bytes()).unwrap_or_else(|_| {
        p.add(
            "bypass.header",
            format!("{header_text:?} is not a header name"),
        );
        HeaderName::from_static(DEFAULT_BYPASS_HEADER)
    });
    let cookie = b.cookie.unwrap_or_else(|| "drawbridge_bypass".to_string());
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        p.add(
            "bypass.cookie",
            format!("{cookie:?} must be letters, digits, '_' or '-'"),
        );
    }
    let keyring = p.keyring("bypass.keys", b.keys);
    let environment = b.environment.unwrap_or_default();
    if keyring.is_some() && environment.is_empty() {
        p.add(
            "bypass.environment",
            "is required with bypass.keys: tokens are bound to an environment",
        );
    }
    BypassSettings {
        trusted_cidrs: cidrs(p, "bypass.trusted_cidrs", &b.trusted_cidrs),
        trusted_proxies: cidrs(p, "bypass.trusted_proxies", &b.trusted_proxies),
        header,
        cookie,
        environment,
        max_ttl: p.duration(
            "bypass.max_ttl",
            b.max_ttl.as_deref(),
            Duration::from_secs(12 * 3600),
        ),
        keyring,
    }
}

fn check_pool(name: String, pool: FilePool, p: &mut Problems) -> PoolSettings {
    let key = format!("pools.{name}");
    let source = match (pool.servers, pool.consul_service) {
        (Some(_), Some(_)) => {
            p.add(&key, "set either `servers` or `consul_service`, not both");
            PoolSource::Static(Vec::new())
        }
        (None, None) => {
            p.add(
                &key,
                "set `servers` (a list of \"host:port\") or `consul_service`",
            );
            PoolSource::Static(Vec::new())
        }
        (Some(servers), None) => {
            if servers.is_empty() {
                p.add(format!("{key}.servers"), "is empty");
            }
            let mut addrs = Vec::new();
            for (i, raw) in servers.iter().enumerate() {
                match raw.to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(addr)) => addrs.push(addr),
                    _ => p.add(
                        format!("{key}.servers[{i}]"),
                        format!("{raw:?} is not a reachable \"host:port\" (it does not resolve)"),
                    ),
                }
            }
            PoolSource::Static(addrs)
        }
        (None, Some(service)) => {
            if service.is_empty() {
                p.add(format!("{key}.consul_service"), "is empty");
            }
            PoolSource::ConsulService(service)
        }
    };
    let health_check = match pool.health_check {
        None => HealthCheckSettings::Tcp {
            interval: Duration::from_secs(5),
        },
        Some(hc) => {
            let hc_key = format!("{key}.health_check");
            let interval = p.duration(
                &format!("{hc_key}.interval"),
                hc.interval.as_deref(),
                Duration::from_secs(5),
            );
            match (hc.kind.as_str(), hc.path) {
                ("none", None) => HealthCheckSettings::None,
                ("tcp", None) => HealthCheckSettings::Tcp { interval },
                ("http", path) => {
                    let path = path.unwrap_or_else(|| "/".to_string());
                    if !path.starts_with('/') {
                        p.add(
                            format!("{hc_key}.path"),
                            format!("{path:?} must start with '/'"),
                        );
                    }
                    HealthCheckSettings::Http { path, interval }
                }
                ("none" | "tcp", Some(_)) => {
                    p.add(format!("{hc_key}.path"), "only applies to type \"http\"");
                    HealthCheckSettings::None
                }
                (other, _) => {
                    p.add(
                        format!("{hc_key}.type"),
                        format!("{other:?} is not one of \"http\", \"tcp\", \"none\""),
                    );
                    HealthCheckSettings::None
                }
            }
        }
    };
    PoolSettings {
        connect_timeout: p.duration(
            &format!("{key}.connect_timeout"),
            pool.connect_timeout.as_deref(),
            Duration::from_secs(2),
        ),
        read_timeout: p.duration(
            &format!("{key}.read_timeout"),
            pool.read_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        name,
        source,
        health_check,
    }
}

fn check_routes(
    routes: Vec<FileRoute>,
    pools: &[PoolSettings],
    p: &mut Problems,
) -> Vec<RouteSettings> {
    if routes.is_empty() {
        p.add("routes", "at least one [[routes]] entry is required");
    }
    let mut names = HashSet::new();
    routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = format!("routes[{i}]");
            if r.name.is_empty() {
                p.add(format!("{key}.name"), "is empty");
            } else if !names.insert(r.name.clone()) {
                p.add(
                    format!("{key}.name"),
                    format!("{:?} is used by another route", r.name),
                );
            }
            let kind = match r.kind.as_str() {
                "page" => RouteKind::Page,
                "api" => RouteKind::Api,
                other => {
                    p.add(
                        format!("{key}.kind"),
                        format!("{other:?} is not one of \"page\", \"api\""),
                    );
                    RouteKind::Page
                }
            };
            let pool = pools.iter().position(|pool| pool.name == r.pool);
            if pool.is_none() {
                p.add(format!("{key}.pool"), format!("unknown pool {:?}", r.pool));
            }
            let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
            if !path_prefix.starts_with('/') {
                p.add(
                    format!("{key}.path_prefix"),
                    format!("{path_prefix:?} must start with '/'"),
                );
            }
            for (j, exempt) in r.exempt_paths.iter().enumerate() {
                if !exempt.starts_with('/') {
                    p.add(
                        format!("{key}.exempt_paths[{j}]"),
                        format!("{exempt:?} must start with '/'"),
                    );
                }
            }
            for (j, host) in r.hosts.iter().enumerate() {
                if host.is_empty() || host.contains(['/', ' ', ':']) {
                    p.add(
                        format!("{key}.hosts[{j}]"),
                        format!("{host:?} is not a host name (no scheme, port or path)"),
                    );
                }
            }
            RouteSettings {
                name: r.name,
                hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                path_prefix,
                kind,
                pool: pool.unwrap_or(0),
                exempt_paths: r.exempt_paths,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text, &|_| None)
    }

    const MINIMAL: &str = r#"
        [server]
        listen = ["127.0.0.1:8080"]
        pid_file = "/tmp/db.pid"
        upgrade_sock = "/tmp/db.sock"
        state_file = "/tmp/db-state.json"
        [consul]
        key = "drawbridge/test/gate"
        [pools.ui]
        servers = ["127.0.0.1:3000"]
        [[routes]]
        name = "ui"
        kind = "page"
        pool = "ui"
    "#;

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.server.grace_period, Duration::from_secs(10));
        assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().unwrap());
        assert_eq!(c.consul.addresses, ["http://127.0.0.1:8500"]);
        assert_eq!(c.consul.consistency, Consistency::Default);
        assert_eq!(c.consul.wait, Duration::from_secs(60));
        assert_eq!(c.consul.stale_after, Duration::from_millis(63_750));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.maintenance.default_retry_after, Duration::from_secs(300));
        assert_eq!(c.bypass.header, "x-drawbridge-bypass");
        assert_eq!(c.routes[0].path_prefix, "/");
        assert!(c.consul.service_id.starts_with("drawbridge-"));
    }

    #[test]
    fn consul_variables_fill_what_the_file_leaves_out() {
        let env = |name: &str| match name {
            "CONSUL_HTTP_ADDR" => Some("http://10.1.2.3:8500".to_string()),
            "CONSUL_HTTP_TOKEN" => Some("secret-token".to_string()),
            _ => None,
        };
        let c = Config::parse(Path::new("t.toml"), MINIMAL, &env).unwrap();
        assert_eq!(c.consul.addresses, ["http://10.1.2.3:8500"]);
        assert_eq!(c.consul.token.as_deref(), Some("secret-token"));
    }

    #[test]
    fn consul_address_may_list_agents_to_fail_over_along() {
        let with =
            |address: &str| MINIMAL.replace("[consul]", &format!("[consul]\naddress = {address}"));
        let c = parse(&with(r#"["127.0.0.1:8500", "http://10.0.0.2:8500"]"#)).unwrap();
        assert_eq!(
            c.consul.addresses,
            ["127.0.0.1:8500", "http://10.0.0.2:8500"]
        );
        let err = parse(&with("[]")).unwrap_err().problems.join("\n");
        assert!(err.contains("consul.address: the list is empty"), "{err}");
        let err = parse(&with(r#"["127.0.0.1:8500", "https://10.0.0.2"]"#))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(err.contains("consul.address[1]: "), "{err}");
    }

    #[test]
    fn stale_after_below_one_wait_is_raised_with_a_warning() {
        let text = MINIMAL.replace("[consul]", "[consul]\nwait = \"16s\"\nstale_after = \"5s\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.consul.stale_after, Duration::from_secs(17));
        assert_eq!(
            c.warnings,
            ["consul.stale_after: 5s is below consul.wait + wait/16, raised to 17s"]
        );
    }

    #[test]
    fn problems_name_their_key() {
        let text = MINIMAL
            .replace("pool = \"ui\"", "pool = \"nope\"")
            .replace("kind = \"page\"", "kind = \"web\"")
            .replace("127.0.0.1:8080", "localhost");
        let err = parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("routes[0].pool: unknown pool \"nope\""),
            "{all}"
        );
        assert!(
            all.contains("routes[0].kind: \"web\" is not one of"),
            "{all}"
        );
        assert!(
            all.contains("server.listen[0]: \"localhost\" is not an \"ip:port\""),
            "{all}"
        );
    }

    #[test]
    fn bypass_header_is_read_once_in_lower_case_and_a_bad_one_is_refused() {
        let with_header = |name: &str| format!("{MINIMAL}\n[bypass]\nheader = \"{name}\"\n");
        let c = parse(&with_header("X-Ops-Bypass")).unwrap();
        assert_eq!(c.bypass.header, "x-ops-bypass");
        let err = parse(&with_header("x ops")).unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p == "bypass.header: \"x ops\" is not a header name"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse(&MINIMAL.replace("[consul]", "[consul]\nkee = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("unknown field `kee`"), "{err}");
    }

    #[test]
    fn public_admin_listener_needs_a_token() {
        let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9180\"\n");
        let err = parse(&text).unwrap_err();
        assert!(err.problems[0].starts_with("admin.listen:"), "{err}");
        let with_token = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9180\"\ntoken = \"t\"\n");
        assert!(parse(&with_token).is_ok());
    }

    #[test]
    fn bypass_keys_need_strong_secrets_and_an_environment() {
        let text =
            format!("{MINIMAL}\n[bypass]\n[[bypass.keys]]\nid = \"k1\"\nsecret = \"short\"\n");
        let err = parse(&text).unwrap_err().problems.join("\n");
        assert!(
            err.contains("bypass.keys[0]: bypass key `k1` secret has 5 bytes"),
            "{err}"
        );
        let text = format!(
            "{MINIMAL}\n[bypass]\n[[bypass.keys]]\nid = \"k1\"\nsecret = \"{}\"\n",
            "s".repeat(32)
        );
        let err = parse(&text).unwrap_err().problems.join("\n");
        assert!(err.contains("bypass.environment: is required"), "{err}");
    }

    #[test]
    fn pools_need_exactly_one_source() {
        let text = MINIMAL.replace(
            "servers = [\"127.0.0.1:3000\"]",
            "servers = [\"127.0.0.1:3000\"]\nconsul_service = \"ui\"",
        );
        let err = parse(&text).unwrap_err();
        assert!(err.problems[0].starts_with("pools.ui:"), "{err}");
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("drawbridge") && name != "demo.toml" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // The example's process paths live in folders of a production host; point them here.
            let text = text
                .replace("/run/drawbridge/", "/tmp/")
                .replace("/var/lib/drawbridge/", "/tmp/")
                .replace("/tmp/drawbridge-demo/", "/tmp/")
                .replace("10.0.1.10:3000", "127.0.0.1:3000")
                .replace("10.0.1.11:3000", "127.0.0.1:3001");
            if let Err(e) = Config::parse(&path, &text, &|_| None) {
                panic!("{e}");
            }
            seen += 1;
        }
        assert!(
            seen >= 2,
            "expected the example and the demo config in {}",
            dir.display()
        );
    }
}
