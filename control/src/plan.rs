//! The procedure as data: the ordered steps of `down` and `up` with their targets, built from the
//! environment, and for `up` only the inverses of what the `down` runs of the maintenance changed.
//! Both end with a check of the whole environment from outside. `maintctl plan` prints it;
//! nothing here touches anything.

use crate::config::{Environment, ExtraAction, Role, RollSettings, When};
use crate::remote::BoxState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Which way a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Take the service down.
    Down,
    /// Bring it back.
    Up,
    /// Replace or upgrade the api_ui boxes a batch at a time, the service up throughout.
    Roll,
    /// Move a route's clients to a new pool step by step (`maintctl canary`).
    Canary,
}

impl Direction {
    /// `down`, `up` or `roll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
            Direction::Roll => "roll",
            Direction::Canary => "canary",
        }
    }
}

/// How many boxes a `roll` batch takes: a number, or a share of the role's boxes (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Boxes(usize),
    Percent(u8),
}

impl BatchSize {
    /// Reads `1` or `25%`.
    ///
    /// # Errors
    /// Anything else, or 0.
    pub fn parse(raw: &str) -> Result<BatchSize, String> {
        let bad = || format!("{raw:?} is not a batch like 1 (boxes) or 25% (of the role's boxes)");
        let size = match raw.trim().strip_suffix('%') {
            Some(share) => match share.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => BatchSize::Percent(p),
                _ => return Err(bad()),
            },
            None => match raw.trim().parse::<usize>() {
                Ok(n) if n >= 1 => BatchSize::Boxes(n),
                _ => return Err(bad()),
            },
        };
        Ok(size)
    }

    /// The boxes of one batch out of `of`, at least 1.
    pub fn boxes(self, of: usize) -> usize {
        match self {
            BatchSize::Boxes(n) => n,
            BatchSize::Percent(p) => (of * usize::from(p)).div_ceil(100),
        }
        .max(1)
    }
}

/// What the whole environment is checked to be at the end of `down` or `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// Key, proxies and public URLs in maintenance, every box taken down.
    Down,
    /// No maintenance, every proxy and public URL open, every box serving.
    Up,
}

