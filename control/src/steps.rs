//! What each kind of step does to one target: check the current state (already so: skipped),
//! act, and verify from outside. The gate key, node maintenance through the box's Consul agent,
//! services and jobs through the box's commands, smoke tests through the closed gate, and the
//! extra steps of the inventory.

use crate::config::{BoxAccess, BoxSettings, Environment, ExtraAction};
use crate::gate_write::{is_ambiguous, reread_until, settle, GateWrite, Written};
use crate::output::{Outcome, Output};
use crate::plan::{EndState, StepKind};
use crate::proxies::{self, Expect, Proxy};
use crate::remote::{self, BoxState};
use crate::survey;
use drawbridge_core::consul::{Client, Consistency, PutMode, QueryOptions, NODE_MAINTENANCE_CHECK};
use drawbridge_core::gate::{GateDoc, Mode};
use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// `1 proxy`, `2 proxies`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How often a verification polls.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// Everything a run needs, shared by its parallel targets.
pub struct Context {
    pub env: Arc<Environment>,
    pub consul: Client,
    pub http: reqwest::Client,
    pub reason: String,
    pub until: Option<OffsetDateTime>,
    /// The gate document asks the proxies to open by themselves when overdue.
    pub expire: bool,
    pub by: String,
    pub run_id: String,
    pub proxies: Vec<Proxy>,
    pub out: Output,
    /// Set by Ctrl-C: stop at the next step boundary.
    pub interrupted: Arc<AtomicBool>,
    /// `--yes`: pauses from the config are passed without asking.
    pub assume_yes: bool,
    /// The run that did each step already in this maintenance, by step id: webhooks and
    /// commands found here are not repeated.
    pub done_before: HashMap<String, String>,
    /// `--repeat-steps`: repeat webhooks and commands even when done before.
    pub repeat_steps: bool,
}

/// Why a target failed.
pub(crate) enum TargetError {
    Failed(String),
    VerifyTimeout(String),
}

impl From<drawbridge_core::consul::Error> for TargetError {
    fn from(e: drawbridge_core::consul::Error) -> TargetError {
        TargetError::Failed(e.to_string())
    }
}

impl TargetError {
    /// The same failure, its message after `note` (what a re-read found) when there is one.
    fn after_note(self, note: Option<&str>) -> TargetError {
        let Some(note) = note else { return self };
        match self {
            TargetError::Failed(m) => TargetError::Failed(format!("{note}; {m}")),
            TargetError::VerifyTimeout(m) => TargetError::VerifyTimeout(format!("{note}; {m}")),
        }
    }
}

pub(crate) type TargetResult = Result<(Outcome, String), TargetError>;

fn failed<T>(message: impl Into<String>) -> Result<T, TargetError> {
    Err(TargetError::Failed(message.into()))
}

