//! The gate document: the value of the Consul key that switches every proxy of a fleet.
//!
//! A JSON object (`{"mode": "maintenance", "reason": "...", "until": "2026-11-25T21:00:00Z"}`) or, for
//! hand-typed use, a bare `true`/`false`/`on`/`off`/`1`/`0`. A missing key means normal. Anything else is
//! refused with an error that says what is wrong, so a malformed write never flips the gate.

use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// Largest value accepted at the key; Consul allows 512 KiB, a gate document needs far less.
pub const MAX_DOC_BYTES: usize = 16 * 1024;
/// Longest `reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Longest `message` accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// What the gate lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Everything passes to the upstreams.
    Normal,
    /// Nothing passes (except bypasses and exempt paths); clients get the maintenance response.
    Maintenance,
    /// Safe methods (GET, HEAD, OPTIONS) pass; anything else gets the maintenance response.
    ReadOnly,
}

impl Mode {
    /// The mode's name as written in the document, `/status` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Maintenance => "maintenance",
            Mode::ReadOnly => "read_only",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gate document as stored at the Consul key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateDoc {
    /// What the gate lets through.
    pub mode: Mode,
    /// Short reason shown to clients, e.g. "database upgrade".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Longer text for the page and the API body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Expected end of the maintenance (RFC 3339); drives `Retry-After`.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<OffsetDateTime>,
    /// When the maintenance started (RFC 3339).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// Who started it (an operator name or a tool run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Route names the mode applies to; absent means every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
    /// The dead-man switch: the proxies open the gate by themselves once `until` plus their
    /// `maintenance.overdue_grace` has passed (the key itself is left as it is). Needs `until`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expire: bool,
}

/// Why a value at the key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateDocError {
    #[error(
        "value is empty: write a JSON gate document or true/false, or delete the key for normal"
    )]
    Empty,
    #[error("value is {size} bytes, more than the {MAX_DOC_BYTES} a gate document may have")]
    TooLarge { size: usize },
    #[error("value is not UTF-8 text")]
    NotUtf8,
    #[error("value is not a gate document: {detail}")]
    Invalid { detail: String },
    #[error("field `{field}` has {chars} characters, more than the {max} allowed")]
    FieldTooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
    #[error("field `scope` is an empty list: omit it to apply to every route")]
    EmptyScope,
    #[error("field `expire` needs `until`: the gate opens by itself only after an expected end")]
    ExpireWithoutUntil,
}

impl GateDoc {
    /// A document with only a mode.
    pub fn with_mode(mode: Mode) -> GateDoc {
        GateDoc {
            mode,
            reason: None,
            message: None,
            until: None,
            started_at: None,
            by: None,
            scope: None,
            expire: false,
        }
    }

    /// The state a missing key stands for.
    pub fn normal() -> GateDoc {
        GateDoc::with_mode(Mode::Normal)
    }

    /// Parses a value read from the key.
    ///
    /// # Errors
    /// Every value that is not a valid document or one of the bare words; the error says why.
    pub fn parse(raw: &[u8]) -> Result<GateDoc, GateDocError> {
        if raw.len() > MAX_DOC_BYTES {
            return Err(GateDocError::TooLarge { size: raw.len() });
        }
        let text = std::str::from_utf8(raw).map_err(|_| GateDocError::NotUtf8)?;
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.is_empty() {
            return Err(GateDocError::Empty);
        }
        let bare = match text {
            "true" | "on" | "1" => Some(Mode::Maintenance),
            "false" | "off" | "0" => Some(Mode::Normal),
            _ => None,
        };
        if let Some(mode) = bare {
            return Ok(GateDoc::with_mode(mode));
        }
        if !text.starts_with('{') {
            return Err(GateDocError::Invalid {
                detail: "expected a JSON object or one of true, false, on, off, 1, 0 (lower case)"
                    .to_string(),
            });
        }
        let doc: GateDoc = serde_json::from_str(text).map_err(|e| GateDocError::Invalid {
            detail: e.to_string(),
        })?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks the limits a parsed document must keep.
    ///
    /// # Errors
    /// A field over its length limit, or an empty scope list.
    pub fn validate(&self) -> Result<(), GateDocError> {
        check_len("reason", self.reason.as_deref(), MAX_REASON_CHARS)?;
        check_len("message", self.message.as_deref(), MAX_MESSAGE_CHARS)?;
        check_len("by", self.by.as_deref(), MAX_REASON_CHARS)?;
        if matches!(&self.scope, Some(routes) if routes.is_empty()) {
            return Err(GateDocError::EmptyScope);
        }
        if self.expire && self.until.is_none() {
            return Err(GateDocError::ExpireWithoutUntil);
        }
        Ok(())
    }

    /// The document as the JSON written to the key.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a gate document always serialises: plain fields only")
    }
}

