//! The gate state a proxy serves from: a checked gate document with everything the request path
//! needs already rendered (the page, the problem body, the well-known document), swapped whole.

use crate::config::Config;
use crate::page::{PageFields, PageTemplate};
use bytes::Bytes;
use drawbridge_core::gate::{GateDoc, Mode};
use drawbridge_core::timestamp;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Where the served state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSource {
    /// Read from the Consul key.
    Consul,
    /// Restored from the local state file because Consul did not answer at start.
    StateFile,
    /// Nothing known: the state file could not be used (or there was none) and Consul gave no
    /// state, so `server.unknown_state` is served until Consul answers.
    FailSafe,
    /// Nothing known yet, before the first read of Consul finished: normal, but the proxy
    /// listener does not accept connections until that read has finished.
    Default,
}

impl StateSource {
    /// The name `/status` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StateSource::Consul => "consul",
            StateSource::StateFile => "state_file",
            StateSource::FailSafe => "fail_safe",
            StateSource::Default => "default",
        }
    }

    /// Whether the state stands for a Consul index, so that older answers are doubted: true
    /// for Consul's own states and restored ones; a fail-safe or default state stands for
    /// nothing, and any answer replaces it.
    pub fn has_index(self) -> bool {
        match self {
            StateSource::Consul | StateSource::StateFile => true,
            StateSource::FailSafe | StateSource::Default => false,
        }
    }
}

/// What `/status` shows as `by` while the fail-safe state is served: the setting that chose it.
pub const FAIL_SAFE_BY: &str = "server.unknown_state";

/// The `by` of the open state a gate with `expire` opens to once overdue.
pub const EXPIRED_BY: &str = "expire";

/// What turns gate documents into servable states; built once from the config.
#[derive(Debug)]
pub struct StateBuilder {
    route_names: Vec<String>,
    page: PageTemplate,
    default_message: String,
    overdue_grace: Duration,
}

/// One version of the gate, ready to serve.
#[derive(Debug)]
pub struct GateState {
    pub doc: GateDoc,
    /// The key's ModifyIndex, or Consul's index for a missing key.
    pub applied_index: u64,
    pub applied_at: OffsetDateTime,
    pub source: StateSource,
    /// Whether the state stands for a missing key (set by the watcher), so that unrelated changes
    /// elsewhere in Consul's KV store, which move a missing key's index, are not re-applied.
    pub from_missing_key: bool,
    /// The mode of each route, by route index (routes out of scope are normal).
    route_modes: Vec<Mode>,
    pub page_html: Bytes,
    pub problem_json: Bytes,
    pub well_known_json: Bytes,
    /// When a closed gate with an `until` is overdue (Unix seconds): `until` plus
    /// `maintenance.overdue_grace`.
    pub overdue_at: Option<i64>,
    /// With `expire`, what is served once overdue: the gate open.
    expired: Option<Arc<GateState>>,
}

impl StateBuilder {
    /// A builder for the routes and page of this config.
    pub fn new(config: &Config) -> StateBuilder {
        StateBuilder {
            route_names: config.routes.iter().map(|r| r.name.clone()).collect(),
            page: config.maintenance.page.clone(),
            default_message: config.maintenance.default_message.clone(),
            overdue_grace: config.maintenance.overdue_grace,
        }
    }

    /// A builder from its parts, for tests of the modules that serve states.
    #[cfg(test)]
    pub fn for_test(
        route_names: Vec<String>,
        page: PageTemplate,
        default_message: String,
    ) -> StateBuilder {
        StateBuilder {
            route_names,
            page,
            default_message,
            overdue_grace: Duration::from_secs(600),
        }
    }

