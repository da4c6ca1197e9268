//! maintctl's inventory: the environments (e.g. `final`, `mock`, `prod`), each with its Consul, gate
//! key, proxies, public URLs, smoke tests, boxes by role and extra steps. One TOML file, unknown
//! keys refused, every problem reported with its key.
//!
//! Consul's address and token come from the file, else from `CONSUL_HTTP_ADDR`,
//! `CONSUL_HTTP_TOKEN` and `CONSUL_HTTP_TOKEN_FILE`, as the consul CLI reads them.

use crate::notices::{self, settings::NoticeSettings};
use drawbridge_core::bypass::{self, Keyring};
pub use drawbridge_core::settings::ConfigError;
use drawbridge_core::settings::{load_config, parse_config, FileBypassKey, Problems};
use drawbridge_core::{split, windows};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

// === the file, as written ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    environments: BTreeMap<String, FileEnvironment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEnvironment {
    consul: Option<String>,
    consul_token: Option<String>,
    consul_token_file: Option<PathBuf>,
    key: Option<String>,
    split_key: Option<String>,
    windows_key: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    confirm: bool,
    parallel: Option<usize>,
    step_timeout: Option<String>,
    verify_timeout: Option<String>,
    ssh_config: Option<PathBuf>,
    proxy_service: Option<String>,
    #[serde(default)]
    proxy_admin_urls: Vec<String>,
    proxy_admin_token: Option<String>,
    proxy_admin_token_file: Option<PathBuf>,
    #[serde(default)]
    public_page_urls: Vec<String>,
    #[serde(default)]
    public_api_urls: Vec<String>,
    bypass: Option<FileBypass>,
    #[serde(default)]
    smoke: Vec<FileSmoke>,
    #[serde(default)]
    boxes: Vec<FileBox>,
    #[serde(default)]
    steps: Vec<FileExtraStep>,
    canary: Option<FileCanary>,
    roll: Option<FileRoll>,
    #[serde(default)]
    rehearsals: Vec<String>,
    db_factor: Option<f64>,
    max_window: Option<String>,
    notices: Option<notices::settings::FileNotices>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoll {
    command: Option<String>,
    url: Option<String>,
    timeout: Option<String>,
    healthy_timeout: Option<String>,
    healthy_for: Option<String>,
    smoke_url: Option<String>,
    smoke_expect_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCanary {
    max_error_rate: Option<f64>,
    max_p99_ratio: Option<f64>,
    min_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBypass {
    environment: String,
    header: Option<String>,
    cookie: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    keys: Vec<FileBypassKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSmoke {
    name: String,
    url: String,
    method: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBox {
    name: String,
    role: String,
    node: Option<String>,
    consul_agent: Option<String>,
    ssh: Option<String>,
    stop: Option<String>,
    start: Option<String>,
    check: Option<String>,
    stop_url: Option<String>,
    start_url: Option<String>,
    check_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExtraStep {
    name: String,
    when: String,
    webhook: Option<String>,
    pause: Option<String>,
    command: Option<String>,
}

// === the checked inventory ===

/// Every environment, by name.
#[derive(Debug)]
pub struct Config {
    pub environments: BTreeMap<String, Environment>,
}

/// One environment: what `maintctl down/up --env NAME` acts on.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub consul: String,
    pub consul_token: Option<String>,
    pub key: String,
    /// The split document's key (`<key>/split` unless set, as the proxies' default).
    pub split_key: String,
    /// The maintenance windows' key (`<key>/windows` unless set).
    pub windows_key: String,
    /// Consul KV prefix of the lock and the journal.
    pub prefix: String,
    /// Ask before acting (production), unless `--yes`.
    pub confirm: bool,
    /// Boxes acted on at once within a step.
    pub parallel: usize,
    pub step_timeout: Duration,
    pub verify_timeout: Duration,
    /// `ssh -F` file; the operator's own ssh configuration when absent.
    pub ssh_config: Option<PathBuf>,
    pub proxies: ProxyDiscovery,
    pub proxy_admin_token: Option<String>,
    pub public_page_urls: Vec<String>,
    pub public_api_urls: Vec<String>,
    pub bypass: Option<BypassSettings>,
    pub smoke: Vec<SmokeTest>,
    pub boxes: Vec<BoxSettings>,
    pub extra_steps: Vec<ExtraStep>,
    pub canary: CanaryThresholds,
    /// How `maintctl roll` replaces or upgrades a box; `roll` is refused without it.
    pub roll: Option<RollSettings>,
    /// The environments whose last completed maintenance predicts this one's (e.g. `final`,
    /// `mock`), checked to be environments of the file.
    pub rehearsals: Vec<String>,
    /// What the rehearsals' times are multiplied by when the maintenance touches the database.
    pub db_factor: f64,
    /// The longest window `schedule` accepts without `--force`.
    pub max_window: Option<Duration>,
    /// Who is told of the maintenance windows, and how.
    pub notices: NoticeSettings,
}

/// What `maintctl roll` does to each api_ui box while it is drained, and how it waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollSettings {
    pub action: RollAction,
    /// Longest the command or the call may take.
    pub timeout: Duration,
    /// Longest wait for the box's Consul checks to pass after it.
    pub healthy_timeout: Duration,
    /// How long the checks must pass without a break before the box counts as healthy (a check
    /// that ran before the restart may still say passing).
    pub healthy_for: Duration,
    /// Requested (GET) on each box once healthy, before it takes traffic again; `{box}`, `{node}`
    /// and `{address}` (the node's address in Consul) are replaced. 2xx passes.
    pub smoke_url: Option<String>,
    /// Text the smoke answer must contain.
    pub smoke_expect_body: Option<String>,
}

/// How a box is replaced or upgraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollAction {
    /// Run on the box over ssh (its `ssh` destination).
    Command(String),
    /// POST to this URL (`{box}` and `{node}` replaced); 2xx is done.
    Url(String),
}

/// When `maintctl canary` rolls a new pool back, compared with the pool it replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryThresholds {
    /// The most answers of the new pool that may be 5xx or none, as a share (0.01: 1 %).
    pub max_error_rate: f64,
    /// The most the new pool's p99 may be, as a multiple of the old pool's.
    pub max_p99_ratio: f64,
    /// The fewest requests the new pool must have answered in a step's hold to be judged.
    pub min_requests: u64,
}

/// How the environment's proxies are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyDiscovery {
    /// The instances of this Consul service (their `admin_url` service meta).
    ConsulService(String),
    /// These admin URLs.
    AdminUrls(Vec<String>),
}

