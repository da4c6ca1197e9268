//! `status` and `history`: what the environment looks like now, and what runs did, as one JSON
//! object per line or as aligned tables for a person (times to the second).

use super::{consul_client, exit, http_client, CommandResult, Failure};
use crate::config::Config;
use crate::journal::{self, Run, StepRecord, StepStatus, TargetStatus};
use crate::lock;
use crate::output::Output;
use crate::steps::count;
use crate::survey::{self, BoxSeen, KeyState, Survey};
use drawbridge_core::timestamp;
use serde_json::{json, Value};
use time::OffsetDateTime;

/// Rows of cells as a table: every column as wide as its widest cell, two spaces apart,
/// each line indented by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

fn key_json(key: &KeyState) -> Value {
    match key {
        KeyState::Missing => json!({"mode": "normal", "present": false}),
        KeyState::Set { doc, index } => {
            json!({"mode": doc.mode, "reason": doc.reason, "until": doc.until.map(timestamp::seconds), "scope": doc.scope, "index": index, "present": true})
        }
        KeyState::Invalid { error, index } => {
            json!({"mode": "invalid", "error": error, "index": index, "present": true})
        }
    }
}

fn status_json(seen: &Survey, holder: Option<&lock::Holder>, last: Option<&Run>) -> Value {
    let proxies: Vec<Value> = match &seen.proxies {
        Err(e) => vec![json!({"error": e})],
        Ok(list) => list
            .iter()
            .map(|p| match &p.report {
                Ok(r) => json!({"proxy": p.name, "mode": r.gate.mode, "applied_index": r.gate.applied_index,
                                "source": r.gate.source, "stale": r.consul.stale,
                                "seconds_since_answer": r.consul.seconds_since_answer}),
                Err(e) => json!({"proxy": p.name, "error": e}),
            })
            .collect(),
    };
    let boxes: Vec<Value> = seen
        .boxes
        .iter()
        .map(|b| match &b.seen {
            BoxSeen::Unknown(e) => json!({"box": b.name, "role": b.role.as_str(), "error": e}),
            _ => json!({"box": b.name, "role": b.role.as_str(), "state": b.state_name()}),
        })
        .collect();
    json!({
        "gate": key_json(&seen.key), "proxies": proxies, "boxes": boxes,
        "lock": holder.map(|h| json!({"by": h.by(), "host": h.host, "pid": h.pid, "since": timestamp::seconds(h.since), "action": h.action})),
        "last_run": last.map(|r| json!({"id": r.id, "direction": r.direction, "status": r.status,
            "started_at": timestamp::seconds(r.started_at), "by": r.by, "reason": r.reason})),
    })
}

fn status_text(
    env: &str,
    key_name: &str,
    seen: &Survey,
    holder: Option<&lock::Holder>,
    last: Option<&Run>,
) -> String {
    let mut s = match &seen.key {
        KeyState::Missing => format!("{env}: key {key_name} is not set (normal)\n"),
        KeyState::Set { doc, index } => {
            let mut line = format!("{env}: key {key_name} = {} at index {index}", doc.mode);
            if let Some(reason) = &doc.reason {
                line.push_str(&format!(", reason \"{reason}\""));
            }
            if let Some(until) = doc.until {
                line.push_str(&format!(", until {}", timestamp::seconds(until)));
            }
            if let Some(scope) = &doc.scope {
                line.push_str(&format!(", only {}", scope.join(", ")));
            }
            line + "\n"
        }
        KeyState::Invalid { error, index } => {
            format!("{env}: key {key_name} holds an invalid value at index {index}: {error}\n")
        }
    };
    match &seen.proxies {
        Err(e) => s.push_str(&format!("\nproxies: cannot be listed: {e}\n")),
        Ok(list) => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| match &p.report {
                    Ok(r) => vec![
                        p.name.clone(),
                        r.gate.mode.to_string(),
                        r.gate.applied_index.to_string(),
                        r.consul
                            .seconds_since_answer
                            .map_or("never".to_string(), |s| format!("{s:.0}s ago")),
                        if r.consul.stale { "stale" } else { "ok" }.to_string(),
                    ],
                    Err(e) => vec![p.name.clone(), format!("unreachable: {e}")],
                })
                .collect();
            s.push_str(&format!("\n{}:\n", count(list.len(), "proxy", "proxies")));
            s.push_str(&table(
                &["PROXY", "MODE", "APPLIED", "CONSUL ANSWERED", "WATCH"],
                &rows,
            ));
            s.push('\n');
        }
    }
    let rows: Vec<Vec<String>> = seen
        .boxes
        .iter()
        .map(|b| {
            let state = match &b.seen {
                BoxSeen::Unknown(e) => format!("unknown: {e}"),
                _ => b.state_name(),
            };
            vec![b.name.clone(), b.role.as_str().to_string(), state]
        })
        .collect();
    s.push_str(&format!("\n{}:\n", count(rows.len(), "box", "boxes")));
    s.push_str(&table(&["BOX", "ROLE", "STATE"], &rows));
    s.push_str("\n\nlock: ");
    s.push_str(&match holder {
        None => "free".to_string(),
        Some(h) => format!(
            "{} by {} (pid {}) since {}",
            h.action,
            h.by(),
            h.pid,
            timestamp::seconds(h.since)
        ),
    });
    s.push_str("\nlast run: ");
    s.push_str(&match last {
        None => "none".to_string(),
        Some(r) => format!(
            "{} {} {}, started {} by {} (\"{}\")",
            r.id,
            r.direction.as_str(),
            r.status.as_str(),
            timestamp::seconds(r.started_at),
            r.by,
            r.reason
        ),
    });
    s
}

