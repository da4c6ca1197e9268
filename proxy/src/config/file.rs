//! The file as written: serde structs that mirror the TOML, every field optional where the file
//! may leave it out, unknown keys refused. Nothing here is checked; the section modules do that.

use drawbridge_core::settings::FileBypassKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) server: FileServer,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    pub(super) consul: FileConsul,
    #[serde(default)]
    pub(super) maintenance: FileMaintenance,
    #[serde(default)]
    pub(super) bypass: FileBypass,
    #[serde(default)]
    pub(super) pools: BTreeMap<String, FilePool>,
    #[serde(default)]
    pub(super) routes: Vec<FileRoute>,
    #[serde(default)]
    pub(super) limits: super::limits::FileLimits,
    #[serde(default)]
    pub(super) tls: super::tls::FileTls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServer {
    #[serde(default)]
    pub(super) listen: Vec<String>,
    #[serde(default)]
    pub(super) tls_listen: Vec<String>,
    pub(super) threads: Option<usize>,
    pub(super) pid_file: Option<PathBuf>,
    pub(super) upgrade_sock: Option<PathBuf>,
    pub(super) grace_period: Option<String>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) unknown_state: Option<String>,
    pub(super) access_log: Option<String>,
    pub(super) h2c: Option<bool>,
    pub(super) https_redirect: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) advertise_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConsul {
    pub(super) address: Option<OneOrMany>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) key: Option<String>,
    pub(super) split_key: Option<String>,
    pub(super) windows_key: Option<String>,
    pub(super) wait: Option<String>,
    pub(super) consistency: Option<String>,
    pub(super) stale_after: Option<String>,
    pub(super) register: Option<bool>,
    pub(super) service_name: Option<String>,
    pub(super) service_id: Option<String>,
}

/// `consul.address`: one address, or a list to fail over along.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMaintenance {
    pub(super) default_retry_after: Option<String>,
    pub(super) page_refresh_max: Option<String>,
    pub(super) page: Option<PathBuf>,
    pub(super) default_message: Option<String>,
    #[serde(default)]
    pub(super) cors_allowed_origins: Vec<String>,
    pub(super) announce_before: Option<String>,
    pub(super) overdue_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBypass {
    #[serde(default)]
    pub(super) trusted_cidrs: Vec<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) header: Option<String>,
    pub(super) cookie: Option<String>,
    pub(super) environment: Option<String>,
    pub(super) max_ttl: Option<String>,
    #[serde(default)]
    pub(super) keys: Vec<FileBypassKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePool {
    pub(super) servers: Option<Vec<String>>,
    pub(super) consul_service: Option<String>,
    pub(super) health_check: Option<FileHealthCheck>,
    pub(super) connect_timeout: Option<String>,
    pub(super) read_timeout: Option<String>,
    pub(super) tls: Option<FilePoolTls>,
}

/// `[pools.<name>.tls]`: the pool's servers speak TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePoolTls {
    pub(super) sni: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) verify: Option<bool>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHealthCheck {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) path: Option<String>,
    pub(super) interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub(super) name: String,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) kind: String,
    pub(super) pool: String,
    #[serde(default)]
    pub(super) exempt_paths: Vec<String>,
}
