//! `maintctl roll`: the api_ui boxes replaced or upgraded one batch at a time while the others
//! serve. A run of its own in the journal (direction `roll`, not part of a maintenance), under the
//! environment's lock, resumable with `maintctl resume`. A new roll starts only from a fleet that
//! is all in the traffic and healthy, and never drains every box at once.

use super::run::{confirmed, refuse_if_locked, run_plan, Prepared, RunRequest};
use super::{
    consul_client, exit, print_plan, refuse_unfinished, release_lock, take_lock, CommandResult,
    Failure,
};
use crate::config::{Config, Environment, Role};
use crate::journal::{self, Journal, Maintenance, RunStatus};
use crate::output::Output;
use crate::plan::{BatchSize, Direction, Plan};
use crate::steps::count;
use crate::traffic::unhealthy;
use drawbridge_core::consul::Client;
use serde_json::json;
use std::collections::BTreeSet;

/// What `roll` is asked.
pub struct RollRequest {
    /// The role rolled; only `api_ui` boxes take traffic from the proxies.
    pub role: String,
    pub batch: BatchSize,
    /// Batches that may fail before the run stops.
    pub max_fail: usize,
    pub reason: Option<String>,
    pub yes: bool,
    pub dry_run: bool,
    /// Give up the unfinished roll instead of starting one.
    pub abandon: bool,
}

/// The plan of a roll of `env`'s `role` boxes, or why there can be none.
pub(super) fn roll_plan(
    env: &Environment,
    role: &str,
    batch: BatchSize,
    max_fail: usize,
) -> Result<Plan, Failure> {
    if role != Role::ApiUi.as_str() {
        return Err(Failure::usage(format!(
            "--role {role:?}: only api_ui boxes are rolled (they are the ones the proxies drain); workers and schedulers are changed with down/up"
        )));
    }
    let Some(roll) = &env.roll else {
        return Err(Failure::usage(format!(
            "environment {0} has no [environments.{0}.roll] table: set the `command` or `url` that replaces a box",
            env.name
        )));
    };
    let boxes = env.boxes.iter().filter(|b| b.role == Role::ApiUi).count();
    if boxes == 0 {
        return Err(Failure::usage(format!(
            "environment {} has no api_ui box to roll",
            env.name
        )));
    }
    let size = batch.boxes(boxes);
    if size >= boxes {
        return Err(Failure::usage(format!(
            "a batch of {size} of the {} leaves none serving: roll a smaller --batch (a fleet of one box is changed with down/up)",
            count(boxes, "api_ui box", "api_ui boxes")
        )));
    }
    Ok(Plan::roll(env, roll, size, max_fail))
}

/// What keeps a new roll from starting: a box already in node maintenance (drained by someone,
/// or down for a maintenance: a roll would put it back) or with a failing check.
async fn fleet_problems(env: &Environment, consul: &Client) -> Result<Vec<String>, Failure> {
    let boxes: Vec<_> = env.boxes.iter().filter(|b| b.role == Role::ApiUi).collect();
    let mut problems = Vec::new();
    for b in &boxes {
        let checks = consul
            .health_node(&b.node)
            .await
            .map_err(|e| Failure::failed(format!("{}: reading node {}: {e}", b.name, b.node)))?;
        if checks.iter().any(|c| c.is_node_maintenance()) {
            problems.push(format!(
                "{}: node {} is in maintenance (drained, or down for a maintenance: `maintctl status --env {}` says which); a roll would put it back in the traffic",
                b.name, b.node, env.name
            ));
        }
    }
    problems.extend(unhealthy(consul, &boxes).await.map_err(Failure::failed)?);
    Ok(problems)
}

/// Checked under the lock before a new roll: no unfinished run to resume first, and every
/// api_ui box in the traffic and healthy.
pub(super) async fn ready_to_start(env: &Environment, consul: &Client) -> Result<(), Failure> {
    refuse_unfinished(env, consul, |_| true).await?;
    let problems = fleet_problems(env, consul).await?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        exit::PREFLIGHT,
        format!(
            "roll refused: not every api_ui box is in the traffic and healthy; nothing was done ({})",
            count(problems.len(), "problem", "problems")
        ),
    )
    .with_problems(problems))
}

