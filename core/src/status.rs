//! The report a proxy serves on its admin `/status`, and `maintctl` reads to prove a switch landed.

use crate::gate::Mode;
use serde::{Deserialize, Serialize};

/// The Consul service meta key under which a proxy publishes its admin URL (`/status` and
/// `/metrics` live there), so `maintctl` finds every proxy of a fleet.
pub const ADMIN_URL_META: &str = "admin_url";

/// Everything `/status` tells about one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The proxy's version.
    pub version: String,
    /// The id this proxy registered under in Consul.
    pub instance: String,
    /// The gate state being served.
    pub gate: GateStatus,
    /// How the watch on the key is doing.
    pub consul: ConsulStatus,
    /// The upstream pools and the health of their servers.
    pub pools: Vec<PoolStatus>,
    /// The TLS listeners and their certificates; absent when the proxy has no TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// The split of routes between two pools; absent from proxies that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitStatus>,
    /// The maintenance windows a proxy announces; absent from proxies that predate them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowsStatus>,
    /// The config file, as read at start and again on SIGHUP; absent from proxies that predate
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigStatus>,
}

/// The config file: what the last read on SIGHUP found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub file: String,
    /// When it was last read again (SIGHUP); none since the start when absent.
    pub reread_at: Option<String>,
    /// Why the last read was refused, if it was: nothing changed then.
    pub last_error: Option<String>,
    /// The top-level sections that differ from the ones served (`tls` for its keys other than
    /// `certificates`, which are applied live): they apply at the next restart.
    pub restart_needed: Vec<String>,
}

/// The windows document a proxy announces, and how the watch on its key is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowsStatus {
    pub key: String,
    /// The Consul index of the applied document, as for [`SplitStatus::applied_index`].
    pub applied_index: u64,
    /// The ids of the scheduled windows that are not over, by start.
    pub coming: Vec<String>,
    /// The id of the window announced now (API answers carry its announcement header).
    pub announced: Option<String>,
    /// The last error reading the key, if the last read failed.
    pub last_error: Option<String>,
    /// The last value at the key that was refused, and why: the windows stayed as they were.
    pub last_rejected: Option<RejectedValue>,
}

/// The split document a proxy applies, and how the watch on its key is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitStatus {
    pub key: String,
    /// The Consul index of the applied document: the key's ModifyIndex, or for a missing key
    /// the index Consul answered with; 0 before the first answer (nothing is split then).
    pub applied_index: u64,
    /// The split routes: their second pool and the share of clients it gets.
    pub routes: std::collections::BTreeMap<String, crate::split::RouteSplit>,
    /// Who wrote the applied document.
    pub by: Option<String>,
    /// The last error reading the key, if the last read failed.
    pub last_error: Option<String>,
    /// The last value at the key that was refused, and why: the split stayed as it was.
    pub last_rejected: Option<RejectedValue>,
}

/// The gate state a proxy serves and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateStatus {
    pub mode: Mode,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// RFC 3339.
    pub until: Option<String>,
    pub by: Option<String>,
    pub scope: Option<Vec<String>>,
    /// `consul`; `state_file` (restored at start while Consul did not answer); `fail_safe` (the
    /// state is unknown: the state file could not be used or there was none, and Consul gave no
    /// state, so the proxy serves its `server.unknown_state`, maintenance by default, until
    /// Consul answers); or `default` (before the first read of Consul finished, while the proxy
    /// listener does not accept yet).
    pub source: String,
    /// The Consul index of the applied state: the key's ModifyIndex, or for a missing key the
    /// index Consul answered with. `maintctl` waits until it reaches the index it wrote.
    pub applied_index: u64,
    /// When this state was applied (RFC 3339).
    pub applied_at: String,
    /// The document asks the proxies to open the gate by themselves once it is overdue.
    #[serde(default)]
    pub expire: bool,
    /// The gate is closed past `until` plus the proxy's `maintenance.overdue_grace`.
    #[serde(default)]
    pub overdue: bool,
    /// Overdue with `expire`: the proxy serves the gate open, whatever `mode` says.
    #[serde(default)]
    pub expired: bool,
}

/// The watch on the gate key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsulStatus {
    /// The agent the watcher reads from now.
    pub address: String,
    /// Every configured agent, in order; the watcher moves along them when one fails.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub key: String,
    /// Whether the last request to Consul got an answer.
    pub reachable: bool,
    /// True when the watcher has had no contact with Consul for longer than the staleness
    /// limit: no answer, and no blocking read open and not yet timed out.
    pub stale: bool,
    /// Seconds without contact: 0 while a blocking read is open and not yet timed out.
    #[serde(default)]
    pub seconds_without_contact: Option<f64>,
    /// When Consul last answered (RFC 3339).
    pub last_answer_at: Option<String>,
    /// Seconds since Consul last answered.
    pub seconds_since_answer: Option<f64>,
    /// The blocking-query index the watcher waits on.
    pub watch_index: u64,
    /// The last error talking to Consul, if the last request failed.
    pub last_error: Option<String>,
    /// The last value at the key that was refused, and why.
    pub last_rejected: Option<RejectedValue>,
}

/// A value at the key that did not change the gate because it did not parse or check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedValue {
    pub modify_index: u64,
    pub error: String,
    /// RFC 3339.
    pub at: String,
}

/// One upstream pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// `static` or `consul:<service>`.
    pub source: String,
    pub servers: Vec<ServerStatus>,
}

/// One server of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub address: String,
    pub healthy: bool,
    /// Requests this proxy has in flight to the server now (0 from proxies that predate it).
    #[serde(default)]
    pub in_flight: u64,
    /// Whether the server is one of the pool's now. `false` for one that has left it (out of
    /// its Consul service, a box put into maintenance) and is listed only while requests to it
    /// are still in flight: new requests no longer go there, and a drain waits for these.
    #[serde(default = "in_pool_by_default")]
    pub in_pool: bool,
}

/// Proxies that predate `in_pool` list only the pool's servers.
fn in_pool_by_default() -> bool {
    true
}

/// The TLS listeners and the certificates they serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// The TLS listeners' addresses.
    pub listen: Vec<String>,
    /// Every `[[tls.certificates]]` entry, in config order.
    pub certificates: Vec<CertificateStatus>,
}

/// One certificate entry: what is served, and how the last read of its files went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The certificate chain file.
    pub cert: String,
    /// The private key file.
    pub key: String,
    /// Whether it is served to clients whose name (SNI) matches no certificate, or who send none.
    pub default: bool,
    /// The DNS names of the certificate being served (wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// The validity of the certificate being served (RFC 3339).
    pub not_before: String,
    pub not_after: String,
    /// When the certificate being served was read (RFC 3339).
    pub loaded_at: String,
    /// When the files were last read, at start, on SIGHUP or after a change (RFC 3339).
    pub last_read_at: String,
    /// Why the last read was refused, naming the file; the certificate read before is still
    /// served. `None` when the last read was served.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_listed_by_an_older_proxy_is_in_its_pool_with_nothing_in_flight() {
        let server: ServerStatus =
            serde_json::from_str(r#"{"address":"10.0.1.10:8080","healthy":true}"#).unwrap();
        assert_eq!(server.in_flight, 0);
        assert!(server.in_pool);
        let departed: ServerStatus = serde_json::from_str(
            r#"{"address":"10.0.1.10:8080","healthy":false,"in_flight":2,"in_pool":false}"#,
        )
        .unwrap();
        assert!(!departed.in_pool);
        assert_eq!(departed.in_flight, 2);
    }
}
