//! The maintenance windows ([`drawbridge_core::windows`]) as the edge announces them, followed
//! in Consul as the gate key is ([`crate::doc_watch`]): `/.well-known/maintenance` lists the
//! scheduled windows that are not over, `/.well-known/maintenance.ics` serves every window as an
//! iCalendar feed (cancelled ones as `STATUS:CANCELLED`, so subscribed calendars drop them), and
//! from `maintenance.announce_before` ahead of a window's start to its end, API answers carry
//! [`ANNOUNCEMENT_HEADER`] and `/.well-known/maintenance/banner` serves an HTML fragment for the
//! UI to show (204 otherwise). Everything a request reads is made when a document is applied.

use crate::doc_watch::{Applied, DocKind, DocWatch, DocWatcher};
use crate::metrics::Metrics;
use crate::page::escape_html_into;
use bytes::Bytes;
use drawbridge_core::status::WindowsStatus;
use drawbridge_core::timestamp;
use drawbridge_core::windows::{Window, WindowStatus, WindowsDoc};
use http::header::{HeaderName, HeaderValue};
use prometheus::{IntCounter, IntGauge};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The header of API answers while a window is announced: its start and end, RFC 3339.
pub const ANNOUNCEMENT_HEADER: HeaderName = HeaderName::from_static("x-drawbridge-announcement");

/// The calendar's `PRODID`.
const PRODID: &str = "-//Drawbridge//Maintenance windows//EN";

/// The longest iCalendar content line, in octets, before it is folded (RFC 5545, 3.1).
const ICS_LINE_OCTETS: usize = 75;

/// What the windows document is made into: how long ahead a window is announced.
pub struct Announcer {
    pub announce_before: Duration,
    /// The windows key, which makes each event's `UID` unique across environments.
    pub key: String,
    pub metrics: Arc<Metrics>,
}

/// One scheduled window, ready to announce.
pub struct Announced {
    pub id: String,
    start: i64,
    end: i64,
    /// From when it is announced (`announce_before` ahead of its start).
    announced_from: i64,
    /// The value of [`ANNOUNCEMENT_HEADER`].
    pub header: HeaderValue,
    /// Its entry in `/.well-known/maintenance`.
    listed: Bytes,
    /// The banner fragment.
    pub banner: Bytes,
}

/// The windows document made ready to serve.
pub struct Announcements {
    /// The scheduled windows, by start.
    scheduled: Vec<Announced>,
    /// The index in `scheduled` of the window announced now ([`NONE`] when none is), set when
    /// the document is applied and each second after ([`Announcements::refresh`]), so that an
    /// answer reads no clock.
    announced_now: AtomicUsize,
    /// The iCalendar feed of every window in the document.
    pub ics: Bytes,
}

/// No window is announced.
const NONE: usize = usize::MAX;

/// The windows document applied.
pub type WindowsState = Applied<Announcer>;

/// Follows the windows key.
pub type WindowsWatcher = DocWatcher<Announcer>;

impl Announcements {
    /// The window announced at `now_unix`: the first whose announcement has begun and which
    /// is not over.
    pub fn announced(&self, now_unix: i64) -> Option<&Announced> {
        self.scheduled.get(self.announced_index(now_unix)?)
    }

    fn announced_index(&self, now_unix: i64) -> Option<usize> {
        self.scheduled
            .iter()
            .position(|w| w.announced_from <= now_unix && now_unix < w.end)
    }

    /// The window announced as of the last [`Announcements::refresh`] (at most a second ago).
    pub fn announced_now(&self) -> Option<&Announced> {
        self.scheduled
            .get(self.announced_now.load(Ordering::Relaxed))
    }

    /// Notes which window is announced at `now_unix`.
    pub fn refresh(&self, now_unix: i64) {
        let index = self.announced_index(now_unix).unwrap_or(NONE);
        self.announced_now.store(index, Ordering::Relaxed);
    }

