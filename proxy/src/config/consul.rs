//! `[consul]`: the agents the gate, split and windows keys are read from, the token, the
//! blocking-read settings and the proxy's own registration.
//!
//! The default `service_id` needs the host name, so it is filled in when the config is finished
//! ([`default_service_id`]), not while checking.

use super::file::{FileConsul, OneOrMany};
use drawbridge_core::consul::{Consistency, DEFAULT_ADDRESS};
use drawbridge_core::settings::Problems;
use drawbridge_core::{split, windows};
use std::net::SocketAddr;
use std::time::Duration;

/// Longest blocking-query wait Consul accepts.
const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// The watch on the gate key and the proxy's own registration.
#[derive(Debug)]
pub struct ConsulSettings {
    /// The agents to read from, in order of preference (the first also registers the proxy).
    pub addresses: Vec<String>,
    pub token: Option<String>,
    pub key: String,
    /// The key of the split document (`drawbridge_core::split`).
    pub split_key: String,
    /// The key of the maintenance windows (`drawbridge_core::windows`).
    pub windows_key: String,
    pub wait: Duration,
    pub consistency: Consistency,
    pub stale_after: Duration,
    pub register: bool,
    pub service_name: String,
    pub service_id: String,
}

/// Checks `[consul]`; `service_id` is left empty when the file does not give one.
pub(super) fn check_consul(
    c: FileConsul,
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
    } else if let Some(problem) = split::key_path_problem(&key) {
        p.add("consul.key", problem);
    }
    let split_key = c
        .split_key
        .unwrap_or_else(|| split::default_split_key(&key));
    // Without a gate key, its default split key would only repeat that problem.
    if let Some(problem) = split::split_key_problem(&key, &split_key).filter(|_| !key.is_empty()) {
        p.add("consul.split_key", problem);
    }
    let windows_key = c
        .windows_key
        .unwrap_or_else(|| windows::default_windows_key(&key));
    if let Some(problem) =
        windows::windows_key_problem(&key, &split_key, &windows_key).filter(|_| !key.is_empty())
    {
        p.add("consul.windows_key", problem);
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
    if c.service_id.as_deref().is_some_and(str::is_empty) {
        p.add(
            "consul.service_id",
            "is empty: leave it out for the default (service name, host name and port)",
        );
    }
    ConsulSettings {
        addresses,
        token,
        key,
        split_key,
        windows_key,
        wait,
        consistency,
        stale_after,
        register: c.register.unwrap_or(true),
        service_name,
        service_id: c.service_id.unwrap_or_default(),
    }
}

/// `consul.service_id` when the file leaves it out: the service name, the host name and the
/// port of the first listener, e.g. `drawbridge-edge1-8080`.
pub(super) fn default_service_id(
    service_name: &str,
    host_name: &str,
    listen: &[SocketAddr],
) -> String {
    let port = listen.first().map_or(0, SocketAddr::port);
    format!("{service_name}-{host_name}-{port}")
}

/// This machine's host name, `localhost` when the kernel does not say.
pub(super) fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
