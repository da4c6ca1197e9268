//! `down`, `up` and `resume`: the lock is checked first; then the plan (for `up`, the restore of
//! everything any `down` of the current maintenance changed); pre-flight; the run under the lock,
//! journalled; and its last step observes the whole environment from outside.

use super::preflight::preflight;
use super::{
    consul_client, exit, http_client, print_plan, release_lock, take_lock, CommandResult, Failure,
};
use crate::config::{Config, Environment};
use crate::journal::{self, Journal, Maintenance, Run, RunStatus};
use crate::lock::{self, Holder, Lock, LockError};
use crate::output::Output;
use crate::plan::{Direction, EndState, Plan, StepKind};
use crate::runner::{self, RunEnd};
use crate::steps::Context;
use crate::survey;
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::gate::{GateDoc, Mode};
use serde_json::json;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;

/// What `down`, `up` and `resume` are asked.
pub struct RunRequest {
    pub reason: Option<String>,
    pub until: Option<OffsetDateTime>,
    /// `down --expire`: the gate document asks the proxies to open by themselves when overdue.
    pub expire: bool,
    /// Run by `maintctl daemon` (journalled so).
    pub by_daemon: bool,
    pub yes: bool,
    pub dry_run: bool,
    /// `up`: restore every step, whatever the journal says.
    pub all: bool,
    /// Repeat webhooks and commands already done in this maintenance.
    pub repeat_steps: bool,
}

/// Refuses at once when another live run holds the environment's lock (exit 4), whatever the
/// journal says. A holder that died on this host does not count: the lock is taken over.
pub(super) async fn refuse_if_locked(env: &Environment, consul: &Client) -> Result<(), Failure> {
    match lock::holder(consul, &env.prefix).await {
        Ok(Some(holder)) if !holder.died_here() => {
            Err(Failure::new(exit::LOCKED, LockError::Held(holder)))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::failed(e)),
    }
}

/// The current maintenance of `env`, from its journal.
async fn maintenance(env: &Environment, consul: &Client) -> Result<Maintenance, Failure> {
    Maintenance::read(consul, &env.prefix)
        .await
        .map_err(Failure::failed)
}

/// Asks for the environment's name back before a production run of `action` (`down`, `drain`…).
pub(super) fn confirmed(env: &Environment, action: &str, yes: bool) -> Result<(), Failure> {
    if !env.confirm || yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "environment {} asks for confirmation: pass --yes when not at a terminal",
            env.name
        )));
    }
    eprint!(
        "maintctl {action} --env {}: type the environment name to go on: ",
        env.name
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::usage(format!("cannot read the confirmation: {e}")))?;
    if line.trim() == env.name {
        Ok(())
    } else {
        Err(Failure::usage("not confirmed; nothing was done"))
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

/// A run about to start: new, or one of the journal continued.
pub(super) enum Prepared {
    New {
        reason: String,
        until: Option<OffsetDateTime>,
        expire: bool,
        by_daemon: bool,
        restores: Vec<String>,
    },
    Resume {
        run: Box<Run>,
        index: u64,
    },
}

/// The exit code and message of a run that did not end done.
fn run_failure(env: &Environment, direction: Direction, end: RunEnd) -> Failure {
    let hint = match direction {
        Direction::Roll => format!(
            "`maintctl resume --env {}` continues this roll (failed batches first); the boxes of a failed batch stay as they are (drained unless its undrain failed)",
            env.name
        ),
        _ => format!(
            "`maintctl resume --env {0}` continues this run; `maintctl up --env {0}` restores what the downs changed",
            env.name
        ),
    };
    match end {
        RunEnd::Done => unreachable!("a done run is no failure"),
        RunEnd::Failed(m) => Failure::new(exit::FAILED, format!("{m}\n{hint}")),
        RunEnd::VerifyTimeout(m) => Failure::new(exit::VERIFY_TIMEOUT, format!("{m}\n{hint}")),
        RunEnd::Interrupted(m) => Failure::new(exit::INTERRUPTED, format!("{m}\n{hint}")),
    }
}

/// Runs `plan`: confirmation, the lock (so a second operator is told at once), pre-flight (a
/// refusal changes nothing but taking and releasing the lock), the journal, the steps, the
/// report.
pub(super) async fn run_plan(
    env: &Environment,
    consul: Client,
    plan: Plan,
    prepared: Prepared,
    maintenance: &Maintenance,
    req: &RunRequest,
    out: Output,
) -> CommandResult {
    let http = http_client().map_err(Failure::failed)?;
    confirmed(env, plan.direction.as_str(), req.yes)?;
    let lock = take_lock(&consul, env, plan.direction.as_str()).await?;
    let session = Session {
        consul: &consul,
        http,
        lock: &lock,
    };
    let ended = run_locked(env, session, plan, prepared, maintenance, req, out).await;
    release_lock(lock, out).await;
    ended
}

/// What a run holds once the lock is taken.
struct Session<'a> {
    consul: &'a Client,
    http: reqwest::Client,
    lock: &'a Lock,
}

