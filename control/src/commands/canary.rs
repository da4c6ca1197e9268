//! `maintctl canary`: moves a route's clients to a new pool step by step through the split
//! document the proxies follow, judges the new pool against the old one at each step from the
//! proxies' metrics, and rolls back by itself when it is worse; `--abort` rolls back at once.
//!
//! Before the first write every proxy must report the split key the inventory names and the new
//! pool. Each step writes the document (compare-and-set, and read back: a change by someone else
//! stops the run), waits until every proxy has applied it, then holds while both sides are
//! counted on every proxy: the new pool's share of errors (5xx, or no answer) and its p99
//! against the old pool's (at 100 %, the old pool's p99 of the last step of this run that had
//! enough of its requests; without one, p99 is not compared, and the step says so). A step whose
//! document was written but not confirmed or judged is rolled back: the route is taken out of
//! the document (re-read and retried if someone changed another route meanwhile), and every
//! proxy must apply that. A run stopped halfway leaves the split where it was: run again, it
//! judges the current share first, then goes on. `--abort` needs no lock.
//!
//! A canary is a run of its own in the journal (direction `canary`, with what it was asked):
//! each step `running`, then `done` or `failed` with what was measured, a rollback as a step of
//! its own (the run ends `rolled_back`, decided). `maintctl resume` goes on with a run that
//! stopped otherwise, as running it again would, in the same record.

use super::run::confirmed;
use super::{
    consul_client, exit, fleet_proxies, http_client, put_read_back, refuse_unfinished,
    release_lock, take_lock, CommandResult, Failure,
};
use crate::config::{Config, Environment};
use crate::journal::{self, CanaryAsked, Journal, RunStatus, StepRecord, StepStatus, TargetStatus};
use crate::lock::{Holder, Lock};
use crate::output::{Outcome, Output};
use crate::plan::{Direction, Plan, Step, StepKind};
use crate::proxies::{self, Proxy};
use crate::split_metrics::{sides, SideCounts};
use crate::steps::wait_until;
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::split::{RouteSplit, SplitDoc};
use serde_json::json;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How often the new pool is looked at during a hold.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What `canary` is asked.
pub struct CanaryRequest {
    pub route: String,
    /// The new pool; not needed with `abort`.
    pub to: Option<String>,
    /// The shares to go through, in percent, rising.
    pub steps: Vec<u8>,
    /// How long each step is held and judged.
    pub hold: Duration,
    /// Roll back at once.
    pub abort: bool,
    pub yes: bool,
    pub dry_run: bool,
}

/// The split document as read, with the index a write must find.
struct Written {
    doc: SplitDoc,
    index: u64,
}

/// Everything a canary run holds.
struct Run<'a> {
    env: &'a Environment,
    /// The environment's lock; `None` for `--abort`, which only takes the route out.
    lock: Option<&'a Lock>,
    consul: Client,
    http: reqwest::Client,
    proxies: Vec<Proxy>,
    route: &'a str,
    by: String,
    out: Output,
}

/// A canary run of the journal to go on with, and the index to write it at.
type Resumed = Option<(journal::Run, u64)>;

/// `maintctl canary`.
pub async fn canary(
    config: &Config,
    env_name: &str,
    req: CanaryRequest,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    canary_in(env, req, None, out).await
}

/// `maintctl resume` of a canary run: it goes on as asked, in the same record.
pub(super) async fn resume(
    env: &Environment,
    run: journal::Run,
    index: u64,
    yes: bool,
    dry_run: bool,
    out: Output,
) -> CommandResult {
    let Some(asked) = run.canary.clone() else {
        return Err(Failure::failed(format!(
            "run {} is a canary without what it was asked; run `maintctl canary` again",
            run.id
        )));
    };
    // A rollback that was started is finished, never followed by a raise.
    let rolling_back = run
        .steps
        .iter()
        .any(|s| s.id.starts_with("roll_back") && s.status != StepStatus::Done);
    let req = CanaryRequest {
        route: asked.route,
        to: (!rolling_back).then_some(asked.to),
        steps: asked.steps,
        hold: Duration::from_millis(asked.hold_ms),
        abort: rolling_back,
        yes,
        dry_run,
    };
    canary_in(env, req, Some((run, index)), out).await
}

