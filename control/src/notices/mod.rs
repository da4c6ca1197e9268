//! Notices of the maintenance windows to the people who integrate with the service: by email
//! (SMTP, [`email`]) and webhooks (a JSON body, or a template for a chat or status-page API,
//! [`webhook`]), each recipient with the events it wants ([`settings`]). A recipient on a
//! window's skip list gets none of its notices.
//!
//! Every delivery is tried `attempts` times with a doubling pause, each attempt within
//! `timeout`, then journalled in Consul (`<prefix>/notices/<window id>`: who, which event,
//! when, delivered or failed and why). A failed notice never fails the command that sent it:
//! it is said, journalled, and `down` warns about it.

pub mod email;
pub mod settings;
pub mod webhook;

use crate::config::Environment;
use crate::lock::Holder;
use crate::output::Output;
use drawbridge_core::consul::{Client, PutMode, QueryOptions};
use drawbridge_core::timestamp;
use drawbridge_core::windows::{Window, WindowsDoc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use settings::{Channel, NoticeSettings, Recipient};
use std::time::Duration;
use time::OffsetDateTime;

/// What happened to a window, as recipients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Scheduled,
    Changed,
    Cancelled,
    Reminder,
    Started,
    Extended,
    Finished,
    Overdue,
    /// Overdue with `expire`: the proxies opened the gate by themselves.
    Expired,
    /// The window has started and nobody took the environment down (an alert for operators;
    /// sent only to recipients that list it).
    Missed,
}

impl Event {
    /// Every event, in the order of a window's life.
    pub const ALL: [Event; 10] = [
        Event::Scheduled,
        Event::Changed,
        Event::Cancelled,
        Event::Reminder,
        Event::Started,
        Event::Extended,
        Event::Finished,
        Event::Overdue,
        Event::Expired,
        Event::Missed,
    ];

    /// Whether a recipient that lists no events is told of it: every event but the operators'
    /// alert [`Event::Missed`].
    pub fn by_default(self) -> bool {
        self != Event::Missed
    }

    /// The event's name in the inventory, the journal and webhook bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Scheduled => "scheduled",
            Event::Changed => "changed",
            Event::Cancelled => "cancelled",
            Event::Reminder => "reminder",
            Event::Started => "started",
            Event::Extended => "extended",
            Event::Finished => "finished",
            Event::Overdue => "overdue",
            Event::Expired => "expired",
            Event::Missed => "missed",
        }
    }

    /// Whether a recipient is told of it once per window (a reminder: once per offset), not
    /// again when the command that sends it runs again.
    pub fn once(self) -> bool {
        !matches!(
            self,
            Event::Scheduled | Event::Changed | Event::Cancelled | Event::Extended
        )
    }

    /// The event named `name`.
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// The longest notice journal of one window; the oldest entries give way.
const MAX_RECORDS: usize = 500;

/// One notice: an event of a window of an environment.
pub struct Notice<'a> {
    pub env: &'a str,
    pub event: Event,
    pub window: &'a Window,
    /// Of a reminder: how long before the start it is sent.
    pub before: Option<Duration>,
}

