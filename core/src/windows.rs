//! The maintenance windows: the JSON document at the windows key (by default
//! `<gate key>/windows`) that `maintctl schedule`, `reschedule` and `cancel` write, so that a
//! planned outage is known ahead by everyone who reads it.
//!
//! ```json
//! {"windows": [{"id": "w-20261202-1900-3fa2", "start": "2026-12-02T19:00:00Z",
//!   "end": "2026-12-02T20:00:00Z", "reason": "database upgrade", "status": "scheduled",
//!   "by": "ops@bastion", "changed_at": "2026-11-30T16:00:00Z"}], "by": "ops@bastion"}
//! ```
//!
//! A cancelled window stays in the document (with its status), so the history of what was
//! announced is kept; when the document is full, the oldest past windows give way first, then
//! the oldest cancelled ones. Reasons and messages are as long as the gate document allows.

use crate::gate::{MAX_MESSAGE_CHARS, MAX_REASON_CHARS};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The largest value accepted at the windows key.
pub const MAX_WINDOWS_DOC_BYTES: usize = 64 * 1024;

/// The most windows one document holds.
pub const MAX_WINDOWS: usize = 100;

/// The windows key of the environment whose gate key is `gate_key`, when the config names none.
pub fn default_windows_key(gate_key: &str) -> String {
    format!("{gate_key}/windows")
}

/// Why `windows_key` cannot be the windows key of an environment with these gate and split
/// keys, as the proxies and `maintctl` both check it.
pub fn windows_key_problem(gate_key: &str, split_key: &str, windows_key: &str) -> Option<String> {
    if windows_key == gate_key || windows_key == split_key {
        return Some(
            "is the gate key or the split key: the windows need a key of their own".to_string(),
        );
    }
    crate::split::key_path_problem(windows_key)
}

/// The windows document as stored at the windows key; the default has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsDoc {
    /// Every window, coming, past and cancelled, by start.
    pub windows: Vec<Window>,
    /// Who wrote it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// One maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Stable id, e.g. `w-20261202-1900-3fa2`.
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// Why (shown to partners and tenants).
    pub reason: String,
    /// A longer text for the people told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub status: WindowStatus,
    /// Who scheduled it or changed it last.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub changed_at: OffsetDateTime,
    /// How many times it was moved or cancelled since it was scheduled (the calendar's
    /// `SEQUENCE`).
    #[serde(default)]
    pub revision: u32,
    /// `maintctl daemon` runs `down` at its start and `up` at its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
    /// The notice recipients (tenants, partners) who asked to skip this window or to delay it:
    /// they are sent none of its notices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<Skip>,
}

/// A recipient who asked to skip a window, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skip {
    /// The recipient's name in the inventory.
    pub recipient: String,
    /// What they asked, e.g. "delay: quarter-end closing".
    pub reason: String,
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Whether a window still stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowStatus {
    Scheduled,
    Cancelled,
}

impl WindowStatus {
    /// As the document writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowStatus::Scheduled => "scheduled",
            WindowStatus::Cancelled => "cancelled",
        }
    }
}

/// Why a value at the windows key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowsDocError {
    #[error(
        "value is {size} bytes, more than the {MAX_WINDOWS_DOC_BYTES} a windows document may have"
    )]
    TooLarge { size: usize },
    #[error("value is not a windows document: {detail}")]
    Invalid { detail: String },
    #[error("{count} windows, more than the {MAX_WINDOWS} a document may hold")]
    TooMany { count: usize },
    #[error(
        "the document would be {size} bytes, more than the {MAX_WINDOWS_DOC_BYTES} it may have"
    )]
    WouldBeTooLarge { size: usize },
    #[error("window {id:?}: {problem}")]
    BadWindow { id: String, problem: String },
}