/// How bypass tokens for smoke tests and `maintctl bypass` are made.
#[derive(Debug, Clone)]
pub struct BypassSettings {
    pub environment: String,
    pub header: String,
    pub cookie: String,
    pub ttl: Duration,
    pub keyring: Keyring,
}

/// A request through the proxy, with a bypass token, that must pass before traffic opens.
#[derive(Debug, Clone)]
pub struct SmokeTest {
    pub name: String,
    pub url: String,
    pub method: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
}

/// What a box is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves the API and UI: put into Consul node maintenance.
    ApiUi,
    /// Runs worker services: stopped and started.
    Worker,
    /// Runs scheduled jobs: disabled and enabled.
    Scheduler,
}

impl Role {
    /// The role's name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ApiUi => "api_ui",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
        }
    }
}

/// How maintctl reaches a box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoxAccess {
    /// The box's Consul agent HTTP address (node maintenance of api_ui boxes).
    ConsulAgent(String),
    /// Commands over SSH (`ssh` destination, the operator's ssh config applies).
    Ssh {
        destination: String,
        stop: String,
        start: String,
        check: String,
    },
    /// HTTP calls: POST stop/start (2xx is success), GET check (200 running, 503 stopped).
    Http {
        stop_url: String,
        start_url: String,
        check_url: String,
    },
}

/// One box.
#[derive(Debug, Clone)]
pub struct BoxSettings {
    pub name: String,
    pub role: Role,
    /// The Consul node name (default: the box name).
    pub node: String,
    pub access: BoxAccess,
    /// Its `ssh` destination, when it has one (for an api_ui box with a `consul_agent`, only
    /// `maintctl roll` uses it).
    pub ssh: Option<String>,
}

/// When an extra step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    BeforeDown,
    AfterDown,
    BeforeUp,
    AfterUp,
}

/// What an extra step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraAction {
    /// POST a JSON description of the run to this URL.
    Webhook(String),
    /// Wait until an operator confirms this text on the terminal.
    Pause(String),
    /// Run this command locally (`sh -c`).
    Command(String),
}

/// A step the config adds to the built-in procedure.
#[derive(Debug, Clone)]
pub struct ExtraStep {
    pub name: String,
    pub when: When,
    pub action: ExtraAction,
}

