//! What maintctl tells the operator while it works: on a terminal, progress per step and per box
//! with durations (in colour); plain lines when not a terminal; JSON lines with `--output json`.

use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for a person (coloured on a terminal).
    Text,
    /// One JSON object per line, for automation.
    Json,
}

/// Where progress goes.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    format: Format,
    colour: bool,
}

/// How one target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Skipped,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

impl Output {
    /// Progress in `format`, coloured only on a terminal.
    pub fn new(format: Format) -> Output {
        Output {
            format,
            colour: format == Format::Text && std::io::stdout().is_terminal(),
        }
    }

    /// Whether the output is JSON lines.
    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Prints a JSON event or a text line.
    pub fn emit(&self, event: Value, text: impl FnOnce() -> String) {
        let mut out = std::io::stdout().lock();
        let line = match self.format {
            Format::Json => event.to_string(),
            Format::Text => text(),
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Reports a problem: a JSON event on stdout, or a line on stderr.
    pub fn error(&self, event: Value, text: &str) {
        match self.format {
            Format::Json => self.emit(event, String::new),
            Format::Text => eprintln!("{text}"),
        }
    }

    /// A step starts.
    pub fn step_started(&self, index: usize, total: usize, id: &str, title: &str) {
        self.emit(
            json!({"event": "step_started", "step": id, "title": title}),
            || self.paint("1", &format!("[{}/{}] {title}", index + 1, total)),
        );
    }

    /// A target of a step ended.
    pub fn target_ended(
        &self,
        step: &str,
        target: &str,
        outcome: Outcome,
        took: Duration,
        detail: &str,
    ) {
        self.emit(
            json!({"event": "target", "step": step, "target": target, "result": outcome.as_str(),
                   "seconds": took.as_secs_f64(), "detail": detail}),
            || {
                let mark = match outcome {
                    Outcome::Done => self.paint("32", "ok  "),
                    Outcome::Skipped => self.paint("36", "skip"),
                    Outcome::Failed => self.paint("31", "FAIL"),
                };
                let detail = detail.lines().next().unwrap_or("");
                format!(
                    "    {mark} {target:<20} {:>7.2}s  {detail}",
                    took.as_secs_f64()
                )
            },
        );
    }

    /// A step ended.
    pub fn step_ended(&self, id: &str, ok: bool, took: Duration) {
        self.emit(
            json!({"event": "step_ended", "step": id, "ok": ok, "seconds": took.as_secs_f64()}),
            || {
                format!(
                    "    {} in {:.2}s",
                    if ok { "done" } else { "stopped" },
                    took.as_secs_f64()
                )
            },
        );
    }

    /// A free-form note.
    pub fn note(&self, text: &str) {
        self.emit(json!({"event": "note", "text": text}), || text.to_string());
    }
}
