//! `[environments.NAME.notices]`: who is told of the environment's maintenance windows, over
//! which channel, of which events, and how hard maintctl tries.
//!
//! ```toml
//! [environments.prod.notices]
//! reminders = ["24h", "1h"]
//! [environments.prod.notices.smtp]
//! server = "smtp.example.com"
//! from = "Maintenance <maintenance@example.com>"
//! username = "maintctl"
//! password_file = "/etc/maintctl/smtp.password"
//! [[environments.prod.notices.recipients]]
//! name = "acme"
//! email = "integration@acme.example"
//! events = ["scheduled", "changed", "cancelled", "reminder"]
//! ```

use super::{webhook, Event};
use drawbridge_core::settings::Problems;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileNotices {
    #[serde(default)]
    reminders: Option<Vec<String>>,
    attempts: Option<u32>,
    retry_backoff: Option<String>,
    timeout: Option<String>,
    overdue_grace: Option<String>,
    missed_after: Option<String>,
    smtp: Option<FileSmtp>,
    #[serde(default)]
    recipients: Vec<FileRecipient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSmtp {
    server: String,
    port: Option<u16>,
    security: Option<String>,
    from: String,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecipient {
    name: String,
    email: Option<String>,
    webhook: Option<String>,
    template: Option<PathBuf>,
    authorization: Option<String>,
    authorization_file: Option<PathBuf>,
    events: Option<Vec<String>>,
}

/// The notices of one environment.
#[derive(Debug, Clone)]
pub struct NoticeSettings {
    /// How long before a window's start each reminder is sent.
    pub reminders: Vec<Duration>,
    /// Deliveries tried per notice and recipient before it is journalled failed.
    pub attempts: u32,
    /// The pause after the first failed attempt, doubled after each next one.
    pub retry_backoff: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// How long after the gate's `until` `maintctl daemon` sends "overdue" (as the proxies'
    /// `maintenance.overdue_grace`).
    pub overdue_grace: Duration,
    /// How long after a window's start, with the environment not taken down, `maintctl
    /// daemon` sends "missed" (and no longer takes an `auto` window down).
    pub missed_after: Duration,
    pub smtp: Option<SmtpSettings>,
    pub recipients: Vec<Recipient>,
}

impl Default for NoticeSettings {
    fn default() -> NoticeSettings {
        NoticeSettings {
            reminders: vec![Duration::from_secs(24 * 3600), Duration::from_secs(3600)],
            attempts: 3,
            retry_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(20),
            overdue_grace: Duration::from_secs(15 * 60),
            missed_after: Duration::from_secs(5 * 60),
            smtp: None,
            recipients: Vec::new(),
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on this host.
    None,
}

/// The mail server notices are sent through (its `Debug` shows no password).
#[derive(Clone)]
pub struct SmtpSettings {
    pub server: String,
    pub port: u16,
    pub security: Security,
    /// The sender, e.g. `Maintenance <maintenance@example.com>`.
    pub from: String,
    /// User name and password, when the server wants them.
    pub credentials: Option<(String, String)>,
    /// A CA (PEM) the server's certificate may chain to, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Where one recipient is told (its `Debug` shows no webhook URL or authorization: either may
/// be the secret).
#[derive(Clone)]
pub enum Channel {
    Email(String),
    Webhook {
        url: String,
        /// The body template (JSON with `{{field}}` placeholders); `None` for the default
        /// JSON body.
        template: Option<String>,
        authorization: Option<String>,
    },
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("from", &self.from)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Email(address) => f.debug_tuple("Email").field(address).finish(),
            Channel::Webhook { template, .. } => f
                .debug_struct("Webhook")
                .field("template", &template.is_some())
                .finish_non_exhaustive(),
        }
    }
}

impl Channel {
    /// The channel's name in the journal.
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Email(_) => "email",
            Channel::Webhook { .. } => "webhook",
        }
    }
}

/// One recipient of notices.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Its name: the skip list and the journal name it.
    pub name: String,
    pub channel: Channel,
    /// The events it is told of.
    pub events: BTreeSet<Event>,
}

/// Checks `[environments.NAME.notices]` (`key` names it in problems).
pub(crate) fn check(key: &str, n: FileNotices, p: &mut Problems) -> NoticeSettings {
    let defaults = NoticeSettings::default();
    let reminders = match n.reminders {
        None => defaults.reminders,
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, text)| match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    p.add(
                        format!("{key}.reminders[{i}]"),
                        format!("{text:?} is not a duration before the start like \"24h\""),
                    );
                    None
                }
            })
            .collect(),
    };
    let attempts = n.attempts.unwrap_or(defaults.attempts);
    if !(1..=10).contains(&attempts) {
        p.add(format!("{key}.attempts"), "must be from 1 to 10");
    }
    let smtp = n.smtp.map(|s| check_smtp(&format!("{key}.smtp"), s, p));
    let mut recipients: Vec<Recipient> = Vec::new();
    for (i, r) in n.recipients.into_iter().enumerate() {
        let field = format!("{key}.recipients[{i}]");
        if let Some(recipient) = check_recipient(&field, r, smtp.is_some(), p) {
            if recipients.iter().any(|other| other.name == recipient.name) {
                p.add(
                    format!("{field}.name"),
                    format!("{:?} names two recipients", recipient.name),
                );
            }
            recipients.push(recipient);
        }
    }
    let mut duration = |field: &str, raw: Option<String>, default| {
        p.duration(&format!("{key}.{field}"), raw.as_deref(), default)
    };
    NoticeSettings {
        reminders,
        attempts,
        retry_backoff: duration("retry_backoff", n.retry_backoff, defaults.retry_backoff),
        timeout: duration("timeout", n.timeout, defaults.timeout),
        overdue_grace: duration("overdue_grace", n.overdue_grace, defaults.overdue_grace),
        missed_after: duration("missed_after", n.missed_after, defaults.missed_after),
        smtp,
        recipients,
    }
}

