//! The proxies' "gate state applied" log lines with their timestamps, read while the logs grow:
//! when each proxy applied which state, without asking the proxies anything.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One state a proxy applied, from its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The line's timestamp (RFC 3339, UTC, microseconds), as Unix microseconds.
    pub at_us: i64,
    pub mode: String,
    pub index: u64,
    /// The document's `reason` ("" when it has none).
    pub reason: String,
    /// Whether the answer came from a leader-confirmed read.
    pub confirmed: bool,
    /// 1-based line number in the log, for excerpts.
    pub line: usize,
}

/// Parses a "gate state applied" line as the proxy writes it:
/// `2026-11-25T10:00:00.123456Z  INFO drawbridge::watcher: gate state applied mode=maintenance
/// index=42 confirmed=false reason="fleet-7"`; `None` for any other line.
pub fn parse_line(line: &str, line_no: usize) -> Option<Applied> {
    if !line.contains("gate state applied") {
        return None;
    }
    let stamp = line.split_whitespace().next()?;
    let at = OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
    let field = |name: &str| -> Option<&str> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split(' ').next()
    };
    Some(Applied {
        at_us: unix_us(at),
        mode: field("mode")?.to_string(),
        index: field("index")?.parse().ok()?,
        reason: field("reason").unwrap_or("").trim_matches('"').to_string(),
        confirmed: field("confirmed") == Some("true"),
        line: line_no,
    })
}

/// `at` as Unix microseconds.
pub fn unix_us(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// One proxy's log, read from where the last [`LogTail::poll`] stopped.
#[derive(Debug)]
pub struct LogTail {
    path: PathBuf,
    file: Option<File>,
    /// The start of a line not yet ended by a newline.
    partial: Vec<u8>,
    lines: usize,
    /// Every applied state so far, in log order.
    pub applied: Vec<Applied>,
    /// "refused to step back" lines so far.
    pub refusals: usize,
}

impl LogTail {
    /// Follows the log at `path` (it may not exist yet).
    pub fn new(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            file: None,
            partial: Vec::new(),
            lines: 0,
            applied: Vec::new(),
            refusals: 0,
        }
    }

    /// Reads what was appended since the last call.
    pub fn poll(&mut self) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut fresh = Vec::new();
        if file.read_to_end(&mut fresh).is_err() || fresh.is_empty() {
            return;
        }
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            self.lines += 1;
            if let Some(applied) = parse_line(line, self.lines) {
                self.applied.push(applied);
            } else if line.contains("refused to step back") {
                self.refusals += 1;
            }
        }
    }

    /// The highest index applied so far (0 before any).
    pub fn max_index(&self) -> u64 {
        self.applied.iter().map(|a| a.index).max().unwrap_or(0)
    }

    /// The log's lines `from..=to` (1-based), each prefixed with its number.
    pub fn excerpt(&self, from: usize, to: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line))
            .filter(|(n, _)| (from..=to).contains(n))
            .map(|(n, line)| format!("{n}: {line}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_line_gives_time_mode_index_and_reason() {
        let line = "2026-11-25T10:00:00.123456Z  INFO drawbridge::watcher: gate state applied \
                    mode=maintenance index=42 confirmed=false reason=\"fleet-7\"";
        let a = parse_line(line, 3).expect("an applied line");
        assert_eq!(a.at_us, 1_795_600_800_123_456);
        assert_eq!((a.mode.as_str(), a.index), ("maintenance", 42));
        assert_eq!(
            (a.reason.as_str(), a.confirmed, a.line),
            ("fleet-7", false, 3)
        );
        let other = "2026-11-25T10:00:00.123456Z  WARN drawbridge::watcher: refused to step back";
        assert_eq!(parse_line(other, 4), None);
    }
}