async fn canary_in(
    env: &Environment,
    req: CanaryRequest,
    resumed: Resumed,
    out: Output,
) -> CommandResult {
    if !req.abort {
        check_steps(&req.steps).map_err(Failure::usage)?;
    }
    let to = match (&req.to, req.abort) {
        (Some(to), _) if !to.trim().is_empty() => Some(to.clone()),
        (_, true) => None,
        _ => return Err(Failure::usage("name the new pool with --to POOL")),
    };
    if req.dry_run {
        print_plan(env, &req, to.as_deref(), out);
        return Ok(exit::OK);
    }
    let consul = consul_client(env).map_err(Failure::usage)?;
    confirmed(env, "canary", req.yes)?;
    if req.abort {
        return run_locked(env, consul, None, &req, None, None, out).await;
    }
    let lock = take_lock(&consul, env, "canary").await?;
    let ended = run_locked(env, consul.clone(), Some(&lock), &req, to, resumed, out).await;
    release_lock(lock, out).await;
    ended
}

/// Shares from 1 to 100, rising.
fn check_steps(steps: &[u8]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("--steps needs at least one share, e.g. 5,25,50,100".to_string());
    }
    if let Some(bad) = steps.iter().find(|s| !(1..=100).contains(*s)) {
        return Err(format!("--steps: {bad} is not a share from 1 to 100"));
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("--steps must rise: {steps:?}"));
    }
    Ok(())
}

fn print_plan(env: &Environment, req: &CanaryRequest, to: Option<&str>, out: Output) {
    let t = &env.canary;
    let steps: Vec<String> = match to {
        None => vec![format!(
            "take route {} out of the split document at {} and wait until every proxy has applied that",
            req.route, env.split_key
        )],
        Some(to) => req
            .steps
            .iter()
            .map(|s| {
                format!(
                    "send {s} % of route {}'s clients to {to}, wait until every proxy has applied it, hold {:?}: roll back if {to} errs on more than {:.1} % of at least {} requests or its p99 is over {} times the old pool's",
                    req.route,
                    req.hold,
                    t.max_error_rate * 100.0,
                    t.min_requests,
                    t.max_p99_ratio
                )
            })
            .collect(),
    };
    out.emit(
        json!({"event": "plan", "action": "canary", "env": env.name, "route": req.route, "to": to, "steps": steps}),
        || {
            let mut text = format!("maintctl canary --env {} --route {}:", env.name, req.route);
            for (i, step) in steps.iter().enumerate() {
                text.push_str(&format!("\n  {}. {step}", i + 1));
            }
            text
        },
    );
}

