//! The journal of runs, kept in Consul KV under the environment's prefix
//! (`<prefix>/runs/<run id>`, and `<prefix>/last` naming the latest run), so `maintctl status` and
//! `resume` work from any machine. Each target is written `intent` before it is acted on and
//! `done` or `failed` after; every write is a check-and-set on the index last seen, so a run that
//! lost its lock cannot overwrite a newer holder's journal.

use crate::config::Environment;
use crate::plan::{Direction, Plan, Step, StepKind};
use drawbridge_core::consul::{self, Client, PutMode, QueryOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How a whole run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Done,
    Failed,
    /// Stopped at a step boundary by Ctrl-C or a lost lock.
    Interrupted,
    /// A `roll` given up with `roll --abandon`: what it changed stays as its steps say.
    Abandoned,
    /// A `canary` that rolled its new pool back: decided, nothing to resume.
    RolledBack,
}

impl RunStatus {
    /// The status as the journal writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Abandoned => "abandoned",
            RunStatus::RolledBack => "rolled_back",
        }
    }
}

/// How a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl StepStatus {
    /// The status as the journal writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
        }
    }
}

/// How one target of a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    Pending,
    /// About to be acted on: it may or may not have happened.
    Intent,
    Done,
    /// Already in the wanted state before this run touched it: not undone by `up`.
    Skipped,
    Failed,
}

impl TargetStatus {
    /// The status as the journal writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Intent => "intent",
            TargetStatus::Done => "done",
            TargetStatus::Skipped => "skipped",
            TargetStatus::Failed => "failed",
        }
    }
}

/// One target of a step in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub target: String,
    pub status: TargetStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// What the action and its check said.
    pub output: String,
}

/// One step in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub title: String,
    pub kind: StepKind,
    pub status: StepStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub targets: Vec<TargetRecord>,
    /// The batch of a `roll` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

/// What a `canary` run was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryAsked {
    pub route: String,
    pub to: String,
    /// The shares, in percent, rising.
    pub steps: Vec<u8>,
    /// Each step's hold, in milliseconds.
    pub hold_ms: u64,
}

impl StepRecord {
    /// `step`, with every target pending.
    pub fn pending(step: &Step) -> StepRecord {
        StepRecord {
            id: step.id.clone(),
            title: step.title.clone(),
            kind: step.kind.clone(),
            status: StepStatus::Pending,
            started_at: None,
            ended_at: None,
            batch: step.batch,
            targets: step
                .targets
                .iter()
                .map(|t| TargetRecord {
                    target: t.clone(),
                    status: TargetStatus::Pending,
                    started_at: None,
                    ended_at: None,
                    output: String::new(),
                })
                .collect(),
        }
    }
}

/// One run of `down`, `up`, `roll` or `canary`, as journalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub env: String,
    pub direction: Direction,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// `down --expire`: the gate document it writes has `expire`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expire: bool,
    /// Run by `maintctl daemon` for an `auto` window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_daemon: bool,
    /// `user@host`.
    pub by: String,
    pub command: String,
    pub plan_hash: String,
    pub status: RunStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// The `down` runs whose changes this `up` restores.
    #[serde(default)]
    pub restores: Vec<String>,
    /// `roll`: how many batches may fail before it stops.
    #[serde(default)]
    pub max_fail: usize,
    /// `canary`: what it was asked, so `resume` can go on with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryAsked>,
    pub steps: Vec<StepRecord>,
}

#[cfg(test)]
impl Run {
    /// A `direction` run of the sample inventory's `mock`, started at `started_at`, `status`.
    pub(crate) fn sample(
        direction: Direction,
        status: RunStatus,
        started_at: OffsetDateTime,
    ) -> Run {
        let env = crate::config::sample::mock();
        let plan = match direction {
            Direction::Down => crate::plan::Plan::down(&env),
            _ => crate::plan::Plan::up(&env),
        };
        let mut run = Run::new("r", &env, &plan, "db", None, "ops@bastion");
        run.started_at = started_at;
        run.status = status;
        run
    }
}

