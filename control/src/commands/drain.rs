//! `maintctl drain` and `undrain`: API/UI boxes out of the traffic and back, without dropping a
//! request and without the maintenance page.
//!
//! Drain puts each box into Consul node maintenance (the proxies' pools that follow a Consul
//! service drop its instances at once: no new request goes there), then waits until every proxy
//! has dropped each instance of the boxes and has no request in flight to it. Undrain goes only
//! for boxes whose Consul checks all pass: node maintenance off, then a wait until every proxy
//! whose pools follow one of the boxes' services sends to each instance again, healthy. Both
//! hold the environment's lock and wait within `--timeout`; a wait that runs out says what was
//! still running, where.

use super::run::confirmed;
use super::{
    consul_client, exit, fleet_proxies, http_client, release_lock, take_lock, CommandResult,
    Failure,
};
use crate::config::{BoxSettings, Config, Environment, Role};
use crate::lock::{Holder, Lock};
use crate::output::{Outcome, Output};
use crate::steps::{count, wait_until, Context, TargetError};
use crate::traffic::{edge_problems, target, unhealthy, Way};
use drawbridge_core::consul::Client;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// What `drain` and `undrain` are asked.
pub struct DrainRequest {
    /// The boxes, by inventory name.
    pub boxes: Vec<String>,
    /// Why (the node maintenance reason in Consul).
    pub reason: Option<String>,
    /// How long to wait for the proxies; the environment's `step_timeout` when absent.
    pub timeout: Option<Duration>,
    pub yes: bool,
    pub dry_run: bool,
}

/// `maintctl drain`.
pub async fn drain(
    config: &Config,
    env_name: &str,
    req: DrainRequest,
    out: Output,
) -> CommandResult {
    move_boxes(config, env_name, req, Way::Drain, out).await
}

/// `maintctl undrain`.
pub async fn undrain(
    config: &Config,
    env_name: &str,
    req: DrainRequest,
    out: Output,
) -> CommandResult {
    move_boxes(config, env_name, req, Way::Undrain, out).await
}

async fn move_boxes(
    config: &Config,
    env_name: &str,
    req: DrainRequest,
    way: Way,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let boxes = api_ui_boxes(env, &req.boxes).map_err(Failure::usage)?;
    let timeout = req.timeout.unwrap_or(env.step_timeout);
    if req.dry_run {
        print_steps(env, &boxes, way, timeout, out);
        return Ok(exit::OK);
    }
    let consul = consul_client(env).map_err(Failure::usage)?;
    confirmed(env, way.as_str(), req.yes)?;
    let lock = take_lock(&consul, env, way.as_str()).await?;
    let ended = move_locked(env, &consul, &lock, &boxes, &req, way, timeout, out).await;
    release_lock(lock, out).await;
    ended
}

/// The named boxes, each an `api_ui` box of the environment, in the order given, once each.
fn api_ui_boxes<'a>(
    env: &'a Environment,
    names: &[String],
) -> Result<Vec<&'a BoxSettings>, String> {
    if names.is_empty() {
        return Err("name at least one api_ui box".to_string());
    }
    let mut boxes: Vec<&BoxSettings> = Vec::new();
    for name in names {
        let Some(b) = env.boxes.iter().find(|b| &b.name == name) else {
            return Err(format!(
                "no box {name:?} in environment {} (its api_ui boxes: {})",
                env.name,
                api_ui_names(env)
            ));
        };
        if b.role != Role::ApiUi {
            return Err(format!(
                "box {name} is a {} box: only api_ui boxes take traffic from the proxies (its api_ui boxes: {})",
                b.role.as_str(),
                api_ui_names(env)
            ));
        }
        if !boxes.iter().any(|seen| seen.name == b.name) {
            boxes.push(b);
        }
    }
    Ok(boxes)
}

