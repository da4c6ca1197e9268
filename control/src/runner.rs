//! Runs a plan: for every step, each target is checked (already done: skipped), journalled
//! `intent`, acted on, verified from outside, and journalled `done` or `failed` with what it said.
//! Targets of one step run in parallel (bounded); the run stops before the next step when any
//! target failed, when Ctrl-C was pressed, or when the lock was lost, leaving the journal true.
//! A gate write whose answer is lost (5xx, timeout) is settled by re-reading the key from the
//! leader: one that landed counts as done.

use crate::config::{BoxAccess, BoxSettings, Environment, ExtraAction};
use crate::journal::{Journal, JournalError, RunStatus, StepStatus, TargetStatus};
use crate::lock::Lock;
use crate::output::{Outcome, Output};
use crate::plan::{Plan, StepKind};
use crate::proxies::{self, Expect, Proxy};
use crate::remote::{self, BoxState};
use drawbridge_core::consul::{
    self, Client, Consistency, KvEntry, KvRead, PutMode, QueryOptions, NODE_MAINTENANCE_CHECK,
};
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

type TargetResult = Result<(Outcome, String), TargetError>;

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

// === gate writes whose answer was lost ===
//
// A write answered 500 or timed out during an election may still commit, and every proxy then
// applies it. After such an answer the key is re-read from the leader, and a write found applied
// counts as applied.

/// One write of the gate key, as sent: what [`judge`] compares the re-read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateWrite<'a> {
    /// `kv put` of exactly `value` with check-and-set on `cas` (0: only if the key is missing).
    /// The document carries `started_at`, so these bytes are this run's and no one else's.
    Put { value: &'a [u8], cas: u64 },
    /// `kv delete` with check-and-set on `cas`, the `modify_index` of the entry it deletes.
    Delete { cas: u64 },
}

impl GateWrite<'_> {
    fn noun(self) -> &'static str {
        match self {
            GateWrite::Put { .. } => "write",
            GateWrite::Delete { .. } => "delete",
        }
    }

    fn participle(self) -> &'static str {
        match self {
            GateWrite::Put { .. } => "written",
            GateWrite::Delete { .. } => "cleared",
        }
    }
}

/// What a leader-confirmed re-read says about a gate write whose answer was an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finding {
    /// The key is what the write made of it: it was applied.
    Landed,
    /// The key is as the write found it: it was not applied.
    NotLanded,
    /// The key is neither: someone else changed it meanwhile.
    Changed,
}

/// How a gate write that was applied ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Consul answered that it applied it.
    Answered,
    /// Consul answered an error, but the re-read from the leader found it applied.
    Found {
        /// The key's entry as re-read (`None`: the key is gone).
        entry: Option<KvEntry>,
        /// What was found, for the journal and the operator.
        note: String,
    },
}

/// Whether a gate write that failed with `e` may nonetheless have been applied, so the key must
/// be re-read before the write is called failed.
///
/// Ambiguous (re-read):
/// * [`consul::Error::Status`] 500–599: Consul (or something in front of it) received the write
///   and failed afterwards. A leader that loses leadership while committing answers 500
///   "leadership lost while committing log", and the next leader may still commit the entry:
///   the case of the issue. A 502/503/504 from a balancer says nothing about what got through.
/// * [`consul::Error::NoLeader`]: Consul retries a write only after "no cluster leader", and says
///   no state changed then; but the error is recognised by its text in any 500 body, and an
///   election usually ends within the re-read's deadline, so the re-read costs little and
///   settles it instead of trusting the text.
/// * [`consul::Error::Timeout`]: the request was sent (a connect timeout is `Unreachable`) and
///   no answer came: it may have been applied at any point.
/// * [`consul::Error::Transport`]: the connection broke after it was made (a reset, a malformed
///   answer): the request may have been read and applied before.
/// * [`consul::Error::Decode`]: Consul answered 200, so it handled the write, but its
///   `true`/`false` could not be read.
///
/// Not ambiguous (the write was not applied; its error stands):
/// * [`consul::Error::Unreachable`]: no TCP connection (refused, or the connect timed out): the
///   request never reached Consul.
/// * [`consul::Error::NoServers`]: the agent knows no server, so it had nowhere to send the write
///   (a client agent retries a write only after "no cluster leader", which changed nothing).
/// * [`consul::Error::TooManyConnections`] (429), [`consul::Error::AclDenied`] (403) and other
///   4xx [`consul::Error::Status`]: Consul refused the request before applying it.
/// * Address, token and token-file errors, and anything else: nothing was sent.
fn is_ambiguous(e: &consul::Error) -> bool {
    use consul::Error as E;
    match e {
        E::Timeout { .. } | E::Transport { .. } | E::NoLeader { .. } | E::Decode { .. } => true,
        E::Status { code, .. } => (500..600).contains(code),
        _ => false,
    }
}