/// `detail`, after what a re-read found when there is a note.
fn noted(note: Option<String>, detail: String) -> String {
    match note {
        Some(note) => format!("{note}; {detail}"),
        None => detail,
    }
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
        let (index, outcome, note) = match existing {
            Some(index) => (
                index,
                if resumed {
                    Outcome::Done
                } else {
                    Outcome::Skipped
                },
                None,
            ),
            None => {
                let now = OffsetDateTime::now_utc();
                // A resumed run whose `until` has passed arms no dead-man switch: the proxies
                // would open the gate as soon as they applied it.
                let expire = self.expire && self.until.is_some_and(|until| until > now);
                let doc = GateDoc {
                    mode: Mode::Maintenance,
                    reason: Some(self.reason.clone()),
                    message: None,
                    until: self.until,
                    started_at: Some(now),
                    by: Some(self.by.clone()),
                    scope: None,
                    expire,
                };
                let cas = current.entry.as_ref().map_or(0, |e| e.modify_index);
                let value = doc.to_json();
                let write = GateWrite::Put {
                    value: value.as_bytes(),
                    cas,
                };
                match self.write_gate(write).await? {
                    Written::Answered => {
                        let read = self.consul.kv_get(key, &QueryOptions::default()).await?;
                        (
                            read.entry.map_or(0, |e| e.modify_index),
                            Outcome::Done,
                            None,
                        )
                    }
                    Written::Found { entry, note } => (
                        entry.map_or(0, |e| e.modify_index),
                        Outcome::Done,
                        Some(note),
                    ),
                }
            }
        };
        self.verify_edge(Mode::Maintenance, index)
            .await
            .map_err(|e| e.after_note(note.as_deref()))?;
        let done = format!(
            "{key} = maintenance at index {index}; {} confirmed",
            count(self.proxies.len(), "proxy", "proxies")
        );
        Ok((outcome, noted(note, done)))
    }

    async fn clear_key(&self, resumed: bool) -> TargetResult {
        let key = &self.env.key;
        let current = self.consul.kv_get(key, &QueryOptions::default()).await?;
        let (after, outcome, note) = match current.entry {
            None => (
                1,
                if resumed {
                    Outcome::Done
                } else {
                    Outcome::Skipped
                },
                None,
            ),
            Some(entry) => {
                let write = GateWrite::Delete {
                    cas: entry.modify_index,
                };
                let note = match self.write_gate(write).await? {
                    Written::Answered => None,
                    Written::Found { note, .. } => Some(note),
                };
                // Any state a proxy applies after the delete has a higher index than the value.
                (entry.modify_index + 1, Outcome::Done, note)
            }
        };
        self.verify_edge(Mode::Normal, after)
            .await
            .map_err(|e| e.after_note(note.as_deref()))?;
        let done = format!(
            "{key} cleared; {} normal",
            count(self.proxies.len(), "proxy serves", "proxies serve")
        );
        Ok((outcome, noted(note, done)))
    }

    /// Sends a gate write. After an answer that leaves its outcome open ([`is_ambiguous`]),
    /// re-reads the key from the leader (retrying for up to `verify_timeout`) and goes on only
    /// when the write is found applied ([`settle`]).
    async fn write_gate(&self, write: GateWrite<'_>) -> Result<Written, TargetError> {
        let key = &self.env.key;
        let sent = match write {
            GateWrite::Put { value, cas } => {
                self.consul.kv_put(key, value, PutMode::Cas(cas)).await
            }
            GateWrite::Delete { cas } => self.consul.kv_delete(key, Some(cas)).await,
        };
        let error = match sent {
            Ok(true) => return Ok(Written::Answered),
            Ok(false) => {
                return failed(format!(
                    "{key} changed while it was being {}; run again",
                    write.participle()
                ))
            }
            Err(e) if !is_ambiguous(&e) => return Err(e.into()),
            Err(e) => e,
        };
        let leader = QueryOptions::default().with_consistency(Consistency::Consistent);
        let within = self.env.verify_timeout;
        let reread = reread_until(within, || self.consul.kv_get(key, &leader)).await;
        settle(key, &self.env.name, write, &error, reread, within).map_err(TargetError::Failed)
    }

    /// Node maintenance through the box's Consul agent, verified in the catalog: on when `want`
    /// is stopped (out of traffic), off when running.
    pub(crate) async fn node_maintenance(
        &self,
        b: &BoxSettings,
        want: BoxState,
        resumed: bool,
    ) -> TargetResult {
        let BoxAccess::ConsulAgent(agent) = &b.access else {
            return self.box_state(b, want, resumed).await;
        };
        let enable = want == BoxState::Stopped;
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

    /// Observes the whole environment until it is all `want`, within `verify_timeout`.
    async fn verify_end(&self, want: EndState) -> TargetResult {
        let observed = wait_until(self.env.verify_timeout, || async {
            let survey = survey::survey(&self.env, &self.consul, &self.http).await?;
            let mut differences = survey.differences(want);
            differences.extend(survey::public_differences(&self.env, &self.http, want).await);
            if differences.is_empty() {
                Ok(())
            } else {
                Err(differences.join("; "))
            }
        })
        .await;
        let word = match want {
            EndState::Down => "down",
            EndState::Up => "up",
        };
        match observed {
            Ok(()) => Ok((
                Outcome::Done,
                format!(
                    "{} {word}: the key, {}, {} seen",
                    self.env.name,
                    count(self.proxies.len(), "proxy", "proxies"),
                    count(self.env.boxes.len(), "box", "boxes")
                ),
            )),
            Err(e) => Err(TargetError::VerifyTimeout(format!(
                "{} is not all {word} after {:?}: {e}",
                self.env.name, self.env.verify_timeout
            ))),
        }
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

    async fn extra(&self, step_id: &str, name: &str, direction: &str) -> TargetResult {
        let Some(step) = self.env.extra_steps.iter().find(|s| s.name == name) else {
            return failed(format!("step {name} is no longer in the configuration"));
        };
        let repeatable = matches!(
            step.action,
            ExtraAction::Webhook(_) | ExtraAction::Command(_)
        );
        if let Some(run) = self.done_before.get(step_id).filter(|_| repeatable) {
            if !self.repeat_steps {
                return Ok((
                    Outcome::Skipped,
                    format!("done by run {run} in this maintenance; --repeat-steps repeats it"),
                ));
            }
        }
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
    pub(crate) async fn run_target(
        &self,
        step_id: &str,
        kind: &StepKind,
        target: &str,
        direction: &str,
        resumed: bool,
    ) -> TargetResult {
        match kind {
            StepKind::Verify { want } => self.verify_end(*want).await,
            StepKind::SetKey => self.set_key(resumed).await,
            StepKind::ClearKey => self.clear_key(resumed).await,
            StepKind::NodeMaintenance { want } => {
                let b = self.find_box(target)?;
                self.node_maintenance(b, *want, resumed).await
            }
            StepKind::Workers { want } | StepKind::Jobs { want } => {
                let b = self.find_box(target)?;
                self.box_state(b, *want, resumed).await
            }
            StepKind::Smoke => self.smoke(target).await,
            StepKind::Extra { name } => self.extra(step_id, name, direction).await,
            StepKind::Drain => self.drain_box(self.find_box(target)?, resumed).await,
            StepKind::Replace => self.replace_box(self.find_box(target)?, resumed).await,
            StepKind::Healthy => self.healthy_box(self.find_box(target)?).await,
            StepKind::BoxSmoke => self.smoke_box(self.find_box(target)?).await,
            StepKind::Undrain => self.undrain_box(self.find_box(target)?, resumed).await,
            StepKind::Canary => failed(format!(
                "step {step_id} is a canary's: `maintctl resume` continues it as a canary"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_comes_first_in_the_detail_and_in_a_later_failure() {
        assert_eq!(noted(None, "done".to_string()), "done");
        assert_eq!(
            noted(Some("found".to_string()), "done".to_string()),
            "found; done"
        );
        let TargetError::VerifyTimeout(m) =
            TargetError::VerifyTimeout("late".to_string()).after_note(Some("found"))
        else {
            panic!("the kind stays");
        };
        assert_eq!(m, "found; late");
        let TargetError::Failed(m) = TargetError::Failed("x".to_string()).after_note(None) else {
            panic!("the kind stays");
        };
        assert_eq!(m, "x");
    }
}