impl Config {
    /// Reads and checks the inventory, with Consul's variables from the process environment.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, or failed checks; every problem with its key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        load_config(path, |file, problems| check(file, problems, &env))
    }

    /// Checks the text of an inventory; `env` looks up environment variables.
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

    /// The environment called `name`.
    ///
    /// # Errors
    /// An unknown name; the message lists the known ones.
    pub fn environment(&self, name: &str) -> Result<&Environment, String> {
        self.environments.get(name).ok_or_else(|| {
            format!(
                "no environment {name:?} in the configuration (known: {})",
                self.environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

fn check(file: FileConfig, p: &mut Problems, env: &dyn Fn(&str) -> Option<String>) -> Config {
    if file.environments.is_empty() {
        p.add("environments", "define at least one [environments.NAME]");
    }
    let environments: BTreeMap<String, Environment> = file
        .environments
        .into_iter()
        .map(|(name, e)| {
            let checked = check_environment(&name, e, p, env);
            (name, checked)
        })
        .collect();
    for (name, e) in &environments {
        for (i, rehearsal) in e.rehearsals.iter().enumerate() {
            if rehearsal == name || !environments.contains_key(rehearsal) {
                p.add(
                    format!("environments.{name}.rehearsals[{i}]"),
                    format!("{rehearsal:?} is not another environment of this file"),
                );
            }
        }
    }
    Config { environments }
}

fn check_url(p: &mut Problems, key: &str, url: &str) {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        p.add(key, format!("{url:?} is not an http:// or https:// URL"));
    }
}

fn check_environment(
    name: &str,
    e: FileEnvironment,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> Environment {
    let k = |field: &str| format!("environments.{name}.{field}");
    let consul = e
        .consul
        .or_else(|| env("CONSUL_HTTP_ADDR"))
        .unwrap_or_else(|| "http://127.0.0.1:8500".to_string());
    if let Err(err) = drawbridge_core::consul::Client::new(&consul, None) {
        p.add(k("consul"), err);
    }
    let consul_token = p.consul_token(
        &k("consul_token"),
        e.consul_token,
        e.consul_token_file.as_deref(),
        env,
    );
    let key = e.key.unwrap_or_default();
    if key.is_empty() {
        p.add(k("key"), "the gate key the proxies watch is required");
    }
    let split_key = e
        .split_key
        .unwrap_or_else(|| split::default_split_key(&key));
    // Without a gate key, its default split key would only repeat that problem.
    if let Some(problem) = split::split_key_problem(&key, &split_key).filter(|_| !key.is_empty()) {
        p.add(k("split_key"), problem);
    }
    let windows_key = e
        .windows_key
        .unwrap_or_else(|| windows::default_windows_key(&key));
    let windows_problem = windows::windows_key_problem(&key, &split_key, &windows_key);
    if let Some(problem) = windows_problem.filter(|_| !key.is_empty()) {
        p.add(k("windows_key"), problem);
    }
    let canary = check_canary(&k("canary"), e.canary, p);
    let step_timeout = p.duration(
        &k("step_timeout"),
        e.step_timeout.as_deref(),
        Duration::from_secs(120),
    );
    let roll = e
        .roll
        .and_then(|r| check_roll(&k("roll"), r, step_timeout, p));
    let db_factor = e.db_factor.unwrap_or(2.0);
    if !(db_factor >= 1.0 && db_factor.is_finite()) {
        p.add(
            k("db_factor"),
            "must be 1 or more, e.g. 2: a maintenance with the database takes twice its rehearsal",
        );
    }
    let max_window = e
        .max_window
        .as_deref()
        .map(|raw| p.duration(&k("max_window"), Some(raw), Duration::ZERO));
    let notices = e
        .notices
        .map(|n| notices::settings::check(&k("notices"), n, p))
        .unwrap_or_default();
    let prefix = e.prefix.unwrap_or_else(|| format!("maintctl/{name}"));
    if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') {
        p.add(
            k("prefix"),
            format!("{prefix:?} must be a key path without leading or trailing '/'"),
        );
    }
    let parallel = e.parallel.unwrap_or(4);
    if !(1..=64).contains(&parallel) {
        p.add(k("parallel"), format!("{parallel} is not between 1 and 64"));
    }
    let proxies = match (e.proxy_service, e.proxy_admin_urls.is_empty()) {
        (Some(_), false) => {
            p.add(
                k("proxy_service"),
                "set either proxy_service or proxy_admin_urls, not both",
            );
            ProxyDiscovery::AdminUrls(e.proxy_admin_urls)
        }
        (Some(service), true) => ProxyDiscovery::ConsulService(service),
        (None, false) => {
            for (i, url) in e.proxy_admin_urls.iter().enumerate() {
                check_url(p, &k(&format!("proxy_admin_urls[{i}]")), url);
            }
            ProxyDiscovery::AdminUrls(e.proxy_admin_urls)
        }
        (None, true) => ProxyDiscovery::ConsulService("drawbridge".to_string()),
    };
    for (i, url) in e.public_page_urls.iter().enumerate() {
        check_url(p, &k(&format!("public_page_urls[{i}]")), url);
    }
    for (i, url) in e.public_api_urls.iter().enumerate() {
        check_url(p, &k(&format!("public_api_urls[{i}]")), url);
    }
    let bypass = e.bypass.and_then(|b| {
        let keyring = p.keyring(&k("bypass.keys"), b.keys);
        if keyring.is_none() && !p.mentions(&k("bypass.keys")) {
            p.add(
                k("bypass.keys"),
                "at least one key is needed to sign bypass tokens",
            );
        }
        Some(BypassSettings {
            environment: b.environment,
            header: b
                .header
                .unwrap_or_else(|| bypass::DEFAULT_HEADER.to_string()),
            cookie: b
                .cookie
                .unwrap_or_else(|| bypass::DEFAULT_COOKIE.to_string()),
            ttl: p.duration(&k("bypass.ttl"), b.ttl.as_deref(), Duration::from_secs(600)),
            keyring: keyring?,
        })
    });
    if !e.smoke.is_empty() && bypass.is_none() && !p.mentions(&k("bypass")) {
        p.add(
            k("smoke"),
            "smoke tests pass the closed gate with a bypass token: configure [bypass]",
        );
    }
    let smoke = e
        .smoke
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            check_url(p, &k(&format!("smoke[{i}].url")), &s.url);
            SmokeTest {
                name: s.name,
                url: s.url,
                method: s
                    .method
                    .unwrap_or_else(|| "GET".to_string())
                    .to_ascii_uppercase(),
                expect_status: s.expect_status.unwrap_or(200),
                expect_body: s.expect_body,
            }
        })
        .collect();
    let mut names = HashSet::new();
    let boxes: Vec<BoxSettings> = e
        .boxes
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let bk = k(&format!("boxes[{i}]"));
            if !names.insert(b.name.clone()) {
                p.add(
                    format!("{bk}.name"),
                    format!("{:?} is used by another box", b.name),
                );
            }
            check_box(&bk, b, p)
        })
        .collect();
    if let Some(RollAction::Command(_)) = roll.as_ref().map(|r| &r.action) {
        for b in boxes_without_ssh(&boxes) {
            p.add(
                k("roll.command"),
                format!("runs on each api_ui box over ssh, but box {b} has no `ssh` destination"),
            );
        }
    }
    let extra_steps = e
        .steps
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| check_extra_step(&k(&format!("steps[{i}]")), s, p))
        .collect();
    Environment {
        name: name.to_string(),
        consul,
        consul_token,
        key,
        split_key,
        windows_key,
        prefix,
        confirm: e.confirm,
        parallel,
        step_timeout,
        verify_timeout: p.duration(
            &k("verify_timeout"),
            e.verify_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        ssh_config: e.ssh_config,
        proxies,
        proxy_admin_token: p.secret(
            &k("proxy_admin_token"),
            e.proxy_admin_token,
            e.proxy_admin_token_file.as_deref(),
        ),
        public_page_urls: e.public_page_urls,
        public_api_urls: e.public_api_urls,
        bypass,
        smoke,
        boxes,
        extra_steps,
        canary,
        roll,
        rehearsals: e.rehearsals,
        db_factor,
        max_window,
        notices,
    }
}

