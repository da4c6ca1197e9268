//! `maintctl daemon`: the environment's windows kept on time without an operator at hand. Each
//! tick it reads the windows, the gate key and the journal, and:
//! - sends the reminder due before each coming window (only the nearest one when several are
//!   due at once, and only those due after the window's last change, which told everyone);
//! - at the start of a window marked `auto`, runs `down` (its reason and `until` the window's),
//!   and at its end `up`, with its smoke tests, when that `down` was the daemon's; each once;
//! - at the start of any other window that nobody took down, sends `missed` (an alert);
//! - once the gate is closed past its `until` plus `notices.overdue_grace`, sends `overdue`
//!   (`expired` when the gate document has `expire`: the proxies opened it by themselves);
//! - tries again each notice whose last try failed, pausing 1 minute, then 2, 4… up to an hour,
//!   until a day after its window ended.
//!
//! Only one daemon of an environment acts: it holds `<prefix>/daemon/lock` (a second one waits,
//! standing by, and takes over when the first is gone). Its `down` and `up` take the
//! environment's lock like any other run, so an operator's run and the daemon's never overlap.
//! Every notice is sent once per window and recipient, whoever runs how many daemons.

use super::{consul_client, exit, CommandResult, Failure, RunRequest};
use crate::config::{Config, Environment};
use crate::journal::Maintenance;
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
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
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
        if let Err(e) = tick(config, env, &consul, &mut memory, out).await {
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
    memory: &mut Memory,
    out: Output,
) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    let windows = super::windows::read_windows(env, consul).await?;
    let Gate {
        closed,
        until,
        expire,
    } = gate(env, consul).await?;
    let maintenance = Maintenance::read(consul, &env.prefix)
        .await
        .map_err(|e| e.to_string())?;
    let day = time::Duration::days(1);
    for w in windows
        .windows
        .iter()
        .filter(|w| w.status == WindowStatus::Scheduled && now < w.end + day)
    {
        if now < w.start {
            remind(env, consul, w, now, out).await;
        } else if now < w.end {
            at_start(config, env, consul, w, closed, memory, out).await;
        } else if w.auto
            && closed
            && !memory.ups.contains(&w.id)
            && downed_by_daemon(&maintenance, w)
        {
            memory.ups.insert(w.id.clone());
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
        retry_failed(env, consul, w, now, memory, out).await;
    }
    let overdue = until.is_some_and(|until| closed && until + env.notices.overdue_grace <= now);
    if overdue {
        // With `expire`, the proxies have opened the gate by themselves at this very moment.
        let event = if expire {
            Event::Expired
        } else {
            Event::Overdue
        };
        notices::tell_window_now(env, consul, event, out).await;
    }
    Ok(())
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

/// Window `w` is under way: an `auto` one is taken down (once), any other that nobody took
/// down is told as `missed`.
async fn at_start(
    config: &Config,
    env: &Environment,
    consul: &Client,
    w: &Window,
    closed: bool,
    memory: &mut Memory,
    out: Output,
) {
    if closed {
        return;
    }
    if w.auto {
        if memory.downs.insert(w.id.clone()) {
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
        }
        return;
    }
    let notice = Notice {
        env: &env.name,
        event: Event::Missed,
        window: w,
        before: None,
    };
    notices::send(env, consul, &notice, out).await;
}

/// Whether the current maintenance was begun by a daemon's `down` in window `w`.
fn downed_by_daemon(maintenance: &Maintenance, w: &Window) -> bool {
    maintenance
        .runs
        .iter()
        .filter(|r| r.direction == Direction::Down)
        .any(|r| r.started_at >= w.start && r.command.split_whitespace().any(|a| a == "daemon"))
}

fn run_request(reason: Option<String>, until: Option<OffsetDateTime>) -> RunRequest {
    RunRequest {
        reason,
        until,
        expire: false,
        yes: true,
        dry_run: false,
        all: false,
        repeat_steps: false,
    }
}

/// Tries again each notice of window `w` whose last try failed, when its pause is over.
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
        if w.skips(&record.recipient) {
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
