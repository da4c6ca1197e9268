//! The subcommands, each returning its exit code or a [`Failure`]: `down`, `up` and `resume`
//! (`run`, with `preflight`), `drain` and `undrain` (`drain`), `canary`, `roll`, `schedule`,
//! `windows`, `reschedule`, `cancel` and `skip` (`windows`, which sends their notices), `status` and `history` (`report`), `plan`,
//! `daemon` (`daemon`: notices on time, auto windows), `bypass`, `probe` and `check-config`
//! (here). [`report`] turns a failure into its message and
//! exit code, in one place.

mod canary;
mod daemon;
mod drain;
mod preflight;
mod report;
mod roll;
mod run;
pub(crate) mod windows;

pub use canary::{canary, CanaryRequest};
pub use daemon::{daemon, DaemonRequest};
pub use drain::{drain, undrain, DrainRequest};
pub use report::{history, status};
pub use roll::{roll, RollRequest};
pub use run::{down, resume, up, RunRequest};
pub use windows::{cancel, reschedule, schedule, skip, windows, ScheduleRequest, WindowTimes};

use crate::config::{Config, Environment};
use crate::journal;
use crate::lock::{Holder, Lock, LockError};
use crate::output::{Format, Output};
use crate::plan::{BatchSize, Direction, Plan};
use crate::probe::{ProbeOptions, ProbeReport};
use crate::proxies::{self, Proxy};
use drawbridge_core::consul::{Client, Consistency, PutMode, QueryOptions};
use drawbridge_core::timestamp;
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// Exit codes, as `maintctl --help` lists them.
pub mod exit {
    /// Done and verified.
    pub const OK: u8 = 0;
    /// A step failed; the journal says where; `maintctl resume` or `up` continues.
    pub const FAILED: u8 = 1;
    /// Usage or configuration error; nothing was done.
    pub const USAGE: u8 = 2;
    /// A verification did not succeed in time (e.g. a proxy did not confirm the switch).
    pub const VERIFY_TIMEOUT: u8 = 3;
    /// Another run holds the environment's lock.
    pub const LOCKED: u8 = 4;
    /// Pre-flight found problems; nothing was done.
    pub const PREFLIGHT: u8 = 5;
    /// Stopped at a step boundary (Ctrl-C or a lost lock); `maintctl resume` continues.
    pub const INTERRUPTED: u8 = 130;
}

pub(crate) fn consul_client(env: &Environment) -> Result<Client, String> {
    Client::new(&env.consul, env.consul_token.clone()).map_err(|e| e.to_string())
}

/// Takes the environment's lock for `action`: exit 4 when another live run holds it.
async fn take_lock(consul: &Client, env: &Environment, action: &str) -> Result<Lock, Failure> {
    match Lock::acquire(consul, &env.prefix, &Holder::me(action)).await {
        Ok(lock) => Ok(lock),
        Err(e @ LockError::Held(_)) => Err(Failure::new(exit::LOCKED, e)),
        Err(e) => Err(Failure::failed(e)),
    }
}

/// Releases the lock; when that fails, says so (its session expires by itself).
async fn release_lock(lock: Lock, out: Output) {
    if let Err(e) = lock.release().await {
        out.note(&format!(
            "the lock could not be released ({e}); it expires by itself"
        ));
    }
}

/// Writes `value` at `key` (`what` names it in messages) if the key is still at index `cas`,
/// then reads it back from the leader: `Ok(Some(index))` when it holds the value, `Ok(None)`
/// when someone changed the key since it was read (nothing written), `Err` otherwise.
async fn put_read_back(
    consul: &Client,
    key: &str,
    what: &str,
    value: &[u8],
    cas: u64,
) -> Result<Option<u64>, String> {
    let applied = consul
        .kv_put(key, value, PutMode::Cas(cas))
        .await
        .map_err(|e| format!("writing {what} {key}: {e}"))?;
    if !applied {
        return Ok(None);
    }
    let leader = QueryOptions::default().with_consistency(Consistency::Consistent);
    let entry = consul
        .kv_get(key, &leader)
        .await
        .map_err(|e| format!("reading back {what} {key}: {e}"))?
        .entry
        .ok_or_else(|| format!("{what} {key} is gone right after the write"))?;
    if entry.value.as_deref() != Some(value) {
        return Err(format!(
            "{what} {key} was changed by someone else right after the write"
        ));
    }
    Ok(Some(entry.modify_index))
}