impl EndState {
    /// `down` or `up`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Down => "down",
            EndState::Up => "up",
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", from = "JournalledKind")]
pub enum StepKind {
    /// A step from the config (`steps`), by name.
    Extra { name: String },
    /// Write the gate document; verify every proxy and public URL shows maintenance.
    SetKey,
    /// Consul node maintenance on (`stopped`: out of traffic) or off (`running`) for the
    /// api_ui boxes.
    NodeMaintenance { want: BoxState },
    /// Stop or start the worker services.
    Workers { want: BoxState },
    /// Disable (`stopped`) or enable (`running`) the scheduled jobs.
    Jobs { want: BoxState },
    /// Requests through the proxy with a bypass token while the public still sees the page.
    Smoke,
    /// Delete the gate key; verify every proxy and public URL is open.
    ClearKey,
    /// Observe the whole environment from outside (key, proxies, public URLs, every box) until it
    /// is all down, or all up.
    Verify { want: EndState },
    /// `roll`: node maintenance on, then wait until no proxy sends to the box or has a request
    /// in flight to it.
    Drain,
    /// `roll`: the inventory's command or call that replaces or upgrades the box.
    Replace,
    /// `roll`: wait until every Consul check of the box passes, for `healthy_for` at a stretch.
    Healthy,
    /// `roll`: the inventory's smoke URL requested on the box itself.
    BoxSmoke,
    /// `roll`: node maintenance off, then wait until every proxy sends to the box, healthy.
    Undrain,
    /// `canary`: a share written and judged, a share in place judged, or the rollback; run by
    /// `maintctl canary` itself.
    Canary,
}

/// A step kind as journals have it: today's `want`, or the direction flags journals written
/// before it carry (`enable` meant down for node maintenance but up for jobs), so older runs
/// still read.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
enum JournalledKind {
    Extra {
        name: String,
    },
    SetKey,
    NodeMaintenance {
        want: Option<BoxState>,
        enable: Option<bool>,
    },
    Workers {
        want: Option<BoxState>,
        start: Option<bool>,
    },
    Jobs {
        want: Option<BoxState>,
        enable: Option<bool>,
    },
    Smoke,
    ClearKey,
    Verify {
        want: EndState,
    },
    Drain,
    Replace,
    Healthy,
    BoxSmoke,
    Undrain,
    Canary,
}

impl From<JournalledKind> for StepKind {
    fn from(kind: JournalledKind) -> StepKind {
        let state = |up: Option<bool>| {
            if up == Some(true) {
                BoxState::Running
            } else {
                BoxState::Stopped
            }
        };
        match kind {
            JournalledKind::Extra { name } => StepKind::Extra { name },
            JournalledKind::SetKey => StepKind::SetKey,
            JournalledKind::NodeMaintenance { want, enable } => StepKind::NodeMaintenance {
                want: want.unwrap_or_else(|| state(enable.map(|on| !on))),
            },
            JournalledKind::Workers { want, start } => StepKind::Workers {
                want: want.unwrap_or_else(|| state(start)),
            },
            JournalledKind::Jobs { want, enable } => StepKind::Jobs {
                want: want.unwrap_or_else(|| state(enable)),
            },
            JournalledKind::Smoke => StepKind::Smoke,
            JournalledKind::ClearKey => StepKind::ClearKey,
            JournalledKind::Verify { want } => StepKind::Verify { want },
            JournalledKind::Drain => StepKind::Drain,
            JournalledKind::Replace => StepKind::Replace,
            JournalledKind::Healthy => StepKind::Healthy,
            JournalledKind::BoxSmoke => StepKind::BoxSmoke,
            JournalledKind::Undrain => StepKind::Undrain,
            JournalledKind::Canary => StepKind::Canary,
        }
    }
}

/// One step with its targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Stable id, used by the journal to resume.
    pub id: String,
    pub title: String,
    pub kind: StepKind,
    /// Box names, smoke test names, the key, or the extra step's name.
    pub targets: Vec<String>,
    /// The batch of a `roll` step (from 1): a failed step ends its batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

/// The ordered steps of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub direction: Direction,
    pub steps: Vec<Step>,
    /// `roll`: how many batches may fail before the run stops (their boxes stay drained).
    pub max_fail: usize,
}

fn boxes(env: &Environment, role: Role) -> Vec<String> {
    env.boxes
        .iter()
        .filter(|b| b.role == role)
        .map(|b| b.name.clone())
        .collect()
}

fn extras(env: &Environment, when: When) -> Vec<Step> {
    let prefix = match when {
        When::BeforeDown => "before_down",
        When::AfterDown => "after_down",
        When::BeforeUp => "before_up",
        When::AfterUp => "after_up",
    };
    env.extra_steps
        .iter()
        .filter(|s| s.when == when)
        .map(|s| Step {
            batch: None,
            id: format!("{prefix}:{}", s.name),
            title: match &s.action {
                ExtraAction::Webhook(url) => format!("{}: POST {url}", s.name),
                ExtraAction::Pause(text) => format!("{}: pause until confirmed: {text}", s.name),
                ExtraAction::Command(cmd) => format!("{}: run `{cmd}`", s.name),
            },
            kind: StepKind::Extra {
                name: s.name.clone(),
            },
            targets: vec![s.name.clone()],
        })
        .collect()
}

/// The last step of every plan: the whole environment observed as `want`.
fn verify(env: &Environment, want: EndState) -> Step {
    let (id, title) = match want {
        EndState::Down => (
            "verify_down",
            "check from outside: the key, every proxy and public URL in maintenance, every box down",
        ),
        EndState::Up => (
            "verify_up",
            "check from outside: no maintenance at the key, every proxy and public URL open, every box serving",
        ),
    };
    step(id, title, StepKind::Verify { want }, vec![env.name.clone()])
}

