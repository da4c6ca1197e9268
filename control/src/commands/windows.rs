//! `maintctl schedule`, `windows`, `reschedule` and `cancel`: the environment's maintenance
//! windows in the windows document (see `drawbridge_core::windows`). Every change is a
//! compare-and-set write of the document as read, then read back from the leader, so two
//! operators never overwrite each other and a "scheduled" is said only once Consul holds it.

use super::{consul_client, exit, put_read_back, CommandResult, Failure};
use crate::config::{Config, Environment};
use crate::estimate::Estimate;
use crate::lock::Holder;
use crate::notices::{self, Event, Notice};
use crate::output::Output;
use crate::when;
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::windows::{
    Skip, Window, WindowStatus, WindowsDoc, WindowsDocError, MAX_WINDOWS,
};
use serde_json::json;
use time::OffsetDateTime;

/// What `schedule` and `reschedule` are asked: the times as written.
pub struct WindowTimes {
    pub start: String,
    pub end: String,
}

/// What `schedule` is asked.
pub struct ScheduleRequest {
    pub times: WindowTimes,
    pub reason: String,
    pub message: Option<String>,
    /// The maintenance touches the database: the rehearsals' times × `db_factor`.
    pub with_database: bool,
    /// Schedule a window the rehearsals or `max_window` say does not fit.
    pub force: bool,
    /// Recipients who asked to skip it, as `NAME=REASON`.
    pub skip: Vec<String>,
    /// Send the notice to this address only, and write nothing.
    pub preview: Option<String>,
    /// `maintctl daemon` runs `down` at its start and `up` at its end.
    pub auto: bool,
}

/// The windows document of `env` as read, with the index a write must find.
struct Read {
    doc: WindowsDoc,
    index: u64,
}

async fn read(env: &Environment, consul: &Client) -> Result<Read, Failure> {
    let key = &env.windows_key;
    let entry = consul
        .kv_get(key, &QueryOptions::default())
        .await
        .map_err(|e| Failure::failed(format!("reading the windows key {key}: {e}")))?
        .entry;
    let Some(entry) = entry else {
        return Ok(Read {
            doc: WindowsDoc::default(),
            index: 0,
        });
    };
    let doc = WindowsDoc::parse(entry.value.as_deref().unwrap_or_default()).map_err(|e| {
        Failure::failed(format!(
            "the windows key {key} holds a value maintctl refuses ({e}): fix or delete it first"
        ))
    })?;
    Ok(Read {
        doc,
        index: entry.modify_index,
    })
}

/// The windows document of `env` (empty when there is none).
///
/// # Errors
/// Consul cannot be read, or the value is not a windows document.
pub(crate) async fn read_windows(env: &Environment, consul: &Client) -> Result<WindowsDoc, String> {
    read(env, consul)
        .await
        .map(|r| r.doc)
        .map_err(|f| f.message)
}

/// Writes `doc` if the key still holds what was read, and reads it back from the leader. To
/// make room, the oldest windows that are over go first, then the oldest cancelled ones (said).
async fn write(
    env: &Environment,
    consul: &Client,
    read: &Read,
    mut doc: WindowsDoc,
    out: Output,
) -> Result<(), Failure> {
    let key = &env.windows_key;
    let dropped = doc.prune(OffsetDateTime::now_utc());
    doc.check().map_err(|e| match e {
        WindowsDocError::TooMany { .. } => Failure::failed(format!(
            "{} holds {MAX_WINDOWS} scheduled windows that are not over: cancel some first; nothing was written",
            env.name
        )),
        WindowsDocError::WouldBeTooLarge { .. } => Failure::failed(format!(
            "{e}: shorten --message, or cancel windows that are not needed; nothing was written"
        )),
        e => Failure::failed(format!("{e}; nothing was written")),
    })?;
    if !dropped.is_empty() {
        out.note(&format!(
            "to make room, the oldest windows that are over or cancelled leave the document: {}",
            dropped.join(", ")
        ));
    }
    let value = doc.to_json();
    let shown = format!("`maintctl windows --env {}` shows it", env.name);
    match put_read_back(consul, key, "the windows key", value.as_bytes(), read.index).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Failure::failed(format!(
                "the windows key {key} was changed by someone else meanwhile; nothing was written: run again"
            )))
        }
        Err(e) => return Err(Failure::failed(format!("{e}; {shown}"))),
    }
    Ok(())
}

