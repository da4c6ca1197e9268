//! `maintctl daemon`: the environment's windows kept on time without an operator at hand. Each
//! tick it reads the windows, the gate key and the journal, and:
//! - sends the reminder due before each coming window (only the nearest one when several are
//!   due at once, and only those due after the window's last change, which told everyone);
//! - at the start of a window marked `auto`, runs `down` (its reason and `until` the window's):
//!   once, within `notices.missed_after` of the start, when nobody took the environment down
//!   since and the plan has no pause; at its end `up`, with its smoke tests, when the last run
//!   was that `down` and it finished;
//! - sends `missed` for any other window nobody took down `missed_after` past its start;
//! - once the gate is closed past the later of its `until` and its window's end, plus
//!   `notices.overdue_grace`, sends `overdue` (`expired` when the gate document has `expire`:
//!   the proxies opened it by themselves);
//! - tries again each failed notice that still matters, pausing 1 minute, then 2, 4… up to an
//!   hour.
//!
//! Only one daemon of an environment acts: it holds `<prefix>/daemon/lock` (a second one waits,
//! standing by, and takes over when the first is gone), and begins no action once that lock is
//! lost. Its `down` and `up` take the environment's lock like any other run, so an operator's
//! run and the daemon's never overlap. Every notice is sent once per window and recipient.

use super::{consul_client, exit, CommandResult, Failure, RunRequest};
use crate::config::{Config, Environment};
use crate::journal::{Run, RunStatus};
use crate::lock::{Holder, Lock, LockError};
use crate::notices::{self, Event, Notice};
use crate::output::Output;
use crate::plan::Direction;
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::gate::{GateDoc, Mode};
use drawbridge_core::windows::{Window, WindowStatus};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use time::OffsetDateTime;

/// What `daemon` is asked.
pub struct DaemonRequest {
    /// How often it looks.
    pub tick: Duration,
}

/// The first pause before a failed notice is tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_LONGEST: Duration = Duration::from_secs(3600);

/// One notice to one recipient: window id, event, reminder offset, recipient.
type NoticeKey = (String, Event, Option<String>, String);

/// What the daemon remembers between ticks.
#[derive(Default)]
struct Memory {
    /// Windows whose `down` (or `up`) it ran or tried.
    downs: HashSet<String>,
    ups: HashSet<String>,
    /// Failed notices tried again: when next, and the pause after that.
    retries: HashMap<NoticeKey, (OffsetDateTime, Duration)>,
}

/// `maintctl daemon`.
pub async fn daemon(
    config: &Config,
    env_name: &str,
    req: DaemonRequest,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let lock_prefix = format!("{}/daemon", env.prefix);
    let mut memory = Memory::default();
    let mut lock: Option<Lock> = None;
    let mut standing_by = false;
    let mut ticks = tokio::time::interval(req.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::failed(format!("cannot take SIGTERM: {e}")))?;
    out.emit(
        json!({"event": "daemon_started", "env": env.name, "tick_ms": req.tick.as_millis() as u64}),
        || {
            format!(
                "maintctl daemon of {} started (looks every {})",
                env.name,
                humantime::format_duration(req.tick)
            )
        },
    );
    loop {
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = ticks.tick() => {}
        }
        if lock.as_ref().is_some_and(Lock::is_lost) {
            out.note("warning: the daemon's lock was lost; standing by until it is taken again");
            lock = None;
        }
        if lock.is_none() {
            match Lock::acquire(&consul, &lock_prefix, &Holder::me("daemon")).await {
                Ok(taken) => {
                    out.note(&format!(
                        "the daemon of {} acts now (it holds {lock_prefix}/lock)",
                        env.name
                    ));
                    standing_by = false;
                    lock = Some(taken);
                }
                Err(LockError::Held(holder)) => {
                    if !standing_by {
                        out.note(&format!(
                            "another daemon of {} acts ({}); standing by",
                            env.name,
                            holder.by()
                        ));
                        standing_by = true;
                    }
                    continue;
                }
                Err(e) => {
                    out.note(&format!("warning: the daemon's lock cannot be taken: {e}"));
                    continue;
                }
            }
        }
        let Some(held) = lock.as_ref() else { continue };
        if let Err(e) = tick(config, env, &consul, held, &mut memory, out).await {
            out.note(&format!("warning: {e}; trying again at the next tick"));
        }
    }
    if let Some(lock) = lock {
        let _ = lock.release().await;
    }
    out.note(&format!("maintctl daemon of {} stopped", env.name));
    Ok(exit::OK)
}