impl Window {
    /// What is wrong with this window on its own, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.id.trim().is_empty() {
            Some("its id is empty".to_string())
        } else if self.end <= self.start {
            Some("it ends before it starts".to_string())
        } else if self.reason.trim().is_empty() {
            Some("its reason is empty".to_string())
        } else if !one_line(&self.reason, MAX_REASON_CHARS) {
            Some(format!(
                "its reason must be one line of at most {MAX_REASON_CHARS} characters"
            ))
        } else if self
            .message
            .as_ref()
            .is_some_and(|m| m.chars().count() > MAX_MESSAGE_CHARS)
        {
            Some(format!(
                "its message is longer than {MAX_MESSAGE_CHARS} characters"
            ))
        } else {
            self.skip.iter().find_map(Skip::problem)
        }
    }

    /// Whether recipient `name` asked to skip it.
    pub fn skips(&self, name: &str) -> bool {
        self.skip.iter().any(|s| s.recipient == name)
    }

    /// Whether it overlaps `other` in time.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl Skip {
    /// What is wrong with this entry of a skip list, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.recipient.trim().is_empty() {
            Some("a skipped recipient has no name".to_string())
        } else if !one_line(&self.reason, MAX_REASON_CHARS) {
            Some(format!(
                "the reason {} skips it must be one line of 1 to {MAX_REASON_CHARS} characters",
                self.recipient
            ))
        } else {
            None
        }
    }
}

/// Whether `text` is one non-empty line of at most `max` characters.
fn one_line(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control)
}

impl WindowsDoc {
    /// Reads a value of the windows key, every window checked; a missing key has none.
    ///
    /// # Errors
    /// A value too large, not JSON of this shape, with too many windows, or with a window that
    /// ends before it starts, has no id or reason, or repeats an id.
    pub fn parse(raw: &[u8]) -> Result<WindowsDoc, WindowsDocError> {
        if raw.len() > MAX_WINDOWS_DOC_BYTES {
            return Err(WindowsDocError::TooLarge { size: raw.len() });
        }
        let doc: WindowsDoc =
            serde_json::from_slice(raw).map_err(|e| WindowsDocError::Invalid {
                detail: e.to_string(),
            })?;
        doc.check()?;
        Ok(doc)
    }

    /// Checks the whole document, as [`WindowsDoc::parse`] does.
    ///
    /// # Errors
    /// As [`WindowsDoc::parse`].
    pub fn check(&self) -> Result<(), WindowsDocError> {
        if self.windows.len() > MAX_WINDOWS {
            return Err(WindowsDocError::TooMany {
                count: self.windows.len(),
            });
        }
        let size = self.to_json().len();
        if size > MAX_WINDOWS_DOC_BYTES {
            return Err(WindowsDocError::WouldBeTooLarge { size });
        }
        for (i, w) in self.windows.iter().enumerate() {
            let bad = |problem: String| WindowsDocError::BadWindow {
                id: w.id.clone(),
                problem,
            };
            if let Some(problem) = w.problem() {
                return Err(bad(problem));
            }
            if self.windows[..i].iter().any(|earlier| earlier.id == w.id) {
                return Err(bad("its id is used twice".to_string()));
            }
        }
        Ok(())
    }