/// The window's start and end as written, in UTC, checked: readable, in order, the end to
/// come, and the start to come too unless it is `begun` (the start of a window that has begun,
/// kept when only its end moves).
fn times(
    req: &WindowTimes,
    now: OffsetDateTime,
    begun: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime), Failure> {
    let utc = time::UtcOffset::UTC;
    let start = when::parse(&req.start)
        .map_err(|e| Failure::usage(format!("--start: {e}")))?
        .to_offset(utc);
    let end = when::parse(&req.end)
        .map_err(|e| Failure::usage(format!("--end: {e}")))?
        .to_offset(utc);
    if end <= start {
        return Err(Failure::usage(format!(
            "--end ({}) is not after --start ({})",
            when::show(end),
            when::show(start)
        )));
    }
    if end <= now {
        return Err(Failure::usage(format!(
            "--end ({}) is not in the future",
            when::show(end)
        )));
    }
    match begun {
        Some(begun) if start == begun => {}
        Some(begun) => {
            return Err(Failure::usage(format!(
                "the window has begun ({}): only its end can move; give that --start",
                when::show(begun)
            )))
        }
        None if start <= now => {
            return Err(Failure::usage(format!(
                "--start ({}) is not in the future: a window is announced ahead",
                when::show(start)
            )))
        }
        None => {}
    }
    Ok((start, end))
}

/// A new window's id, from its start in UTC and a random part, used by no window of `doc`.
fn new_id(doc: &WindowsDoc, start: OffsetDateTime, now: OffsetDateTime) -> String {
    let mut seed = now.unix_timestamp_nanos() as u64 ^ u64::from(std::process::id());
    loop {
        let id = format!(
            "w-{:04}{:02}{:02}-{:02}{:02}-{:04x}",
            start.year(),
            u8::from(start.month()),
            start.day(),
            start.hour(),
            start.minute(),
            seed & 0xffff
        );
        if !doc.windows.iter().any(|w| w.id == id) {
            return id;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 7;
    }
}

/// Refuses a window that overlaps another scheduled one (other than `except`).
fn refuse_overlap(doc: &WindowsDoc, window: &Window) -> Result<(), Failure> {
    let clash = doc
        .windows
        .iter()
        .find(|w| w.id != window.id && w.status == WindowStatus::Scheduled && w.overlaps(window));
    match clash {
        Some(w) => Err(Failure::failed(format!(
            "it overlaps window {} ({} to {}: {}): reschedule or cancel that one first",
            w.id,
            when::show(w.start),
            when::show(w.end),
            w.reason
        ))),
        None => Ok(()),
    }
}

fn span(w: &Window) -> String {
    let minutes = (w.end - w.start).whole_minutes();
    format!(
        "{} to {} ({}h{:02})",
        when::show(w.start),
        when::show(w.end),
        minutes / 60,
        minutes % 60
    )
}

fn window_json(w: &Window, now: OffsetDateTime) -> serde_json::Value {
    let mut value = serde_json::to_value(w).expect("a window always serialises");
    value["when"] = json!(when_is(w, now));
    value
}

/// `past`, `now` or `coming`.
fn when_is(w: &Window, now: OffsetDateTime) -> &'static str {
    if w.end <= now {
        "past"
    } else if w.start <= now {
        "now"
    } else {
        "coming"
    }
}