/// Refuses when the environment's last run is unfinished and `blocks` it, saying how to go on
/// with it (a roll can also be abandoned).
async fn refuse_unfinished(
    env: &Environment,
    consul: &Client,
    blocks: impl Fn(&journal::Run) -> bool,
) -> Result<(), Failure> {
    match journal::unfinished(consul, &env.prefix).await {
        Ok(Some((run, _))) if blocks(&run) => {
            let or_abandon = if run.direction == Direction::Roll {
                format!(
                    " (or give it up with `maintctl roll --env {} --abandon`)",
                    env.name
                )
            } else {
                String::new()
            };
            Err(Failure::failed(format!(
                "the last run {} of {} is an unfinished {} ({}): continue it with `maintctl resume --env {1}` first{or_abandon}",
                run.id,
                env.name,
                run.direction.as_str(),
                run.status.as_str()
            )))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::failed(e)),
    }
}

/// The environment's proxies; none is a failure, since nothing could confirm `what`.
async fn fleet_proxies(
    env: &Environment,
    consul: &Client,
    what: &str,
) -> Result<Vec<Proxy>, Failure> {
    let proxies = proxies::discover(env, consul)
        .await
        .map_err(Failure::failed)?;
    if proxies.is_empty() {
        return Err(Failure::failed(format!(
            "no proxy of {} found: nothing could confirm {what}; nothing was done",
            env.name
        )));
    }
    Ok(proxies)
}

pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Why a command stopped, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// Each problem found, when there were several (pre-flight, what is not open).
    pub problems: Vec<String>,
}

impl Failure {
    fn new(code: u8, message: impl ToString) -> Failure {
        Failure {
            code,
            message: message.to_string(),
            problems: Vec::new(),
        }
    }

    fn with_problems(mut self, problems: Vec<String>) -> Failure {
        self.problems = problems;
        self
    }

    /// A usage or configuration error (exit 2): nothing was done.
    pub fn usage(message: impl ToString) -> Failure {
        Failure::new(exit::USAGE, message)
    }

    fn failed(message: impl ToString) -> Failure {
        Failure::new(exit::FAILED, message)
    }
}

/// A command's exit code, or why it stopped.
pub type CommandResult = Result<u8, Failure>;

/// Reports a failure (lines on stderr, or one JSON object on stdout) and gives its exit code.
pub fn report(out: &Output, failure: Failure) -> u8 {
    let Failure {
        code,
        message,
        problems,
    } = failure;
    let mut text = format!("maintctl: {message}");
    for p in &problems {
        text.push_str(&format!("\n  - {p}"));
    }
    out.error(
        json!({"event": "error", "error": message, "exit_code": code, "problems": problems}),
        &text,
    );
    code
}

fn print_plan(env: &Environment, plan: &Plan, out: Output) {
    out.emit(
        json!({"event": "plan", "direction": plan.direction.as_str(), "env": env.name, "hash": plan.hash(),
               "steps": plan.steps}),
        || plan.render(env).trim_end().to_string(),
    );
}

/// What `maintctl plan` is asked.
pub struct PlanRequest {
    pub direction: Direction,
    /// `up`: every step, whatever the journal says.
    pub all: bool,
    /// `roll`: the role, its batch size and how many batches may fail.
    pub role: String,
    pub batch: BatchSize,
    pub max_fail: usize,
}

