//! `[server]` and `[admin]`: the listeners (plain HTTP and TLS), threads and process files, and
//! the admin listener with its token.
//!
//! The folders of the pid file, upgrade socket and state file must exist (checked with a
//! `stat`): the process cannot create them later, so a missing one is refused here.
//! `unknown_state` is the mode served while the gate state is unknown (fail closed by default).

use super::file::{FileAdmin, FileServer};
use drawbridge_core::gate::Mode;
use drawbridge_core::settings::Problems;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Listeners, threads, process files.
#[derive(Debug)]
pub struct ServerSettings {
    /// The plain HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// The TLS listeners (their certificates are `[tls]`).
    pub tls_listen: Vec<SocketAddr>,
    pub threads: usize,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub state_file: PathBuf,
    /// The mode served while the gate state is unknown: the state file cannot be used (or
    /// there is none) and Consul has given no state yet.
    pub unknown_state: Mode,
    pub access_log: AccessLog,
    /// The plain listeners also take HTTP/2 from clients that start with its preface (h2c with
    /// prior knowledge); the TLS listeners offer HTTP/2 by ALPN (`tls.http2`).
    pub h2c: bool,
    /// Plain requests are redirected to HTTPS on the first TLS listener's port (308), but for
    /// ACME challenges and `/.well-known/maintenance`.
    pub https_redirect: bool,
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

pub(super) fn check_server(s: FileServer, p: &mut Problems) -> ServerSettings {
    if s.listen.is_empty() && s.tls_listen.is_empty() {
        p.add(
            "server.listen",
            "at least one \"ip:port\" listener is required (here or in server.tls_listen)",
        );
    }
    let listen: Vec<SocketAddr> = s
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| socket_addr(p, &format!("server.listen[{i}]"), raw))
        .collect();
    let mut tls_listen = Vec::new();
    for (i, raw) in s.tls_listen.iter().enumerate() {
        let key = format!("server.tls_listen[{i}]");
        let Some(addr) = socket_addr(p, &key, raw) else {
            continue;
        };
        if listen.contains(&addr) {
            p.add(
                key,
                format!(
                    "{addr} is also in server.listen: a port serves plain HTTP or TLS, not both"
                ),
            );
        } else {
            tls_listen.push(addr);
        }
    }
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
    let unknown_state = match s.unknown_state.as_deref() {
        None | Some("maintenance") => Mode::Maintenance,
        Some("read_only") => Mode::ReadOnly,
        Some("normal") => Mode::Normal,
        Some(other) => {
            p.add(
                "server.unknown_state",
                format!(
                    "{other:?} is not one of \"maintenance\" (the default: fail closed), \"read_only\", \"normal\""
                ),
            );
            Mode::Maintenance
        }
    };
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
    let https_redirect = s.https_redirect.unwrap_or(false);
    if https_redirect && s.tls_listen.is_empty() {
        p.add(
            "server.https_redirect",
            "redirects to HTTPS need a TLS listener: set server.tls_listen",
        );
    }
    ServerSettings {
        listen,
        tls_listen,
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
        unknown_state,
        access_log,
        h2c: s.h2c.unwrap_or(false),
        https_redirect,
    }
}

pub(super) fn check_admin(a: FileAdmin, p: &mut Problems) -> AdminSettings {
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
