//! Runs a plan: for every step, each target is checked (already done: skipped), journalled
//! `intent`, acted on, verified from outside, and journalled `done` or `failed` with what it said.
//! Targets of one step run in parallel (bounded); the run stops before the next step when any
//! target failed, when Ctrl-C was pressed, or when the lock was lost, leaving the journal true.

use crate::config::{BoxAccess, BoxSettings, Environment, ExtraAction};
use crate::journal::{Journal, JournalError, RunStatus, StepStatus, TargetStatus};
use crate::lock::Lock;
use crate::output::{Outcome, Output};
use crate::plan::{Plan, StepKind};
use crate::proxies::{self, Expect, Proxy};
use crate::remote::{self, BoxState};
use drawbridge_core::consul::{Client, PutMode, QueryOptions, NODE_MAINTENANCE_CHECK};
use drawbridge_core::gate::{GateDoc, Mode};
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

const POLL_EVERY: Duration = Duration::from_millis(200);

/// Everything a run needs, shared by its parallel targets.
pub struct Context {
    pub env: Arc<Environment>,
    pub consul: Client,
    pub http: reqwest::Client,
    pub reason: String,
    pub until: Option<OffsetDateTime>,
    pub by: String,
    pub run_id: String,
    pub proxies: Vec<Proxy>,
    pub out: Output,
    /// Set by Ctrl-C: stop at the next step boundary.
    pub interrupted: Arc<AtomicBool>,
    /// `--yes`: pauses from the config are passed without asking.
    pub assume_yes: bool,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Done,
    /// A step failed; the message names the step and the targets.
    Failed(String),
    /// A verification did not succeed in time.
    VerifyTimeout(String),
    /// Stopped at a step boundary (Ctrl-C or lost lock).
    Interrupted(String),
}

/// Why a target failed.
enum TargetError {
    Failed(String),
    VerifyTimeout(String),
}

impl From<drawbridge_core::consul::Error> for TargetError {
    fn from(e: drawbridge_core::consul::Error) -> TargetError {
        TargetError::Failed(e.to_string())
    }
}

type TargetResult = Result<(Outcome, String), TargetError>;

fn failed<T>(message: impl Into<String>) -> Result<T, TargetError> {
    Err(TargetError::Failed(message.into()))
}