/// Refuses `down` and `up` while the last run is an unfinished roll: its drained boxes would
/// be taken for the maintenance's own, and it could no longer be resumed or abandoned.
pub(super) async fn refuse_if_rolling(env: &Environment, consul: &Client) -> Result<(), Failure> {
    refuse_unfinished(env, consul, |run| run.direction == Direction::Roll).await
}

/// `maintctl roll`.
pub async fn roll(config: &Config, env_name: &str, req: RollRequest, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    if req.abandon {
        return abandon(env, req.yes, out).await;
    }
    let plan = roll_plan(env, &req.role, req.batch, req.max_fail)?;
    if req.dry_run {
        print_plan(env, &plan, out);
        return Ok(exit::OK);
    }
    let consul = consul_client(env).map_err(Failure::usage)?;
    refuse_if_locked(env, &consul).await?;
    let reason = req
        .reason
        .clone()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "roll".to_string());
    let prepared = Prepared::New {
        reason,
        until: None,
        expire: false,
        by_daemon: false,
        restores: Vec::new(),
    };
    let run = RunRequest {
        reason: None,
        until: None,
        expire: false,
        by_daemon: false,
        yes: req.yes,
        dry_run: false,
        all: false,
        repeat_steps: false,
    };
    run_plan(
        env,
        consul,
        plan,
        prepared,
        &Maintenance::default(),
        &run,
        out,
    )
    .await
}

/// `maintctl roll --abandon`: the unfinished roll is journalled `abandoned`, so `resume` no
/// longer continues it and a new roll may start; nothing on the boxes changes. Says which of its
/// boxes Consul shows drained now.
async fn abandon(env: &Environment, yes: bool, out: Output) -> CommandResult {
    let consul = consul_client(env).map_err(Failure::usage)?;
    refuse_if_locked(env, &consul).await?;
    confirmed(env, "roll --abandon", yes)?;
    let lock = take_lock(&consul, env, "roll").await?;
    let ended = abandon_locked(env, &consul, out).await;
    release_lock(lock, out).await;
    ended
}

async fn abandon_locked(env: &Environment, consul: &Client, out: Output) -> CommandResult {
    let (run, index) = match journal::unfinished(consul, &env.prefix).await {
        Ok(Some((run, index))) if run.direction == Direction::Roll => (run, index),
        Ok(_) => {
            return Err(Failure::failed(format!(
                "{} has no unfinished roll to abandon (only the last run can be)",
                env.name
            )))
        }
        Err(e) => return Err(Failure::failed(e)),
    };
    let boxes: BTreeSet<String> = run
        .steps
        .iter()
        .flat_map(|s| s.targets.iter().map(|t| t.target.clone()))
        .collect();
    let id = run.id.clone();
    let mut journal = Journal::resume(consul, &env.prefix, run, index);
    journal
        .finish(RunStatus::Abandoned)
        .await
        .map_err(Failure::failed)?;
    let mut drained = Vec::new();
    for name in &boxes {
        let node = env
            .boxes
            .iter()
            .find(|b| &b.name == name)
            .map_or(name.as_str(), |b| b.node.as_str());
        let checks = consul
            .health_node(node)
            .await
            .map_err(|e| Failure::failed(format!("{name}: reading node {node}: {e}")))?;
        if checks.iter().any(|c| c.is_node_maintenance()) {
            drained.push(name.as_str());
        }
    }
    out.emit(
        json!({"event": "abandoned", "run": id, "env": env.name, "drained": drained}),
        || {
            if drained.is_empty() {
                format!("roll {id} abandoned; none of its boxes is in node maintenance")
            } else {
                format!(
                    "roll {id} abandoned; still drained (node maintenance on): {0}; `maintctl undrain --env {1} {0}` puts them back once healthy",
                    drained.join(" "),
                    env.name
                )
            }
        },
    );
    Ok(exit::OK)
}