impl Notice<'_> {
    /// What the event did, as a sentence's end: "Planned maintenance of prod …".
    fn sentence(&self) -> String {
        match self.event {
            Event::Scheduled => "is scheduled".to_string(),
            Event::Changed => "has moved: the new times are below".to_string(),
            Event::Cancelled => "is cancelled: nothing will be done in this window".to_string(),
            Event::Reminder => match self.before {
                Some(before) => format!("starts in {}", humantime::format_duration(before)),
                None => "starts soon".to_string(),
            },
            Event::Started => "has started".to_string(),
            Event::Extended => "will last longer: the new end is below".to_string(),
            Event::Finished => "is over: the service is back".to_string(),
            Event::Overdue => {
                "is taking longer than planned: its end has passed and the service is still down"
                    .to_string()
            }
            Event::Expired => {
                "ran past its end, and the gate opened by itself (the dead-man switch): the \
                 service is back without the checks of `maintctl up`"
                    .to_string()
            }
            Event::Missed => {
                "has started, and the environment was not taken down: nobody ran `maintctl down`"
                    .to_string()
            }
        }
    }

    /// The subject line: environment, event, times and reason.
    pub fn subject(&self) -> String {
        let w = self.window;
        format!(
            "[{}] Planned maintenance {}: {}: {}",
            self.env,
            self.event.as_str(),
            span_utc(w),
            w.reason
        )
    }

    /// The plain-text body.
    pub fn text(&self) -> String {
        let w = self.window;
        let mut text = format!(
            "Planned maintenance of {} {}.\n\nStart:  {} ({})\nEnd:    {} ({})\nReason: {}\n",
            self.env,
            self.sentence(),
            timestamp::minutes_utc(w.start),
            timestamp::seconds(w.start),
            timestamp::minutes_utc(w.end),
            timestamp::seconds(w.end),
            w.reason
        );
        if let Some(message) = &w.message {
            text.push('\n');
            text.push_str(message);
            text.push('\n');
        }
        text.push_str(&format!("\nWindow: {}\n", w.id));
        text
    }

    /// The fields a webhook template may name, as `{{name}}`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let w = self.window;
        vec![
            ("env", self.env.to_string()),
            ("event", self.event.as_str().to_string()),
            ("window_id", w.id.clone()),
            ("start", timestamp::seconds(w.start)),
            ("end", timestamp::seconds(w.end)),
            ("reason", w.reason.clone()),
            ("message", w.message.clone().unwrap_or_default()),
            ("subject", self.subject()),
            ("text", self.text()),
        ]
    }

    /// The default webhook body.
    pub fn json(&self) -> serde_json::Value {
        let w = self.window;
        json!({
            "env": self.env,
            "event": self.event.as_str(),
            "before": self.before.map(|b| humantime::format_duration(b).to_string()),
            "window": {
                "id": w.id,
                "start": timestamp::seconds(w.start),
                "end": timestamp::seconds(w.end),
                "reason": w.reason,
                "message": w.message,
                "status": w.status.as_str(),
            },
            "subject": self.subject(),
            "text": self.text(),
        })
    }
}

fn span_utc(w: &Window) -> String {
    format!(
        "{} to {}",
        timestamp::minutes_utc(w.start),
        timestamp::minutes_utc(w.end)
    )
}

/// Whether a notice reached its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Delivered,
    Failed,
}

/// One notice to one recipient, as journalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    pub event: Event,
    /// Of a reminder: how long before the start (e.g. `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub recipient: String,
    pub channel: String,
    pub delivery: Delivery,
    pub attempts: u32,
    /// When the last attempt ended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who sent it (`user@host`).
    pub by: String,
}

/// The notice journal of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeLog {
    pub records: Vec<NoticeRecord>,
}

impl NoticeLog {
    /// The notices whose last try failed: for each event, reminder and recipient, the newest
    /// record, when it is a failure.
    pub fn undelivered(&self) -> Vec<&NoticeRecord> {
        let mut undelivered: Vec<&NoticeRecord> = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            let later = self.records[i + 1..]
                .iter()
                .any(|l| l.event == r.event && l.before == r.before && l.recipient == r.recipient);
            if r.delivery == Delivery::Failed && !later {
                undelivered.push(r);
            }
        }
        undelivered
    }
}

/// The key of the notice journal of window `id`.
fn log_key(env: &Environment, id: &str) -> String {
    format!("{}/notices/{id}", env.prefix)
}

/// Reads the notice journal of window `id` (empty when there is none).
///
/// # Errors
/// Consul cannot be read, or the value is not a notice journal.
pub async fn read_log(env: &Environment, consul: &Client, id: &str) -> Result<NoticeLog, String> {
    let key = log_key(env, id);
    Ok(read_log_at(consul, &key).await?.0)
}