/// The step that brings every box of `role` to `want`; each role has one way to do it.
fn box_step(env: &Environment, role: Role, want: BoxState) -> Step {
    let (id, title, kind) = match (role, want) {
        (Role::ApiUi, BoxState::Stopped) => (
            "node_maintenance_on",
            "put the API/UI boxes into Consul node maintenance",
            StepKind::NodeMaintenance { want },
        ),
        (Role::ApiUi, BoxState::Running) => (
            "node_maintenance_off",
            "take the API/UI boxes out of Consul node maintenance",
            StepKind::NodeMaintenance { want },
        ),
        (Role::Worker, BoxState::Stopped) => (
            "stop_workers",
            "stop the worker services",
            StepKind::Workers { want },
        ),
        (Role::Worker, BoxState::Running) => (
            "start_workers",
            "start the worker services",
            StepKind::Workers { want },
        ),
        (Role::Scheduler, BoxState::Stopped) => (
            "disable_jobs",
            "disable the scheduled jobs",
            StepKind::Jobs { want },
        ),
        (Role::Scheduler, BoxState::Running) => (
            "enable_jobs",
            "enable the scheduled jobs",
            StepKind::Jobs { want },
        ),
    };
    step(id, title, kind, boxes(env, role))
}

fn step(id: &str, title: &str, kind: StepKind, targets: Vec<String>) -> Step {
    Step {
        id: id.to_string(),
        title: title.to_string(),
        kind,
        targets,
        batch: None,
    }
}

/// The down step a given up step undoes, by id.
fn inverse_of(up_id: &str) -> Option<&'static str> {
    match up_id {
        "clear_key" => Some("set_key"),
        "node_maintenance_off" => Some("node_maintenance_on"),
        "start_workers" => Some("stop_workers"),
        "enable_jobs" => Some("disable_jobs"),
        _ => None,
    }
}

impl Plan {
    /// The whole take-down.
    pub fn down(env: &Environment) -> Plan {
        let mut steps = extras(env, When::BeforeDown);
        steps.push(step(
            "set_key",
            "set the gate key; every proxy and public URL shows maintenance",
            StepKind::SetKey,
            vec![env.key.clone()],
        ));
        for role in [Role::ApiUi, Role::Worker, Role::Scheduler] {
            steps.push(box_step(env, role, BoxState::Stopped));
        }
        steps.extend(extras(env, When::AfterDown));
        steps.push(verify(env, EndState::Down));
        Plan::of(Direction::Down, steps)
    }

    /// The whole restore, every step (each checks first and skips what is already up).
    pub fn up(env: &Environment) -> Plan {
        let mut steps = extras(env, When::BeforeUp);
        for role in [Role::Scheduler, Role::Worker, Role::ApiUi] {
            steps.push(box_step(env, role, BoxState::Running));
        }
        steps.push(step(
            "smoke_tests",
            "smoke-test through the proxy with a bypass token while the public sees the page",
            StepKind::Smoke,
            env.smoke.iter().map(|s| s.name.clone()).collect(),
        ));
        steps.push(step(
            "clear_key",
            "clear the gate key; every proxy and public URL is open",
            StepKind::ClearKey,
            vec![env.key.clone()],
        ));
        steps.extend(extras(env, When::AfterUp));
        steps.push(verify(env, EndState::Up));
        Plan::of(Direction::Up, steps)
    }

    /// The plan of the steps that have targets.
    fn of(direction: Direction, steps: Vec<Step>) -> Plan {
        Plan {
            direction,
            steps: steps
                .into_iter()
                .filter(|s| !s.targets.is_empty())
                .collect(),
            max_fail: 0,
        }
    }

    /// The restore of exactly what `down` runs changed (`(step id, target)` pairs, see
    /// `Maintenance::changed_by_downs`), in reverse order; every step checks before it acts.
    /// Smoke tests run only when the key will be cleared. Empty when nothing was changed.
    pub fn restore(env: &Environment, changed: &BTreeSet<(String, String)>) -> Plan {
        let was_changed = |down_id: &str, target: &str| {
            changed.contains(&(down_id.to_string(), target.to_string()))
        };
        let key_was_set = changed.iter().any(|(step, _)| step == "set_key");
        let mut steps: Vec<Step> = Plan::up(env)
            .steps
            .into_iter()
            .filter_map(|mut s| {
                if let Some(down_id) = inverse_of(&s.id) {
                    s.targets.retain(|t| was_changed(down_id, t));
                } else if s.kind == StepKind::Smoke && !key_was_set {
                    s.targets.clear();
                }
                (!s.targets.is_empty()).then_some(s)
            })
            .collect();
        // Extra steps and the final check alone restore nothing.
        if !steps.iter().any(|s| inverse_of(&s.id).is_some()) {
            steps.clear();
        }
        Plan {
            direction: Direction::Up,
            steps,
            max_fail: 0,
        }
    }