/// The gate as the key says.
#[derive(Default)]
struct Gate {
    /// Any mode but normal, or a value that cannot be read.
    closed: bool,
    until: Option<OffsetDateTime>,
    /// The dead-man switch is armed.
    expire: bool,
}

async fn gate(env: &Environment, consul: &Client) -> Result<Gate, String> {
    let entry = consul
        .kv_get(&env.key, &QueryOptions::default())
        .await
        .map_err(|e| format!("reading the gate key {}: {e}", env.key))?
        .entry;
    let Some(entry) = entry else {
        return Ok(Gate::default());
    };
    Ok(
        match GateDoc::parse(entry.value.as_deref().unwrap_or_default()) {
            Ok(doc) => Gate {
                closed: doc.mode != Mode::Normal,
                until: doc.until,
                expire: doc.expire,
            },
            // The proxies keep what they had: nothing is run on a key nobody can read.
            Err(_) => Gate {
                closed: true,
                ..Gate::default()
            },
        },
    )
}

/// One look at the environment.
async fn tick(
    config: &Config,
    env: &Environment,
    consul: &Client,
    lock: &Lock,
    memory: &mut Memory,
    out: Output,
) -> Result<(), String> {
    let acting = || {
        if lock.is_lost() {
            Err("the daemon's lock was lost".to_string())
        } else {
            Ok(())
        }
    };
    let now = OffsetDateTime::now_utc();
    let windows = super::windows::read_windows(env, consul).await?;
    let gate_now = gate(env, consul).await?;
    let runs = crate::journal::all_runs(consul, &env.prefix)
        .await
        .map_err(|e| e.to_string())?;
    // Overdue first, on the state as read: a late `up` of this tick is not followed by it.
    overdue(
        env,
        consul,
        &gate_now,
        notices::window_at(&windows, now),
        now,
        out,
    )
    .await;
    let day = time::Duration::days(1);
    for w in windows.windows.iter().filter(|w| now < w.end + day) {
        acting()?;
        retry_failed(env, consul, w, now, memory, out).await;
        if w.status != WindowStatus::Scheduled {
            continue;
        }
        if now < w.start {
            remind(env, consul, w, now, out).await;
        } else if now < w.end {
            at_start(config, env, consul, w, &gate_now, &runs, now, memory, out).await;
        } else if w.auto
            && gate_now.closed
            && !memory.ups.contains(&w.id)
            && downed_by_daemon(&runs, w)
        {
            memory.ups.insert(w.id.clone());
            acting()?;
            out.note(&format!(
                "window {} is over: maintctl up --env {}",
                w.id, env.name
            ));
            let run = run_request(None, None);
            if let Err(failure) = super::up(config, &env.name, run, out).await {
                out.note(&format!(
                    "warning: the daemon's up failed ({}); the gate stays closed",
                    failure.message
                ));
            }
        }
    }
    Ok(())
}

/// `overdue` (or `expired`, when the proxies opened the gate by themselves) once the gate is
/// closed past the later of its `until` and its window's end, plus `notices.overdue_grace`.
async fn overdue(
    env: &Environment,
    consul: &Client,
    gate: &Gate,
    window: Option<&Window>,
    now: OffsetDateTime,
    out: Output,
) {
    let (Some(until), Some(window)) = (gate.until.filter(|_| gate.closed), window) else {
        return;
    };
    if until.max(window.end) + env.notices.overdue_grace > now {
        return;
    }
    let event = if gate.expire {
        Event::Expired
    } else {
        Event::Overdue
    };
    notices::tell(env, consul, window, event, out).await;
}

