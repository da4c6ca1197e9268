//! The subcommands: `down`, `up`, `resume` (which run plans under the lock), `plan`, `status`,
//! `history`, `bypass` and `check-config`. Each returns the process exit code.

use crate::config::{BoxAccess, Config, Environment};
use crate::journal::{self, Journal, Run, RunStatus};
use crate::lock::{self, Holder, Lock, LockError};
use crate::output::{Format, Output};
use crate::plan::{Direction, Plan};
use crate::probe::{ProbeOptions, ProbeReport};
use crate::proxies::{self, Proxy};
use crate::remote;
use crate::runner::{self, Context, RunEnd};
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::gate::GateDoc;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
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

/// What `down`, `up` and `resume` are asked.
pub struct RunRequest {
    pub reason: Option<String>,
    pub until: Option<OffsetDateTime>,
    pub yes: bool,
    pub dry_run: bool,
    /// `up` with no `down` in the journal: restore every step.
    pub all: bool,
}

fn consul_client(env: &Environment) -> Result<Client, String> {
    Client::new(&env.consul, env.consul_token.clone()).map_err(|e| e.to_string())
}

fn http_client() -> Result<reqwest::Client, String> {
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
}

impl Failure {
    fn new(code: u8, message: impl ToString) -> Failure {
        Failure {
            code,
            message: message.to_string(),
        }
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

/// Reports a failure (a line, or a JSON event) and gives its exit code.
pub fn report(out: &Output, failure: Failure) -> u8 {
    let Failure { code, message } = failure;
    out.error(
        json!({"event": "error", "exit_code": code, "message": message}),
        &format!("maintctl: {message}"),
    );
    code
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Asks for the environment's name back before a production run.
fn confirmed(env: &Environment, direction: Direction, yes: bool) -> Result<(), String> {
    if !env.confirm || yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "environment {} asks for confirmation: pass --yes when not at a terminal",
            env.name
        ));
    }
    eprint!(
        "maintctl {} --env {}: type the environment name to go on: ",
        direction.as_str(),
        env.name
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the confirmation: {e}"))?;
    if line.trim() == env.name {
        Ok(())
    } else {
        Err("not confirmed; nothing was done".to_string())
    }
}

/// Checks everything a run needs before it touches anything; returns the proxies.
async fn preflight(
    env: &Environment,
    consul: &Client,
    http: &reqwest::Client,
    plan: &Plan,
) -> Result<Vec<Proxy>, (u8, Vec<String>)> {
    let mut problems = Vec::new();
    match consul.status_leader().await {
        Ok(leader) if !leader.is_empty() => {}
        Ok(_) => problems.push(format!("Consul at {} has no leader", env.consul)),
        Err(e) => return Err((exit::PREFLIGHT, vec![e.to_string()])),
    }
    if let Ok(Some(holder)) = lock::holder(consul, &env.prefix).await {
        let dead_here = holder.host == lock::hostname()
            && !std::path::Path::new(&format!("/proc/{}", holder.pid)).exists();
        if !dead_here {
            // Told at once: the other checks would only delay the answer.
            return Err((exit::LOCKED, vec![LockError::Held(holder).to_string()]));
        }
    }
    let proxies = match proxies::discover(env, consul).await {
        Ok(list) if list.is_empty() => {
            problems.push(
                "no proxy found: none is registered in Consul (or listed in proxy_admin_urls)"
                    .to_string(),
            );
            list
        }
        Ok(list) => list,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    for proxy in &proxies {
        if let Err(e) = proxies::status(http, env, proxy).await {
            problems.push(format!("proxy unreachable: {e}"));
        }
    }
    let targets: std::collections::HashSet<&str> = plan
        .steps
        .iter()
        .flat_map(|s| s.targets.iter().map(String::as_str))
        .collect();
    for b in env
        .boxes
        .iter()
        .filter(|b| targets.contains(b.name.as_str()))
    {
        let reached = match &b.access {
            BoxAccess::ConsulAgent(agent) => match Client::new(agent, env.consul_token.clone()) {
                Ok(client) => match client.agent_self().await {
                    Ok(me) if me.node_name == b.node => Ok(()),
                    Ok(me) => Err(format!(
                        "{}: the agent at {agent} is node {:?}, the config says {:?}",
                        b.name, me.node_name, b.node
                    )),
                    Err(e) => Err(format!("{}: {e}", b.name)),
                },
                Err(e) => Err(format!("{}: {e}", b.name)),
            },
            _ => remote::check(
                http,
                env.ssh_config.as_deref(),
                b,
                "pre-flight",
                env.step_timeout,
            )
            .await
            .map(|_| ()),
        };
        if let Err(e) = reached {
            problems.push(format!("box unreachable: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(proxies)
    } else {
        Err((exit::PREFLIGHT, problems))
    }
}

/// Waits for Ctrl-C and asks the run to stop at the next step boundary.
fn stop_on_ctrl_c(out: Output) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            set.store(true, Ordering::SeqCst);
            out.note("Ctrl-C: stopping after the current step (the journal stays true; `maintctl resume` continues)");
        }
    });
    flag
}

/// Runs `plan` for a new or resumed run: pre-flight, lock, execute, report.
async fn run_plan(
    env: &Environment,
    consul: Client,
    plan: Plan,
    prepared: Prepared,
    req: &RunRequest,
    out: Output,
) -> CommandResult {
    let http = http_client().map_err(Failure::failed)?;
    if let Err(e) = confirmed(env, plan.direction, req.yes) {
        return Err(Failure::new(exit::USAGE, e));
    }
    let proxies = match preflight(env, &consul, &http, &plan).await {
        Ok(p) => p,
        Err((code, problems)) => {
            out.error(
                json!({"event": "preflight_failed", "problems": problems}),
                &format!(
                    "pre-flight found {} problem(s); nothing was done:\n  - {}",
                    problems.len(),
                    problems.join("\n  - ")
                ),
            );
            return Ok(code);
        }
    };
    let holder = Holder::me(plan.direction.as_str());
    let lock = match Lock::acquire(&consul, &env.prefix, &holder).await {
        Ok(lock) => lock,
        Err(e @ LockError::Held(_)) => return Err(Failure::new(exit::LOCKED, e)),
        Err(e) => return Err(Failure::new(exit::FAILED, e)),
    };
    let journal = match prepared {
        Prepared::New {
            reason,
            until,
            undoes,
        } => {
            let id = format!(
                "{}-{}-{:04x}",
                OffsetDateTime::now_utc().unix_timestamp(),
                plan.direction.as_str(),
                rand_suffix()
            );
            let mut run = Run::new(&id, env, &plan, &reason, until, &holder.by());
            run.undoes = undoes;
            match Journal::create(&consul, &env.prefix, run).await {
                Ok(j) => j,
                Err(e) => {
                    let _ = lock.release().await;
                    return Err(Failure::new(exit::FAILED, e));
                }
            }
        }
        Prepared::Resume { mut run, index } => {
            run.status = RunStatus::Running;
            run.ended_at = None;
            Journal::resume(&consul, &env.prefix, run, index)
        }
    };
    let run_id = journal.run.id.clone();
    out.emit(
        json!({"event": "run_started", "run": run_id, "direction": plan.direction.as_str(), "env": env.name, "plan": plan.hash()}),
        || format!("maintctl {} --env {} (run {run_id}, plan {})", plan.direction.as_str(), env.name, plan.hash()),
    );
    let ctx = Arc::new(Context {
        env: Arc::new(env.clone()),
        consul: consul.clone(),
        http,
        reason: journal.run.reason.clone(),
        until: journal.run.until,
        by: journal.run.by.clone(),
        run_id: run_id.clone(),
        proxies,
        out,
        interrupted: stop_on_ctrl_c(out),
        assume_yes: req.yes,
    });
    let ended = runner::execute(ctx, &plan, journal, &lock).await;
    if let Err(e) = lock.release().await {
        out.note(&format!(
            "the lock could not be released ({e}); it expires by itself"
        ));
    }
    let resume_hint = format!(
        "`maintctl resume --env {0}` continues this run; `maintctl up --env {0}` undoes what it did",
        env.name
    );
    match ended {
        Ok(RunEnd::Done) => {
            out.emit(json!({"event": "run_done", "run": run_id}), || {
                format!(
                    "done: maintctl {} --env {} finished and verified",
                    plan.direction.as_str(),
                    env.name
                )
            });
            Ok(exit::OK)
        }
        Ok(RunEnd::Failed(m)) => Err(Failure::new(exit::FAILED, format!("{m}\n{resume_hint}"))),
        Ok(RunEnd::VerifyTimeout(m)) => Err(Failure::new(
            exit::VERIFY_TIMEOUT,
            format!("{m}\n{resume_hint}"),
        )),
        Ok(RunEnd::Interrupted(m)) => Err(Failure::new(
            exit::INTERRUPTED,
            format!("{m}\n{resume_hint}"),
        )),
        Err(e) => Err(Failure::failed(format!(
            "the journal could not be written, the run stopped: {e}"
        ))),
    }
}

fn rand_suffix() -> u16 {
    (OffsetDateTime::now_utc().nanosecond() % 65536) as u16 ^ (std::process::id() as u16)
}

enum Prepared {
    New {
        reason: String,
        until: Option<OffsetDateTime>,
        undoes: Option<String>,
    },
    Resume {
        run: Run,
        index: u64,
    },
}

async fn latest(env: &Environment, consul: &Client) -> Result<Option<(Run, u64)>, String> {
    journal::latest(consul, &env.prefix)
        .await
        .map_err(|e| e.to_string())
}

/// `maintctl down`.
pub async fn down(config: &Config, env_name: &str, req: RunRequest, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let plan = Plan::down(env);
    if req.dry_run {
        print_plan(env, &plan, out);
        return Ok(exit::OK);
    }
    let Some(reason) = req.reason.clone().filter(|r| !r.trim().is_empty()) else {
        return Err(Failure::usage(
            "down needs --reason \"...\" (it is shown to clients and kept in the journal)",
        ));
    };
    let consul = consul_client(env).map_err(Failure::usage)?;
    match latest(env, &consul).await {
        Ok(Some((run, _))) if run.direction == Direction::Down && !run.is_finished() => {
            return Err(Failure::new(exit::FAILED, format!(
                    "the last run {} of {} is an unfinished down ({:?}): continue it with `maintctl resume --env {1}` or reverse it with `maintctl up --env {1}`",
                    run.id, env.name, run.status
                )))
        }
        Ok(_) => {}
        Err(e) => return Err(Failure::new(exit::FAILED, e)),
    }
    let prepared = Prepared::New {
        reason,
        until: req.until,
        undoes: None,
    };
    run_plan(env, consul, plan, prepared, &req, out).await
}

/// The plan of `up`: the undo of the last `down`, or with `--all` every step.
async fn up_plan(
    env: &Environment,
    consul: &Client,
    all: bool,
) -> Result<(Plan, Option<Run>), String> {
    match latest(env, consul).await? {
        Some((run, _)) if run.direction == Direction::Down => Ok((Plan::undo(env, &run), Some(run))),
        Some((run, _)) if !run.is_finished() => Err(format!(
            "the last run {} of {} is an unfinished up ({:?}): continue it with `maintctl resume --env {1}`",
            run.id, env.name, run.status
        )),
        _ if all => Ok((Plan::up(env), None)),
        _ => Err(format!(
            "nothing to undo: the journal of {} has no down since the last up; `maintctl up --env {0} --all` restores every step (each checks first and skips what is already up)",
            env.name
        )),
    }
}

/// `maintctl up`.
pub async fn up(config: &Config, env_name: &str, req: RunRequest, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let (plan, down) = up_plan(env, &consul, req.all)
        .await
        .map_err(Failure::failed)?;
    if req.dry_run {
        print_plan(env, &plan, out);
        return Ok(exit::OK);
    }
    let reason = req
        .reason
        .clone()
        .or_else(|| down.as_ref().map(|d| d.reason.clone()))
        .unwrap_or_else(|| "restore".to_string());
    let prepared = Prepared::New {
        reason,
        until: None,
        undoes: down.map(|d| d.id),
    };
    run_plan(env, consul, plan, prepared, &req, out).await
}

/// `maintctl resume`.
pub async fn resume(
    config: &Config,
    env_name: &str,
    req: RunRequest,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let (run, index) = match latest(env, &consul).await {
        Ok(Some((run, index))) if !run.is_finished() => (run, index),
        Ok(Some((run, _))) => {
            return Err(Failure::new(
                exit::FAILED,
                format!("nothing to resume: the last run {} finished", run.id),
            ))
        }
        Ok(None) => {
            return Err(Failure::new(
                exit::FAILED,
                format!("nothing to resume: {} has no run yet", env.name),
            ))
        }
        Err(e) => return Err(Failure::new(exit::FAILED, e)),
    };
    let plan = run.plan();
    if req.dry_run {
        print_plan(env, &plan, out);
        return Ok(exit::OK);
    }
    run_plan(
        env,
        consul,
        plan,
        Prepared::Resume { run, index },
        &req,
        out,
    )
    .await
}

fn print_plan(env: &Environment, plan: &Plan, out: Output) {
    out.emit(
        json!({"event": "plan", "direction": plan.direction.as_str(), "env": env.name, "hash": plan.hash(),
               "steps": plan.steps}),
        || plan.render(env).trim_end().to_string(),
    );
}

/// `maintctl plan down|up`: the exact steps and targets; touches nothing.
pub async fn plan(
    config: &Config,
    env_name: &str,
    direction: Direction,
    all: bool,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let plan = match direction {
        Direction::Down => Plan::down(env),
        Direction::Up => {
            let consul = consul_client(env).map_err(Failure::usage)?;
            match up_plan(env, &consul, all).await {
                Ok((p, _)) => p,
                Err(e) => return Err(Failure::new(exit::FAILED, e)),
            }
        }
    };
    print_plan(env, &plan, out);
    Ok(exit::OK)
}

/// `maintctl status`: the key, each proxy, each box, the lock and the last run.
pub async fn status(config: &Config, env_name: &str, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let (consul, http) = match (consul_client(env), http_client()) {
        (Ok(c), Ok(h)) => (c, h),
        (Err(e), _) | (_, Err(e)) => return Err(Failure::new(exit::USAGE, e)),
    };
    let key = match consul.kv_get(&env.key, &QueryOptions::default()).await {
        Ok(read) => match read.entry {
            None => json!({"mode": "normal", "present": false}),
            Some(e) => match GateDoc::parse(e.value.as_deref().unwrap_or_default()) {
                Ok(doc) => {
                    json!({"mode": doc.mode, "reason": doc.reason, "until": doc.until.map(rfc3339), "index": e.modify_index, "present": true})
                }
                Err(err) => {
                    json!({"mode": "invalid", "error": err.to_string(), "index": e.modify_index, "present": true})
                }
            },
        },
        Err(e) => return Err(Failure::new(exit::FAILED, e)),
    };
    let mut proxies_json = Vec::new();
    match proxies::discover(env, &consul).await {
        Ok(list) => {
            for p in &list {
                proxies_json.push(match proxies::status(&http, env, p).await {
                    Ok(r) => json!({"proxy": p.name, "mode": r.gate.mode, "applied_index": r.gate.applied_index,
                                    "source": r.gate.source, "stale": r.consul.stale,
                                    "seconds_since_answer": r.consul.seconds_since_answer}),
                    Err(e) => json!({"proxy": p.name, "error": e}),
                });
            }
        }
        Err(e) => proxies_json.push(json!({"error": e})),
    }
    let mut boxes_json = Vec::new();
    for b in &env.boxes {
        let state = match &b.access {
            BoxAccess::ConsulAgent(_) => match consul.health_node(&b.node).await {
                Ok(checks) => {
                    let on = checks.iter().any(|c| c.is_node_maintenance());
                    Ok(if on { "node maintenance" } else { "serving" }.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            _ => remote::check(
                &http,
                env.ssh_config.as_deref(),
                b,
                "status",
                env.step_timeout,
            )
            .await
            .map(|s| match s {
                remote::BoxState::Running => "running".to_string(),
                remote::BoxState::Stopped => "stopped".to_string(),
            }),
        };
        boxes_json.push(match state {
            Ok(s) => json!({"box": b.name, "role": b.role.as_str(), "state": s}),
            Err(e) => json!({"box": b.name, "role": b.role.as_str(), "error": e}),
        });
    }
    let holder = lock::holder(&consul, &env.prefix).await.ok().flatten();
    let last = latest(env, &consul).await.ok().flatten().map(|(r, _)| r);
    let report = json!({
        "env": env.name, "key": env.key, "gate": key, "proxies": proxies_json, "boxes": boxes_json,
        "lock": holder.as_ref().map(|h| json!({"by": h.by(), "pid": h.pid, "since": rfc3339(h.since), "action": h.action})),
        "last_run": last.as_ref().map(|r| json!({"id": r.id, "direction": r.direction, "status": r.status,
            "started_at": rfc3339(r.started_at), "by": r.by, "reason": r.reason})),
    });
    out.emit(report.clone(), || render_status(&report));
    Ok(exit::OK)
}

fn render_status(r: &serde_json::Value) -> String {
    let mut s = format!(
        "environment {}: key {} = {}\n",
        r["env"].as_str().unwrap_or(""),
        r["key"].as_str().unwrap_or(""),
        r["gate"]["mode"]
    );
    s.push_str("proxies:\n");
    for p in r["proxies"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {p}\n"));
    }
    s.push_str("boxes:\n");
    for b in r["boxes"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {b}\n"));
    }
    s.push_str(&format!("lock: {}\nlast run: {}", r["lock"], r["last_run"]));
    s
}

/// `maintctl history`: past runs with the duration of each step.
pub async fn history(config: &Config, env_name: &str, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let runs = journal::all_runs(&consul, &env.prefix)
        .await
        .map_err(Failure::failed)?;
    let seconds = |a: Option<OffsetDateTime>, b: Option<OffsetDateTime>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a).as_seconds_f64()),
        _ => None,
    };
    for run in &runs {
        let total = seconds(Some(run.started_at), run.ended_at);
        let steps: Vec<_> = run
            .steps
            .iter()
            .map(|s| json!({"step": s.id, "status": s.status, "seconds": seconds(s.started_at, s.ended_at)}))
            .collect();
        out.emit(
            json!({"run": run.id, "direction": run.direction, "status": run.status, "by": run.by,
                   "reason": run.reason, "started_at": rfc3339(run.started_at), "seconds": total, "steps": steps}),
            || {
                let mut line = format!(
                    "{} {:<4} {:<11} {} by {} ({}) {}\n",
                    rfc3339(run.started_at),
                    run.direction.as_str(),
                    format!("{:?}", run.status).to_lowercase(),
                    total.map_or("-".to_string(), |t| format!("{t:.1}s")),
                    run.by,
                    run.reason,
                    run.id
                );
                for s in &run.steps {
                    line.push_str(&format!(
                        "    {:<24} {:<8} {}\n",
                        s.id,
                        format!("{:?}", s.status).to_lowercase(),
                        seconds(s.started_at, s.ended_at).map_or("-".to_string(), |t| format!("{t:.1}s"))
                    ));
                }
                line.trim_end().to_string()
            },
        );
    }
    if runs.is_empty() {
        out.note(&format!("no runs of {} yet", env.name));
    }
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
    let expires = rfc3339(now + ttl);
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

/// The format in which `--output` asks for output.
pub fn output(format: Format) -> Output {
    Output::new(format)
}