/// `maintctl schedule`: refused (exit 5, nothing written) when the rehearsals predict more
/// than the window or `max_window`, or the window is longer than `max_window`, unless `--force`.
pub async fn schedule(
    config: &Config,
    env_name: &str,
    req: ScheduleRequest,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let ScheduleRequest {
        times: asked,
        reason,
        message,
        with_database,
        force,
        skip,
        preview,
        auto,
    } = req;
    if reason.trim().is_empty() {
        return Err(Failure::usage(
            "schedule needs --reason \"...\" (it is what partners and tenants are told)",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let (start, end) = times(&asked, now, None)?;
    let estimate = Estimate::of(config, env, with_database).await;
    let length = (end - start).unsigned_abs();
    let misfits = estimate.misfits(length, env.max_window);
    if !env.rehearsals.is_empty() {
        out.note(&estimate.render());
    }
    if !misfits.is_empty() {
        if !force {
            return Err(Failure::new(
                exit::PREFLIGHT,
                "the window does not fit; nothing was written (--force schedules it anyway)",
            )
            .with_problems(misfits));
        }
        for misfit in &misfits {
            out.note(&format!("--force: {misfit}"));
        }
    }
    let skip = skip
        .iter()
        .map(|entry| {
            let (name, why) = entry.split_once('=').ok_or_else(|| {
                Failure::usage(format!(
                    "--skip {entry:?}: give the recipient and what they asked, e.g. --skip \"acme=delay: quarter-end closing\""
                ))
            })?;
            new_skip(env, name, why, now)
        })
        .collect::<Result<Vec<Skip>, Failure>>()?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let read = read(env, &consul).await?;
    let window = Window {
        id: new_id(&read.doc, start, now),
        start,
        end,
        reason: reason.trim().to_string(),
        message: message.filter(|m| !m.trim().is_empty()),
        status: WindowStatus::Scheduled,
        by: Holder::me("schedule").by(),
        changed_at: now,
        revision: 0,
        auto,
        skip,
    };
    if let Some(problem) = window.problem() {
        return Err(Failure::usage(format!(
            "{}: nothing was written",
            problem
                .replacen("its reason", "--reason", 1)
                .replacen("its message", "--message", 1)
        )));
    }
    refuse_overlap(&read.doc, &window)?;
    if let Some(address) = preview {
        return send_preview(env, &window, Event::Scheduled, &address, out).await;
    }
    let mut doc = read.doc.clone();
    doc.windows.push(window.clone());
    doc.by = Some(window.by.clone());
    write(env, &consul, &read, doc, out).await?;
    out.emit(
        json!({"event": "scheduled", "env": env.name, "window": window_json(&window, now),
               "estimate": estimate, "misfits": misfits}),
        || {
            format!(
                "scheduled {}: {}: {}",
                window.id,
                span(&window),
                window.reason
            )
        },
    );
    notices::tell(env, &consul, &window, Event::Scheduled, out).await;
    Ok(exit::OK)
}

/// `--preview ADDRESS`: the notice of `event` of `window`, by email to `address` only; nothing
/// is written.
async fn send_preview(
    env: &Environment,
    window: &Window,
    event: Event,
    address: &str,
    out: Output,
) -> CommandResult {
    let notice = Notice {
        env: &env.name,
        event,
        window,
        before: None,
    };
    notices::preview(env, address, &notice).await.map_err(|e| {
        Failure::failed(format!(
            "the preview was not sent: {e}; nothing was written"
        ))
    })?;
    out.emit(
        json!({"event": "preview", "env": env.name, "to": address, "notice": event.as_str(), "subject": notice.subject()}),
        || {
            format!(
                "preview of the {} notice sent to {address}; nothing was written: run again without --preview to {} and notify",
                event.as_str(),
                match event {
                    Event::Cancelled => "cancel",
                    Event::Scheduled => "schedule",
                    _ => "reschedule",
                }
            )
        },
    );
    Ok(exit::OK)
}

/// A skip-list entry for recipient `name` of `env`, checked.
fn new_skip(
    env: &Environment,
    name: &str,
    why: &str,
    now: OffsetDateTime,
) -> Result<Skip, Failure> {
    let names: Vec<&str> = env
        .notices
        .recipients
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    if !names.contains(&name) {
        return Err(Failure::usage(format!(
            "{name:?} is not a notice recipient of {} ({})",
            env.name,
            if names.is_empty() {
                "it has none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let skip = Skip {
        recipient: name.to_string(),
        reason: why.trim().to_string(),
        by: Holder::me("skip").by(),
        at: now,
    };
    if let Some(problem) = skip.problem() {
        return Err(Failure::usage(format!("{problem}; nothing was written")));
    }
    Ok(skip)
}

/// `maintctl windows`: every window, by start, with whether it is past, now or coming.
pub async fn windows(config: &Config, env_name: &str, out: Output) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let mut doc = read(env, &consul).await?.doc;
    doc.windows.sort_by_key(|w| w.start);
    let now = OffsetDateTime::now_utc();
    out.emit(
        json!({"event": "windows", "env": env.name,
               "windows": doc.windows.iter().map(|w| window_json(w, now)).collect::<Vec<_>>()}),
        || {
            if doc.windows.is_empty() {
                return format!("no maintenance window of {} is scheduled", env.name);
            }
            let mut text = format!("maintenance windows of {}:", env.name);
            for w in &doc.windows {
                text.push_str(&format!(
                    "\n  {:<22} {:<9} {:<6} {}: {}{} (by {})",
                    w.id,
                    w.status.as_str(),
                    when_is(w, now),
                    span(w),
                    w.reason,
                    if w.auto {
                        " [auto: the daemon runs down and up]"
                    } else {
                        ""
                    },
                    w.by
                ));
                for s in &w.skip {
                    text.push_str(&format!(
                        "\n      skipped by {}: {} (noted by {})",
                        s.recipient, s.reason, s.by
                    ));
                }
            }
            text
        },
    );
    Ok(exit::OK)
}

/// The window `id` as it can still be changed: scheduled and not over.
fn changeable<'a>(
    env: &Environment,
    doc: &'a mut WindowsDoc,
    id: &str,
    now: OffsetDateTime,
) -> Result<&'a mut Window, Failure> {
    let Some(w) = doc.get_mut(id) else {
        return Err(Failure::failed(format!(
            "no window {id} in {}: `maintctl windows --env {}` lists them",
            env.name, env.name
        )));
    };
    if w.end <= now {
        return Err(Failure::failed(format!(
            "window {id} is over ({}): it is kept as it was",
            when::show(w.end)
        )));
    }
    Ok(w)
}

/// `maintctl reschedule`.
pub async fn reschedule(
    config: &Config,
    env_name: &str,
    id: &str,
    req: WindowTimes,
    preview: Option<String>,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let now = OffsetDateTime::now_utc();
    let consul = consul_client(env).map_err(Failure::usage)?;
    let read = read(env, &consul).await?;
    let mut doc = read.doc.clone();
    let w = changeable(env, &mut doc, id, now)?;
    if w.status == WindowStatus::Cancelled {
        return Err(Failure::failed(format!(
            "window {id} is cancelled: schedule a new one"
        )));
    }
    let begun = w.start <= now;
    let (start, end) = times(&req, now, begun.then_some(w.start))?;
    // A window under way that lasts longer is extended; any other move is a change.
    let event = if begun && end > w.end {
        Event::Extended
    } else {
        Event::Changed
    };
    w.start = start;
    w.end = end;
    w.by = Holder::me("reschedule").by();
    w.changed_at = now;
    w.revision += 1;
    let window = w.clone();
    refuse_overlap(&doc, &window)?;
    if let Some(address) = preview {
        return send_preview(env, &window, event, &address, out).await;
    }
    doc.by = Some(window.by.clone());
    write(env, &consul, &read, doc, out).await?;
    out.emit(
        json!({"event": "rescheduled", "env": env.name, "window": window_json(&window, now)}),
        || {
            format!(
                "rescheduled {}: {}: {}",
                window.id,
                span(&window),
                window.reason
            )
        },
    );
    notices::tell(env, &consul, &window, event, out).await;
    Ok(exit::OK)
}

/// `maintctl cancel`: the window stays in the document, cancelled; cancelling it again says so
/// and changes nothing.
pub async fn cancel(
    config: &Config,
    env_name: &str,
    id: &str,
    preview: Option<String>,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let now = OffsetDateTime::now_utc();
    let consul = consul_client(env).map_err(Failure::usage)?;
    let read = read(env, &consul).await?;
    let mut doc = read.doc.clone();
    let w = changeable(env, &mut doc, id, now)?;
    if w.status == WindowStatus::Cancelled {
        let window = w.clone();
        out.emit(
            json!({"event": "cancelled", "env": env.name, "window": window_json(&window, now), "already": true}),
            || format!("window {id} was already cancelled (by {}); nothing changed", window.by),
        );
        return Ok(exit::OK);
    }
    w.status = WindowStatus::Cancelled;
    w.by = Holder::me("cancel").by();
    w.changed_at = now;
    w.revision += 1;
    let window = w.clone();
    if let Some(address) = preview {
        return send_preview(env, &window, Event::Cancelled, &address, out).await;
    }
    doc.by = Some(window.by.clone());
    write(env, &consul, &read, doc, out).await?;
    out.emit(
        json!({"event": "cancelled", "env": env.name, "window": window_json(&window, now), "already": false}),
        || format!("cancelled {}: {}: {}", window.id, span(&window), window.reason),
    );
    notices::tell(env, &consul, &window, Event::Cancelled, out).await;
    Ok(exit::OK)
}

/// `maintctl skip`: records that recipient `name` asked to skip window `id` (or to delay it),
/// and why; it is sent none of the window's notices from now on. Asked again, the reason is
/// replaced.
pub async fn skip(
    config: &Config,
    env_name: &str,
    id: &str,
    name: &str,
    why: &str,
    out: Output,
) -> CommandResult {
    let env = config.environment(env_name).map_err(Failure::usage)?;
    let now = OffsetDateTime::now_utc();
    let entry = new_skip(env, name, why, now)?;
    let consul = consul_client(env).map_err(Failure::usage)?;
    let read = read(env, &consul).await?;
    let mut doc = read.doc.clone();
    let w = changeable(env, &mut doc, id, now)?;
    w.skip.retain(|s| s.recipient != name);
    w.skip.push(entry);
    let window = w.clone();
    doc.by = Some(Holder::me("skip").by());
    write(env, &consul, &read, doc, out).await?;
    out.emit(
        json!({"event": "skipped", "env": env.name, "window": window_json(&window, now), "recipient": name}),
        || format!("{name} skips {}: it is sent none of its notices ({})", window.id, why.trim()),
    );
    Ok(exit::OK)
}