/// `maintctl status`: the key, each proxy, each box, the lock and the last run.
pub async fn status(config: &Config, env_name: &str, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let http = http_client().map_err(Failure::failed)?;
    let seen = survey::survey(env, &consul, &http)
        .await
        .map_err(Failure::failed)?;
    let holder = lock::holder(&consul, &env.prefix).await.ok().flatten();
    let last = journal::latest(&consul, &env.prefix)
        .await
        .ok()
        .flatten()
        .map(|(r, _)| r);
    let mut report = status_json(&seen, holder.as_ref(), last.as_ref());
    report["env"] = json!(env.name);
    report["key"] = json!(env.key);
    out.emit(report, || {
        status_text(&env.name, &env.key, &seen, holder.as_ref(), last.as_ref())
    });
    Ok(exit::OK)
}

fn seconds(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some((b - a).as_seconds_f64()),
        _ => None,
    }
}

/// A step's status for a person: `skipped` when it was done and every target was found
/// already so.
fn step_word(s: &StepRecord) -> &'static str {
    let all_skipped =
        !s.targets.is_empty() && s.targets.iter().all(|t| t.status == TargetStatus::Skipped);
    if s.status == StepStatus::Done && all_skipped {
        "skipped"
    } else {
        s.status.as_str()
    }
}

fn duration_text(secs: Option<f64>) -> String {
    secs.map_or("-".to_string(), |t| format!("{t:.1}s"))
}

fn run_json(run: &Run) -> Value {
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|s| {
            let targets: Vec<Value> = s
                .targets
                .iter()
                .map(|t| json!({"target": t.target, "status": t.status, "detail": t.output}))
                .collect();
            json!({"step": s.id, "status": s.status, "shown": step_word(s),
                   "seconds": seconds(s.started_at, s.ended_at), "targets": targets})
        })
        .collect();
    json!({"run": run.id, "direction": run.direction, "status": run.status, "by": run.by,
           "reason": run.reason, "started_at": timestamp::seconds(run.started_at),
           "seconds": seconds(Some(run.started_at), run.ended_at), "restores": run.restores,
           "steps": steps})
}

fn run_text(run: &Run) -> String {
    let mut out = format!(
        "{} {:<4} {:<11} {:>7} by {} (\"{}\") {}\n",
        timestamp::seconds(run.started_at),
        run.direction.as_str(),
        run.status.as_str(),
        duration_text(seconds(Some(run.started_at), run.ended_at)),
        run.by,
        run.reason,
        run.id
    );
    let rows: Vec<Vec<String>> = run
        .steps
        .iter()
        .map(|s| {
            let skipped = s
                .targets
                .iter()
                .filter(|t| t.status == TargetStatus::Skipped)
                .count();
            let targets = if skipped > 0 && skipped < s.targets.len() {
                format!("{} of {} already so", skipped, s.targets.len())
            } else {
                String::new()
            };
            vec![
                s.id.clone(),
                step_word(s).to_string(),
                duration_text(seconds(s.started_at, s.ended_at)),
                targets,
            ]
        })
        .collect();
    out.push_str(&table(&["STEP", "STATUS", "TOOK", ""], &rows));
    out
}

/// `maintctl history`: past runs, each step with its status and duration.
pub async fn history(config: &Config, env_name: &str, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let runs = journal::all_runs(&consul, &env.prefix)
        .await
        .map_err(Failure::failed)?;
    for run in &runs {
        out.emit(run_json(run), || run_text(run));
    }
    if runs.is_empty() {
        out.note(&format!("no runs of {} yet", env.name));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec![
                "api1".to_string(),
                "api_ui".to_string(),
                "node maintenance".to_string(),
            ],
            vec![
                "worker-long".to_string(),
                "worker".to_string(),
                "stopped".to_string(),
            ],
        ];
        assert_eq!(
            table(&["BOX", "ROLE", "STATE"], &rows),
            "  BOX          ROLE    STATE\n  api1         api_ui  node maintenance\n  worker-long  worker  stopped"
        );
    }
}