    /// Only the final check that the environment is up: what closes a maintenance whose downs
    /// changed nothing that is still down.
    pub fn check_up(env: &Environment) -> Plan {
        Plan {
            direction: Direction::Up,
            steps: vec![verify(env, EndState::Up)],
            max_fail: 0,
        }
    }

    /// `roll`: the api_ui boxes in batches of `batch_size`, in inventory order; each batch is
    /// drained, replaced, waited healthy, smoke-tested on the box (when the inventory has a
    /// smoke URL) and undrained before the next. `max_fail` batches may fail before the run
    /// stops.
    pub fn roll(
        env: &Environment,
        roll: &RollSettings,
        batch_size: usize,
        max_fail: usize,
    ) -> Plan {
        let names = boxes(env, Role::ApiUi);
        let batches: Vec<&[String]> = names.chunks(batch_size.max(1)).collect();
        let total = batches.len();
        let mut steps = Vec::new();
        for (i, batch) in batches.into_iter().enumerate() {
            let n = i + 1;
            let kinds = [
                (
                    "drain",
                    "drain: no new request goes to it; those in flight finish",
                    StepKind::Drain,
                ),
                ("replace", "replace or upgrade it", StepKind::Replace),
                (
                    "healthy",
                    "wait until every Consul check of it passes",
                    StepKind::Healthy,
                ),
                ("smoke", "smoke-test it directly", StepKind::BoxSmoke),
                (
                    "undrain",
                    "undrain: every proxy sends to it again, healthy",
                    StepKind::Undrain,
                ),
            ];
            for (id, what, kind) in kinds {
                if kind == StepKind::BoxSmoke && roll.smoke_url.is_none() {
                    continue;
                }
                steps.push(Step {
                    id: format!("batch{n}:{id}"),
                    title: format!("batch {n} of {total}: {what}"),
                    kind,
                    targets: batch.to_vec(),
                    batch: Some(n),
                });
            }
        }
        Plan {
            direction: Direction::Roll,
            steps,
            max_fail,
        }
    }