async fn run_locked(
    env: &Environment,
    consul: Client,
    lock: Option<&Lock>,
    req: &CanaryRequest,
    to: Option<String>,
    resumed: Resumed,
    out: Output,
) -> CommandResult {
    let http = http_client().map_err(Failure::failed)?;
    let proxies = fleet_proxies(env, &consul, "a split").await?;
    let run = Run {
        env,
        lock,
        consul,
        http,
        proxies,
        route: &req.route,
        by: Holder::me("canary").by(),
        out,
    };
    let mut written = run.read().await?;
    let Some(to) = to else {
        let Some(split) = written.doc.routes.get(&req.route).cloned() else {
            // Perhaps a rollback written but not yet seen everywhere: every proxy must show it.
            run.wait_applied(written.index, None).await?;
            end_rolled_back(&run).await;
            out.emit(
                json!({"event": "done", "action": "abort", "route": req.route, "percent": 0}),
                || {
                    format!(
                        "nothing to abort: route {} is not split; every proxy has applied that",
                        req.route
                    )
                },
            );
            return Ok(exit::OK);
        };
        run.roll_back(&mut written, &split.to, "--abort").await?;
        end_rolled_back(&run).await;
        out.emit(json!({"event": "done", "action": "abort", "route": req.route, "to": split.to, "percent": 0}), || {
            format!(
                "aborted: route {} sends nothing to {} any more; every proxy has applied it",
                req.route, split.to
            )
        });
        return Ok(exit::OK);
    };
    let current = match written.doc.routes.get(&req.route) {
        Some(split) if split.to != to && split.percent > 0 => {
            return Err(Failure::failed(format!(
                "route {} already sends {} % of its clients to {}: `maintctl canary --env {} --route {0} --abort` first",
                req.route, split.percent, split.to, env.name
            )));
        }
        Some(split) if split.to == to => split.percent,
        _ => 0,
    };
    match &resumed {
        Some((past, _)) => {
            let moved = past.steps.iter().any(|s| s.status != StepStatus::Pending);
            if current == 0 && moved {
                end_rolled_back(&run).await;
                return Err(Failure::failed(format!(
                    "route {} is not split any more: this canary was rolled back (by itself before it stopped, or by hand), so nothing more is raised; `maintctl canary` starts over",
                    req.route
                )));
            }
        }
        // A new canary does not start over an unfinished roll, down or up: it would become the
        // last run, and that one could no longer be resumed.
        None => {
            refuse_unfinished(env, &run.consul, |past| past.direction != Direction::Canary).await?
        }
    }
    let raises: Vec<u8> = req.steps.iter().copied().filter(|s| *s > current).collect();
    // A share found in place was perhaps never judged (a run stopped halfway): judged first;
    // when resuming, even with nothing left to raise.
    let judge_current = current > 0 && (!raises.is_empty() || resumed.is_some());
    if !judge_current && raises.is_empty() {
        out.emit(json!({"event": "done", "action": "canary", "route": req.route, "to": to, "percent": current}), || {
            format!("nothing to do: route {} already sends {current} % to {to}", req.route)
        });
        return Ok(exit::OK);
    }
    run.check_proxies(&to).await?;
    let steps: Vec<(u8, bool)> = judge_current
        .then_some((current, false))
        .into_iter()
        .chain(raises.iter().map(|&percent| (percent, true)))
        .collect();
    let planned: Vec<Step> = steps
        .iter()
        .map(|&(percent, raise)| canary_step(&req.route, &to, percent, raise))
        .collect();
    let mut record = Record::open(&run, req, &to, &planned, resumed).await?;
    let mut old_p99 = None;
    for (i, (&(percent, raise), step)) in steps.iter().zip(&planned).enumerate() {
        let id = record.id_of(&step.id);
        out.step_started(i, steps.len(), &id, &step.title);
        record.started(&id).await?;
        let started = Instant::now();
        let judged = match raise {
            true => match run.raise(&mut written, &to, percent).await {
                Ok(()) => run
                    .judge(&to, req.hold, &mut old_p99)
                    .await
                    .map_err(Judged::Worse),
                Err(Raise::NotWritten(failure)) => {
                    out.step_ended(&id, false, started.elapsed());
                    let status = if failure.code == exit::INTERRUPTED {
                        RunStatus::Interrupted
                    } else {
                        RunStatus::Failed
                    };
                    record.ended(&id, Err(&failure.message)).await?;
                    record.finish(status).await?;
                    return Err(failure);
                }
                Err(Raise::Unconfirmed(failure)) => Err(Judged::Worse(failure.message)),
            },
            false => run
                .judge(&to, req.hold, &mut old_p99)
                .await
                .map_err(Judged::Worse),
        };
        // Held, the split must still be what this run wrote (an --abort, or another operator,
        // may have changed it meanwhile).
        let judged = match judged {
            Ok(detail) => run
                .still_split(&mut written, &to, percent)
                .await
                .map(|()| detail),
            Err(why) => Err(why),
        };
        match judged {
            Ok(detail) => {
                out.target_ended(&id, &to, Outcome::Done, started.elapsed(), &detail);
                out.step_ended(&id, true, started.elapsed());
                record.ended(&id, Ok(&detail)).await?;
            }
            Err(Judged::Changed(why)) => {
                out.target_ended(&id, &to, Outcome::Failed, started.elapsed(), &why);
                out.step_ended(&id, false, started.elapsed());
                let gone = !written.doc.routes.contains_key(&req.route);
                record.ended(&id, Err(&why)).await?;
                record
                    .finish(if gone {
                        RunStatus::RolledBack
                    } else {
                        RunStatus::Failed
                    })
                    .await?;
                return Err(Failure::failed(format!("{why}; this canary stopped")));
            }
            Err(Judged::Worse(why)) => {
                out.target_ended(&id, &to, Outcome::Failed, started.elapsed(), &why);
                out.step_ended(&id, false, started.elapsed());
                // The rollback first: a journal that cannot be written must not keep the new
                // pool in the traffic.
                let rolled = run.roll_back(&mut written, &to, &why).await;
                let recorded = record
                    .rolled_back(&id, &why, &to, rolled.as_ref().err())
                    .await;
                rolled?;
                recorded?;
                return Err(Failure::failed(format!(
                    "canary of route {} to {to} rolled back at {percent} %: {why}; every proxy sends it nothing again",
                    req.route
                )));
            }
        }
    }
    record.finish(RunStatus::Done).await?;
    let last = steps.last().map_or(current, |&(percent, _)| percent);
    out.emit(
        json!({"event": "done", "action": "canary", "route": req.route, "to": to, "percent": last}),
        || {
            if last == 100 {
                format!(
                    "promoted: every client of route {} goes to {to}; make {to} the route's pool in the proxies' config, then remove the route from {}",
                    req.route, env.split_key
                )
            } else {
                format!("holding: route {} sends {last} % of its clients to {to}", req.route)
            }
        },
    );
    Ok(exit::OK)
}