    /// `/.well-known/maintenance`: the gate's document `gate_json` (a JSON object) with
    /// `windows`, the scheduled windows not over at `now_unix`, added.
    pub fn well_known(&self, gate_json: &[u8], now_unix: i64) -> Bytes {
        let listed: Vec<&Bytes> = self
            .scheduled
            .iter()
            .filter(|w| now_unix < w.end)
            .map(|w| &w.listed)
            .collect();
        let open = gate_json
            .strip_suffix(b"}")
            .expect("the gate's well-known document is a JSON object");
        let size = open.len() + listed.iter().map(|l| l.len() + 1).sum::<usize>() + 16;
        let mut body = Vec::with_capacity(size);
        body.extend_from_slice(open);
        if open.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(br#""windows":["#);
        for (i, entry) in listed.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(entry);
        }
        body.extend_from_slice(b"]}");
        Bytes::from(body)
    }
}

/// What `/status` shows of the windows at `now_unix`.
pub fn status(key: &str, state: &WindowsState, watch: &DocWatch, now_unix: i64) -> WindowsStatus {
    WindowsStatus {
        key: key.to_owned(),
        applied_index: state.applied_index,
        coming: state
            .scheduled
            .iter()
            .filter(|w| now_unix < w.end)
            .map(|w| w.id.clone())
            .collect(),
        announced: state.announced(now_unix).map(|w| w.id.clone()),
        last_error: watch.last_error.clone(),
        last_rejected: watch.last_rejected.clone(),
    }
}

impl Announcer {
    fn announce(&self, w: &Window) -> Announced {
        let start = timestamp::full(w.start);
        let end = timestamp::full(w.end);
        let header = HeaderValue::try_from(format!("start={start}; end={end}"))
            .expect("RFC 3339 timestamps are header text");
        let listed = json!({
            "id": w.id,
            "start": start,
            "end": end,
            "reason": w.reason,
            "message": w.message,
        });
        let announced_from = w
            .start
            .unix_timestamp()
            .saturating_sub(i64::try_from(self.announce_before.as_secs()).unwrap_or(i64::MAX));
        Announced {
            id: w.id.clone(),
            start: w.start.unix_timestamp(),
            end: w.end.unix_timestamp(),
            announced_from,
            header,
            listed: Bytes::from(listed.to_string()),
            banner: Bytes::from(banner(w)),
        }
    }
}