/// The api_ui boxes that cannot be reached over ssh.
fn boxes_without_ssh(boxes: &[BoxSettings]) -> impl Iterator<Item = &str> {
    boxes
        .iter()
        .filter(|b| b.role == Role::ApiUi && b.ssh.is_none())
        .map(|b| b.name.as_str())
}

/// `[environments.NAME.roll]`: exactly one of `command` and `url`; the waits with their
/// defaults (the command as long as `step_timeout`, healthy within 5 minutes, for 10 seconds).
fn check_roll(
    key: &str,
    r: FileRoll,
    step_timeout: Duration,
    p: &mut Problems,
) -> Option<RollSettings> {
    let action = match (r.command, r.url) {
        (Some(command), None) if !command.trim().is_empty() => RollAction::Command(command),
        (None, Some(url)) => {
            check_url(p, &format!("{key}.url"), &url);
            RollAction::Url(url)
        }
        _ => {
            p.add(
                key,
                "set exactly one of `command` (run on each box over its ssh) or `url` (POSTed for each box)",
            );
            return None;
        }
    };
    if let Some(url) = &r.smoke_url {
        check_url(p, &format!("{key}.smoke_url"), url);
    }
    let duration = |p: &mut Problems, field: &str, value: Option<String>, default| {
        p.duration(&format!("{key}.{field}"), value.as_deref(), default)
    };
    let healthy_timeout = duration(
        p,
        "healthy_timeout",
        r.healthy_timeout,
        Duration::from_secs(300),
    );
    let healthy_for = duration(p, "healthy_for", r.healthy_for, Duration::from_secs(10));
    if healthy_for >= healthy_timeout {
        p.add(
            format!("{key}.healthy_for"),
            format!("{healthy_for:?} must be shorter than healthy_timeout ({healthy_timeout:?}), or no box could ever pass"),
        );
    }
    Some(RollSettings {
        action,
        timeout: duration(p, "timeout", r.timeout, step_timeout),
        healthy_timeout,
        healthy_for,
        smoke_url: r.smoke_url,
        smoke_expect_body: r.smoke_expect_body,
    })
}