/// The step of a canary that raises route `route`'s share of `to` to `percent` (`raise`), or
/// judges the share in place.
fn canary_step(route: &str, to: &str, percent: u8, raise: bool) -> Step {
    let (id, title) = if raise {
        (
            format!("split_{percent}"),
            format!("send {percent} % of route {route}'s clients to {to}"),
        )
    } else {
        (
            format!("judge_{percent}"),
            format!("judge the {percent} % route {route} already sends to {to}"),
        )
    };
    Step {
        id,
        title,
        kind: StepKind::Canary,
        targets: vec![to.to_string()],
        batch: None,
    }
}

/// A canary's run in the journal.
struct Record {
    journal: Journal,
}

/// A journal that cannot be written stops the canary where it is.
fn unrecorded(e: journal::JournalError) -> Failure {
    Failure::failed(format!(
        "the journal could not be written ({e}); the split stays as it is: `maintctl resume` or running the canary again judges it and goes on"
    ))
}

impl Record {
    /// A new run of `planned`, or the canary run `resumed` continued with them: its done steps
    /// are kept, one that had started is marked failed (it stopped without an end), the rest
    /// replaced.
    async fn open(
        run: &Run<'_>,
        req: &CanaryRequest,
        to: &str,
        planned: &[Step],
        resumed: Resumed,
    ) -> Result<Record, Failure> {
        let env = run.env;
        let Some((mut past, index)) = resumed else {
            let plan = Plan {
                direction: Direction::Canary,
                steps: planned.to_vec(),
                max_fail: 0,
            };
            let id = journal::new_run_id(Direction::Canary);
            let reason = format!("canary of route {} to {to}", req.route);
            let mut new = journal::Run::new(&id, env, &plan, &reason, None, &run.by);
            new.canary = Some(CanaryAsked {
                route: req.route.clone(),
                to: to.to_string(),
                steps: req.steps.clone(),
                hold_ms: req.hold.as_millis() as u64,
            });
            let journal = Journal::create(&run.consul, &env.prefix, new)
                .await
                .map_err(unrecorded)?;
            let record = Record { journal };
            record.announce(run);
            return Ok(record);
        };
        let now = OffsetDateTime::now_utc();
        past.steps.retain(|s| s.status != StepStatus::Pending);
        for step in past
            .steps
            .iter_mut()
            .filter(|s| s.status == StepStatus::Running)
        {
            step.status = StepStatus::Failed;
            step.ended_at = Some(now);
            for target in step
                .targets
                .iter_mut()
                .filter(|t| t.status == TargetStatus::Intent)
            {
                target.status = TargetStatus::Failed;
                target.output =
                    "stopped before it ended (the run was killed or lost its lock)".to_string();
            }
        }
        past.status = RunStatus::Running;
        past.ended_at = None;
        let mut record = Record {
            journal: Journal::resume(&run.consul, &env.prefix, past, index),
        };
        for step in planned {
            record.push(step);
        }
        record.journal.save().await.map_err(unrecorded)?;
        record.announce(run);
        Ok(record)
    }

    /// Says which run this is.
    fn announce(&self, run: &Run<'_>) {
        let id = &self.journal.run.id;
        run.out.emit(
            json!({"event": "run_started", "run": id, "direction": "canary", "env": run.env.name, "route": run.route}),
            || format!("maintctl canary --env {} --route {} (run {id})", run.env.name, run.route),
        );
    }