impl Run {
    /// A new run of `plan`, every step pending.
    pub fn new(
        id: &str,
        env: &Environment,
        plan: &Plan,
        reason: &str,
        until: Option<OffsetDateTime>,
        by: &str,
    ) -> Run {
        Run {
            id: id.to_string(),
            env: env.name.clone(),
            direction: plan.direction,
            reason: reason.to_string(),
            until,
            expire: false,
            by_daemon: false,
            by: by.to_string(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            plan_hash: plan.hash(),
            status: RunStatus::Running,
            started_at: OffsetDateTime::now_utc(),
            ended_at: None,
            restores: Vec::new(),
            max_fail: plan.max_fail,
            canary: None,
            steps: plan.steps.iter().map(StepRecord::pending).collect(),
        }
    }

    /// The plan this run follows, rebuilt from its journal (for `resume`).
    pub fn plan(&self) -> Plan {
        Plan {
            direction: self.direction,
            steps: self
                .steps
                .iter()
                .map(|s| Step {
                    id: s.id.clone(),
                    title: s.title.clone(),
                    kind: s.kind.clone(),
                    targets: s.targets.iter().map(|t| t.target.clone()).collect(),
                    batch: s.batch,
                })
                .collect(),
            max_fail: self.max_fail,
        }
    }

    /// Whether the run has ended: done, abandoned or rolled back (nothing is left to resume).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Done | RunStatus::Abandoned | RunStatus::RolledBack
        )
    }

    /// The step record with this id.
    pub fn step_mut(&mut self, id: &str) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|s| s.id == id)
    }

    /// The target record of a step.
    pub fn target_mut(&mut self, step: &str, target: &str) -> Option<&mut TargetRecord> {
        self.step_mut(step)?
            .targets
            .iter_mut()
            .find(|t| t.target == target)
    }
}

/// The runs of the current maintenance: every run since the last `up` that ended done, oldest
/// first. What `up` restores and which extra steps were already done come from here.
#[derive(Debug, Clone, Default)]
pub struct Maintenance {
    pub runs: Vec<Run>,
}

/// `(step id, target)` pairs.
pub type Touched = std::collections::BTreeSet<(String, String)>;

impl Maintenance {
    /// The current maintenance among `runs` (any order); `roll` and `canary` runs are no part
    /// of one.
    pub fn from_runs(mut runs: Vec<Run>) -> Maintenance {
        runs.retain(|r| matches!(r.direction, Direction::Down | Direction::Up));
        runs.sort_by_key(|r| r.started_at);
        let after_last_up = runs
            .iter()
            .rposition(|r| r.direction == Direction::Up && r.status == RunStatus::Done)
            .map_or(0, |i| i + 1);
        Maintenance {
            runs: runs.split_off(after_last_up),
        }
    }

    /// Reads every run of the environment and keeps the current maintenance.
    ///
    /// # Errors
    /// Consul failures or a damaged journal.
    pub async fn read(client: &Client, prefix: &str) -> Result<Maintenance, JournalError> {
        Ok(Maintenance::from_runs(all_runs(client, prefix).await?))
    }

    /// The latest run, if any since the last completed `up`.
    pub fn latest(&self) -> Option<&Run> {
        self.runs.last()
    }

    /// The ids of its `down` runs.
    pub fn downs(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| r.direction == Direction::Down)
            .map(|r| r.id.clone())
            .collect()
    }

    /// Every target a `down` may have changed (acted on: intent, done or failed; not the ones
    /// found already so), whichever `down` it was: what `up` restores.
    pub fn changed_by_downs(&self) -> Touched {
        self.runs
            .iter()
            .filter(|r| r.direction == Direction::Down)
            .flat_map(|r| &r.steps)
            .flat_map(|s| s.targets.iter().map(move |t| (s, t)))
            .filter(|(_, t)| {
                matches!(
                    t.status,
                    TargetStatus::Intent | TargetStatus::Done | TargetStatus::Failed
                )
            })
            .map(|(s, t)| (s.id.clone(), t.target.clone()))
            .collect()
    }

    /// The run that did each step in this maintenance, by step id (the first one that did).
    pub fn done_steps(&self) -> std::collections::HashMap<String, String> {
        let mut done = std::collections::HashMap::new();
        for run in &self.runs {
            for step in &run.steps {
                if step.targets.iter().any(|t| t.status == TargetStatus::Done) {
                    done.entry(step.id.clone())
                        .or_insert_with(|| run.id.clone());
                }
            }
        }
        done
    }
}

/// Why the journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal {key} was changed by someone else (this run lost its lock?); it was left as they wrote it")]
    Conflict { key: String },
    #[error("the journal {key} does not decode: {detail}")]
    Damaged { key: String, detail: String },
    #[error(transparent)]
    Consul(#[from] consul::Error),
}

/// A run being written, with the index of its last write.
pub struct Journal {
    client: Client,
    key: String,
    index: u64,
    pub run: Run,
}

fn runs_prefix(prefix: &str) -> String {
    format!("{prefix}/runs/")
}

fn last_key(prefix: &str) -> String {
    format!("{prefix}/last")
}