async fn read_log_at(consul: &Client, key: &str) -> Result<(NoticeLog, u64), String> {
    let entry = consul
        .kv_get(key, &QueryOptions::default())
        .await
        .map_err(|e| format!("reading the notice journal {key}: {e}"))?
        .entry;
    let Some(entry) = entry else {
        return Ok((NoticeLog::default(), 0));
    };
    let log = serde_json::from_slice(entry.value.as_deref().unwrap_or_default())
        .map_err(|e| format!("the notice journal {key} cannot be read ({e})"))?;
    Ok((log, entry.modify_index))
}

/// Appends `records` to the journal of window `id`, compare-and-set, trying again when
/// another writer came first.
async fn journal(
    env: &Environment,
    consul: &Client,
    id: &str,
    records: &[NoticeRecord],
) -> Result<(), String> {
    let key = log_key(env, id);
    for _ in 0..5 {
        let (mut log, index) = read_log_at(consul, &key).await?;
        log.records.extend_from_slice(records);
        let over = log.records.len().saturating_sub(MAX_RECORDS);
        log.records.drain(..over);
        let value = serde_json::to_vec(&log).expect("a notice journal always serialises");
        match consul.kv_put(&key, &value, PutMode::Cas(index)).await {
            Ok(true) => return Ok(()),
            Ok(false) => continue,
            Err(e) => return Err(format!("writing the notice journal {key}: {e}")),
        }
    }
    Err(format!(
        "the notice journal {key} kept changing under five writes"
    ))
}

/// Sends the notice of `event` of `window` (no reminder lead) to its recipients, as [`send`].
pub async fn tell(env: &Environment, consul: &Client, window: &Window, event: Event, out: Output) {
    let notice = Notice {
        env: &env.name,
        event,
        window,
        before: None,
    };
    send(env, consul, &notice, out).await;
}

/// Sends `notice` to every recipient of `settings` that wants its event and is not on the
/// window's skip list, journals each delivery, and says how each went. Returns the records.
pub async fn send(
    env: &Environment,
    consul: &Client,
    notice: &Notice<'_>,
    out: Output,
) -> Vec<NoticeRecord> {
    send_to(env, consul, notice, None, out).await
}

/// As [`send`], to recipient `only` alone when given (a notice tried again).
pub async fn send_to(
    env: &Environment,
    consul: &Client,
    notice: &Notice<'_>,
    only: Option<&str>,
    out: Output,
) -> Vec<NoticeRecord> {
    let settings = &env.notices;
    let mut recipients: Vec<&Recipient> = settings
        .recipients
        .iter()
        .filter(|r| r.events.contains(&notice.event) && !notice.window.skips(&r.name))
        .filter(|r| only.is_none_or(|name| r.name == name))
        .collect();
    if notice.event.once() && !recipients.is_empty() {
        // A re-run of `down` or `up`, or the daemon's next look, does not tell anyone twice;
        // a reminder is sent again for a window moved since.
        let before = notice
            .before
            .map(|b| humantime::format_duration(b).to_string());
        match read_log(env, consul, &notice.window.id).await {
            Ok(log) => recipients.retain(|r| {
                !log.records.iter().any(|l| {
                    l.event == notice.event
                        && l.before == before
                        && l.recipient == r.name
                        && l.delivery == Delivery::Delivered
                        && (l.event != Event::Reminder || l.at >= notice.window.changed_at)
                })
            }),
            Err(e) => {
                // Without the journal nobody can tell who was told: nothing is sent twice.
                out.note(&format!(
                    "warning: no {} notice was sent: {e}",
                    notice.event.as_str()
                ));
                return Vec::new();
            }
        }
    }
    if recipients.is_empty() {
        return Vec::new();
    }
    let mailer = email::Mailer::new(settings);
    let by = Holder::me("notice").by();
    let deliveries = recipients
        .iter()
        .map(|r| deliver(settings, mailer.as_ref(), r, notice, &by));
    let records = futures_util::future::join_all(deliveries).await;
    if let Err(e) = journal(env, consul, &notice.window.id, &records).await {
        out.note(&format!(
            "warning: the notices were sent but not journalled: {e}"
        ));
    }
    for r in &records {
        out.emit(
            json!({"event": "notice", "window": notice.window.id, "notice": r}),
            || match r.delivery {
                Delivery::Delivered => format!(
                    "notice {} of {} delivered to {} ({})",
                    r.event.as_str(),
                    notice.window.id,
                    r.recipient,
                    r.channel
                ),
                Delivery::Failed => format!(
                    "warning: notice {} of {} to {} ({}) failed after {} attempts: {}",
                    r.event.as_str(),
                    notice.window.id,
                    r.recipient,
                    r.channel,
                    r.attempts,
                    r.error.as_deref().unwrap_or("unknown")
                ),
            },
        );
    }
    records
}