    /// The document as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a windows document always serialises")
    }

    /// The window with this id.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Window> {
        self.windows.iter_mut().find(|w| w.id == id)
    }

    /// Keeps the document within [`MAX_WINDOWS`] and [`MAX_WINDOWS_DOC_BYTES`] by dropping the
    /// oldest windows that ended before `now`, then the oldest cancelled ones; a scheduled window
    /// that is not over is never dropped. Returns the ids dropped.
    pub fn prune(&mut self, now: OffsetDateTime) -> Vec<String> {
        self.windows.sort_by_key(|w| w.start);
        let mut dropped = Vec::new();
        let over = |doc: &WindowsDoc| {
            doc.windows.len() > MAX_WINDOWS || doc.to_json().len() > MAX_WINDOWS_DOC_BYTES
        };
        while over(self) {
            let oldest = self.windows.iter().position(|w| w.end < now).or_else(|| {
                self.windows
                    .iter()
                    .position(|w| w.status == WindowStatus::Cancelled)
            });
            match oldest {
                Some(i) => dropped.push(self.windows.remove(i).id),
                None => break,
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn window(id: &str, start: OffsetDateTime, end: OffsetDateTime) -> Window {
        Window {
            id: id.to_string(),
            start,
            end,
            reason: "database upgrade".to_string(),
            message: None,
            status: WindowStatus::Scheduled,
            by: "ops@bastion".to_string(),
            changed_at: datetime!(2026-11-30 16:00 UTC),
            revision: 0,
            auto: false,
            skip: Vec::new(),
        }
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let doc = WindowsDoc {
            windows: vec![window(
                "w1",
                datetime!(2026-12-02 19:00 UTC),
                datetime!(2026-12-02 20:00 UTC),
            )],
            by: Some("ops@bastion".to_string()),
        };
        assert_eq!(WindowsDoc::parse(doc.to_json().as_bytes()).unwrap(), doc);
        assert_eq!(
            WindowsDoc::parse(br#"{"windows":[]}"#).unwrap(),
            WindowsDoc::default()
        );
    }

    #[test]
    fn bad_documents_are_refused_naming_the_window() {
        let early = datetime!(2026-12-02 19:00 UTC);
        let late = datetime!(2026-12-02 20:00 UTC);
        let doc = |windows: Vec<Window>| WindowsDoc { windows, by: None }.to_json().into_bytes();
        let err = WindowsDoc::parse(&doc(vec![window("w1", late, early)])).unwrap_err();
        assert_eq!(err.to_string(), "window \"w1\": it ends before it starts");
        let err = WindowsDoc::parse(&doc(vec![
            window("w1", early, late),
            window("w1", early, late),
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "window \"w1\": its id is used twice");
        let mut no_reason = window("w2", early, late);
        no_reason.reason = " ".to_string();
        assert!(WindowsDoc::parse(&doc(vec![no_reason])).is_err());
        let mut two_lines = window("w3", early, late);
        two_lines.reason = "a\nb".to_string();
        assert!(WindowsDoc::parse(&doc(vec![two_lines])).is_err());
        let mut long = window("w4", early, late);
        long.message = Some("x".repeat(MAX_MESSAGE_CHARS + 1));
        assert!(WindowsDoc::parse(&doc(vec![long])).is_err());
        let mut skipped = window("w5", early, late);
        skipped.skip.push(Skip {
            recipient: "acme".to_string(),
            reason: "two\nlines".to_string(),
            by: "ops".to_string(),
            at: early,
        });
        let err = WindowsDoc::parse(&doc(vec![skipped.clone()])).unwrap_err();
        assert!(
            err.to_string().contains("the reason acme skips it"),
            "{err}"
        );
        skipped.skip[0].reason = "quarter-end closing".to_string();
        let read = WindowsDoc::parse(&doc(vec![skipped])).unwrap();
        assert!(read.windows[0].skips("acme") && !read.windows[0].skips("globex"));
        assert!(matches!(
            WindowsDoc::parse(br#"{"windows":[],"extra":1}"#),
            Err(WindowsDocError::Invalid { .. })
        ));
        let huge = vec![b' '; MAX_WINDOWS_DOC_BYTES + 1];
        assert!(matches!(
            WindowsDoc::parse(&huge),
            Err(WindowsDocError::TooLarge { .. })
        ));
    }

    #[test]
    fn overlaps_and_pruning_keep_coming_windows() {
        let at = |h: u8| datetime!(2026-12-02 00:00 UTC) + time::Duration::hours(h.into());
        assert!(window("a", at(1), at(3)).overlaps(&window("b", at(2), at(4))));
        assert!(!window("a", at(1), at(2)).overlaps(&window("b", at(2), at(3))));
        let mut doc = WindowsDoc::default();
        for i in 0..MAX_WINDOWS + 5 {
            let start = at(0) + time::Duration::days(i as i64 - 10);
            doc.windows.push(window(
                &format!("w{i}"),
                start,
                start + time::Duration::hours(1),
            ));
        }
        assert_eq!(doc.prune(at(0)), ["w0", "w1", "w2", "w3", "w4"]);
        assert_eq!(doc.windows.len(), MAX_WINDOWS);
        assert_eq!(doc.windows[0].id, "w5");
        // Full of coming windows: cancelled ones give way, scheduled ones never.
        let mut doc = WindowsDoc::default();
        for i in 0..MAX_WINDOWS + 2 {
            let start = at(0) + time::Duration::days(i as i64 + 1);
            let mut w = window(&format!("c{i}"), start, start + time::Duration::hours(1));
            if i == 7 {
                w.status = WindowStatus::Cancelled;
            }
            doc.windows.push(w);
        }
        assert_eq!(doc.prune(at(0)), ["c7"]);
        assert_eq!(doc.windows.len(), MAX_WINDOWS + 1);
        assert!(matches!(doc.check(), Err(WindowsDocError::TooMany { .. })));
    }
}