    /// A short hash of the steps and targets, shown with the plan and stored with the run, so
    /// two prints of a plan can be compared at a glance.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for s in &self.steps {
            h.update(s.id.as_bytes());
            for t in &s.targets {
                h.update(b"\0");
                h.update(t.as_bytes());
            }
            h.update(b"\n");
        }
        h.finalize()[..6].iter().fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }

    /// The plan as lines for a person.
    pub fn render(&self, env: &Environment) -> String {
        let mut out = format!(
            "maintctl {} --env {} ({} steps, plan {})\n",
            self.direction.as_str(),
            env.name,
            self.steps.len(),
            self.hash()
        );
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "{:>2}. {} [{}]", i + 1, s.title, s.id);
            for t in &s.targets {
                let _ = writeln!(out, "      - {t}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sample::mock as env;
    use crate::config::{BoxAccess, BoxSettings, RollAction};
    use std::time::Duration;

    #[test]
    fn down_runs_the_procedure_in_order_and_skips_empty_roles() {
        let plan = Plan::down(&env());
        let ids: Vec<_> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "before_down:partners",
                "set_key",
                "node_maintenance_on",
                "stop_workers",
                "verify_down"
            ]
        );
        assert_eq!(plan.steps[2].targets, ["api1", "api2"]);
    }

    #[test]
    fn up_is_the_reverse() {
        let ids: Vec<_> = Plan::up(&env()).steps.into_iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            [
                "start_workers",
                "node_maintenance_off",
                "clear_key",
                "verify_up"
            ]
        );
    }

    #[test]
    fn restore_reverses_only_what_downs_changed() {
        let env = env();
        let changed: BTreeSet<(String, String)> = [
            ("set_key", "drawbridge/mock/gate"),
            ("node_maintenance_on", "api1"),
            ("node_maintenance_on", "api2"),
        ]
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
        let restore = Plan::restore(&env, &changed);
        let ids: Vec<_> = restore.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["node_maintenance_off", "clear_key", "verify_up"]);
        assert_eq!(restore.steps[0].targets, ["api1", "api2"]);
        assert!(Plan::restore(&env, &BTreeSet::new()).steps.is_empty());
    }

    #[test]
    fn step_kinds_of_older_journals_still_read() {
        let read = |json: &str| serde_json::from_str::<StepKind>(json).unwrap();
        let stopped = BoxState::Stopped;
        let running = BoxState::Running;
        assert_eq!(
            read(r#"{"kind":"node_maintenance","enable":true}"#),
            StepKind::NodeMaintenance { want: stopped }
        );
        assert_eq!(
            read(r#"{"kind":"node_maintenance","enable":false}"#),
            StepKind::NodeMaintenance { want: running }
        );
        assert_eq!(
            read(r#"{"kind":"workers","start":false}"#),
            StepKind::Workers { want: stopped }
        );
        assert_eq!(
            read(r#"{"kind":"jobs","enable":true}"#),
            StepKind::Jobs { want: running }
        );
        let today = StepKind::Jobs { want: stopped };
        assert_eq!(read(&serde_json::to_string(&today).unwrap()), today);
    }

    #[test]
    fn a_roll_goes_batch_by_batch_and_smoke_tests_only_with_a_url() {
        let mut env = env();
        env.boxes.push(BoxSettings {
            name: "api3".to_string(),
            role: Role::ApiUi,
            node: "api3".to_string(),
            access: BoxAccess::ConsulAgent("http://127.0.0.4:8500".to_string()),
            ssh: None,
        });
        let mut roll = RollSettings {
            action: RollAction::Url("http://deploy/{box}".to_string()),
            timeout: Duration::from_secs(60),
            healthy_timeout: Duration::from_secs(300),
            healthy_for: Duration::from_secs(10),
            smoke_url: None,
            smoke_expect_body: None,
        };
        let plan = Plan::roll(&env, &roll, 2, 1);
        let ids: Vec<_> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "batch1:drain",
                "batch1:replace",
                "batch1:healthy",
                "batch1:undrain",
                "batch2:drain",
                "batch2:replace",
                "batch2:healthy",
                "batch2:undrain"
            ]
        );
        assert_eq!(plan.steps[0].targets, ["api1", "api2"]);
        assert_eq!(plan.steps[4].targets, ["api3"]);
        assert_eq!(plan.steps[4].batch, Some(2));
        assert_eq!(plan.max_fail, 1);
        roll.smoke_url = Some("http://{address}:8080/".to_string());
        let with_smoke = Plan::roll(&env, &roll, 1, 0);
        assert_eq!(with_smoke.steps.len(), 15);
        assert_eq!(with_smoke.steps[3].id, "batch1:smoke");
        assert_eq!(
            with_smoke.steps[3].title,
            "batch 1 of 3: smoke-test it directly"
        );
    }

    #[test]
    fn batch_sizes_are_boxes_or_a_share_rounded_up() {
        assert_eq!(BatchSize::parse("2"), Ok(BatchSize::Boxes(2)));
        assert_eq!(BatchSize::parse("25%").unwrap().boxes(4), 1);
        assert_eq!(BatchSize::parse("25%").unwrap().boxes(5), 2);
        assert_eq!(BatchSize::parse("1%").unwrap().boxes(3), 1);
        for bad in ["0", "0%", "101%", "-1", "half", ""] {
            assert!(BatchSize::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_hash_follows_steps_and_targets() {
        let env = env();
        assert_eq!(Plan::down(&env).hash(), Plan::down(&env).hash());
        assert_ne!(Plan::down(&env).hash(), Plan::up(&env).hash());
        assert_eq!(Plan::down(&env).hash().len(), 12);
    }
}
