//! How long a production window needs, from the rehearsals: for each environment the inventory
//! names in `rehearsals`, its last completed maintenance (from the first `down` of it to the end
//! of the `up` that closed it), read from its own journal; the longest of them, times
//! `db_factor` when the maintenance touches the database.

use crate::commands::consul_client;
use crate::config::{Config, Environment};
use crate::journal::{self, Run, RunStatus};
use crate::plan::Direction;
use serde::Serialize;
use std::time::Duration;
use time::OffsetDateTime;

/// One rehearsal environment and what its journal says.
#[derive(Debug, Clone, Serialize)]
pub struct Rehearsal {
    pub env: String,
    /// How long its last completed maintenance took, when it has one.
    pub took_seconds: Option<u64>,
    /// When that maintenance ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Why there is no figure (no completed maintenance, a journal that cannot be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the rehearsals predict.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub rehearsals: Vec<Rehearsal>,
    /// 1, or `db_factor` with the database.
    pub factor: f64,
    /// The longest rehearsal times the factor; none without a figure.
    pub needs_seconds: Option<u64>,
}

/// The start and end of the last completed maintenance among `runs`: the `down` runs after the
/// previous completed `up`, from the first one's start to the end of the `up` that closed them.
pub fn last_maintenance(runs: &[Run]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let mut runs: Vec<&Run> = runs
        .iter()
        .filter(|r| matches!(r.direction, Direction::Down | Direction::Up))
        .collect();
    runs.sort_by_key(|r| r.started_at);
    let closed_up = |r: &&Run| r.direction == Direction::Up && r.status == RunStatus::Done;
    let last_up = runs.iter().rposition(closed_up)?;
    let previous_up = runs[..last_up]
        .iter()
        .rposition(closed_up)
        .map_or(0, |i| i + 1);
    let first_down = runs[previous_up..last_up]
        .iter()
        .find(|r| r.direction == Direction::Down)?;
    Some((first_down.started_at, runs[last_up].ended_at?))
}

impl Estimate {
    /// Reads the rehearsals of `env` (each from its own Consul and journal); a journal that
    /// cannot be read is noted, not fatal.
    pub async fn of(config: &Config, env: &Environment, with_database: bool) -> Estimate {
        let mut rehearsals = Vec::new();
        for name in &env.rehearsals {
            rehearsals.push(rehearsal(config, name).await);
        }
        let factor = if with_database { env.db_factor } else { 1.0 };
        let longest = rehearsals.iter().filter_map(|r| r.took_seconds).max();
        Estimate {
            rehearsals,
            factor,
            needs_seconds: longest.map(|s| (s as f64 * factor).ceil() as u64),
        }
    }

    /// What the prediction says against a window of `length` and the inventory's
    /// `max_window`: each way it does not fit, one line each.
    pub fn misfits(&self, length: Duration, max_window: Option<Duration>) -> Vec<String> {
        let mut misfits = Vec::new();
        let needs = self.needs_seconds.map(Duration::from_secs);
        if let Some(needs) = needs.filter(|n| *n > length) {
            misfits.push(format!(
                "the rehearsals predict {}, longer than the window ({})",
                minutes(needs),
                minutes(length)
            ));
        }
        if let Some(max) = max_window {
            if length > max {
                misfits.push(format!(
                    "the window ({}) is longer than max_window ({})",
                    minutes(length),
                    minutes(max)
                ));
            }
            if let Some(needs) = needs.filter(|n| *n > max) {
                misfits.push(format!(
                    "the rehearsals predict {}, more than max_window ({}): reduce the work",
                    minutes(needs),
                    minutes(max)
                ));
            }
        }
        misfits
    }