/// The reminder due now before window `w`, if one is: the nearest to the start among those
/// whose time has come, when it came after the window's last change.
async fn remind(env: &Environment, consul: &Client, w: &Window, now: OffsetDateTime, out: Output) {
    let due = env
        .notices
        .reminders
        .iter()
        .filter(|before| {
            let at = w.start - **before;
            at <= now && at >= w.changed_at
        })
        .min();
    if let Some(before) = due {
        let notice = Notice {
            env: &env.name,
            event: Event::Reminder,
            window: w,
            before: Some(*before),
        };
        notices::send(env, consul, &notice, out).await;
    }
}

/// Window `w` is under way and the gate is open: an `auto` one is taken down, once, and only
/// within `notices.missed_after` of its start and when nobody took it down since (an operator
/// who brought it up early is not undone); any other is told as `missed` once that long has
/// passed and nobody took it down.
#[allow(clippy::too_many_arguments)]
async fn at_start(
    config: &Config,
    env: &Environment,
    consul: &Client,
    w: &Window,
    gate: &Gate,
    runs: &[Run],
    now: OffsetDateTime,
    memory: &mut Memory,
    out: Output,
) {
    let taken_down = runs
        .iter()
        .any(|r| r.direction == Direction::Down && r.started_at >= w.start);
    if gate.closed || taken_down {
        return;
    }
    let grace = env.notices.missed_after;
    if w.auto && now < w.start + grace {
        if let Some(pause) = pauses(env) {
            if memory.downs.insert(w.id.clone()) {
                out.note(&format!(
                    "warning: window {} is auto, but the down plan has a pause ({pause}) nobody is here to answer: take it down by hand",
                    w.id
                ));
            }
        } else if memory.downs.insert(w.id.clone()) {
            out.note(&format!(
                "window {} starts: maintctl down --env {}",
                w.id, env.name
            ));
            let run = run_request(Some(w.reason.clone()), Some(w.end));
            if let Err(failure) = super::down(config, &env.name, run, out).await {
                out.note(&format!(
                    "warning: the daemon's down failed ({}); take it over by hand",
                    failure.message
                ));
            }
            return;
        }
    }
    if now >= w.start + grace {
        notices::tell(env, consul, w, Event::Missed, out).await;
    }
}

/// The first pause of the `down` or `up` plan, if it has one: the daemon answers none.
fn pauses(env: &Environment) -> Option<String> {
    env.extra_steps.iter().find_map(|s| match &s.action {
        crate::config::ExtraAction::Pause(text) => Some(format!("{}: {text}", s.name)),
        _ => None,
    })
}

/// Whether the maintenance now under way was begun by the daemon's own `down` in window `w`,
/// which finished, and nothing was run by hand after it.
fn downed_by_daemon(runs: &[Run], w: &Window) -> bool {
    let Some(last) = runs
        .iter()
        .filter(|r| matches!(r.direction, Direction::Down | Direction::Up))
        .max_by_key(|r| r.started_at)
    else {
        return false;
    };
    last.direction == Direction::Down
        && last.by_daemon
        && last.status == RunStatus::Done
        && last.started_at >= w.start
}

fn run_request(reason: Option<String>, until: Option<OffsetDateTime>) -> RunRequest {
    RunRequest {
        reason,
        until,
        expire: false,
        by_daemon: true,
        yes: true,
        dry_run: false,
        all: false,
        repeat_steps: false,
    }
}