/// The banner fragment of window `w`: its times in UTC (each a `<time>` a page can show in
/// the reader's zone) and its reason.
fn banner(w: &Window) -> String {
    let mut out = String::from(r#"<div class="drawbridge-banner" role="status">"#);
    out.push_str("<strong>Planned maintenance</strong> from ");
    push_time(&mut out, w.start);
    out.push_str(" to ");
    push_time(&mut out, w.end);
    out.push_str(": ");
    escape_html_into(&mut out, &w.reason);
    out.push_str("</div>");
    out
}

fn push_time(out: &mut String, t: OffsetDateTime) {
    let _ = write!(
        out,
        r#"<time datetime="{}">{}</time>"#,
        timestamp::full(t),
        timestamp::minutes_utc(t)
    );
}

/// The iCalendar feed of `doc` (RFC 5545) as of `made`: one `VEVENT` per window, its `UID` the
/// window's id at the windows `key`, its `SEQUENCE` the window's revision (so that calendars
/// take a move or a cancellation).
fn calendar(doc: &WindowsDoc, key: &str, made: OffsetDateTime) -> String {
    let mut out = String::new();
    let mut line = |text: &str| push_folded(&mut out, text);
    line("BEGIN:VCALENDAR");
    line("VERSION:2.0");
    line(&format!("PRODID:{PRODID}"));
    line("CALSCALE:GREGORIAN");
    line("METHOD:PUBLISH");
    line("X-WR-CALNAME:Planned maintenance");
    for w in &doc.windows {
        line("BEGIN:VEVENT");
        line(&format!("UID:{}", ics_text(&format!("{}@{key}", w.id))));
        line(&format!("DTSTAMP:{}", timestamp::basic(made)));
        line(&format!("LAST-MODIFIED:{}", timestamp::basic(w.changed_at)));
        line(&format!("DTSTART:{}", timestamp::basic(w.start)));
        line(&format!("DTEND:{}", timestamp::basic(w.end)));
        line(&format!("SEQUENCE:{}", w.revision));
        line(&format!(
            "SUMMARY:{}",
            ics_text(&format!("Planned maintenance: {}", w.reason))
        ));
        if let Some(message) = &w.message {
            line(&format!("DESCRIPTION:{}", ics_text(message)));
        }
        line(match w.status {
            WindowStatus::Scheduled => "STATUS:CONFIRMED",
            WindowStatus::Cancelled => "STATUS:CANCELLED",
        });
        line("TRANSP:OPAQUE");
        line("END:VEVENT");
    }
    line("END:VCALENDAR");
    out
}

/// A TEXT value escaped (RFC 5545, 3.3.11): backslash, `;`, `,` and line breaks; other
/// control characters are left out.
fn ics_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Appends content line `text` with CRLF, folded so that no line is longer than
/// [`ICS_LINE_OCTETS`] octets, never inside a character.
fn push_folded(out: &mut String, text: &str) {
    let mut octets = 0;
    for c in text.chars() {
        if octets + c.len_utf8() > ICS_LINE_OCTETS {
            out.push_str("\r\n ");
            // The folding space counts towards the next line.
            octets = 1;
        }
        out.push(c);
        octets += c.len_utf8();
    }
    out.push_str("\r\n");
}

impl DocKind for Announcer {
    type Doc = WindowsDoc;
    type Built = Announcements;
    const NAME: &'static str = "windows";
    const WITHOUT: &'static str = "no window is announced";

    fn parse(raw: &[u8]) -> Result<WindowsDoc, String> {
        WindowsDoc::parse(raw).map_err(|e| e.to_string())
    }

    fn summary(doc: &WindowsDoc) -> String {
        let scheduled = doc
            .windows
            .iter()
            .filter(|w| w.status == WindowStatus::Scheduled)
            .count();
        format!("{} windows, {scheduled} scheduled", doc.windows.len())
    }

    fn build(&self, doc: &WindowsDoc) -> Result<Announcements, String> {
        let mut scheduled: Vec<Announced> = doc
            .windows
            .iter()
            .filter(|w| w.status == WindowStatus::Scheduled)
            .map(|w| self.announce(w))
            .collect();
        scheduled.sort_by_key(|w| w.start);
        let now = OffsetDateTime::now_utc();
        let built = Announcements {
            scheduled,
            announced_now: AtomicUsize::new(NONE),
            ics: Bytes::from(calendar(doc, &self.key, now)),
        };
        built.refresh(now.unix_timestamp());
        Ok(built)
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn applied_index_gauge(&self) -> &IntGauge {
        &self.metrics.windows_applied_index
    }

    fn rejected_counter(&self) -> &IntCounter {
        &self.metrics.windows_rejected_values
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn announcer() -> Announcer {
        Announcer {
            announce_before: Duration::from_secs(3600),
            key: "drawbridge/prod/gate/windows".into(),
            metrics: Arc::new(Metrics::new().unwrap()),
        }
    }

    fn window(id: &str, start: OffsetDateTime, hours: i64) -> Window {
        Window {
            id: id.into(),
            start,
            end: start + time::Duration::hours(hours),
            reason: "database <upgrade>, part 1; then \\ checks".into(),
            message: Some("Line one\nline two, with a comma".into()),
            status: WindowStatus::Scheduled,
            by: "ops@bastion".into(),
            changed_at: datetime!(2026-11-30 16:00 UTC),
            revision: 0,
            auto: false,
            skip: Vec::new(),
        }
    }

    fn doc() -> WindowsDoc {
        let mut cancelled = window("w-cancelled", datetime!(2026-12-01 19:00 UTC), 1);
        cancelled.status = WindowStatus::Cancelled;
        WindowsDoc {
            windows: vec![
                window("w-late", datetime!(2026-12-09 19:00 UTC), 1),
                cancelled,
                window("w-early", datetime!(2026-12-02 19:00 UTC), 2),
            ],
            by: None,
        }
    }

    const EARLY_START: i64 = 1_796_238_000; // 2026-12-02T19:00:00Z

    #[test]
    fn a_window_is_announced_from_announce_before_its_start_to_its_end() {
        let built = announcer().build(&doc()).unwrap();
        assert_eq!(
            datetime!(2026-12-02 19:00 UTC).unix_timestamp(),
            EARLY_START
        );
        let before = EARLY_START - 3601;
        assert!(built.announced(before).is_none());
        let announced = built.announced(EARLY_START - 3600).unwrap();
        assert_eq!(
            announced.header,
            "start=2026-12-02T19:00:00Z; end=2026-12-02T21:00:00Z"
        );
        built.refresh(before);
        assert!(built.announced_now().is_none());
        built.refresh(EARLY_START - 3600);
        assert_eq!(built.announced_now().unwrap().id, "w-early");
        assert!(built.announced(EARLY_START + 7199).is_some());
        assert!(built.announced(EARLY_START + 7200).is_none());
        // The cancelled window of 2026-12-01 is never announced.
        let cancelled_start = datetime!(2026-12-01 19:00 UTC).unix_timestamp();
        assert!(built.announced(cancelled_start).is_none());
        let banner = std::str::from_utf8(&announced.banner).unwrap();
        assert!(
            banner.contains(r#"<time datetime="2026-12-02T19:00:00Z">2026-12-02 19:00 UTC</time>"#),
            "{banner}"
        );
        assert!(banner.contains("database &lt;upgrade&gt;"), "{banner}");
        built.refresh(EARLY_START + 7200);
        assert!(built.announced_now().is_none());
        let empty = announcer().build(&WindowsDoc::default()).unwrap();
        assert!(empty.announced_now().is_none());
    }

    #[test]
    fn the_well_known_document_lists_scheduled_windows_not_over() {
        let built = announcer().build(&doc()).unwrap();
        let listed = |gate: &[u8], now: i64| -> serde_json::Value {
            serde_json::from_slice(&built.well_known(gate, now)).unwrap()
        };
        let body = listed(br#"{"mode":"normal","planned":false}"#, EARLY_START);
        assert_eq!(body["mode"], "normal");
        let ids: Vec<&str> = body["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["w-early", "w-late"]);
        assert_eq!(body["windows"][0]["end"], "2026-12-02T21:00:00Z");
        assert_eq!(
            body["windows"][0]["message"],
            "Line one\nline two, with a comma"
        );
        let later = listed(b"{}", EARLY_START + 7200);
        assert_eq!(later["windows"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_calendar_escapes_folds_and_keeps_cancelled_windows() {
        let mut long = window("w-long", datetime!(2026-12-03 19:00 UTC), 1);
        long.reason = "é".repeat(150);
        let mut d = doc();
        d.windows.push(long);
        let built = announcer().build(&d).unwrap();
        let ics = std::str::from_utf8(&built.ics).unwrap();
        assert!(
            ics.starts_with("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"),
            "{ics}"
        );
        assert!(ics.ends_with("END:VCALENDAR\r\n"));
        assert_eq!(ics.matches("BEGIN:VEVENT").count(), 4);
        assert!(ics.contains("UID:w-early@drawbridge/prod/gate/windows\r\n"));
        assert!(
            ics.contains("DTSTART:20261202T190000Z\r\nDTEND:20261202T210000Z\r\nSEQUENCE:0\r\n")
        );
        assert!(ics.contains(
            "SUMMARY:Planned maintenance: database <upgrade>\\, part 1\\; then \\\\ checks\r\n"
        ));
        assert!(ics.contains("DESCRIPTION:Line one\\nline two\\, with a comma\r\n"));
        assert_eq!(ics.matches("STATUS:CANCELLED").count(), 1);
        for line in ics.split("\r\n") {
            assert!(
                line.len() <= ICS_LINE_OCTETS,
                "{} octets: {line}",
                line.len()
            );
        }
        // Unfolded, the long summary is whole again.
        let unfolded = ics.replace("\r\n ", "");
        assert!(unfolded.contains(&format!(
            "SUMMARY:Planned maintenance: {}\r\n",
            "é".repeat(150)
        )));
    }
}
