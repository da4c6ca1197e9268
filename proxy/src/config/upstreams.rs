//! `[pools.*]` and `[[routes]]`: where requests go. A pool lists its servers or follows a Consul
//! service; a route picks a pool by host and path prefix and says how maintenance answers it.
//!
//! A pool server is an address, taken as is, or `host:port` with a host name, whose form alone is
//! checked; names are looked up when the config is finished ([`resolve_servers`]).
//!
//! A pool's `tls` table is read here whole: its CA bundle and client certificate files are read
//! and checked now, so a bad one is refused at start (and by `--check`) with its key named.

use super::file::{FilePool, FilePoolTls, FileRoute};
use crate::upstream_tls::{read_ca_file, read_client_pair, ClientPart, UpstreamTls};
use drawbridge_core::settings::Problems;
use rustls::pki_types::ServerName;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// One upstream pool.
#[derive(Debug)]
pub struct PoolSettings {
    pub name: String,
    pub source: PoolSource,
    pub health_check: HealthCheckSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `[pools.<name>.tls]`: the servers speak TLS; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
}

impl PoolSettings {
    /// What is worth a warning at start: a TLS pool whose certificates are not verified.
    pub fn warnings(&self) -> Vec<String> {
        match &self.tls {
            Some(tls) if !tls.verify => vec![format!(
                "pools.{}.tls.verify: is false: the servers' certificates are not checked, so \
                 anyone on the way to them can pose as them",
                self.name
            )],
            _ => Vec::new(),
        }
    }
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
    let now = OffsetDateTime::now_utc();
    let pools = pools
        .into_iter()
        .enumerate()
        .map(|(i, (name, pool))| {
            let (settings, servers) = check_pool(name, pool, now, p);
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

/// Checks one pool, reading its TLS files at `now`; the second value lists its servers when some
/// are host names.
fn check_pool(
    name: String,
    pool: FilePool,
    now: OffsetDateTime,
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
    let tls = pool
        .tls
        .and_then(|tls| check_pool_tls(&format!("{key}.tls"), tls, now, p));
    let settings = PoolSettings {
        tls,
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

/// Checks a pool's `tls` table at `key`, reading its files at `now`; `None` when it has a
/// problem.
fn check_pool_tls(
    key: &str,
    tls: FilePoolTls,
    now: OffsetDateTime,
    p: &mut Problems,
) -> Option<UpstreamTls> {
    let mut ok = true;
    let mut problem = |part: &str, message: String| {
        p.add(format!("{key}.{part}"), message);
        ok = false;
    };
    let sni = tls.sni.unwrap_or_default();
    if sni.is_empty() {
        problem(
            "sni",
            "is required: the name sent to the servers and checked in their certificates"
                .to_string(),
        );
    } else if ServerName::try_from(sni.as_str()).is_err() {
        problem(
            "sni",
            format!("{sni:?} is not a host name or an IP address"),
        );
    }
    let absolute = |part: &str, path: &Path, problem: &mut dyn FnMut(&str, String)| {
        let absolute = path.is_absolute();
        if !absolute {
            problem(part, format!("{} must be an absolute path", path.display()));
        }
        absolute
    };
    let mut ca = None;
    if let Some(path) = &tls.ca_file {
        if absolute("ca_file", path, &mut problem) {
            match read_ca_file(path) {
                Ok(read) => ca = Some(read),
                Err(e) => problem("ca_file", format!("{}: {e}", path.display())),
            }
        }
    }
    let mut client = None;
    match (&tls.client_cert, &tls.client_key) {
        (None, None) => {}
        (Some(_), None) => problem(
            "client_key",
            "is required with client_cert (the key of that certificate)".to_string(),
        ),
        (None, Some(_)) => problem(
            "client_cert",
            "is required with client_key (the certificate of that key)".to_string(),
        ),
        (Some(cert), Some(key_file)) => {
            let cert_ok = absolute("client_cert", cert, &mut problem);
            let key_ok = absolute("client_key", key_file, &mut problem);
            if cert_ok && key_ok {
                match read_client_pair(cert, key_file, now) {
                    Ok(pair) => client = Some(pair),
                    Err((ClientPart::Cert, e)) => {
                        problem("client_cert", format!("{}: {e}", cert.display()));
                    }
                    Err((ClientPart::Key, e)) => {
                        problem("client_key", format!("{}: {e}", key_file.display()));
                    }
                }
            }
        }
    }
    ok.then_some(UpstreamTls {
        sni,
        verify: tls.verify.unwrap_or(true),
        ca,
        client,
    })
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

#[cfg(test)]
mod tests {
    use super::super::{check, Config, Machine};
    use drawbridge_core::settings::parse_config;
    use std::path::Path;

    /// A file of the listener test certificates: `one` (one.example.test; its chain holds the
    /// unit test CA), `two`, `rsa`.
    fn testdata(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/tls/testdata")
            .join(name)
            .display()
            .to_string()
    }

    const MACHINE: Machine = Machine {
        host_name: || "testhost".to_string(),
        resolve: |_| None,
    };

    /// A config whose pool `api` has the `[pools.api.tls]` table `tls`.
    fn parse(tls: &str) -> Result<Config, Vec<String>> {
        let text = format!(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            pid_file = "/tmp/db.pid"
            upgrade_sock = "/tmp/db.sock"
            state_file = "/tmp/db-state.json"
            [consul]
            key = "drawbridge/test/gate"
            [pools.api]
            servers = ["127.0.0.1:4443"]
            [pools.api.tls]
            {tls}
            [[routes]]
            name = "api"
            kind = "api"
            pool = "api"
            "#
        );
        parse_config(Path::new("test.toml"), &text, |file, p| {
            check(file, p, &|_| None).finish(&MACHINE, p)
        })
        .map_err(|e| e.problems)
    }

    fn problems(tls: &str) -> Vec<String> {
        parse(tls).expect_err("the tls table is refused")
    }

    #[test]
    fn a_tls_pool_keeps_its_name_cas_and_client_certificate() {
        let c = parse(&format!(
            "sni = \"api.internal\"\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            testdata("one.pem"),
            testdata("two.pem"),
            testdata("two.key"),
        ))
        .unwrap();
        let tls = c.pools[0].tls.as_ref().expect("a TLS pool");
        assert_eq!(tls.sni, "api.internal");
        assert!(tls.verify, "verification is on by default");
        assert_eq!(tls.ca.as_ref().map(|ca| ca.len()), Some(2));
        assert!(tls.client.is_some());
        assert!(c.pools[0].warnings().is_empty());

        let c = parse("sni = \"10.0.1.10\"\nverify = false\n").unwrap();
        let tls = c.pools[0].tls.as_ref().expect("a TLS pool");
        assert!(tls.ca.is_none(), "the system roots");
        assert_eq!(
            c.pools[0].warnings(),
            [
                "pools.api.tls.verify: is false: the servers' certificates are not checked, so \
              anyone on the way to them can pose as them"
            ]
        );
    }

    #[test]
    fn the_name_is_required_and_must_be_a_name() {
        assert_eq!(
            problems("verify = true"),
            ["pools.api.tls.sni: is required: the name sent to the servers and checked in their \
              certificates"]
        );
        assert_eq!(
            problems("sni = \"api internal\""),
            ["pools.api.tls.sni: \"api internal\" is not a host name or an IP address"]
        );
        let unknown = problems("sni = \"a.test\"\ncafile = \"/x\"");
        assert!(unknown[0].contains("unknown field `cafile`"), "{unknown:?}");
    }

    #[test]
    fn an_unreadable_or_non_pem_ca_file_is_refused_with_its_key() {
        let missing = testdata("missing.pem");
        let err = problems(&format!("sni = \"a.test\"\nca_file = {missing:?}"));
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with(&format!(
                "pools.api.tls.ca_file: {missing}: cannot read it: "
            )),
            "{err:?}"
        );
        let key = testdata("one.key");
        assert_eq!(
            problems(&format!("sni = \"a.test\"\nca_file = {key:?}")),
            [format!(
                "pools.api.tls.ca_file: {key}: holds no \"BEGIN CERTIFICATE\" block"
            )]
        );
        assert_eq!(
            problems("sni = \"a.test\"\nca_file = \"ca.pem\""),
            ["pools.api.tls.ca_file: ca.pem must be an absolute path"]
        );
    }

    #[test]
    fn a_cut_ca_file_is_refused_in_words() {
        let dir = std::env::temp_dir().join(format!("drawbridge-pool-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("cut.pem");
        let pem = std::fs::read_to_string(testdata("two.pem")).unwrap();
        std::fs::write(&cut, &pem[..pem.len() / 2]).unwrap();
        let err = problems(&format!(
            "sni = \"a.test\"\nca_file = {:?}",
            cut.display().to_string()
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            err,
            [format!(
                "pools.api.tls.ca_file: {}: is not valid PEM: the \"CERTIFICATE\" block has no END \
                 line",
                cut.display()
            )]
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_must_match() {
        let cert = testdata("one.pem");
        let key = testdata("one.key");
        assert_eq!(
            problems(&format!("sni = \"a.test\"\nclient_cert = {cert:?}")),
            ["pools.api.tls.client_key: is required with client_cert (the key of that certificate)"]
        );
        assert_eq!(
            problems(&format!("sni = \"a.test\"\nclient_key = {key:?}")),
            ["pools.api.tls.client_cert: is required with client_key (the certificate of that key)"]
        );
        let other = testdata("two.key");
        assert_eq!(
            problems(&format!(
                "sni = \"a.test\"\nclient_cert = {cert:?}\nclient_key = {other:?}"
            )),
            [format!(
                "pools.api.tls.client_key: {other}: is not the key of the certificate in {cert}"
            )]
        );
        let err = problems(&format!(
            "sni = \"a.test\"\nclient_cert = {key:?}\nclient_key = {cert:?}"
        ));
        assert_eq!(
            err,
            [format!(
                "pools.api.tls.client_cert: {key}: holds no \"BEGIN CERTIFICATE\" block"
            )]
        );
        let err = problems(&format!(
            "sni = \"a.test\"\nclient_cert = {cert:?}\nclient_key = {cert:?}"
        ));
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with(&format!(
                "pools.api.tls.client_key: {cert}: holds no unencrypted private key"
            )),
            "{err:?}"
        );
    }
}