    /// Adds `step` as pending, under an id of its own (`split_25#2` when `split_25` is there).
    fn push(&mut self, step: &Step) {
        let id = self.id_of(&step.id);
        let id = if self
            .journal
            .run
            .step_mut(&id)
            .is_some_and(|s| s.status == StepStatus::Pending)
        {
            return;
        } else if self.journal.run.step_mut(&id).is_some() {
            (2..)
                .map(|n| format!("{}#{n}", step.id))
                .find(|candidate| self.journal.run.step_mut(candidate).is_none())
                .expect("some suffix is free")
        } else {
            id
        };
        self.journal.run.steps.push(StepRecord {
            id,
            ..StepRecord::pending(step)
        });
    }

    /// The id under which the planned step `planned` is recorded: the last pending step of
    /// that id or with a `#n` suffix of it.
    fn id_of(&self, planned: &str) -> String {
        self.journal
            .run
            .steps
            .iter()
            .rev()
            .find(|s| {
                s.status == StepStatus::Pending
                    && (s.id == planned
                        || s.id
                            .split_once('#')
                            .is_some_and(|(base, _)| base == planned))
            })
            .map_or_else(|| planned.to_string(), |s| s.id.clone())
    }

    async fn started(&mut self, id: &str) -> Result<(), Failure> {
        let now = OffsetDateTime::now_utc();
        if let Some(step) = self.journal.run.step_mut(id) {
            step.status = StepStatus::Running;
            step.started_at = Some(now);
            for target in &mut step.targets {
                target.status = TargetStatus::Intent;
                target.started_at = Some(now);
            }
        }
        self.journal.save().await.map_err(unrecorded)
    }

    async fn ended(&mut self, id: &str, said: Result<&str, &str>) -> Result<(), Failure> {
        let now = OffsetDateTime::now_utc();
        if let Some(step) = self.journal.run.step_mut(id) {
            step.status = if said.is_ok() {
                StepStatus::Done
            } else {
                StepStatus::Failed
            };
            step.ended_at = Some(now);
            for target in &mut step.targets {
                target.status = if said.is_ok() {
                    TargetStatus::Done
                } else {
                    TargetStatus::Failed
                };
                target.ended_at = Some(now);
                target.output = said.unwrap_or_else(|e| e).to_string();
            }
        }
        self.journal.save().await.map_err(unrecorded)
    }

    /// Records step `id` failed for `why`, then the rollback of `to` as a step of its own,
    /// done or failed as `failure` says, and the run rolled back (or failed, when the rollback
    /// was not confirmed: `resume` finishes it).
    async fn rolled_back(
        &mut self,
        id: &str,
        why: &str,
        to: &str,
        failure: Option<&Failure>,
    ) -> Result<(), Failure> {
        self.ended(id, Err(why)).await?;
        let step = Step {
            id: "roll_back".to_string(),
            title: format!("roll back: the route sends nothing to {to}"),
            kind: StepKind::Canary,
            targets: vec![to.to_string()],
            batch: None,
        };
        self.push(&step);
        let rollback = self.id_of(&step.id);
        self.started(&rollback).await?;
        let said = failure.map(|f| f.message.as_str());
        self.ended(
            &rollback,
            said.map_or(Ok("every proxy sends it nothing"), Err),
        )
        .await?;
        self.finish(if failure.is_none() {
            RunStatus::RolledBack
        } else {
            RunStatus::Failed
        })
        .await
    }

    async fn finish(&mut self, status: RunStatus) -> Result<(), Failure> {
        self.journal.finish(status).await.map_err(unrecorded)
    }
}

/// Ends the unfinished canary run of the route, if it is the last run, `rolled_back` (after
/// `--abort`, or when a resumed canary finds its route no longer split), so `resume` does not
/// start it again; a canary still running finds its journal changed at its next write and stops
/// there. Re-read and written again when that canary wrote in between.
async fn end_rolled_back(run: &Run<'_>) {
    let env = run.env;
    for _ in 0..ROLLBACK_TRIES {
        let Ok(unfinished) = journal::unfinished(&run.consul, &env.prefix).await else {
            break;
        };
        let Some((past, index)) = unfinished else {
            return;
        };
        let of_route = past.canary.as_ref().is_some_and(|c| c.route == run.route);
        if past.direction != Direction::Canary || !of_route {
            return;
        }
        let mut journal = Journal::resume(&run.consul, &env.prefix, past, index);
        if journal.finish(RunStatus::RolledBack).await.is_ok() {
            return;
        }
    }
    run.out.note(
        "the canary's run could not be ended rolled_back in the journal: `maintctl status` shows it; do not `resume` it",
    );
}