/// Polls `probe` until it succeeds or `within` passes; the last failure explains the timeout.
pub async fn wait_until<F, Fut>(within: Duration, mut probe: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let err = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

impl Context {
    fn now_unix() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    fn find_box(&self, name: &str) -> Result<&BoxSettings, TargetError> {
        self.env
            .boxes
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| {
                TargetError::Failed(format!("box {name} is no longer in the configuration"))
            })
    }

    /// Waits until every proxy serves `mode` from at least `index`, and every public URL
    /// answers as that mode should.
    async fn verify_edge(&self, mode: Mode, index: u64) -> Result<(), TargetError> {
        let verify = wait_until(self.env.verify_timeout, || async {
            let mut waiting = Vec::new();
            for proxy in &self.proxies {
                match proxies::status(&self.http, &self.env, proxy).await {
                    Ok(report) => {
                        if let Err(e) = proxies::confirms(&report, mode, index) {
                            waiting.push(format!("{}: {e}", proxy.name));
                        }
                    }
                    Err(e) => waiting.push(e),
                }
            }
            let (page, api) = match mode {
                Mode::Normal => (Expect::Open, Expect::Open),
                _ => (Expect::Page, Expect::Problem),
            };
            for url in &self.env.public_page_urls {
                if let Err(e) = proxies::check_public(&self.http, url, page).await {
                    waiting.push(e);
                }
            }
            for url in &self.env.public_api_urls {
                if let Err(e) = proxies::check_public(&self.http, url, api).await {
                    waiting.push(e);
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(waiting.join("; "))
            }
        })
        .await;
        verify.map_err(|e| {
            TargetError::VerifyTimeout(format!(
                "not every proxy and public URL showed {mode} within {:?}: {e}",
                self.env.verify_timeout
            ))
        })
    }

    async fn set_key(&self, resumed: bool) -> TargetResult {
        let key = &self.env.key;
        let current = self.consul.kv_get(key, &QueryOptions::default()).await?;
        let existing = current.entry.as_ref().and_then(|e| {
            let doc = GateDoc::parse(e.value.as_deref().unwrap_or_default()).ok()?;
            (doc.mode == Mode::Maintenance && doc.scope.is_none()).then_some(e.modify_index)
        });
        let (index, outcome) = match existing {
            Some(index) => (
                index,
                if resumed {
                    Outcome::Done
                } else {
                    Outcome::Skipped
                },
            ),
            None => {
                let doc = GateDoc {
                    mode: Mode::Maintenance,
                    reason: Some(self.reason.clone()),
                    message: None,
                    until: self.until,
                    started_at: Some(OffsetDateTime::now_utc()),
                    by: Some(self.by.clone()),
                    scope: None,
                };
                let cas = current.entry.as_ref().map_or(0, |e| e.modify_index);
                let written = self
                    .consul
                    .kv_put(key, doc.to_json().as_bytes(), PutMode::Cas(cas))
                    .await?;
                if !written {
                    return failed(format!(
                        "{key} changed while it was being written; run again"
                    ));
                }
                let read = self.consul.kv_get(key, &QueryOptions::default()).await?;
                (read.entry.map_or(0, |e| e.modify_index), Outcome::Done)
            }
        };
        self.verify_edge(Mode::Maintenance, index).await?;
        Ok((
            outcome,
            format!(
                "{key} = maintenance at index {index}; {} proxies confirmed",
                self.proxies.len()
            ),
        ))
    }

    async fn clear_key(&self, resumed: bool) -> TargetResult {
        let key = &self.env.key;
        let current = self.consul.kv_get(key, &QueryOptions::default()).await?;
        let (after, outcome) = match current.entry {
            None => (
                1,
                if resumed {
                    Outcome::Done
                } else {
                    Outcome::Skipped
                },
            ),
            Some(entry) => {
                let deleted = self.consul.kv_delete(key, Some(entry.modify_index)).await?;
                if !deleted {
                    return failed(format!(
                        "{key} changed while it was being cleared; run again"
                    ));
                }
                // Any state a proxy applies after the delete has a higher index than the value.
                (entry.modify_index + 1, Outcome::Done)
            }
        };
        self.verify_edge(Mode::Normal, after).await?;
        Ok((
            outcome,
            format!("{key} cleared; {} proxies serve normal", self.proxies.len()),
        ))
    }

    /// Node maintenance through the box's Consul agent, verified in the catalog.
    async fn node_maintenance(&self, b: &BoxSettings, enable: bool, resumed: bool) -> TargetResult {
        let BoxAccess::ConsulAgent(agent) = &b.access else {
            let want = if enable {
                BoxState::Stopped
            } else {
                BoxState::Running
            };
            return self.box_state(b, want, resumed).await;
        };
        let agent = Client::new(agent, self.env.consul_token.clone())?;
        let is_on = |checks: &std::collections::HashMap<String, _>| {
            checks.contains_key(NODE_MAINTENANCE_CHECK)
        };
        let checks = agent.agent_checks().await?;
        let outcome = if is_on(&checks) == enable {
            if resumed {
                Outcome::Done
            } else {
                Outcome::Skipped
            }
        } else {
            agent.agent_node_maintenance(enable, &self.reason).await?;
            Outcome::Done
        };
        let node = &b.node;
        wait_until(self.env.verify_timeout, || async {
            let checks = self
                .consul
                .health_node(node)
                .await
                .map_err(|e| e.to_string())?;
            let on = checks.iter().any(|c| c.is_node_maintenance());
            if on == enable {
                Ok(())
            } else {
                Err(format!(
                    "Consul's health of node {node} {} the maintenance check",
                    if on { "still shows" } else { "does not show" }
                ))
            }
        })
        .await
        .map_err(TargetError::VerifyTimeout)?;
        Ok((
            outcome,
            format!(
                "node {node} maintenance {}",
                if enable { "on" } else { "off" }
            ),
        ))
    }

    /// Brings a box's services or jobs to `want` with its commands, verified by its check.
    async fn box_state(&self, b: &BoxSettings, want: BoxState, resumed: bool) -> TargetResult {
        let ssh_config = self.env.ssh_config.as_deref();
        let timeout = self.env.step_timeout;
        let now = remote::check(&self.http, ssh_config, b, &self.reason, timeout)
            .await
            .map_err(TargetError::Failed)?;
        let (outcome, said) = if now == want {
            (
                if resumed {
                    Outcome::Done
                } else {
                    Outcome::Skipped
                },
                String::new(),
            )
        } else {
            let said = remote::act(
                &self.http,
                ssh_config,
                b,
                want == BoxState::Running,
                &self.reason,
                timeout,
            )
            .await
            .map_err(TargetError::Failed)?;
            (Outcome::Done, said)
        };
        wait_until(self.env.verify_timeout, || async {
            match remote::check(&self.http, ssh_config, b, &self.reason, timeout).await? {
                s if s == want => Ok(()),
                s => Err(format!("{}: the check still says {s:?}", b.name)),
            }
        })
        .await
        .map_err(TargetError::VerifyTimeout)?;
        let state = match want {
            BoxState::Running => "running",
            BoxState::Stopped => "stopped",
        };
        Ok((
            outcome,
            if said.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {said}")
            },
        ))
    }

    async fn smoke(&self, name: &str) -> TargetResult {
        let Some(test) = self.env.smoke.iter().find(|s| s.name == name) else {
            return failed(format!(
                "smoke test {name} is no longer in the configuration"
            ));
        };
        let Some(bypass) = &self.env.bypass else {
            return failed("smoke tests need [bypass] keys in the configuration");
        };
        proxies::smoke(&self.http, bypass, test, Self::now_unix())
            .await
            .map(|said| (Outcome::Done, said))
            .map_err(TargetError::Failed)
    }

    async fn extra(&self, name: &str, direction: &str) -> TargetResult {
        let Some(step) = self.env.extra_steps.iter().find(|s| s.name == name) else {
            return failed(format!("step {name} is no longer in the configuration"));
        };
        match &step.action {
            ExtraAction::Webhook(url) => {
                let body = serde_json::json!({
                    "environment": self.env.name,
                    "direction": direction,
                    "reason": self.reason,
                    "until": self.until.map(|u| u.unix_timestamp()),
                    "run": self.run_id,
                    "by": self.by,
                });
                let resp = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .timeout(self.env.step_timeout)
                    .send()
                    .await
                    .map_err(|e| TargetError::Failed(format!("POST {url}: {e}")))?;
                if resp.status().is_success() {
                    Ok((Outcome::Done, format!("POST {url} -> {}", resp.status())))
                } else {
                    failed(format!("POST {url} answered {}", resp.status()))
                }
            }
            ExtraAction::Pause(text) => {
                if self.assume_yes {
                    return Ok((Outcome::Done, format!("pause passed with --yes: {text}")));
                }
                if !std::io::stdin().is_terminal() {
                    return failed(format!(
                        "pause `{text}` needs an operator at a terminal (or --yes)"
                    ));
                }
                let prompt = format!("{text}\nPress Enter to continue, Ctrl-C to stop here: ");
                let answered = tokio::task::spawn_blocking(move || {
                    eprint!("{prompt}");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| ())
                })
                .await;
                match answered {
                    Ok(Ok(())) => Ok((Outcome::Done, format!("confirmed: {text}"))),
                    _ => failed("the pause was not confirmed"),
                }
            }
            ExtraAction::Command(command) => {
                let out = tokio::time::timeout(
                    self.env.step_timeout,
                    tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(command)
                        .env("MAINTCTL_REASON", &self.reason)
                        .env("MAINTCTL_ENV", &self.env.name)
                        .env("MAINTCTL_DIRECTION", direction)
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .map_err(|_| {
                    TargetError::Failed(format!(
                        "`{command}` did not finish within {:?}",
                        self.env.step_timeout
                    ))
                })?
                .map_err(|e| TargetError::Failed(format!("cannot run `{command}`: {e}")))?;
                let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() {
                    Ok((Outcome::Done, said))
                } else {
                    failed(format!(
                        "`{command}` exited {}: {said} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            }
        }
    }

    /// One target of one step: check, act, verify.
    async fn run_target(
        &self,
        kind: &StepKind,
        target: &str,
        direction: &str,
        resumed: bool,
    ) -> TargetResult {
        match kind {
            StepKind::SetKey => self.set_key(resumed).await,
            StepKind::ClearKey => self.clear_key(resumed).await,
            StepKind::NodeMaintenance { enable } => {
                let b = self.find_box(target)?;
                self.node_maintenance(b, *enable, resumed).await
            }
            StepKind::Workers { start: up } | StepKind::Jobs { enable: up } => {
                let b = self.find_box(target)?;
                let want = if *up {
                    BoxState::Running
                } else {
                    BoxState::Stopped
                };
                self.box_state(b, want, resumed).await
            }
            StepKind::Smoke => self.smoke(target).await,
            StepKind::Extra { name } => self.extra(name, direction).await,
        }
    }
}

/// Runs `plan`, journalling into `journal`, while `lock` is held.
///
/// # Errors
/// Only journal failures (Consul unreachable, a conflicting write): the run cannot be recorded,
/// so it stops; what it did is in the journal up to the last write.
pub async fn execute(
    ctx: Arc<Context>,
    plan: &Plan,
    journal: Journal,
    lock: &Lock,
) -> Result<RunEnd, JournalError> {
    let journal = Arc::new(Mutex::new(journal));
    let direction = plan.direction.as_str();
    for (index, step) in plan.steps.iter().enumerate() {
        let stop = if ctx.interrupted.load(Ordering::SeqCst) {
            Some("stopped by Ctrl-C before this step".to_string())
        } else if lock.is_lost() {
            Some("the lock was lost (its Consul session could not be renewed)".to_string())
        } else {
            None
        };
        if let Some(why) = stop {
            let mut j = journal.lock().await;
            j.run.status = RunStatus::Interrupted;
            j.run.ended_at = Some(OffsetDateTime::now_utc());
            j.save().await?;
            return Ok(RunEnd::Interrupted(format!("{why}: next step {}", step.id)));
        }
        {
            let j = journal.lock().await;
            if j.run
                .steps
                .iter()
                .any(|s| s.id == step.id && s.status == StepStatus::Done)
            {
                continue;
            }
        }
        ctx.out
            .step_started(index, plan.steps.len(), &step.id, &step.title);
        let step_started = Instant::now();
        {
            let mut j = journal.lock().await;
            let record = j
                .run
                .step_mut(&step.id)
                .expect("the journal was made from this plan");
            record.status = StepStatus::Running;
            record.started_at.get_or_insert(OffsetDateTime::now_utc());
            j.save().await?;
        }
        if step.kind == StepKind::Smoke {
            // The public must still see the page while operators test through the gate.
            for url in &ctx.env.public_page_urls {
                if let Err(e) = proxies::check_public(&ctx.http, url, Expect::Page).await {
                    let mut j = journal.lock().await;
                    j.run.status = RunStatus::Failed;
                    j.run.ended_at = Some(OffsetDateTime::now_utc());
                    j.save().await?;
                    return Ok(RunEnd::Failed(format!(
                        "before smoke tests: the public no longer sees the page: {e}"
                    )));
                }
            }
        }
        let permits = Arc::new(Semaphore::new(ctx.env.parallel));
        let mut tasks = JoinSet::new();
        for target in &step.targets {
            let previous = {
                let j = journal.lock().await;
                j.run
                    .steps
                    .iter()
                    .find(|s| s.id == step.id)
                    .and_then(|s| s.targets.iter().find(|t| &t.target == target))
                    .map(|t| t.status)
            };
            if matches!(previous, Some(TargetStatus::Done | TargetStatus::Skipped)) {
                continue;
            }
            let resumed = matches!(previous, Some(TargetStatus::Intent | TargetStatus::Failed));
            let (ctx, journal, permits) = (ctx.clone(), journal.clone(), permits.clone());
            let (step_id, kind, target) = (step.id.clone(), step.kind.clone(), target.clone());
            let direction = direction.to_string();
            tasks.spawn(async move {
                let _permit = permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                {
                    let mut j = journal.lock().await;
                    let t = j
                        .run
                        .target_mut(&step_id, &target)
                        .expect("the journal was made from this plan");
                    t.status = TargetStatus::Intent;
                    t.started_at = Some(OffsetDateTime::now_utc());
                    j.save().await?;
                }
                let started = Instant::now();
                let result = tokio::time::timeout(
                    ctx.env.step_timeout + ctx.env.verify_timeout,
                    ctx.run_target(&kind, &target, &direction, resumed),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(TargetError::Failed(format!(
                        "no result within the step timeout ({:?} + verify {:?})",
                        ctx.env.step_timeout, ctx.env.verify_timeout
                    )))
                });
                let (status, outcome, detail, verify_timeout) = match result {
                    Ok((Outcome::Skipped, d)) => (
                        TargetStatus::Skipped,
                        Outcome::Skipped,
                        format!("already so: {d}"),
                        false,
                    ),
                    Ok((o, d)) => (TargetStatus::Done, o, d, false),
                    Err(TargetError::Failed(d)) => {
                        (TargetStatus::Failed, Outcome::Failed, d, false)
                    }
                    Err(TargetError::VerifyTimeout(d)) => {
                        (TargetStatus::Failed, Outcome::Failed, d, true)
                    }
                };
                ctx.out
                    .target_ended(&step_id, &target, outcome, started.elapsed(), &detail);
                let mut j = journal.lock().await;
                let t = j
                    .run
                    .target_mut(&step_id, &target)
                    .expect("the journal was made from this plan");
                t.status = status;
                t.ended_at = Some(OffsetDateTime::now_utc());
                t.output = detail.clone();
                j.save().await?;
                Ok::<_, JournalError>((target, status, detail, verify_timeout))
            });
        }
        let mut failures = Vec::new();
        let mut any_verify_timeout = false;
        while let Some(joined) = tasks.join_next().await {
            let (target, status, detail, verify_timeout) =
                joined.expect("target tasks do not panic")?;
            if status == TargetStatus::Failed {
                any_verify_timeout |= verify_timeout;
                failures.push(format!("{target}: {detail}"));
            }
        }
        let ok = failures.is_empty();
        ctx.out.step_ended(&step.id, ok, step_started.elapsed());
        let mut j = journal.lock().await;
        let record = j
            .run
            .step_mut(&step.id)
            .expect("the journal was made from this plan");
        record.status = if ok {
            StepStatus::Done
        } else {
            StepStatus::Failed
        };
        record.ended_at = Some(OffsetDateTime::now_utc());
        if !ok {
            j.run.status = RunStatus::Failed;
            j.run.ended_at = Some(OffsetDateTime::now_utc());
            j.save().await?;
            let message = format!("step {} failed: {}", step.id, failures.join(" | "));
            return Ok(if any_verify_timeout {
                RunEnd::VerifyTimeout(message)
            } else {
                RunEnd::Failed(message)
            });
        }
        j.save().await?;
    }
    let mut j = journal.lock().await;
    j.run.status = RunStatus::Done;
    j.run.ended_at = Some(OffsetDateTime::now_utc());
    j.save().await?;
    Ok(RunEnd::Done)
}