/// The part of [`run_plan`] that runs under the lock.
async fn run_locked(
    env: &Environment,
    session: Session<'_>,
    plan: Plan,
    prepared: Prepared,
    maintenance: &Maintenance,
    req: &RunRequest,
    out: Output,
) -> CommandResult {
    let Session { consul, http, lock } = session;
    let proxies = preflight(env, consul, &http, &plan)
        .await
        .map_err(|problems| {
            Failure::new(
                exit::PREFLIGHT,
                format!(
                    "pre-flight found {} problem{}; nothing was done",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
            )
            .with_problems(problems)
        })?;
    if plan.direction == Direction::Roll && matches!(prepared, Prepared::New { .. }) {
        super::roll::ready_to_start(env, consul).await?;
    }
    let journal = match prepared {
        Prepared::New {
            reason,
            until,
            expire,
            by_daemon,
            restores,
        } => {
            let id = journal::new_run_id(plan.direction);
            let by = Holder::me(plan.direction.as_str()).by();
            let mut run = Run::new(&id, env, &plan, &reason, until, &by);
            run.expire = expire;
            run.by_daemon = by_daemon;
            run.restores = restores;
            Journal::create(consul, &env.prefix, run)
                .await
                .map_err(Failure::failed)?
        }
        Prepared::Resume { mut run, index } => {
            run.status = RunStatus::Running;
            run.ended_at = None;
            Journal::resume(consul, &env.prefix, *run, index)
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
        expire: journal.run.expire,
        by: journal.run.by.clone(),
        run_id: run_id.clone(),
        proxies,
        out,
        interrupted: stop_on_ctrl_c(out),
        assume_yes: req.yes,
        done_before: done_before(maintenance, &run_id),
        repeat_steps: req.repeat_steps,
    });
    match runner::execute(ctx, &plan, journal, lock).await {
        Ok(RunEnd::Done) => {
            out.emit(json!({"event": "run_done", "run": run_id}), || {
                let seen = match plan.direction {
                    Direction::Roll => {
                        "every box was seen healthy in Consul and back in every proxy's pool"
                            .to_string()
                    }
                    direction => format!(
                        "the environment was seen {} from outside",
                        direction.as_str()
                    ),
                };
                format!(
                    "done: maintctl {} --env {} finished; {seen}",
                    plan.direction.as_str(),
                    env.name,
                )
            });
            let event = match plan.direction {
                Direction::Down => Some(crate::notices::Event::Started),
                Direction::Up => Some(crate::notices::Event::Finished),
                _ => None,
            };
            if let Some(event) = event.filter(|_| !env.notices.recipients.is_empty()) {
                crate::notices::tell_window_now(env, consul, event, out).await;
            }
            Ok(exit::OK)
        }
        Ok(end) => Err(run_failure(env, plan.direction, end)),
        Err(e) => Err(Failure::failed(format!(
            "the journal could not be written, the run stopped: {e}"
        ))),
    }
}

/// The steps other runs of this maintenance already did (not this run's own: resume skips
/// those by their journal).
fn done_before(maintenance: &Maintenance, this_run: &str) -> HashMap<String, String> {
    maintenance
        .done_steps()
        .into_iter()
        .filter(|(_, run)| run != this_run)
        .collect()
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
    if let Some(until) = req
        .until
        .filter(|until| req.expire && *until <= OffsetDateTime::now_utc())
    {
        return Err(Failure::usage(format!(
            "--expire with --until {} (passed): the proxies would open the gate at once; give an --until to come",
            drawbridge_core::timestamp::seconds(until)
        )));
    }
    let consul = consul_client(env).map_err(Failure::usage)?;
    refuse_if_locked(env, &consul).await?;
    super::roll::refuse_if_rolling(env, &consul).await?;
    let maintenance = maintenance(env, &consul).await?;
    if let Some(run) = maintenance.latest().filter(|r| !r.is_finished()) {
        return Err(Failure::failed(format!(
            "the last run {} of {} is an unfinished {} ({}): continue it with `maintctl resume --env {1}`{}",
            run.id,
            env.name,
            run.direction.as_str(),
            run.status.as_str(),
            if run.direction == Direction::Down {
                format!(" or restore with `maintctl up --env {}`", env.name)
            } else {
                String::new()
            }
        )));
    }
    // A notice that did not reach its recipient never stops the maintenance; it is said.
    if !env.notices.recipients.is_empty() {
        for warning in crate::notices::undelivered_warnings(env, &consul).await {
            out.note(&format!("warning: {warning}; the maintenance goes on"));
        }
    }
    let prepared = Prepared::New {
        reason,
        until: req.until,
        expire: req.expire,
        by_daemon: req.by_daemon,
        restores: Vec::new(),
    };
    run_plan(env, consul, plan, prepared, &maintenance, &req, out).await
}

/// What `up` has to do.
enum UpPlan {
    /// Run this plan, restoring these `down` runs.
    Run(Plan, Vec<String>),
    /// Nothing to restore, no run since the last `up`, and the environment is seen open: say so.
    AlreadyOpen,
}

/// The plan of `up`: the restore of everything the `down` runs of the current maintenance
/// changed, or with `all` every step. With nothing to restore, the environment is observed: open
/// is fine; anything else is said, with how to restore it.
async fn up_plan(
    env: &Environment,
    consul: &Client,
    maintenance: &Maintenance,
    all: bool,
) -> Result<UpPlan, Failure> {
    if let Some(run) = maintenance
        .latest()
        .filter(|r| r.direction == Direction::Up && !r.is_finished())
    {
        return Err(Failure::failed(format!(
            "the last run {} of {} is an unfinished up ({}): continue it with `maintctl resume --env {1}`",
            run.id,
            env.name,
            run.status.as_str()
        )));
    }
    let downs = maintenance.downs();
    if all {
        return Ok(UpPlan::Run(every_step(env, consul).await?, downs));
    }
    let plan = Plan::restore(env, &maintenance.changed_by_downs());
    if !plan.steps.is_empty() {
        return Ok(UpPlan::Run(plan, downs));
    }
    let http = http_client().map_err(Failure::failed)?;
    let seen = survey::survey(env, consul, &http)
        .await
        .map_err(Failure::failed)?;
    let mut not_open = seen.differences(EndState::Up);
    not_open.extend(survey::public_differences(env, &http, EndState::Up).await);
    if not_open.is_empty() {
        // Runs since the last `up` changed nothing that is still down (e.g. a `down` stopped
        // before it acted): a run that only checks closes that maintenance, so its steps are not
        // taken as done in the next one.
        return Ok(if maintenance.runs.is_empty() {
            UpPlan::AlreadyOpen
        } else {
            UpPlan::Run(Plan::check_up(env), downs)
        });
    }
    Err(Failure::failed(format!(
        "no down of {0} changed anything since the last up, but the environment is not open; \
         `maintctl up --env {0} --all` restores every step (each checks first and skips what is \
         already up)",
        env.name
    ))
    .with_problems(not_open))
}

/// Every step of `up`; the smoke tests only while the gate is closed (they prove the service
/// works behind it before the public is let in).
async fn every_step(env: &Environment, consul: &Client) -> Result<Plan, Failure> {
    let read = consul
        .kv_get(&env.key, &QueryOptions::default())
        .await
        .map_err(Failure::failed)?;
    let closed = read.entry.is_some_and(|e| {
        GateDoc::parse(e.value.as_deref().unwrap_or_default())
            .map_or(true, |doc| doc.mode != Mode::Normal)
    });
    let mut plan = Plan::up(env);
    if !closed {
        plan.steps.retain(|s| s.kind != StepKind::Smoke);
    }
    Ok(plan)
}

/// `maintctl up`.
pub async fn up(config: &Config, env_name: &str, req: RunRequest, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    if !req.dry_run {
        refuse_if_locked(env, &consul).await?;
        super::roll::refuse_if_rolling(env, &consul).await?;
    }
    let maintenance = maintenance(env, &consul).await?;
    let (plan, restores) = match up_plan(env, &consul, &maintenance, req.all).await? {
        UpPlan::Run(plan, restores) => (plan, restores),
        UpPlan::AlreadyOpen => {
            out.emit(json!({"event": "already_open", "env": env.name}), || {
                format!(
                    "nothing to do: no down of {} to restore, and the key, every proxy, every public URL and every box are seen open",
                    env.name
                )
            });
            return Ok(exit::OK);
        }
    };
    if req.dry_run {
        print_plan(env, &plan, out);
        return Ok(exit::OK);
    }
    let reason = req
        .reason
        .clone()
        .or_else(|| {
            maintenance
                .runs
                .iter()
                .rev()
                .find(|r| r.direction == Direction::Down)
                .map(|r| r.reason.clone())
        })
        .unwrap_or_else(|| "restore".to_string());
    let prepared = Prepared::New {
        reason,
        until: None,
        expire: false,
        by_daemon: req.by_daemon,
        restores,
    };
    run_plan(env, consul, plan, prepared, &maintenance, &req, out).await
}

/// `maintctl plan up`: the plan `up` would run now.
pub async fn plan_up(env: &Environment, all: bool) -> Result<Option<Plan>, Failure> {
    let consul = consul_client(env).map_err(Failure::usage)?;
    let maintenance = maintenance(env, &consul).await?;
    Ok(match up_plan(env, &consul, &maintenance, all).await? {
        UpPlan::Run(plan, _) => Some(plan),
        UpPlan::AlreadyOpen => None,
    })
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
    if !req.dry_run {
        refuse_if_locked(env, &consul).await?;
    }
    let (run, index) = match journal::latest(&consul, &env.prefix).await {
        Ok(Some((run, index))) if !run.is_finished() => (run, index),
        Ok(Some((run, _))) => {
            return Err(Failure::failed(format!(
                "nothing to resume: the last run {} ended {}",
                run.id,
                run.status.as_str()
            )))
        }
        Ok(None) => {
            return Err(Failure::failed(format!(
                "nothing to resume: {} has no run yet",
                env.name
            )))
        }
        Err(e) => return Err(Failure::failed(e)),
    };
    if run.direction == Direction::Canary {
        return super::canary::resume(env, run, index, req.yes, req.dry_run, out).await;
    }
    let plan = run.plan();
    if req.dry_run {
        print_plan(env, &plan, out);
        return Ok(exit::OK);
    }
    let maintenance = maintenance(env, &consul).await?;
    let prepared = Prepared::Resume {
        run: Box::new(run),
        index,
    };
    run_plan(env, consul, plan, prepared, &maintenance, &req, out).await
}