/// Whether `write` was applied, from the key's entry as the leader has it now (`None`: missing).
///
/// A put landed iff the key holds exactly the bytes written; it did not land iff the key is
/// as the write found it (missing for `cas` 0, else still at index `cas`). A delete landed iff
/// the key is missing; it did not land iff the key is still at index `cas`. Anything else is
/// someone else's change.
fn judge(write: GateWrite<'_>, now: Option<&KvEntry>) -> Finding {
    match (write, now) {
        (GateWrite::Put { value, .. }, Some(e))
            if e.value.as_deref().unwrap_or_default() == value =>
        {
            Finding::Landed
        }
        (GateWrite::Put { cas: 0, .. }, None) => Finding::NotLanded,
        (GateWrite::Put { .. }, None) => Finding::Changed,
        (GateWrite::Delete { .. }, None) => Finding::Landed,
        (GateWrite::Put { cas, .. } | GateWrite::Delete { cas }, Some(e)) => {
            if e.modify_index == cas {
                Finding::NotLanded
            } else {
                Finding::Changed
            }
        }
    }
}

/// How an error answer reads in the journal: "was answered 500", "got no answer within 10s".
fn answer_of(e: &consul::Error) -> String {
    match e {
        consul::Error::Timeout { timeout, .. } => format!("got no answer within {timeout:?}"),
        consul::Error::Transport { .. } => "lost its connection before the answer".to_string(),
        consul::Error::Decode { .. } => "got an unreadable answer".to_string(),
        e => match e.http_status() {
            Some(code) => format!("was answered {code}"),
            None => "failed".to_string(),
        },
    }
}

/// Decides a gate write of `key` in environment `env` that failed with the ambiguous `error`,
/// from the leader-confirmed re-read (or why it kept failing for `within`).
///
/// # Errors
/// The message for the journal: the write did not land (the original error, and that the
/// re-read found it not applied), someone else changed the key, or the outcome is unknown.
fn settle(
    key: &str,
    env: &str,
    write: GateWrite<'_>,
    error: &consul::Error,
    reread: Result<KvRead, String>,
    within: Duration,
) -> Result<Written, String> {
    let noun = write.noun();
    let read = reread.map_err(|why| {
        format!(
            "{error}; whether the {noun} was applied is unknown: re-reading {key} from the \
             leader kept failing for {within:?} ({why}); see the key with `maintctl status \
             --env {env}`, then run `maintctl resume --env {env}` once Consul has a leader \
             (it checks the key before writing again)"
        )
    })?;
    let answered = answer_of(error);
    match judge(write, read.entry.as_ref()) {
        Finding::Landed => {
            let note = match &read.entry {
                Some(e) => format!(
                    "the {noun} {answered} ({error}) but landed at index {}",
                    e.modify_index
                ),
                None => format!(
                    "the {noun} {answered} ({error}) but landed: the key is gone (read at \
                     index {})",
                    read.meta.index
                ),
            };
            Ok(Written::Found {
                entry: read.entry,
                note,
            })
        }
        Finding::NotLanded => Err(format!(
            "{error}; a re-read from the leader found the {noun} not applied"
        )),
        Finding::Changed => Err(format!(
            "the {noun} {answered} ({error}) and a re-read from the leader found {key} changed \
             by someone else ({}); check it and run again",
            match &read.entry {
                Some(e) => format!("now at index {}", e.modify_index),
                None => "now missing".to_string(),
            }
        )),
    }
}