impl Journal {
    /// Starts journalling a new run and names it the latest.
    ///
    /// # Errors
    /// Consul failures, or a run with the same id already there.
    pub async fn create(client: &Client, prefix: &str, run: Run) -> Result<Journal, JournalError> {
        let key = format!("{}{}", runs_prefix(prefix), run.id);
        let mut journal = Journal {
            client: client.clone(),
            key,
            index: 0,
            run,
        };
        journal.save().await?;
        journal.mark_latest(prefix).await?;
        Ok(journal)
    }

    /// Continues journalling a run read back with [`latest`].
    pub fn resume(client: &Client, prefix: &str, run: Run, index: u64) -> Journal {
        Journal {
            client: client.clone(),
            key: format!("{}{}", runs_prefix(prefix), run.id),
            index,
            run,
        }
    }

    async fn mark_latest(&self, prefix: &str) -> Result<(), JournalError> {
        let key = last_key(prefix);
        let current = self.client.kv_get(&key, &QueryOptions::default()).await?;
        let cas = current.entry.map_or(0, |e| e.modify_index);
        if !self
            .client
            .kv_put(&key, self.run.id.as_bytes(), PutMode::Cas(cas))
            .await?
        {
            return Err(JournalError::Conflict { key });
        }
        Ok(())
    }

    /// Ends the run as `status`, now, and writes it.
    ///
    /// # Errors
    /// As [`Journal::save`].
    pub async fn finish(&mut self, status: RunStatus) -> Result<(), JournalError> {
        self.run.status = status;
        self.run.ended_at = Some(OffsetDateTime::now_utc());
        self.save().await
    }

    /// Writes the run, check-and-set on the last index this journal saw.
    ///
    /// # Errors
    /// [`JournalError::Conflict`] when someone else wrote it since; Consul failures.
    pub async fn save(&mut self) -> Result<(), JournalError> {
        let body = serde_json::to_vec_pretty(&self.run).expect("a run always serialises");
        if !self
            .client
            .kv_put(&self.key, &body, PutMode::Cas(self.index))
            .await?
        {
            return Err(JournalError::Conflict {
                key: self.key.clone(),
            });
        }
        let read = self
            .client
            .kv_get(&self.key, &QueryOptions::default())
            .await?;
        self.index = read.entry.map_or(0, |e| e.modify_index);
        Ok(())
    }
}

fn decode(key: &str, raw: Option<&[u8]>) -> Result<Run, JournalError> {
    serde_json::from_slice(raw.unwrap_or_default()).map_err(|e| JournalError::Damaged {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// The latest run of the environment, with the index to resume writing it.
///
/// # Errors
/// Consul failures or a damaged journal.
pub async fn latest(client: &Client, prefix: &str) -> Result<Option<(Run, u64)>, JournalError> {
    let last = client
        .kv_get(&last_key(prefix), &QueryOptions::default())
        .await?;
    let Some(id) = last.entry.and_then(|e| e.value) else {
        return Ok(None);
    };
    let key = format!("{}{}", runs_prefix(prefix), String::from_utf8_lossy(&id));
    let read = client.kv_get(&key, &QueryOptions::default()).await?;
    match read.entry {
        None => Ok(None),
        Some(entry) => Ok(Some((
            decode(&key, entry.value.as_deref())?,
            entry.modify_index,
        ))),
    }
}

/// The latest run of the environment when it has not ended (done, abandoned or rolled back),
/// with the index to resume writing it.
///
/// # Errors
/// Consul failures or a damaged journal.
pub async fn unfinished(client: &Client, prefix: &str) -> Result<Option<(Run, u64)>, JournalError> {
    Ok(latest(client, prefix)
        .await?
        .filter(|(run, _)| !run.is_finished()))
}

/// A new run's id: the time, the direction and a few random bits (`1796054537-roll-b832`).
pub fn new_run_id(direction: Direction) -> String {
    let now = OffsetDateTime::now_utc();
    let noise = (now.nanosecond() % 65536) as u16 ^ (std::process::id() as u16);
    format!(
        "{}-{}-{noise:04x}",
        now.unix_timestamp(),
        direction.as_str()
    )
}

/// Every run of the environment, oldest first.
///
/// # Errors
/// Consul failures or a damaged journal.
pub async fn all_runs(client: &Client, prefix: &str) -> Result<Vec<Run>, JournalError> {
    let mut runs = client
        .kv_list(&runs_prefix(prefix))
        .await?
        .into_iter()
        .map(|e| decode(&e.key, e.value.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by_key(|r| r.started_at);
    Ok(runs)
}