/// Why a step did not pass.
enum Judged {
    /// The new pool did worse, or its share was not confirmed: roll it back.
    Worse(String),
    /// The split was changed by someone else during the hold: stop, leave it as it is.
    Changed(String),
}

/// Why a raise did not go through.
enum Raise {
    /// Nothing was written: the split is as it was.
    NotWritten(Failure),
    /// The document was written but not seen applied everywhere: it must be rolled back.
    Unconfirmed(Failure),
}

/// How many times a rollback re-reads and writes again when someone changed the document.
const ROLLBACK_TRIES: usize = 3;

impl Run<'_> {
    /// The split document now, checked as the proxies check it; none is an empty one.
    async fn read(&self) -> Result<Written, Failure> {
        let key = &self.env.split_key;
        let read = self
            .consul
            .kv_get(key, &QueryOptions::default())
            .await
            .map_err(|e| Failure::failed(format!("reading the split key {key}: {e}")))?;
        let Some(entry) = read.entry else {
            return Ok(Written {
                doc: SplitDoc::default(),
                index: 0,
            });
        };
        let doc = SplitDoc::parse(entry.value.as_deref().unwrap_or_default()).map_err(|e| {
            Failure::failed(format!(
                "the split key {key} holds a value the proxies refuse ({e}): fix or delete it first"
            ))
        })?;
        Ok(Written {
            doc,
            index: entry.modify_index,
        })
    }

    /// Refuses to start unless every proxy follows the inventory's split key and has pool
    /// `to`: a proxy that would refuse the document could not confirm a step.
    async fn check_proxies(&self, to: &str) -> Result<(), Failure> {
        let mut problems = Vec::new();
        for proxy in &self.proxies {
            match proxies::status(&self.http, self.env, proxy).await {
                Ok(report) => match report.split {
                    None => problems.push(format!(
                        "{}: reports no split (a drawbridge that predates it)",
                        proxy.name
                    )),
                    Some(split) if split.key != self.env.split_key => problems.push(format!(
                        "{}: follows the split key {}, not {} (split_key in the inventory)",
                        proxy.name, split.key, self.env.split_key
                    )),
                    Some(_) if !report.pools.iter().any(|p| p.name == to) => {
                        problems.push(format!("{}: has no pool {to}", proxy.name))
                    }
                    Some(_) => {}
                },
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Failure::new(
            exit::PREFLIGHT,
            "not every proxy can take this split; nothing was done",
        )
        .with_problems(problems))
    }

    /// Writes `doc` if the key still holds what was read, and reads it back to learn its index;
    /// `Ok(None)` when someone changed the key since (nothing written).
    async fn write(&self, written: &Written, doc: &SplitDoc) -> Result<Option<u64>, String> {
        let value = serde_json::to_vec(doc).expect("a split document always serialises");
        let key = &self.env.split_key;
        put_read_back(&self.consul, key, "the split key", &value, written.index).await
    }

    /// Sends `percent` % of the route's clients to `to`, and waits until every proxy applies
    /// it. Only while the lock is held.
    async fn raise(&self, written: &mut Written, to: &str, percent: u8) -> Result<(), Raise> {
        if self.lock.is_some_and(Lock::is_lost) {
            return Err(Raise::NotWritten(lock_lost()));
        }
        let mut doc = written.doc.clone();
        let want = RouteSplit {
            to: to.to_string(),
            percent,
        };
        doc.routes.insert(self.route.to_string(), want.clone());
        doc.by = Some(self.by.clone());
        let index = match self.write(written, &doc).await {
            Ok(Some(index)) => index,
            Ok(None) => {
                return Err(Raise::NotWritten(Failure::failed(format!(
                    "the split key {} changed since it was read (another operator?): nothing more was written; look at it and run again",
                    self.env.split_key
                ))))
            }
            // Written, perhaps: treated as written.
            Err(e) => return Err(Raise::Unconfirmed(Failure::failed(e))),
        };
        *written = Written { doc, index };
        self.wait_applied(index, Some(&want))
            .await
            .map_err(Raise::Unconfirmed)
    }

    /// Waits until every proxy has applied the document at `index` (or a later one) and splits
    /// the route as `want` says.
    async fn wait_applied(&self, index: u64, want: Option<&RouteSplit>) -> Result<(), Failure> {
        wait_until(self.env.verify_timeout, || async {
            let mut behind = Vec::new();
            for proxy in &self.proxies {
                match proxies::status(&self.http, self.env, proxy).await {
                    Ok(report) => {
                        let Some(split) = report.split else {
                            behind.push(format!("{}: reports no split (an older drawbridge?)", proxy.name));
                            continue;
                        };
                        let seen = split.routes.get(self.route);
                        if split.applied_index < index || seen != want {
                            behind.push(format!(
                                "{}: applies index {} ({})",
                                proxy.name,
                                split.applied_index,
                                seen.map_or("not split".to_string(), |s| format!("{} % to {}", s.percent, s.to))
                            ));
                        }
                    }
                    Err(e) => behind.push(e),
                }
            }
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind.join("; "))
            }
        })
        .await
        .map_err(|behind| {
            Failure::new(
                exit::VERIFY_TIMEOUT,
                format!(
                    "not every proxy applied the split document at index {index} within {:?}: {behind}",
                    self.env.verify_timeout
                ),
            )
        })
    }

    /// Takes the route out of the split document (`why` it is rolled back), and waits until
    /// every proxy has applied that. A change by someone else to another route is re-read and
    /// kept; a change of this route itself is left to whoever made it.
    async fn roll_back(&self, written: &mut Written, to: &str, why: &str) -> Result<(), Failure> {
        self.out.note(&format!(
            "rolling back: route {} sends nothing more to {to}",
            self.route
        ));
        let not_confirmed = |message: String| {
            Failure::new(
                exit::FAILED,
                format!(
                    "ROLLBACK NOT CONFIRMED ({message}); it was rolled back because: {why}; take route {} out of {} by hand",
                    self.route, self.env.split_key
                ),
            )
        };
        for _ in 0..ROLLBACK_TRIES {
            let mut doc = written.doc.clone();
            match doc.routes.get(self.route) {
                Some(split) if split.to == to => {}
                Some(split) => {
                    return Err(not_confirmed(format!(
                        "someone else now sends the route to {}",
                        split.to
                    )))
                }
                None => return Ok(()),
            }
            doc.routes.remove(self.route);
            doc.by = Some(self.by.clone());
            match self.write(written, &doc).await {
                Ok(Some(index)) => {
                    *written = Written { doc, index };
                    return self
                        .wait_applied(index, None)
                        .await
                        .map_err(|failure| not_confirmed(failure.message));
                }
                Ok(None) => *written = self.read().await.map_err(|f| not_confirmed(f.message))?,
                Err(e) => return Err(not_confirmed(e)),
            }
        }
        Err(not_confirmed(format!(
            "the split key kept changing under {ROLLBACK_TRIES} writes"
        )))
    }

    /// After a hold: the split document must still send `percent` % of the route to `to`;
    /// `written` becomes what is there now.
    async fn still_split(
        &self,
        written: &mut Written,
        to: &str,
        percent: u8,
    ) -> Result<(), Judged> {
        let now = self.read().await.map_err(|f| Judged::Changed(f.message))?;
        let want = RouteSplit {
            to: to.to_string(),
            percent,
        };
        let seen = now.doc.routes.get(self.route).cloned();
        *written = now;
        match seen {
            Some(split) if split == want => Ok(()),
            Some(split) => Err(Judged::Changed(format!(
                "the split key {} was changed during the hold: route {} now sends {} % to {}",
                self.env.split_key, self.route, split.percent, split.to
            ))),
            None => Err(Judged::Changed(format!(
                "the split key {} was changed during the hold: route {} is not split any more (an --abort?)",
                self.env.split_key, self.route
            ))),
        }
    }

    /// Both sides of the route as each proxy counts them now; `None` for a proxy that could
    /// not be read.
    async fn counts(&self, to: &str) -> Vec<Option<(SideCounts, SideCounts)>> {
        let mut counts = Vec::new();
        for proxy in &self.proxies {
            let read = proxies::metrics(&self.http, self.env, proxy).await;
            counts.push(read.ok().map(|text| sides(&text, self.route, to)));
        }
        counts
    }

    /// Holds the step for `hold`, looking at the new pool every second: `Err` with why as soon
    /// as its errors are over the limit, or at the end when it answered too few requests or its
    /// p99 is too slow against the old pool's (`old_p99`, kept from the last step of this run
    /// that measured it). A proxy not read at one look is read at the next; every proxy must be
    /// read at the start and the end. `Ok` says what was measured.
    async fn judge(
        &self,
        to: &str,
        hold: Duration,
        old_p99: &mut Option<f64>,
    ) -> Result<String, String> {
        let t = &self.env.canary;
        let start = self.counts(to).await;
        if let Some(i) = start.iter().position(Option::is_none) {
            return Err(format!(
                "{}: its /metrics could not be read",
                self.proxies[i].name
            ));
        }
        let ends = Instant::now() + hold;
        loop {
            let left = ends.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(LOOK_EVERY)).await;
            if self.lock.is_some_and(Lock::is_lost) {
                return Err(
                    "the environment's lock was lost (its Consul session could not be renewed)"
                        .to_string(),
                );
            }
            let now = self.counts(to).await;
            let last_look = Instant::now() >= ends;
            let mut own = SideCounts::default();
            let mut new = SideCounts::default();
            for (i, (then, now)) in start.iter().zip(&now).enumerate() {
                match (then, now) {
                    (Some((own_then, new_then)), Some((own_now, new_now))) => {
                        own.add(&own_now.since(own_then));
                        new.add(&new_now.since(new_then));
                    }
                    _ if last_look => {
                        return Err(format!(
                            "{}: its /metrics could not be read",
                            self.proxies[i].name
                        ));
                    }
                    _ => {}
                }
            }
            let errors = new.error_rate().unwrap_or(0.0);
            if new.answers >= t.min_requests as f64 && errors > t.max_error_rate {
                return Err(format!(
                    "{to} erred on {:.1} % of {} requests (at most {:.1} %)",
                    errors * 100.0,
                    new.answers,
                    t.max_error_rate * 100.0
                ));
            }
            if !last_look {
                continue;
            }
            if new.answers < t.min_requests as f64 {
                return Err(format!(
                    "{to} answered {} requests in {hold:?}, fewer than the {} needed to judge it (canary.min_requests)",
                    new.answers, t.min_requests
                ));
            }
            if own.answers >= t.min_requests as f64 {
                *old_p99 = own.p99().or(*old_p99);
            }
            let new_p99 = new.p99();
            let p99 = match (new_p99, *old_p99) {
                (Some(new_p99), Some(old)) if new_p99 > old * t.max_p99_ratio => {
                    return Err(format!(
                        "{to}'s p99 is {} against the old pool's {} (at most {} times)",
                        millis(new_p99),
                        millis(old),
                        t.max_p99_ratio
                    ));
                }
                (Some(new_p99), Some(old)) => {
                    format!("p99 {} against {}", millis(new_p99), millis(old))
                }
                (new_p99, None) => format!(
                    "p99 {}, not compared: the old pool answered too few requests in this run",
                    new_p99.map_or("-".to_string(), millis)
                ),
                (None, Some(_)) => "no p99".to_string(),
            };
            return Ok(format!(
                "{to}: {} requests, {:.1} % errors, {p99}; old pool: {} requests",
                new.answers,
                errors * 100.0,
                own.answers,
            ));
        }
    }
}

fn lock_lost() -> Failure {
    Failure::new(
        exit::INTERRUPTED,
        "the environment's lock was lost (its Consul session could not be renewed): the split stays as it is; run again",
    )
}

fn millis(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_rise_from_1_to_100() {
        assert!(check_steps(&[5, 25, 50, 100]).is_ok());
        assert!(check_steps(&[100]).is_ok());
        assert!(check_steps(&[]).unwrap_err().contains("at least one"));
        assert!(check_steps(&[0, 50])
            .unwrap_err()
            .contains("0 is not a share"));
        assert!(check_steps(&[5, 101])
            .unwrap_err()
            .contains("101 is not a share"));
        assert!(check_steps(&[25, 5]).unwrap_err().contains("must rise"));
        assert!(check_steps(&[5, 5]).unwrap_err().contains("must rise"));
    }
}
