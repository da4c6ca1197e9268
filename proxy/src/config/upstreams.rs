//! `[pools.*]` and `[[routes]]`: where requests go. A pool lists its servers or follows a Consul
//! service; a route picks a pool by host and path prefix and says how maintenance answers it.
//!
//! A pool server is an address, taken as is, or `host:port` with a host name, whose form alone is
//! checked; names are looked up when the config is finished ([`resolve_servers`]).

use super::file::{FilePool, FileRoute};
use drawbridge_core::settings::Problems;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

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

/// A static pool with host names among its servers, to look up when the config is finished.
pub(super) struct NamedServers {
    /// Index into `Config::pools`.
    pool: usize,
    /// Every server of the pool, in the order written.
    servers: Vec<Server>,
}

/// One `servers` entry whose form is right.
enum Server {
    /// An address literal: nothing to resolve.
    Addr(SocketAddr),
    /// `host:port` with a host name, and the key it was given at.
    Name { key: String, raw: String },
}

/// Reads a `servers` entry the way `ToSocketAddrs` does (an address, or `host:port` split at the
/// last `:`), without looking the host up.
fn server(p: &mut Problems, key: String, raw: &str) -> Option<Server> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Some(Server::Addr(addr));
    }
    let host_port = raw
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
    if let Some((host, port)) = host_port {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Server::Addr(SocketAddr::new(ip, port)));
        }
        if is_host_name(host) {
            return Some(Server::Name {
                key,
                raw: raw.to_string(),
            });
        }
    }
    p.add(
        key,
        format!("{raw:?} is not a \"host:port\" like \"10.0.1.10:3000\" or \"app.internal:3000\""),
    );
    None
}

/// Whether `host` can be a host name to look up: not empty, no space, scheme, path or `:`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':')
}

/// Checks every pool; also returns the static pools whose servers need a name look-up.
pub(super) fn check_pools(
    pools: BTreeMap<String, FilePool>,
    p: &mut Problems,
) -> (Vec<PoolSettings>, Vec<NamedServers>) {
    let mut named = Vec::new();
    let pools = pools
        .into_iter()
        .enumerate()
        .map(|(i, (name, pool))| {
            let (settings, servers) = check_pool(name, pool, p);
            if let Some(servers) = servers {
                named.push(NamedServers { pool: i, servers });
            }
            settings
        })
        .collect();
    (pools, named)
}

/// Looks up the host names of static pools with `resolve` and fills in their server lists; a
/// name that does not resolve is a problem at its key.
pub(super) fn resolve_servers(
    pools: &mut [PoolSettings],
    named: Vec<NamedServers>,
    resolve: fn(&str) -> Option<SocketAddr>,
    p: &mut Problems,
) {
    for NamedServers { pool, servers } in named {
        let addrs = servers
            .into_iter()
            .filter_map(|server| match server {
                Server::Addr(addr) => Some(addr),
                Server::Name { key, raw } => {
                    let addr = resolve(&raw);
                    if addr.is_none() {
                        p.add(
                            key,
                            format!(
                                "{raw:?} is not a reachable \"host:port\" (it does not resolve)"
                            ),
                        );
                    }
                    addr
                }
            })
            .collect();
        pools[pool].source = PoolSource::Static(addrs);
    }
}

/// The first address the system resolver gives for `host:port`.
pub(super) fn resolve_with_system(host_port: &str) -> Option<SocketAddr> {
    host_port.to_socket_addrs().ok()?.next()
}

/// Checks one pool; the second value lists its servers when some are host names.
fn check_pool(
    name: String,
    pool: FilePool,
    p: &mut Problems,
) -> (PoolSettings, Option<Vec<Server>>) {
    let key = format!("pools.{name}");
    let mut named = None;
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
            let servers: Vec<Server> = servers
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| server(p, format!("{key}.servers[{i}]"), raw))
                .collect();
            let literal: Option<Vec<SocketAddr>> = servers
                .iter()
                .map(|s| match s {
                    Server::Addr(addr) => Some(*addr),
                    Server::Name { .. } => None,
                })
                .collect();
            match literal {
                Some(addrs) => PoolSource::Static(addrs),
                None => {
                    named = Some(servers);
                    PoolSource::Static(Vec::new())
                }
            }
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
    let settings = PoolSettings {
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
    };
    (settings, named)
}

pub(super) fn check_routes(
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