/// `[environments.NAME.canary]`, with its defaults: 1 % errors, p99 at most 1.5 times the old
/// pool's, 20 requests.
fn check_canary(key: &str, c: Option<FileCanary>, p: &mut Problems) -> CanaryThresholds {
    let c = c.unwrap_or(FileCanary {
        max_error_rate: None,
        max_p99_ratio: None,
        min_requests: None,
    });
    let thresholds = CanaryThresholds {
        max_error_rate: c.max_error_rate.unwrap_or(0.01),
        max_p99_ratio: c.max_p99_ratio.unwrap_or(1.5),
        min_requests: c.min_requests.unwrap_or(20),
    };
    if !(0.0..1.0).contains(&thresholds.max_error_rate) {
        p.add(
            format!("{key}.max_error_rate"),
            "must be a share from 0 (no error) to below 1, e.g. 0.01 for 1 %",
        );
    }
    if !(thresholds.max_p99_ratio >= 1.0 && thresholds.max_p99_ratio.is_finite()) {
        p.add(
            format!("{key}.max_p99_ratio"),
            "must be 1 or more, e.g. 1.5: the new pool's p99 may be at most that many times the old pool's",
        );
    }
    if thresholds.min_requests == 0 {
        p.add(
            format!("{key}.min_requests"),
            "must be at least 1: a pool that answered nothing cannot be judged",
        );
    }
    thresholds
}