/// Whether a failed notice of `event` still matters for window `w` at `now`: what was
/// announced (scheduled, moved, extended) and reminders before the start, a cancellation of a
/// cancelled window. What was true at one moment (started, missed, overdue…) is not sent late.
fn still_matters(event: Event, w: &Window, now: OffsetDateTime) -> bool {
    match event {
        Event::Cancelled => w.status == WindowStatus::Cancelled,
        Event::Scheduled | Event::Changed | Event::Reminder => {
            w.status == WindowStatus::Scheduled && now < w.start
        }
        Event::Extended => w.status == WindowStatus::Scheduled && now < w.end,
        _ => false,
    }
}

/// Tries again each notice of window `w` whose last try failed and which still matters, when
/// its pause is over.
async fn retry_failed(
    env: &Environment,
    consul: &Client,
    w: &Window,
    now: OffsetDateTime,
    memory: &mut Memory,
    out: Output,
) {
    let Ok(log) = notices::read_log(env, consul, &w.id).await else {
        return;
    };
    for record in log.undelivered() {
        if w.skips(&record.recipient) || !still_matters(record.event, w, now) {
            continue;
        }
        let key = (
            w.id.clone(),
            record.event,
            record.before.clone(),
            record.recipient.clone(),
        );
        let (next, pause) = *memory
            .retries
            .entry(key.clone())
            .or_insert((record.at + RETRY_FIRST, RETRY_FIRST));
        if now < next {
            continue;
        }
        let longer = (pause * 2).min(RETRY_LONGEST);
        memory.retries.insert(key, (now + longer, longer));
        let before = record
            .before
            .as_deref()
            .and_then(|b| humantime::parse_duration(b).ok());
        let notice = Notice {
            env: &env.name,
            event: record.event,
            window: w,
            before,
        };
        notices::send_to(env, consul, &notice, Some(&record.recipient), out).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn at(minute: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(T0 + minute * 60).unwrap()
    }

    fn run(direction: Direction, status: RunStatus, minute: i64, by_daemon: bool) -> Run {
        let mut run = Run::sample(direction, status, at(minute));
        run.by_daemon = by_daemon;
        run
    }

    fn window(status: WindowStatus) -> Window {
        Window {
            id: "w".into(),
            start: at(10),
            end: at(70),
            reason: "db".into(),
            message: None,
            status,
            by: "ops".into(),
            changed_at: at(0),
            revision: 0,
            auto: true,
            skip: Vec::new(),
        }
    }

    #[test]
    fn up_follows_only_the_daemons_own_finished_down_with_nothing_after_it() {
        use Direction::{Down, Up};
        use RunStatus::{Done, Failed};
        let w = window(WindowStatus::Scheduled);
        assert!(downed_by_daemon(&[run(Down, Done, 10, true)], &w));
        // An operator's down, a failed one, one before the window, or a later run by hand.
        assert!(!downed_by_daemon(&[run(Down, Done, 10, false)], &w));
        assert!(!downed_by_daemon(&[run(Down, Failed, 10, true)], &w));
        assert!(!downed_by_daemon(&[run(Down, Done, 5, true)], &w));
        assert!(!downed_by_daemon(
            &[run(Down, Done, 10, true), run(Up, Done, 20, false)],
            &w
        ));
        assert!(!downed_by_daemon(&[], &w));
    }

    #[test]
    fn only_notices_that_still_matter_are_tried_again() {
        let scheduled = window(WindowStatus::Scheduled);
        let cancelled = window(WindowStatus::Cancelled);
        assert!(still_matters(Event::Scheduled, &scheduled, at(5)));
        assert!(!still_matters(Event::Scheduled, &scheduled, at(10)));
        assert!(still_matters(Event::Reminder, &scheduled, at(9)));
        assert!(!still_matters(Event::Reminder, &scheduled, at(11)));
        assert!(still_matters(Event::Extended, &scheduled, at(69)));
        assert!(still_matters(Event::Cancelled, &cancelled, at(5)));
        assert!(!still_matters(Event::Scheduled, &cancelled, at(5)));
        for once in [
            Event::Started,
            Event::Missed,
            Event::Overdue,
            Event::Expired,
        ] {
            assert!(!still_matters(once, &scheduled, at(20)));
        }
    }
}