    /// Checks a document against the routes and renders it.
    ///
    /// # Errors
    /// A `scope` that names a route the config does not have.
    pub fn build(
        &self,
        doc: GateDoc,
        applied_index: u64,
        source: StateSource,
        applied_at: OffsetDateTime,
    ) -> Result<GateState, String> {
        let route_modes = match &doc.scope {
            None => vec![doc.mode; self.route_names.len()],
            Some(scope) => {
                if let Some(unknown) = scope.iter().find(|s| !self.route_names.contains(s)) {
                    return Err(format!(
                        "scope names route {unknown:?}, which this proxy does not have (routes: {})",
                        self.route_names.join(", ")
                    ));
                }
                self.route_names
                    .iter()
                    .map(|name| {
                        if scope.contains(name) {
                            doc.mode
                        } else {
                            Mode::Normal
                        }
                    })
                    .collect()
            }
        };
        let closes = route_modes.iter().any(|mode| *mode != Mode::Normal);
        let grace = i64::try_from(self.overdue_grace.as_secs()).unwrap_or(i64::MAX);
        let overdue_at = doc
            .until
            .filter(|_| closes)
            .map(|until| until.unix_timestamp().saturating_add(grace));
        let expired = if doc.expire && closes {
            let mut open = GateDoc::normal();
            open.reason = doc.reason.clone();
            open.by = Some(EXPIRED_BY.to_owned());
            let state = self.build(open, applied_index, source, applied_at)?;
            Some(Arc::new(state))
        } else {
            None
        };
        let until_rfc3339 = doc.until.map(timestamp::full);
        let message = doc.message.as_deref().unwrap_or(&self.default_message);
        let reason = doc.reason.as_deref().unwrap_or("Planned maintenance");
        let until_sentence = doc
            .until
            .map(|u| format!("Expected back by {}.", timestamp::minutes_utc(u)));
        let page_html = self.page.render(&PageFields {
            title: "Down for maintenance",
            reason,
            message,
            until: until_sentence.as_deref().unwrap_or(""),
            until_rfc3339: until_rfc3339.as_deref().unwrap_or(""),
        });
        let problem = json!({
            "type": "urn:drawbridge:problem:planned-maintenance",
            "title": "Service unavailable for planned maintenance",
            "status": 503,
            "detail": message,
            "reason": reason,
            "until": until_rfc3339,
            "mode": doc.mode,
        });
        let well_known = json!({
            "mode": doc.mode,
            "planned": doc.mode != Mode::Normal,
            "reason": doc.reason,
            "message": doc.message,
            "until": until_rfc3339,
            "started_at": doc.started_at.map(timestamp::full),
            "scope": doc.scope,
        });
        Ok(GateState {
            doc,
            applied_index,
            applied_at,
            source,
            from_missing_key: false,
            route_modes,
            page_html: Bytes::from(page_html),
            problem_json: Bytes::from(problem.to_string()),
            well_known_json: Bytes::from(well_known.to_string()),
            overdue_at,
            expired,
        })
    }

    /// The normal state a proxy holds before its first read of Consul has finished.
    pub fn initial(&self) -> GateState {
        self.build(
            GateDoc::normal(),
            0,
            StateSource::Default,
            OffsetDateTime::now_utc(),
        )
        .expect("a normal document has no scope to check")
    }

    /// The state served while nothing is known (`server.unknown_state`): `mode` on every route,
    /// with the default reason and message, at index 0 so that any answer from Consul replaces
    /// it.
    pub fn fail_safe(&self, mode: Mode, at: OffsetDateTime) -> GateState {
        let mut doc = GateDoc::with_mode(mode);
        doc.by = Some(FAIL_SAFE_BY.to_owned());
        self.build(doc, 0, StateSource::FailSafe, at)
            .expect("a document without a scope has no route to check")
    }
}

impl GateState {
    /// What is served at `now_unix` (read only for a document with `expire`): the gate open
    /// once overdue, else `state` itself.
    pub fn serving(state: Arc<GateState>, now_unix: impl FnOnce() -> i64) -> Arc<GateState> {
        match (&state.expired, state.overdue_at) {
            (Some(open), Some(at)) if now_unix() >= at => open.clone(),
            _ => state,
        }
    }

    /// Whether the gate is closed past `until` plus the grace at `now_unix`.
    pub fn overdue(&self, now_unix: i64) -> bool {
        self.overdue_at.is_some_and(|at| now_unix >= at)
    }

    /// Whether the gate has opened by itself at `now_unix` (`expire`, overdue).
    pub fn expired(&self, now_unix: i64) -> bool {
        self.expired.is_some() && self.overdue(now_unix)
    }

    /// The mode that applies to the route at `route`.
    pub fn mode_for(&self, route: usize) -> Mode {
        self.route_modes.get(route).copied().unwrap_or(Mode::Normal)
    }

