//! The proxy's configuration: one TOML file, read into `FileConfig` (serde, unknown keys refused),
//! checked section by section, then finished on this machine into `Config`, the only form the
//! rest of the proxy sees.
//!
//! ```text
//!   drawbridge.toml  ->  FileConfig  ->  check  ->  finish (DNS, host name)  ->  Config
//! ```
//!
//! Values come from the file; where the file is silent, Consul's own environment variables
//! (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`) fill the Consul address and
//! token, then the documented defaults apply. Every problem found is reported with the path of its
//! key, not just the first one.
//!
//! Checking reads only the files the config names (page, token, key and certificate files) and
//! whether the process files' folders exist. Finishing looks up pool servers given by host name
//! (one that does not resolve is refused with its key, with any other problem) and fills the
//! default `consul.service_id` from the host name. [`Config::load`] and [`Config::parse`] do both;
//! [`Config::check_file`] only checks.
//!
//! # Layout
//! * `file`: the file as written.
//! * `server`: `[server]` and `[admin]`.
//! * `consul`: `[consul]`.
//! * `maintenance`: `[maintenance]` and `[bypass]`: what a closed gate answers, and who passes it.
//! * `upstreams`: `[pools.*]` and `[[routes]]`.
//! * `limits`: `[limits]`.
//! * `tls`: `[tls]`: the certificates of the TLS listeners, read and checked.

mod consul;
mod file;
mod limits;
mod maintenance;
mod server;
mod tls;
mod upstreams;

pub use consul::ConsulSettings;
pub use drawbridge_core::settings::ConfigError;
pub use limits::{Limits, BODY_RATE_GRACE};
pub use maintenance::{BypassSettings, CorsPolicy, MaintenanceSettings};
pub use server::{AccessLog, AdminSettings, ServerSettings};
pub use tls::{CertificateSettings, TlsSettings};
pub use upstreams::{HealthCheckSettings, PoolSettings, PoolSource, RouteKind, RouteSettings};

use drawbridge_core::settings::{load_config, parse_config, read_config, Problems};
use file::FileConfig;
use std::net::SocketAddr;
use std::path::Path;
use upstreams::NamedServers;

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
    pub limits: Limits,
    pub tls: TlsSettings,
    /// The file's top-level sections as written, to tell which ones changed when it is read
    /// again (SIGHUP); empty for a config made in a test.
    pub sections: toml::Table,
}

/// A config file read again on SIGHUP: checked (no name looked up), with its sections as written.
#[derive(Debug)]
pub struct Reread {
    pub tls: TlsSettings,
    pub sections: toml::Table,
}

impl Config {
    /// Reads, checks and finishes a config file on this machine, taking Consul's variables from
    /// the process environment.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML of the expected shape, fails a check, or names a
    /// pool server that does not resolve; the error lists every problem with its key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        let text = read_config(path)?;
        let mut config = Config::parse(path, &text, &env)?;
        config.sections = sections_of(&text);
        Ok(config)
    }

    /// Reads and checks the file again, as `--check` does (nothing is looked up).
    ///
    /// # Errors
    /// As [`Config::load`], but for names that do not resolve.
    pub fn reread(path: &Path) -> Result<Reread, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        let text = read_config(path)?;
        let tls = parse_config(path, &text, |file, p| check(file, p, &env).config.tls)?;
        Ok(Reread {
            tls,
            sections: sections_of(&text),
        })
    }

    /// Checks and finishes the text of a config file on this machine; `env` looks up
    /// environment variables.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        parse_config(path, text, |file, p| {
            check(file, p, env).finish(&Machine::LOCAL, p)
        })
    }

    /// Reads and checks a config file without finishing it, for `--check`: no name is looked up
    /// and the host name is not read. Returns the warnings.
    ///
    /// # Errors
    /// As [`Config::load`], except that pool server names are checked for their form only.
    pub fn check_file(path: &Path) -> Result<Vec<String>, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        load_config(path, |file, p| check(file, p, &env).config.warnings)
    }
}

/// The top-level tables of a text that parsed as the config already.
fn sections_of(text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_default()
}

/// What finishing a checked config takes from the machine it starts on.
struct Machine {
    /// The host name, for the default `consul.service_id`.
    host_name: fn() -> String,
    /// The first address a `host:port` resolves to; `None` when it does not resolve.
    resolve: fn(&str) -> Option<SocketAddr>,
}

impl Machine {
    /// This machine: the kernel's host name and the system resolver.
    const LOCAL: Machine = Machine {
        host_name: consul::local_host_name,
        resolve: upstreams::resolve_with_system,
    };
}

/// A config whose sections passed their checks, with the parts that need the machine open:
/// static pools with host names have no servers yet, and `consul.service_id` is empty when it
/// is to default.
struct Checked {
    config: Config,
    named_servers: Vec<NamedServers>,
    default_service_id: bool,
}

impl Checked {
    /// Resolves the pools' host names and fills in the default service id; a name that does
    /// not resolve is noted in `p`.
    fn finish(self, machine: &Machine, p: &mut Problems) -> Config {
        let mut config = self.config;
        upstreams::resolve_servers(&mut config.pools, self.named_servers, machine.resolve, p);
        if self.default_service_id {
            let listen = if config.server.listen.is_empty() {
                &config.server.tls_listen
            } else {
                &config.server.listen
            };
            config.consul.service_id = consul::default_service_id(
                &config.consul.service_name,
                &(machine.host_name)(),
                listen,
            );
        }
        config
    }
}

/// Checks every section; pure but for the files the config names and the folders it checks.
fn check(file: FileConfig, p: &mut Problems, env: &dyn Fn(&str) -> Option<String>) -> Checked {
    let server = server::check_server(file.server, p);
    let admin = server::check_admin(file.admin, p);
    check_admin_token(admin.token.as_deref(), p);
    let mut warnings = Vec::new();
    let default_service_id = file.consul.service_id.is_none();
    let consul = consul::check_consul(file.consul, p, &mut warnings, env);
    let maintenance = maintenance::check_maintenance(file.maintenance, p);
    let bypass = maintenance::check_bypass(file.bypass, p);
    let (pools, named_servers) = upstreams::check_pools(file.pools, p);
    warnings.extend(pools.iter().flat_map(PoolSettings::warnings));
    let routes = upstreams::check_routes(file.routes, &pools, p);
    let limits = limits::check_limits(file.limits, p);
    let tls = tls::check_tls(
        file.tls,
        &server.tls_listen,
        time::OffsetDateTime::now_utc(),
        p,
        &mut warnings,
    );
    Checked {
        config: Config {
            warnings,
            server,
            admin,
            consul,
            maintenance,
            bypass,
            pools,
            routes,
            limits,
            tls,
            sections: toml::Table::new(),
        },
        named_servers,
        default_service_id,
    }
}

/// The shortest `admin.token` accepted, in characters: the admin listener shows the gate state
/// and metrics, and a short token is guessed.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Refuses an `admin.token` shorter than [`MIN_ADMIN_TOKEN_CHARS`] (an empty one is refused by
/// the `[admin]` check already).
fn check_admin_token(token: Option<&str>, p: &mut Problems) {
    let chars = token.map_or(0, |t| t.chars().count());
    if (1..MIN_ADMIN_TOKEN_CHARS).contains(&chars) {
        p.add(
            "admin.token",
            format!(
                "has {chars} characters; use at least {MIN_ADMIN_TOKEN_CHARS} random ones \
                 (e.g. `openssl rand -hex 16`)"
            ),
        );
    }
}

#[cfg(test)]
mod tests;
