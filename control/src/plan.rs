//! The procedure as data: the ordered steps of `down` and `up` with their targets, built from the
//! environment, and for `up` only the inverses of what the `down` runs of the maintenance changed.
//! Both end with a check of the whole environment from outside. `maintctl plan` prints it;
//! nothing here touches anything.

use crate::config::{Environment, ExtraAction, Role, When};
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
}

impl Direction {
    /// `down` or `up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
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
    Verify { want: Direction },
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
        want: Direction,
    },
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
}

/// The ordered steps of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub direction: Direction,
    pub steps: Vec<Step>,
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
fn verify(env: &Environment, want: Direction) -> Step {
    let (id, title) = match want {
        Direction::Down => (
            "verify_down",
            "check from outside: the key, every proxy and public URL in maintenance, every box down",
        ),
        Direction::Up => (
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
        steps.push(verify(env, Direction::Down));
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
        steps.push(verify(env, Direction::Up));
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
        }
    }

    /// Only the final check that the environment is up: what closes a maintenance whose downs
    /// changed nothing that is still down.
    pub fn check_up(env: &Environment) -> Plan {
        Plan {
            direction: Direction::Up,
            steps: vec![verify(env, Direction::Up)],
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
    fn the_hash_follows_steps_and_targets() {
        let env = env();
        assert_eq!(Plan::down(&env).hash(), Plan::down(&env).hash());
        assert_ne!(Plan::down(&env).hash(), Plan::up(&env).hash());
        assert_eq!(Plan::down(&env).hash().len(), 12);
    }
}