fn check_len(field: &'static str, value: Option<&str>, max: usize) -> Result<(), GateDocError> {
    let chars = value.map_or(0, |v| v.chars().count());
    if chars > max {
        return Err(GateDocError::FieldTooLong { field, chars, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_words_map_to_modes() {
        for (raw, mode) in [
            ("true", Mode::Maintenance),
            ("on", Mode::Maintenance),
            ("1", Mode::Maintenance),
            (" false\n", Mode::Normal),
            ("off", Mode::Normal),
            ("0", Mode::Normal),
        ] {
            assert_eq!(
                GateDoc::parse(raw.as_bytes()).unwrap().mode,
                mode,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn full_document_round_trips() {
        let raw = br#"{"mode":"read_only","reason":"db upgrade","message":"Back soon","until":"2026-11-25T21:00:00Z","started_at":"2026-11-25T20:00:00+01:00","by":"ops","scope":["api"],"expire":true}"#;
        let doc = GateDoc::parse(raw).unwrap();
        assert_eq!(doc.mode, Mode::ReadOnly);
        assert_eq!(doc.scope.as_deref(), Some(&["api".to_string()][..]));
        assert_eq!(doc.until.unwrap().unix_timestamp(), 1_795_640_400);
        assert!(doc.expire);
        assert_eq!(GateDoc::parse(doc.to_json().as_bytes()).unwrap(), doc);
    }

    #[test]
    fn malformed_values_are_refused_with_a_reason() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"TRUE",
            b"yes",
            b"maintenance",
            b"{",
            b"{}",
            b"[]",
            b"null",
            b"\"maintenance\"",
            br#"{"mode":"down"}"#,
            br#"{"mode":1}"#,
            br#"{"mode":"maintenance","until":"tomorrow"}"#,
            br#"{"mode":"maintenance","until":"2026-11-25 21:00"}"#,
            br#"{"mode":"maintenance","reasn":"typo"}"#,
            br#"{"mode":"maintenance","scope":[]}"#,
            br#"{"mode":"maintenance","scope":"api"}"#,
            br#"{"mode":"maintenance","reason":5}"#,
            br#"{"mode":"maintenance","expire":true}"#,
            br#"{"mode":"maintenance","until":"2026-11-25T21:00:00Z","expire":"yes"}"#,
            b"\xef\xbb\xbftrue",
            b"tr\0ue",
            b"\xff\xfe",
        ];
        for raw in cases {
            assert!(GateDoc::parse(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn oversized_values_and_fields_are_refused() {
        let big = vec![b' '; MAX_DOC_BYTES + 1];
        assert_eq!(
            GateDoc::parse(&big),
            Err(GateDocError::TooLarge {
                size: MAX_DOC_BYTES + 1
            })
        );
        let long_reason = format!(
            r#"{{"mode":"maintenance","reason":"{}"}}"#,
            "x".repeat(MAX_REASON_CHARS + 1)
        );
        assert!(matches!(
            GateDoc::parse(long_reason.as_bytes()),
            Err(GateDocError::FieldTooLong {
                field: "reason",
                ..
            })
        ));
    }
}
