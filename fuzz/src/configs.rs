//! The two config loaders: the proxy's `drawbridge.toml` and maintctl's inventory.
//!
//! Both read the files a config names (page template, token and key files) and the proxy's
//! looks up pool servers given by host name. A fuzzed config may name any path or host, so a
//! text that would read a special file (`/dev/zero` never ends, `/dev/stdin` waits) or a large
//! one, or look up a name other than `localhost` (a DNS query per run), is left out: what is
//! fuzzed is the text, not the machine.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// `drawbridge::config::Config::parse` on any text.
///
/// Checks: it returns, never panics; a refusal lists at least one problem; an accepted config
/// keeps the promises the proxy starts on (a listener, a gate key, a Consul address, threads
/// within bounds, every route on an existing pool, a bypass keyring only with an environment).
pub fn proxy_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !harmless(text, true) {
        return;
    }
    let env = |name: &str| (name == "CONSUL_HTTP_ADDR").then(|| "http://127.0.0.1:8500".into());
    match drawbridge::config::Config::parse(Path::new("drawbridge.toml"), text, &env) {
        Ok(config) => {
            assert!(!config.server.listen.is_empty());
            assert!((1..=64).contains(&config.server.threads));
            assert!(!config.consul.key.is_empty());
            assert!(!config.consul.addresses.is_empty());
            assert!(!config.consul.service_id.is_empty());
            for route in &config.routes {
                assert!(route.pool < config.pools.len(), "{route:?}");
            }
            if config.bypass.keyring.is_some() {
                assert!(!config.bypass.environment.is_empty());
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}

/// `maintctl::config::Config::parse` on any text.
///
/// Checks: it returns, never panics; a refusal lists at least one problem; an accepted
/// inventory has an environment, and each is found by its name.
pub fn maintctl_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !harmless(text, false) {
        return;
    }
    let env = |_: &str| None;
    match maintctl::config::Config::parse(Path::new("maintctl.toml"), text, &env) {
        Ok(config) => {
            assert!(!config.environments.is_empty());
            for name in config.environments.keys() {
                assert!(config.environment(name).is_ok());
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Whether loading `text` touches the machine only harmlessly: every file it could read is
/// absent or a small regular file outside `/dev`, `/proc` and `/sys`, and (for the proxy) every
/// pool server to look up is `localhost`. Text that is not TOML is harmless: it is refused
/// before anything is read.
fn harmless(text: &str, pool_names: bool) -> bool {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return true;
    };
    let root = toml::Value::Table(doc);
    if !files_harmless(&root) {
        return false;
    }
    if !pool_names {
        return true;
    }
    let Some(pools) = root.get("pools").and_then(toml::Value::as_table) else {
        return true;
    };
    pools
        .values()
        .filter_map(|pool| pool.get("servers").and_then(toml::Value::as_array))
        .flatten()
        .filter_map(toml::Value::as_str)
        .all(|server| !looked_up(server))
}

/// Whether a `servers` entry would be looked up by name (the loader's own reading: an address,
/// else `host:port` split at the last `:`); over-approximated, which only skips more.
fn looked_up(server: &str) -> bool {
    if server.parse::<SocketAddr>().is_ok() {
        return false;
    }
    match server.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && host.parse::<IpAddr>().is_err() && host != "localhost"
        }
        None => false,
    }
}

/// Whether every string in the document is harmless to read as a file: any key may name one
/// (`page`, `*_file`, certificate and key paths), so all are checked.
fn files_harmless(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(text) => harmless_to_read(Path::new(text)),
        toml::Value::Table(table) => table.values().all(files_harmless),
        toml::Value::Array(items) => items.iter().all(files_harmless),
        _ => true,
    }
}

/// Absent, a folder (its read fails at once), or a small regular file outside `/dev`, `/proc`
/// and `/sys`.
fn harmless_to_read(path: &Path) -> bool {
    if path.as_os_str().is_empty() || path.as_os_str().len() > 4096 {
        return true;
    }
    let Ok(real) = path.canonicalize() else {
        // Absent (or unreachable): a read fails at once.
        return path.symlink_metadata().is_err();
    };
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|special| real.starts_with(special))
    {
        return false;
    }
    real.metadata()
        .is_ok_and(|m| m.is_dir() || (m.is_file() && m.len() <= 64 * 1024))
}