fn check_box(key: &str, b: FileBox, p: &mut Problems) -> Option<BoxSettings> {
    let role = match b.role.as_str() {
        "api_ui" => Role::ApiUi,
        "worker" => Role::Worker,
        "scheduler" => Role::Scheduler,
        other => {
            p.add(
                format!("{key}.role"),
                format!("{other:?} is not one of \"api_ui\", \"worker\", \"scheduler\""),
            );
            return None;
        }
    };
    let commands = [&b.stop, &b.start, &b.check];
    let urls = [&b.stop_url, &b.start_url, &b.check_url];
    let access = match (role, &b.consul_agent, &b.ssh) {
        (Role::ApiUi, Some(agent), _) => {
            if let Err(e) = drawbridge_core::consul::Client::new(agent, None) {
                p.add(format!("{key}.consul_agent"), e);
            }
            BoxAccess::ConsulAgent(agent.clone())
        }
        (Role::ApiUi, None, Some(ssh)) => BoxAccess::Ssh {
            destination: ssh.clone(),
            stop: b
                .stop
                .unwrap_or_else(|| "consul maint -enable -reason \"$MAINTCTL_REASON\"".to_string()),
            start: b
                .start
                .unwrap_or_else(|| "consul maint -disable".to_string()),
            // Exit 3 ("stopped", as LSB status codes say) while the node is in maintenance.
            check: b.check.unwrap_or_else(|| {
                "consul maint | grep -q 'Node:' && exit 3 || exit 0".to_string()
            }),
        },
        (Role::ApiUi, _, _) => {
            p.add(
                key,
                "an api_ui box needs `consul_agent` (its agent's HTTP address) or `ssh`",
            );
            return None;
        }
        (_, Some(_), _) => {
            p.add(
                format!("{key}.consul_agent"),
                "only applies to api_ui boxes",
            );
            return None;
        }
        (_, None, Some(ssh)) => {
            if commands.iter().any(|c| c.is_none()) {
                p.add(
                    key,
                    "a box reached over ssh needs `stop`, `start` and `check` commands",
                );
                return None;
            }
            BoxAccess::Ssh {
                destination: ssh.clone(),
                stop: b.stop.unwrap_or_default(),
                start: b.start.unwrap_or_default(),
                check: b.check.unwrap_or_default(),
            }
        }
        (_, None, None) => {
            if urls.iter().any(|u| u.is_none()) {
                p.add(
                    key,
                    "set `ssh` with stop/start/check commands, or stop_url/start_url/check_url",
                );
                return None;
            }
            for (field, url) in ["stop_url", "start_url", "check_url"].iter().zip(urls) {
                check_url(
                    p,
                    &format!("{key}.{field}"),
                    url.as_deref().unwrap_or_default(),
                );
            }
            BoxAccess::Http {
                stop_url: b.stop_url.unwrap_or_default(),
                start_url: b.start_url.unwrap_or_default(),
                check_url: b.check_url.unwrap_or_default(),
            }
        }
    };
    Some(BoxSettings {
        node: b.node.unwrap_or_else(|| b.name.clone()),
        name: b.name,
        role,
        access,
        ssh: b.ssh,
    })
}

fn check_extra_step(key: &str, s: FileExtraStep, p: &mut Problems) -> Option<ExtraStep> {
    let when = match s.when.as_str() {
        "before_down" => When::BeforeDown,
        "after_down" => When::AfterDown,
        "before_up" => When::BeforeUp,
        "after_up" => When::AfterUp,
        other => {
            p.add(
                format!("{key}.when"),
                format!("{other:?} is not one of \"before_down\", \"after_down\", \"before_up\", \"after_up\""),
            );
            return None;
        }
    };
    let action = match (s.webhook, s.pause, s.command) {
        (Some(url), None, None) => {
            check_url(p, &format!("{key}.webhook"), &url);
            ExtraAction::Webhook(url)
        }
        (None, Some(text), None) => ExtraAction::Pause(text),
        (None, None, Some(command)) => ExtraAction::Command(command),
        _ => {
            p.add(key, "set exactly one of `webhook`, `pause` or `command`");
            return None;
        }
    };
    Some(ExtraStep {
        name: s.name,
        when,
        action,
    })
}

/// An inventory of one environment (`mock`: two API/UI boxes, a worker, a webhook step) for
/// the tests of the modules that read inventories.
#[cfg(test)]
pub(crate) mod sample {
    use super::{Config, Environment};
    use std::path::Path;

    pub(crate) const MOCK: &str = r#"
        [environments.mock]
        consul = "http://127.0.0.1:8500"
        key = "drawbridge/mock/gate"
        [[environments.mock.boxes]]
        name = "api1"
        role = "api_ui"
        consul_agent = "http://127.0.0.2:8500"
        [[environments.mock.boxes]]
        name = "api2"
        role = "api_ui"
        consul_agent = "http://127.0.0.3:8500"
        [[environments.mock.boxes]]
        name = "worker1"
        role = "worker"
        ssh = "worker1"
        stop = "stop.sh"
        start = "start.sh"
        check = "check.sh"
        [[environments.mock.steps]]
        name = "partners"
        when = "before_down"
        webhook = "http://127.0.0.1:1/hook"
    "#;