fn check_smtp(key: &str, s: FileSmtp, p: &mut Problems) -> SmtpSettings {
    let security = match s.security.as_deref() {
        None | Some("starttls") => Security::StartTls,
        Some("tls") => Security::Tls,
        Some("none") => Security::None,
        Some(other) => {
            p.add(
                format!("{key}.security"),
                format!("{other:?} is not one of \"starttls\", \"tls\", \"none\""),
            );
            Security::StartTls
        }
    };
    if s.server.trim().is_empty() {
        p.add(format!("{key}.server"), "is empty: name the mail server");
    }
    if let Err(e) = s.from.parse::<lettre::message::Mailbox>() {
        p.add(
            format!("{key}.from"),
            format!(
                "{:?} is not a sender like \"Maintenance <maintenance@example.com>\" ({e})",
                s.from
            ),
        );
    }
    let password = p.secret(
        &format!("{key}.password"),
        s.password,
        s.password_file.as_deref(),
    );
    let credentials = match (s.username, password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => {
            p.add(
                key,
                "set both `username` and `password` (or `password_file`), or neither",
            );
            None
        }
    };
    if security == Security::None && credentials.is_some() {
        p.add(
            format!("{key}.security"),
            "\"none\" would send the password in the clear: use \"starttls\" or \"tls\"",
        );
    }
    let loopback = s.server == "localhost"
        || s.server
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if security == Security::None && !loopback {
        p.add(
            format!("{key}.security"),
            format!(
                "\"none\" is for a relay on this host (localhost), not {:?}: use \"starttls\" or \"tls\"",
                s.server
            ),
        );
    }
    SmtpSettings {
        server: s.server,
        port: s.port.unwrap_or(match security {
            Security::StartTls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }),
        security,
        from: s.from,
        credentials,
        ca_file: s.ca_file,
    }
}

fn check_recipient(
    key: &str,
    r: FileRecipient,
    has_smtp: bool,
    p: &mut Problems,
) -> Option<Recipient> {
    if r.name.trim().is_empty() || r.name.chars().any(char::is_whitespace) {
        p.add(
            format!("{key}.name"),
            "must be a name without spaces, e.g. \"acme\"",
        );
    }
    let events = match r.events {
        None => Event::ALL.into_iter().filter(|e| e.by_default()).collect(),
        Some(names) => names
            .iter()
            .filter_map(|name| {
                let event = Event::parse(name);
                if event.is_none() {
                    p.add(
                        format!("{key}.events"),
                        format!(
                            "{name:?} is not one of {}",
                            Event::ALL.map(Event::as_str).join(", ")
                        ),
                    );
                }
                event
            })
            .collect(),
    };
    let authorization = p.secret(
        &format!("{key}.authorization"),
        r.authorization,
        r.authorization_file.as_deref(),
    );
    let channel = match (r.email, r.webhook) {
        (Some(address), None) => {
            if let Err(e) = address.parse::<lettre::Address>() {
                p.add(
                    format!("{key}.email"),
                    format!("{address:?} is not an email address ({e})"),
                );
            }
            if !has_smtp {
                p.add(
                    format!("{key}.email"),
                    "needs a mail server: add [...notices.smtp]",
                );
            }
            if r.template.is_some() || authorization.is_some() {
                p.add(key, "`template` and `authorization` are for webhooks");
            }
            Channel::Email(address)
        }
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.add(
                    format!("{key}.webhook"),
                    format!("{url:?} is not an http:// or https:// URL"),
                );
            }
            let template = match &r.template {
                None => None,
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => {
                        if let Err(e) = webhook::check_template(&text) {
                            p.add(
                                format!("{key}.template"),
                                format!("{}: {e}", path.display()),
                            );
                        }
                        Some(text)
                    }
                    Err(e) => {
                        p.add(
                            format!("{key}.template"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                },
            };
            Channel::Webhook {
                url,
                template,
                authorization,
            }
        }
        _ => {
            p.add(key, "set exactly one of `email` or `webhook`");
            return None;
        }
    };
    Some(Recipient {
        name: r.name,
        channel,
        events,
    })
}