    /// One line for a person: each rehearsal and the prediction.
    pub fn render(&self) -> String {
        let each: Vec<String> = self
            .rehearsals
            .iter()
            .map(|r| match (r.took_seconds, &r.note) {
                (Some(s), _) => format!("{} took {}", r.env, minutes(Duration::from_secs(s))),
                (None, Some(note)) => format!("{}: {note}", r.env),
                (None, None) => format!("{}: no figure", r.env),
            })
            .collect();
        let each = each.join("; ");
        match self.needs_seconds {
            Some(s) if self.factor > 1.0 => format!(
                "estimate: needs {} (the longest rehearsal × {} with the database; {each})",
                minutes(Duration::from_secs(s)),
                self.factor
            ),
            Some(s) => format!(
                "estimate: needs {} (the longest rehearsal; {each})",
                minutes(Duration::from_secs(s))
            ),
            None => format!("no estimate: no rehearsal has a completed maintenance ({each})"),
        }
    }
}

/// `1h05m`, `24m`.
fn minutes(d: Duration) -> String {
    let m = d.as_secs().div_ceil(60);
    if m >= 60 {
        format!("{}h{:02}m", m / 60, m % 60)
    } else {
        format!("{m}m")
    }
}

async fn rehearsal(config: &Config, name: &str) -> Rehearsal {
    let noted = |note: String| Rehearsal {
        env: name.to_string(),
        took_seconds: None,
        ended_at: None,
        note: Some(note),
    };
    let Ok(env) = config.environment(name) else {
        return noted("not in the inventory".to_string());
    };
    let consul = match consul_client(env) {
        Ok(consul) => consul,
        Err(e) => return noted(e),
    };
    let runs = match journal::all_runs(&consul, &env.prefix).await {
        Ok(runs) => runs,
        Err(e) => return noted(format!("its journal cannot be read: {e}")),
    };
    match last_maintenance(&runs) {
        Some((start, end)) => Rehearsal {
            env: name.to_string(),
            took_seconds: Some((end - start).whole_seconds().max(0) as u64),
            ended_at: Some(end),
            note: None,
        },
        None => noted("no completed maintenance yet".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(direction: Direction, status: RunStatus, start_min: i64, end_min: i64) -> Run {
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut run = Run::sample(direction, status, t0 + time::Duration::minutes(start_min));
        run.ended_at = Some(t0 + time::Duration::minutes(end_min));
        run
    }

    #[test]
    fn the_last_completed_maintenance_runs_from_its_first_down_to_its_closing_up() {
        use Direction::{Down, Up};
        use RunStatus::{Done, Failed};
        let runs = [
            run(Down, Done, 0, 5),
            run(Up, Done, 10, 12),
            // The last maintenance: a failed down, its re-run, a failed up, the closing up.
            run(Down, Failed, 100, 103),
            run(Down, Done, 104, 110),
            run(Up, Failed, 120, 121),
            run(Up, Done, 122, 130),
            // An unfinished one after it does not count.
            run(Down, Done, 200, 205),
        ];
        let (start, end) = last_maintenance(&runs).unwrap();
        assert_eq!((end - start).whole_minutes(), 30);
        assert_eq!(last_maintenance(&runs[..1]), None);
    }

    #[test]
    fn the_prediction_is_the_longest_rehearsal_times_the_factor_and_misfits_are_said() {
        let estimate = Estimate {
            rehearsals: vec![
                Rehearsal {
                    env: "final".to_string(),
                    took_seconds: Some(20 * 60),
                    ended_at: None,
                    note: None,
                },
                Rehearsal {
                    env: "mock".to_string(),
                    took_seconds: None,
                    ended_at: None,
                    note: Some("no completed maintenance yet".to_string()),
                },
            ],
            factor: 2.0,
            needs_seconds: Some(40 * 60),
        };
        assert_eq!(
            estimate.render(),
            "estimate: needs 40m (the longest rehearsal × 2 with the database; final took 20m; mock: no completed maintenance yet)"
        );
        let hour = Duration::from_secs(3600);
        assert!(estimate.misfits(hour, Some(hour)).is_empty());
        assert_eq!(
            estimate.misfits(
                Duration::from_secs(30 * 60),
                Some(Duration::from_secs(35 * 60))
            ),
            [
                "the rehearsals predict 40m, longer than the window (30m)",
                "the rehearsals predict 40m, more than max_window (35m): reduce the work"
            ]
        );
        assert_eq!(
            estimate.misfits(2 * hour, Some(hour)),
            ["the window (2h00m) is longer than max_window (1h00m)"]
        );
    }
}