/// `maintctl plan down|up|roll`: the exact steps and targets; touches nothing.
pub async fn plan(config: &Config, env_name: &str, req: PlanRequest, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let all = req.all;
    if req.direction == Direction::Down && !env.rehearsals.is_empty() {
        out.note(
            &crate::estimate::Estimate::of(config, env, false)
                .await
                .render(),
        );
    }
    let plan = match req.direction {
        Direction::Roll => roll::roll_plan(env, &req.role, req.batch, req.max_fail)?,
        Direction::Canary => {
            return Err(Failure::usage(
                "`maintctl canary ... --dry-run` prints a canary's steps",
            ))
        }
        Direction::Down => Plan::down(env),
        Direction::Up => match run::plan_up(env, all).await? {
            Some(plan) => plan,
            None => {
                out.emit(json!({"event": "already_open", "env": env.name}), || {
                    format!(
                        "nothing to do: {} is seen open and no down is to be restored",
                        env.name
                    )
                });
                return Ok(exit::OK);
            }
        },
    };
    print_plan(env, &plan, out);
    Ok(exit::OK)
}

/// `maintctl bypass`: a short-lived bypass token and how to send it.
pub fn bypass(
    config: &Config,
    env_name: &str,
    ttl: Option<Duration>,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let Some(bypass) = &env.bypass else {
        return Err(Failure::new(
            exit::USAGE,
            format!("environment {} has no [bypass] keys", env.name),
        ));
    };
    let ttl = ttl.unwrap_or(bypass.ttl);
    let now = OffsetDateTime::now_utc();
    let who = Holder::me("bypass").by();
    let token = bypass
        .keyring
        .sign(&bypass.environment, now.unix_timestamp(), ttl, Some(&who));
    let expires = timestamp::seconds(now + ttl);
    out.emit(
        json!({"token": token, "header": bypass.header, "cookie": bypass.cookie, "expires_at": expires}),
        || {
            format!(
                "{token}\n\nvalid until {expires} for environment {env}; send it as\n  header: {h}: {token}\n  cookie: {c}={token}\n  e.g. curl -H '{h}: {token}' https://...",
                env = bypass.environment,
                h = bypass.header,
                c = bypass.cookie
            )
        },
    );
    Ok(exit::OK)
}

/// `maintctl probe`: requests until `--duration` or Ctrl-C, with live counts on a terminal.
pub async fn probe(options: &ProbeOptions, out: Output) -> CommandResult {
    options.validate().map_err(Failure::usage)?;
    let live = !out.is_json() && std::io::stderr().is_terminal();
    let mut last_shown = std::time::Instant::now();
    let mut show = |report: &ProbeReport| {
        if live && last_shown.elapsed() >= Duration::from_millis(250) {
            last_shown = std::time::Instant::now();
            let counts: Vec<String> = report
                .by_status
                .iter()
                .map(|(status, n)| format!("{status}: {n}"))
                .collect();
            eprint!(
                "\r{} requests  {}  errors: {}  unexpected: {}   ",
                report.total,
                counts.join("  "),
                report.connection_errors,
                report.unexpected.len()
            );
        }
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = crate::probe::probe(options, stop, &mut show).await;
    if live {
        eprintln!();
    }
    out.emit(report.to_json(), || report.render_text());
    Ok(if report.is_clean() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// `maintctl check-config`: the inventory at `path` is loaded and checked.
pub fn check_config(path: &Path, out: Output) -> CommandResult {
    let config = Config::load(path).map_err(Failure::usage)?;
    let envs: Vec<&str> = config.environments.keys().map(String::as_str).collect();
    out.emit(
        json!({"event": "config_valid", "path": path.display().to_string(), "environments": envs}),
        || {
            format!(
                "configuration is valid: {} (environments: {})",
                path.display(),
                envs.join(", ")
            )
        },
    );
    Ok(exit::OK)
}

/// The format in which `--output` asks for output.
pub fn output(format: Format) -> Output {
    Output::new(format)
}