    /// Seconds for `Retry-After` at `now_unix`: the time left to `until`, rounded up, or `default`
    /// when there is no `until` or it has passed.
    pub fn retry_after_secs(&self, now_unix: i64, default_secs: u64) -> u64 {
        match self.doc.until {
            Some(until) if until.unix_timestamp() > now_unix => {
                (until.unix_timestamp() - now_unix) as u64
            }
            _ => default_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> StateBuilder {
        StateBuilder::for_test(
            vec!["ui".into(), "api".into()],
            PageTemplate::parse("<p>{{reason}}|{{message}}|{{until}}</p>").unwrap(),
            "back soon".into(),
        )
    }

    fn doc(json: &str) -> GateDoc {
        GateDoc::parse(json.as_bytes()).unwrap()
    }

    /// The state of gate document `json` at index 7, or why it was refused.
    fn built(json: &str) -> Result<GateState, String> {
        builder().build(
            doc(json),
            7,
            StateSource::Consul,
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn scope_limits_the_mode_to_named_routes() {
        let state = built(r#"{"mode":"maintenance","scope":["api"]}"#).unwrap();
        assert_eq!(state.mode_for(0), Mode::Normal);
        assert_eq!(state.mode_for(1), Mode::Maintenance);
    }

    #[test]
    fn unknown_scope_route_is_refused() {
        let err = built(r#"{"mode":"maintenance","scope":["admin"]}"#).unwrap_err();
        assert!(err.contains("\"admin\""), "{err}");
    }

    #[test]
    fn the_fail_safe_state_closes_every_route_and_stands_for_no_index() {
        let state = builder().fail_safe(Mode::Maintenance, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(state.source, StateSource::FailSafe);
        assert_eq!(state.source.as_str(), "fail_safe");
        assert!(!state.source.has_index());
        assert_eq!(state.applied_index, 0);
        assert_eq!(state.doc.by.as_deref(), Some(FAIL_SAFE_BY));
        assert_eq!(state.mode_for(0), Mode::Maintenance);
        assert_eq!(state.mode_for(1), Mode::Maintenance);
        let problem: serde_json::Value = serde_json::from_slice(&state.problem_json).unwrap();
        assert_eq!(problem["status"], 503);
        assert_eq!(problem["detail"], "back soon");
        let read_only = builder().fail_safe(Mode::ReadOnly, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(read_only.mode_for(1), Mode::ReadOnly);
    }

    #[test]
    fn a_closed_gate_is_overdue_after_until_and_the_grace_and_opens_only_with_expire() {
        let until = OffsetDateTime::parse(
            "2026-11-25T21:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        let grace = 600;
        let kept =
            Arc::new(built(r#"{"mode":"maintenance","until":"2026-11-25T21:00:00Z"}"#).unwrap());
        assert_eq!(kept.overdue_at, Some(until + grace));
        assert!(!kept.overdue(until + grace - 1));
        assert!(kept.overdue(until + grace));
        assert!(!kept.expired(until + grace));
        let served = GateState::serving(kept.clone(), || until + grace + 5);
        assert!(
            Arc::ptr_eq(&served, &kept),
            "without expire it stays closed"
        );

        let expiring = Arc::new(
            built(r#"{"mode":"maintenance","until":"2026-11-25T21:00:00Z","expire":true}"#)
                .unwrap(),
        );
        let before = GateState::serving(expiring.clone(), || until + grace - 1);
        assert_eq!(before.mode_for(1), Mode::Maintenance);
        let after = GateState::serving(expiring.clone(), || until + grace);
        assert!(expiring.expired(until + grace));
        assert_eq!(after.mode_for(0), Mode::Normal);
        assert_eq!(after.mode_for(1), Mode::Normal);
        assert_eq!(after.doc.by.as_deref(), Some(EXPIRED_BY));
        assert_eq!(after.applied_index, expiring.applied_index);
        let well_known: serde_json::Value = serde_json::from_slice(&after.well_known_json).unwrap();
        assert_eq!(well_known["mode"], "normal");

        // An open gate is never overdue, and its clock is not read.
        let open = Arc::new(built(r#"{"mode":"normal","until":"2026-11-25T21:00:00Z"}"#).unwrap());
        assert_eq!(open.overdue_at, None);
        GateState::serving(open, || panic!("the clock is read only for expire"));
    }

    #[test]
    fn bodies_are_rendered_once_with_the_document() {
        let state = built(
            r#"{"mode":"maintenance","reason":"db <upgrade>","until":"2026-11-25T21:00:00Z"}"#,
        )
        .unwrap();
        let page = std::str::from_utf8(&state.page_html).unwrap();
        assert_eq!(
            page,
            "<p>db &lt;upgrade&gt;|back soon|Expected back by 2026-11-25 21:00 UTC.</p>"
        );
        let problem: serde_json::Value = serde_json::from_slice(&state.problem_json).unwrap();
        assert_eq!(problem["status"], 503);
        assert_eq!(problem["until"], "2026-11-25T21:00:00Z");
        assert_eq!(problem["detail"], "back soon");
        let until = state.doc.until.unwrap().unix_timestamp();
        assert_eq!(state.retry_after_secs(until - 90, 300), 90);
        assert_eq!(state.retry_after_secs(until + 5, 300), 300);
    }
}