/// One recipient: `attempts` tries with a doubling pause, each within `timeout`.
async fn deliver(
    settings: &NoticeSettings,
    mailer: Result<&email::Mailer, &String>,
    recipient: &Recipient,
    notice: &Notice<'_>,
    by: &str,
) -> NoticeRecord {
    let mut pause = settings.retry_backoff;
    let mut attempts = 0;
    let mut error = None;
    while attempts < settings.attempts {
        attempts += 1;
        let attempt = async {
            match &recipient.channel {
                Channel::Email(address) => match mailer {
                    Ok(mailer) => mailer.send(address, notice).await,
                    Err(e) => Err(e.clone()),
                },
                Channel::Webhook {
                    url,
                    template,
                    authorization,
                } => {
                    webhook::post(url, template.as_deref(), authorization.as_deref(), notice).await
                }
            }
        };
        match tokio::time::timeout(settings.timeout, attempt).await {
            Ok(Ok(())) => {
                error = None;
                break;
            }
            Ok(Err(e)) => error = Some(e),
            Err(_) => {
                error = Some(format!(
                    "no answer within {}",
                    humantime::format_duration(settings.timeout)
                ))
            }
        }
        if attempts < settings.attempts {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    NoticeRecord {
        event: notice.event,
        before: notice
            .before
            .map(|b| humantime::format_duration(b).to_string()),
        recipient: recipient.name.clone(),
        channel: recipient.channel.as_str().to_string(),
        delivery: if error.is_none() {
            Delivery::Delivered
        } else {
            Delivery::Failed
        },
        attempts,
        at: OffsetDateTime::now_utc(),
        error,
        by: by.to_string(),
    }
}

/// Sends `notice` once, by email, to `address` only (the operator's preview), marked as a
/// preview; nothing is journalled.
///
/// # Errors
/// No mail server in the inventory, or the delivery failed.
pub async fn preview(env: &Environment, address: &str, notice: &Notice<'_>) -> Result<(), String> {
    let mailer = email::Mailer::new(&env.notices)?;
    tokio::time::timeout(env.notices.timeout, mailer.send_preview(address, notice))
        .await
        .map_err(|_| {
            format!(
                "no answer from the mail server within {}",
                humantime::format_duration(env.notices.timeout)
            )
        })?
}

/// The scheduled window a maintenance run now belongs to: of those that start within a day
/// and ended at most a day ago, the one whose start is nearest to now.
///
/// # Errors
/// The windows document cannot be read.
pub async fn window_now(env: &Environment, consul: &Client) -> Result<Option<Window>, String> {
    let doc = crate::commands::windows::read_windows(env, consul).await?;
    Ok(window_at(&doc, OffsetDateTime::now_utc()).cloned())
}

/// The window of `doc` a maintenance run at `now` belongs to (see [`window_now`]).
pub fn window_at(doc: &WindowsDoc, now: OffsetDateTime) -> Option<&Window> {
    let day = time::Duration::days(1);
    doc.windows
        .iter()
        .filter(|w| w.status == drawbridge_core::windows::WindowStatus::Scheduled)
        .filter(|w| w.start <= now + day && now < w.end + day)
        .min_by_key(|w| (w.start - now).abs())
}

/// Tells the recipients of the window the environment is in now (if any) that its maintenance
/// `event` happened (`started` after `down`, `finished` after `up`); a recipient that was
/// already told of it is not told again.
pub async fn tell_window_now(env: &Environment, consul: &Client, event: Event, out: Output) {
    let window = match window_now(env, consul).await {
        Ok(Some(window)) => window,
        Ok(None) => return,
        Err(e) => {
            out.note(&format!(
                "warning: no {} notice was sent: {e}",
                event.as_str()
            ));
            return;
        }
    };
    tell(env, consul, &window, event, out).await;
}

/// What `down` warns about: the notices of the window it falls in whose last try failed, one
/// line each.
pub async fn undelivered_warnings(env: &Environment, consul: &Client) -> Vec<String> {
    let window = match window_now(env, consul).await {
        Ok(Some(window)) => window,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![format!("the notices could not be checked: {e}")],
    };
    let log = match read_log(env, consul, &window.id).await {
        Ok(log) => log,
        Err(e) => return vec![format!("the notices could not be checked: {e}")],
    };
    // Only what still matters: recipients of the inventory, not on the window's skip list.
    log.undelivered()
        .into_iter()
        .filter(|r| {
            env.notices
                .recipients
                .iter()
                .any(|known| known.name == r.recipient)
                && !window.skips(&r.recipient)
        })
        .map(|r| {
            format!(
                "notice {} of window {} to {} ({}) was not delivered: {}",
                r.event.as_str(),
                window.id,
                r.recipient,
                r.channel,
                r.error.as_deref().unwrap_or("unknown")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_core::windows::WindowStatus;

    fn at(rfc3339: &str) -> OffsetDateTime {
        OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn window() -> Window {
        Window {
            id: "w-1".into(),
            start: at("2026-12-02T19:00:00Z"),
            end: at("2026-12-02T20:00:00Z"),
            reason: "database upgrade".into(),
            message: Some("The API answers 503.".into()),
            status: WindowStatus::Scheduled,
            by: "ops@bastion".into(),
            changed_at: at("2026-11-30T16:00:00Z"),
            revision: 0,
            auto: false,
            skip: Vec::new(),
        }
    }

    #[test]
    fn a_notice_says_what_when_and_why() {
        let w = window();
        let notice = Notice {
            env: "prod",
            event: Event::Reminder,
            window: &w,
            before: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            notice.subject(),
            "[prod] Planned maintenance reminder: 2026-12-02 19:00 UTC to 2026-12-02 20:00 UTC: database upgrade"
        );
        let text = notice.text();
        assert!(
            text.starts_with("Planned maintenance of prod starts in 1h.\n"),
            "{text}"
        );
        assert!(text.contains("Start:  2026-12-02 19:00 UTC (2026-12-02T19:00:00Z)"));
        assert!(text.contains("The API answers 503.") && text.ends_with("Window: w-1\n"));
        assert_eq!(notice.json()["before"], "1h");
        assert_eq!(notice.json()["window"]["end"], "2026-12-02T20:00:00Z");
        for event in Event::ALL {
            assert_eq!(Event::parse(event.as_str()), Some(event));
        }
    }

    #[test]
    fn a_failure_is_undelivered_until_a_later_try_delivers_it() {
        let record = |recipient: &str, delivery| NoticeRecord {
            event: Event::Scheduled,
            before: None,
            recipient: recipient.into(),
            channel: "email".into(),
            delivery,
            attempts: 3,
            at: at("2026-11-30T16:00:00Z"),
            error: (delivery == Delivery::Failed).then(|| "refused".into()),
            by: "ops".into(),
        };
        let log = NoticeLog {
            records: vec![
                record("acme", Delivery::Failed),
                record("globex", Delivery::Failed),
                record("acme", Delivery::Delivered),
            ],
        };
        let undelivered: Vec<&str> = log
            .undelivered()
            .iter()
            .map(|r| r.recipient.as_str())
            .collect();
        assert_eq!(undelivered, ["globex"]);
    }
}