    /// The `mock` environment of [`MOCK`].
    pub(crate) fn mock() -> Environment {
        let mut config = Config::parse(Path::new("maintctl.toml"), MOCK, &|_| None).unwrap();
        config.environments.remove("mock").unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::sample::MOCK;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("maintctl.toml"), text, &|_| None)
    }

    #[test]
    fn an_environment_gets_the_documented_defaults() {
        let c = parse(MOCK).unwrap();
        let mock = c.environment("mock").unwrap();
        assert_eq!(mock.prefix, "maintctl/mock");
        assert_eq!(mock.parallel, 4);
        assert_eq!(
            mock.proxies,
            ProxyDiscovery::ConsulService("drawbridge".into())
        );
        assert_eq!(mock.boxes[0].node, "api1");
        assert_eq!(mock.boxes[2].role, Role::Worker);
        assert!(c.environment("prod").unwrap_err().contains("known: mock"));
        assert_eq!(mock.split_key, "drawbridge/mock/gate/split");
        assert_eq!(mock.windows_key, "drawbridge/mock/gate/windows");
        assert_eq!(mock.canary.min_requests, 20);
    }

    #[test]
    fn a_split_key_is_checked_as_the_proxies_check_it() {
        let with = |split_key: &str| {
            MOCK.replace(
                "key = \"drawbridge/mock/gate\"",
                &format!("key = \"drawbridge/mock/gate\"\nsplit_key = {split_key:?}"),
            )
        };
        let err = parse(&with("drawbridge/mock/gate"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environments.mock.split_key: is the gate key"),
            "{err}"
        );
        let err = parse(&with("split//key")).unwrap_err().to_string();
        assert!(
            err.contains("environments.mock.split_key: \"split//key\" must not"),
            "{err}"
        );
        assert!(parse(&with("drawbridge/mock/split")).is_ok());
    }

    #[test]
    fn bad_boxes_and_steps_are_named() {
        let text = format!(
            "{MOCK}\n[[environments.mock.boxes]]\nname = \"w2\"\nrole = \"worker\"\nssh = \"w2\"\n\
             [[environments.mock.boxes]]\nname = \"x\"\nrole = \"cache\"\n\
             [[environments.mock.steps]]\nname = \"tell\"\nwhen = \"later\"\nwebhook = \"http://h/\"\n"
        );
        let err = parse(&text).unwrap_err().problems.join("\n");
        assert!(
            err.contains("environments.mock.boxes[3]: a box reached over ssh needs"),
            "{err}"
        );
        assert!(
            err.contains("environments.mock.boxes[4].role: \"cache\""),
            "{err}"
        );
        assert!(
            err.contains("environments.mock.steps[1].when: \"later\""),
            "{err}"
        );
    }

    #[test]
    fn a_roll_has_one_action_and_a_command_needs_ssh_on_every_api_ui_box() {
        let with = |roll: &str| format!("{MOCK}\n[environments.mock.roll]\n{roll}\n");
        let err = parse(&with("command = \"sudo apt-get upgrade -y app\""))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(
            err.contains("environments.mock.roll.command: runs on each api_ui box over ssh, but box api1 has no `ssh` destination"),
            "{err}"
        );
        let err = parse(&with("url = \"http://h/{box}\"\ncommand = \"x\""))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(
            err.contains("environments.mock.roll: set exactly one of `command`"),
            "{err}"
        );
        let err = parse(&with("url = \"h/{box}\"\nhealthy_for = \"soon\""))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(
            err.contains("environments.mock.roll.url: \"h/{box}\""),
            "{err}"
        );
        assert!(
            err.contains("environments.mock.roll.healthy_for: \"soon\""),
            "{err}"
        );
        // An api_ui box may have an agent for its node maintenance and ssh for the roll.
        let text = with("command = \"upgrade\"").replace(
            "consul_agent = \"http://127.0.0.2:8500\"",
            "consul_agent = \"http://127.0.0.2:8500\"\nssh = \"api1\"",
        );
        let text = text.replace(
            "consul_agent = \"http://127.0.0.3:8500\"",
            "consul_agent = \"http://127.0.0.3:8500\"\nssh = \"api2\"",
        );
        let config = parse(&text).unwrap();
        let mock = config.environment("mock").unwrap();
        let roll = mock.roll.as_ref().unwrap();
        assert_eq!(roll.action, RollAction::Command("upgrade".to_string()));
        assert_eq!(roll.healthy_for, Duration::from_secs(10));
        assert_eq!(roll.timeout, mock.step_timeout);
        assert_eq!(
            mock.boxes[0].access,
            BoxAccess::ConsulAgent("http://127.0.0.2:8500".to_string())
        );
        assert_eq!(mock.boxes[0].ssh.as_deref(), Some("api1"));
    }

    #[test]
    fn rehearsals_name_other_environments_of_the_file() {
        let text = MOCK.replace(
            "key = \"drawbridge/mock/gate\"",
            "key = \"drawbridge/mock/gate\"\nrehearsals = [\"final\", \"mock\"]\ndb_factor = 0.5\nmax_window = \"1h\"",
        );
        let err = parse(&text).unwrap_err().problems.join("\n");
        assert!(
            err.contains("environments.mock.rehearsals[0]: \"final\" is not another environment"),
            "{err}"
        );
        assert!(
            err.contains("environments.mock.rehearsals[1]: \"mock\" is not another environment"),
            "{err}"
        );
        assert!(
            err.contains("environments.mock.db_factor: must be 1 or more"),
            "{err}"
        );
        let mock = parse(MOCK).unwrap();
        let mock = mock.environment("mock").unwrap();
        assert_eq!((mock.db_factor, mock.max_window), (2.0, None));
        assert!(mock.rehearsals.is_empty());
    }

    #[test]
    fn smoke_tests_need_a_bypass_key() {
        let text = format!("{MOCK}\n[[environments.mock.smoke]]\nname = \"home\"\nurl = \"http://127.0.0.1:8080/\"\n");
        let err = parse(&text).unwrap_err().problems.join("\n");
        assert!(
            err.contains("environments.mock.smoke: smoke tests pass the closed gate"),
            "{err}"
        );
    }

    #[test]
    fn notices_are_checked_naming_the_field() {
        let text = format!(
            r#"{MOCK}
[environments.mock.notices]
reminders = ["1h", "soon"]
[environments.mock.notices.smtp]
server = "smtp.relay.example"
security = "none"
from = "not a sender"
username = "u"
password = "p"
[[environments.mock.notices.recipients]]
name = "acme"
email = "acme.example"
events = ["scheduled", "exploded"]
[[environments.mock.notices.recipients]]
name = "acme"
webhook = "ftp://hooks.example"
[[environments.mock.notices.recipients]]
name = "both"
email = "a@b.example"
webhook = "https://hooks.example"
"#
        );
        let err = parse(&text).unwrap_err().problems.join("\n");
        for expected in [
            "environments.mock.notices.reminders[1]: \"soon\" is not a duration",
            "environments.mock.notices.smtp.from: \"not a sender\"",
            "environments.mock.notices.smtp.security: \"none\" would send the password in the clear",
            "environments.mock.notices.smtp.security: \"none\" is for a relay on this host (localhost), not \"smtp.relay.example\"",
            "environments.mock.notices.recipients[0].email: \"acme.example\" is not an email address",
            "environments.mock.notices.recipients[0].events: \"exploded\" is not one of scheduled,",
            "environments.mock.notices.recipients[1].name: \"acme\" names two recipients",
            "environments.mock.notices.recipients[1].webhook: \"ftp://hooks.example\" is not an http",
            "environments.mock.notices.recipients[2]: set exactly one of `email` or `webhook`",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        let no_server = format!(
            "{MOCK}\n[[environments.mock.notices.recipients]]\nname = \"acme\"\nemail = \"a@acme.example\"\n"
        );
        let err = parse(&no_server).unwrap_err().problems.join("\n");
        assert!(
            err.contains("recipients[0].email: needs a mail server"),
            "{err}"
        );
    }

    #[test]
    fn notice_secrets_never_show_in_debug_output() {
        let text = format!(
            r#"{MOCK}
[environments.mock.notices.smtp]
server = "smtp.example"
from = "m@example.com"
username = "maintctl"
password = "hunter2-smtp"
[[environments.mock.notices.recipients]]
name = "chat"
webhook = "https://hooks.example/services/SECRETPATH"
authorization = "Bearer tok-secret"
"#
        );
        let shown = format!("{:?}", parse(&text).unwrap());
        for secret in ["hunter2-smtp", "SECRETPATH", "tok-secret"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("maintctl"), "{shown}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/maintctl.example.toml");
        // The key file lives on an operator's machine; use an inline secret of the same length.
        // The files named live on an operator's machine: the same values inline, and the
        // shipped templates.
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/notices");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "secret_file = \"/etc/maintctl/bypass-2026-11.key\"",
                "secret = \"0123456789abcdef0123456789abcdef\"",
            )
            .replace(
                "password_file = \"/etc/maintctl/smtp.password\"",
                "password = \"smtp-password\"",
            )
            .replace(
                "authorization_file = \"/etc/maintctl/statuspage.auth\"",
                "authorization = \"OAuth key\"",
            )
            .replace("/etc/maintctl/notices", &templates.display().to_string());
        if let Err(e) = Config::parse(&path, &text, &|_| None) {
            panic!("{e}");
        }
    }
}