/// Calls `read` until it succeeds, retrying transient failures until `within` has passed (each
/// try is cut off at that deadline too).
///
/// # Errors
/// The first failure that is not transient, or the last one when the deadline passed.
async fn reread_until<T, F, Fut>(within: Duration, mut read: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, consul::Error>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("no answer");
    loop {
        match tokio::time::timeout_at(deadline, read()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.is_transient() => last = e.to_string(),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("{last}; then a read hung until the deadline")),
        }
        if tokio::time::Instant::now() + POLL_EVERY >= deadline {
            return Err(last);
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
            "{key} = maintenance at index {index}; {} proxies confirmed",
            self.proxies.len()
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
        let done = format!("{key} cleared; {} proxies serve normal", self.proxies.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_core::consul::{Error, QueryMeta};

    const KEY: &str = "drawbridge/mock/gate";
    const DOC: &[u8] = br#"{"mode":"maintenance","started_at":"2026-01-02T03:04:05.123Z"}"#;

    fn entry(value: &[u8], modify_index: u64) -> KvEntry {
        KvEntry {
            key: KEY.to_string(),
            value: Some(value.to_vec()),
            create_index: 3,
            modify_index,
            lock_index: 0,
            flags: 0,
            session: None,
        }
    }

    fn read(entry: Option<KvEntry>, index: u64) -> KvRead {
        KvRead {
            entry,
            meta: QueryMeta {
                index,
                known_leader: true,
                last_contact: Duration::ZERO,
            },
        }
    }

    fn what() -> (String, String) {
        (format!("kv put {KEY}"), "http://127.0.0.1:8500".to_string())
    }

    fn status(code: u16, body: &str) -> Error {
        let (what, address) = what();
        Error::Status {
            what,
            address,
            code,
            body: body.to_string(),
        }
    }

    fn timeout() -> Error {
        let (what, address) = what();
        Error::Timeout {
            what,
            address,
            timeout: Duration::from_secs(10),
        }
    }

    fn no_leader() -> Error {
        let (what, address) = what();
        Error::NoLeader { what, address }
    }

    /// A real `reqwest::Error` (a bad URL), for the variants that carry one.
    fn reqwest_error() -> reqwest::Error {
        drawbridge_core::install_crypto_provider();
        reqwest::Client::new()
            .get("http://[::1")
            .build()
            .expect_err("the URL does not parse")
    }

    const PUT_NEW: GateWrite<'static> = GateWrite::Put { value: DOC, cas: 0 };
    const PUT_OVER: GateWrite<'static> = GateWrite::Put { value: DOC, cas: 7 };
    const DELETE: GateWrite<'static> = GateWrite::Delete { cas: 7 };

    #[test]
    fn a_put_landed_when_the_key_holds_exactly_its_bytes() {
        assert_eq!(judge(PUT_NEW, Some(&entry(DOC, 9))), Finding::Landed);
        assert_eq!(judge(PUT_OVER, Some(&entry(DOC, 9))), Finding::Landed);
    }

    #[test]
    fn a_put_did_not_land_when_the_key_is_as_it_found_it() {
        assert_eq!(judge(PUT_NEW, None), Finding::NotLanded);
        let before = entry(br#"{"mode":"normal"}"#, 7);
        assert_eq!(judge(PUT_OVER, Some(&before)), Finding::NotLanded);
    }

    #[test]
    fn a_put_meets_someone_elses_change_otherwise() {
        // Other bytes at another index, whether the key was missing or not before.
        let other = entry(
            br#"{"mode":"maintenance","started_at":"2026-01-02T03:04:06Z"}"#,
            9,
        );
        assert_eq!(judge(PUT_NEW, Some(&other)), Finding::Changed);
        assert_eq!(judge(PUT_OVER, Some(&other)), Finding::Changed);
        // The key it overwrote is gone.
        assert_eq!(judge(PUT_OVER, None), Finding::Changed);
        // An empty value is not the document.
        let mut empty = entry(b"", 9);
        empty.value = None;
        assert_eq!(judge(PUT_NEW, Some(&empty)), Finding::Changed);
    }

    #[test]
    fn a_delete_landed_when_the_key_is_missing_and_not_when_it_is_unchanged() {
        assert_eq!(judge(DELETE, None), Finding::Landed);
        assert_eq!(judge(DELETE, Some(&entry(DOC, 7))), Finding::NotLanded);
        assert_eq!(judge(DELETE, Some(&entry(DOC, 8))), Finding::Changed);
    }

    #[test]
    fn only_answers_that_may_hide_an_applied_write_are_ambiguous() {
        let (what, address) = what();
        let ambiguous = [
            status(500, "leadership lost while committing log"),
            status(502, "bad gateway"),
            status(503, ""),
            status(599, ""),
            no_leader(),
            timeout(),
            Error::Transport {
                what: what.clone(),
                address: address.clone(),
                source: reqwest_error(),
            },
            Error::Decode {
                what: what.clone(),
                address: address.clone(),
                source: "expected true or false".into(),
            },
        ];
        for e in &ambiguous {
            assert!(is_ambiguous(e), "{e}");
        }
        let certain = [
            Error::Unreachable {
                what: what.clone(),
                address: address.clone(),
                source: reqwest_error(),
            },
            Error::NoServers {
                what: what.clone(),
                address: address.clone(),
            },
            Error::TooManyConnections {
                what: what.clone(),
                address: address.clone(),
            },
            Error::AclDenied {
                what: what.clone(),
                address: address.clone(),
                body: "Permission denied".to_string(),
            },
            Error::SessionNotFound {
                what: what.clone(),
                address: address.clone(),
                id: "s1".to_string(),
            },
            status(400, "bad request"),
            status(404, ""),
            status(413, "too large"),
            status(600, ""),
            Error::InvalidAddress {
                address: address.clone(),
                reason: "https".to_string(),
            },
            Error::InvalidToken {
                reason: "newline".to_string(),
            },
        ];
        for e in &certain {
            assert!(!is_ambiguous(e), "{e}");
        }
    }

    #[test]
    fn the_answer_is_named_for_the_journal() {
        assert_eq!(answer_of(&status(500, "x")), "was answered 500");
        assert_eq!(answer_of(&no_leader()), "was answered 500");
        assert_eq!(answer_of(&timeout()), "got no answer within 10s");
        let (what, address) = what();
        let reset = Error::Transport {
            what: what.clone(),
            address: address.clone(),
            source: reqwest_error(),
        };
        assert_eq!(answer_of(&reset), "lost its connection before the answer");
        let decode = Error::Decode {
            what,
            address,
            source: "x".into(),
        };
        assert_eq!(answer_of(&decode), "got an unreadable answer");
        let token = Error::InvalidToken {
            reason: "x".to_string(),
        };
        assert_eq!(answer_of(&token), "failed");
    }

    const WITHIN: Duration = Duration::from_secs(3);

    #[test]
    fn a_landed_put_goes_on_with_its_index_and_says_what_was_found() {
        let error = status(500, "leadership lost while committing log");
        let found = settle(
            KEY,
            "mock",
            PUT_NEW,
            &error,
            Ok(read(Some(entry(DOC, 42)), 42)),
            WITHIN,
        );
        let Ok(Written::Found {
            entry: Some(e),
            note,
        }) = found
        else {
            panic!("{found:?}");
        };
        assert_eq!(e.modify_index, 42);
        assert!(
            note.starts_with("the write was answered 500 (consul kv put drawbridge/mock/gate"),
            "{note}"
        );
        assert!(
            note.contains("leadership lost while committing log"),
            "{note}"
        );
        assert!(note.ends_with("but landed at index 42"), "{note}");
    }

    #[test]
    fn a_landed_delete_goes_on_and_says_the_key_is_gone() {
        let found = settle(KEY, "mock", DELETE, &timeout(), Ok(read(None, 50)), WITHIN);
        let Ok(Written::Found { entry: None, note }) = found else {
            panic!("{found:?}");
        };
        assert!(
            note.starts_with("the delete got no answer within 10s ("),
            "{note}"
        );
        assert!(
            note.ends_with("but landed: the key is gone (read at index 50)"),
            "{note}"
        );
    }

    #[test]
    fn a_write_that_did_not_land_keeps_its_error() {
        let error = no_leader();
        let m = settle(KEY, "mock", PUT_NEW, &error, Ok(read(None, 50)), WITHIN).unwrap_err();
        assert!(m.starts_with(&error.to_string()), "{m}");
        assert!(
            m.ends_with("a re-read from the leader found the write not applied"),
            "{m}"
        );
        let m = settle(
            KEY,
            "mock",
            DELETE,
            &error,
            Ok(read(Some(entry(DOC, 7)), 50)),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.ends_with("found the delete not applied"), "{m}");
    }

    #[test]
    fn someone_elses_change_is_a_failure_asking_to_run_again() {
        let other = entry(br#"{"mode":"normal"}"#, 60);
        let m = settle(
            KEY,
            "mock",
            PUT_NEW,
            &timeout(),
            Ok(read(Some(other.clone()), 60)),
            WITHIN,
        )
        .unwrap_err();
        assert!(
            m.contains("changed by someone else (now at index 60)"),
            "{m}"
        );
        assert!(m.ends_with("check it and run again"), "{m}");
        let m = settle(
            KEY,
            "mock",
            DELETE,
            &timeout(),
            Ok(read(Some(other), 60)),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.contains("changed by someone else"), "{m}");
        let m = settle(
            KEY,
            "mock",
            PUT_OVER,
            &timeout(),
            Ok(read(None, 60)),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.contains("(now missing)"), "{m}");
    }

    #[test]
    fn an_unanswered_reread_leaves_the_outcome_unknown_and_says_what_to_do() {
        let error = status(500, "leadership lost while committing log");
        let m = settle(
            KEY,
            "mock",
            PUT_NEW,
            &error,
            Err("no cluster leader".to_string()),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.starts_with(&error.to_string()), "{m}");
        assert!(
            m.contains("whether the write was applied is unknown"),
            "{m}"
        );
        assert!(m.contains("kept failing for 3s (no cluster leader)"), "{m}");
        assert!(m.contains("maintctl status --env mock"), "{m}");
        assert!(m.contains("maintctl resume --env mock"), "{m}");
    }

    #[tokio::test]
    async fn the_reread_retries_transient_failures() {
        let mut calls = 0;
        let got = reread_until(WITHIN, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(no_leader())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    async fn the_reread_stops_at_a_failure_that_is_not_transient() {
        let mut calls = 0;
        let got: Result<(), String> = reread_until(WITHIN, || {
            calls += 1;
            async { Err(status(403, "Permission denied")) }
        })
        .await;
        assert_eq!(calls, 1);
        assert!(got.unwrap_err().contains("http 403"));
    }

    #[tokio::test]
    async fn the_reread_gives_up_at_its_deadline() {
        let started = Instant::now();
        let got: Result<(), String> =
            reread_until(Duration::from_millis(700), || async { Err(no_leader()) }).await;
        assert!(got.unwrap_err().contains("no cluster leader"));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A read that hangs is cut off at the deadline too.
        let started = Instant::now();
        let got: Result<(), String> = reread_until(Duration::from_millis(300), || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })
        .await;
        assert!(got.unwrap_err().contains("hung until the deadline"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

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