fn api_ui_names(env: &Environment) -> String {
    let names: Vec<&str> = env
        .boxes
        .iter()
        .filter(|b| b.role == Role::ApiUi)
        .map(|b| b.name.as_str())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn print_steps(
    env: &Environment,
    boxes: &[&BoxSettings],
    way: Way,
    timeout: Duration,
    out: Output,
) {
    let names: Vec<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
    let steps = match way {
        Way::Drain => vec![
            "put the boxes into Consul node maintenance (no new request goes to them)".to_string(),
            format!("wait until every proxy has dropped them and has no request in flight to them (within {timeout:?})"),
        ],
        Way::Undrain => vec![
            "check that every Consul check of the boxes passes (else stop, changing nothing)".to_string(),
            "take the boxes out of Consul node maintenance".to_string(),
            format!("wait until every proxy sends to them again, healthy (within {timeout:?})"),
        ],
    };
    out.emit(
        json!({"event": "plan", "action": way.as_str(), "env": env.name, "boxes": names, "steps": steps}),
        || {
            let mut text = format!("maintctl {} --env {} {}:", way.as_str(), env.name, names.join(" "));
            for (i, step) in steps.iter().enumerate() {
                text.push_str(&format!("\n  {}. {step}", i + 1));
            }
            text
        },
    );
}

/// The part of [`move_boxes`] that runs under the lock.
#[allow(clippy::too_many_arguments)]
async fn move_locked(
    env: &Environment,
    consul: &Client,
    lock: &Lock,
    boxes: &[&BoxSettings],
    req: &DrainRequest,
    way: Way,
    timeout: Duration,
    out: Output,
) -> CommandResult {
    let http = http_client().map_err(Failure::failed)?;
    let proxies = fleet_proxies(env, consul, "that the traffic moved").await?;
    let mut targets = Vec::new();
    for b in boxes {
        targets.push(target(consul, b, out).await.map_err(Failure::failed)?);
    }
    if way == Way::Undrain {
        let problems = unhealthy(consul, boxes).await.map_err(Failure::failed)?;
        if !problems.is_empty() {
            return Err(Failure::new(
                exit::PREFLIGHT,
                format!(
                    "undrain refused: {} not healthy in Consul; nothing was done (the boxes stay drained)",
                    count(problems.len(), "check is", "checks are")
                ),
            )
            .with_problems(problems));
        }
    }
    let names: Vec<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
    let by = Holder::me(way.as_str()).by();
    let reason = match req.reason.as_deref().map(str::trim) {
        Some(reason) if !reason.is_empty() => format!("{} by {by}: {reason}", way.as_str()),
        _ => format!("{} by {by}", way.as_str()),
    };
    out.emit(
        json!({"event": "started", "action": way.as_str(), "env": env.name, "boxes": names}),
        || {
            format!(
                "maintctl {} --env {} {}",
                way.as_str(),
                env.name,
                names.join(" ")
            )
        },
    );
    let ctx = Context {
        env: Arc::new(env.clone()),
        consul: consul.clone(),
        http: http.clone(),
        reason,
        until: None,
        expire: false,
        by,
        run_id: format!(
            "{}-{}",
            way.as_str(),
            OffsetDateTime::now_utc().unix_timestamp()
        ),
        proxies: proxies.clone(),
        out,
        // Nothing here stops at a step boundary: Ctrl-C ends the command, and running it
        // again goes on from what Consul and the proxies show.
        interrupted: Arc::default(),
        assume_yes: req.yes,
        done_before: HashMap::new(),
        repeat_steps: false,
    };
    let step = "node_maintenance";
    let title = match way {
        Way::Drain => "put the boxes into Consul node maintenance",
        Way::Undrain => "take the boxes out of Consul node maintenance",
    };
    out.step_started(0, 2, step, title);
    let started = Instant::now();
    for target in &targets {
        if lock.is_lost() {
            out.step_ended(step, false, started.elapsed());
            return Err(lock_lost(way));
        }
        let target_started = Instant::now();
        let result = ctx
            .node_maintenance(target.settings, way.want(), false)
            .await;
        let (outcome, detail) = match result {
            Ok(done) => done,
            Err(error) => {
                let (code, m) = match error {
                    TargetError::Failed(m) => (exit::FAILED, m),
                    TargetError::VerifyTimeout(m) => (exit::VERIFY_TIMEOUT, m),
                };
                out.target_ended(
                    step,
                    &target.settings.name,
                    Outcome::Failed,
                    target_started.elapsed(),
                    &m,
                );
                out.step_ended(step, false, started.elapsed());
                return Err(Failure::new(
                    code,
                    format!(
                        "{}: {m}; boxes switched before it stay as they are: run `maintctl {} --env {} {}` again",
                        target.settings.name,
                        way.as_str(),
                        env.name,
                        names.join(" ")
                    ),
                ));
            }
        };
        out.target_ended(
            step,
            &target.settings.name,
            outcome,
            target_started.elapsed(),
            &detail,
        );
    }
    out.step_ended(step, true, started.elapsed());

    let step = "proxies";
    let title = match way {
        Way::Drain => "wait until no proxy sends to the boxes and nothing is in flight to them",
        Way::Undrain => "wait until every proxy sends to the boxes again",
    };
    out.step_started(1, 2, step, title);
    let started = Instant::now();
    let last_said = std::sync::Mutex::new(Vec::new());
    let sending = std::sync::atomic::AtomicUsize::new(0);
    let waited = wait_until(timeout, || async {
        if lock.is_lost() {
            // Stops the wait; said below.
            return Ok(());
        }
        let seen = edge_problems(&http, env, &proxies, &targets, way).await;
        let problems = seen.problems;
        if problems.is_empty() {
            sending.store(seen.sending, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let mut said = last_said.lock().unwrap_or_else(|e| e.into_inner());
        if *said != problems {
            out.emit(json!({"event": "waiting", "still": problems}), || {
                format!("    waiting: {}", problems.join("; "))
            });
            said.clone_from(&problems);
        }
        Err(problems.join("\n"))
    })
    .await;
    if lock.is_lost() {
        out.step_ended(step, false, started.elapsed());
        return Err(lock_lost(way));
    }
    if let Err(still) = waited {
        out.step_ended(step, false, started.elapsed());
        let problems: Vec<String> = still.lines().map(str::to_string).collect();
        let message = match way {
            Way::Drain => format!(
                "the drain did not complete within {timeout:?}; the boxes stay in node maintenance (no new request goes to them where a pool follows Consul): wait and run it again, or `maintctl undrain --env {} {}`",
                env.name,
                names.join(" ")
            ),
            Way::Undrain => format!(
                "the proxies did not all send to the boxes again within {timeout:?}; their node maintenance is off"
            ),
        };
        return Err(Failure::new(exit::VERIFY_TIMEOUT, message).with_problems(problems));
    }
    out.step_ended(step, true, started.elapsed());
    let sending = sending.into_inner();
    out.emit(
        json!({"event": "done", "action": way.as_str(), "env": env.name, "boxes": names,
               "proxies": proxies.iter().map(|p| &p.name).collect::<Vec<_>>(),
               "sending_pools": (way == Way::Undrain).then_some(sending)}),
        || {
            let seen = count(proxies.len(), "proxy", "proxies");
            let names = names.join(", ");
            match way {
                Way::Drain => format!(
                    "done: {names} drained; {seen} send them nothing and have nothing in flight to them"
                ),
                Way::Undrain if sending == 0 => format!(
                    "done: {names} out of node maintenance; no pool of the {seen} follows a Consul service of theirs"
                ),
                Way::Undrain => format!(
                    "done: {names} back in the traffic; {seen} send to them ({} of a pool and an instance)",
                    count(sending, "pair", "pairs")
                ),
            }
        },
    );
    Ok(exit::OK)
}

/// The failure of a run that lost the environment's lock.
fn lock_lost(way: Way) -> Failure {
    Failure::new(
        exit::INTERRUPTED,
        format!(
            "the environment's lock was lost (its Consul session could not be renewed): stopped before the {} was confirmed; run it again",
            way.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_api_ui_boxes_of_the_environment_are_taken_once_each() {
        let env = crate::config::sample::mock();
        let env = &env;
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let taken = api_ui_boxes(env, &names(&["api1", "api1"])).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(
            api_ui_boxes(env, &names(&["worker1"])).err().unwrap(),
            "box worker1 is a worker box: only api_ui boxes take traffic from the proxies (its api_ui boxes: api1, api2)"
        );
        assert!(api_ui_boxes(env, &names(&["api9"]))
            .err()
            .unwrap()
            .starts_with("no box \"api9\""));
        assert!(api_ui_boxes(env, &[]).is_err());
    }
}
