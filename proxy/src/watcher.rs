//! The gate watcher: a background service that follows the gate key with blocking queries and
//! swaps a new, fully built gate state in whenever a valid value with a new index appears.
//!
//! An error, a timeout, an unchanged index or a value that does not parse never changes the served
//! state (the loop itself, with its index and backoff rules, is `follow`). The last applied state
//! is saved locally and restored at start, so a proxy that starts while Consul does not answer
//! serves what it served before.

use crate::follow::{follow, Followed};
use crate::gate_state::{rfc3339, GateState, StateBuilder, StateSource};
use crate::metrics::Metrics;
use crate::state_file::{self, SavedState};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::consul::{self, Client, Consistency, KvRead, QueryOptions};
use drawbridge_core::gate::{GateDoc, Mode};
use drawbridge_core::status::RejectedValue;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// What the watcher knows about its connection to Consul, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct WatchStatus {
    pub reachable: bool,
    pub last_answer_at: Option<OffsetDateTime>,
    pub watch_index: u64,
    pub last_error: Option<String>,
    pub last_rejected: Option<RejectedValue>,
}

/// Everything the watcher shares with the rest of the proxy.
pub struct GateWatcher {
    pub client: Client,
    pub key: String,
    pub wait: Duration,
    pub consistency: Consistency,
    pub state_file: PathBuf,
    pub builder: StateBuilder,
    pub gate: Arc<ArcSwap<GateState>>,
    pub status: Arc<ArcSwap<WatchStatus>>,
    pub metrics: Arc<Metrics>,
}

/// The outcome of one answer from Consul.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Applied,
    Unchanged,
    Rejected,
}

impl GateWatcher {
    /// Serves the saved state, if any, until Consul answers.
    fn restore_saved_state(&self) {
        match state_file::load(&self.state_file, &self.key) {
            Ok(Some(saved)) => {
                match self.builder.build(
                    saved.doc,
                    saved.applied_index,
                    StateSource::StateFile,
                    OffsetDateTime::now_utc(),
                ) {
                    Ok(state) => {
                        tracing::info!(
                            mode = %state.doc.mode,
                            index = state.applied_index,
                            file = %self.state_file.display(),
                            "restored the last applied gate state"
                        );
                        self.publish(state);
                    }
                    Err(e) => tracing::error!(
                        file = %self.state_file.display(),
                        "saved gate state does not fit the routes, starting normal: {e}"
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!("{e}; starting in the normal state until Consul answers"),
        }
    }

    fn publish(&self, state: GateState) {
        let m = &self.metrics;
        for mode in [Mode::Normal, Mode::Maintenance, Mode::ReadOnly] {
            m.gate_mode
                .with_label_values(&[mode.as_str()])
                .set(i64::from(mode == state.doc.mode));
        }
        m.gate_applied_index
            .set(i64::try_from(state.applied_index).unwrap_or(i64::MAX));
        m.gate_applied_timestamp
            .set(state.applied_at.unix_timestamp() as f64);
        self.gate.store(Arc::new(state));
    }

    /// Applies one answer: a new value with a new index replaces the state, anything else keeps it.
    fn apply(&self, read: KvRead) -> Outcome {
        let current = self.gate.load();
        let (raw, index) = match &read.entry {
            Some(entry) => (entry.value.as_deref(), entry.modify_index),
            None => (None, read.meta.index),
        };
        let already_served = current.source == StateSource::Consul
            && match &read.entry {
                Some(_) => current.applied_index == index,
                // A missing key keeps being missing while unrelated keys change the index.
                None => current.from_missing_key,
            };
        if already_served {
            return Outcome::Unchanged;
        }
        if self
            .status
            .load()
            .last_rejected
            .as_ref()
            .is_some_and(|r| read.entry.is_some() && r.modify_index == index)
        {
            return Outcome::Rejected;
        }
        let doc = match read.entry {
            None => Ok(GateDoc::normal()),
            Some(_) => GateDoc::parse(raw.unwrap_or_default()).map_err(|e| e.to_string()),
        };
        let now = OffsetDateTime::now_utc();
        let key_missing = read.entry.is_none();
        let built = doc.and_then(|doc| self.builder.build(doc, index, StateSource::Consul, now));
        match built {
            Ok(mut state) => {
                state.from_missing_key = key_missing;
                tracing::info!(
                    mode = %state.doc.mode,
                    index,
                    reason = state.doc.reason.as_deref().unwrap_or(""),
                    "gate state applied"
                );
                let saved = SavedState {
                    key: self.key.clone(),
                    doc: state.doc.clone(),
                    applied_index: index,
                };
                self.publish(state);
                if let Err(e) = state_file::save(&self.state_file, &saved) {
                    tracing::error!(
                        file = %self.state_file.display(),
                        "cannot save the gate state (a restart during a Consul outage would start normal): {e}"
                    );
                }
                Outcome::Applied
            }
            Err(error) => {
                tracing::error!(
                    key = %self.key,
                    index,
                    "refused the value at the gate key, keeping mode {}: {error}",
                    current.doc.mode
                );
                self.metrics.gate_rejected_values.inc();
                self.update_status(|s| {
                    s.last_rejected = Some(RejectedValue {
                        modify_index: index,
                        error: error.clone(),
                        at: rfc3339(now),
                    })
                });
                Outcome::Rejected
            }
        }
    }

    fn update_status(&self, change: impl Fn(&mut WatchStatus)) {
        let mut next = WatchStatus::clone(&self.status.load());
        change(&mut next);
        self.status.store(Arc::new(next));
    }

    fn record_answer(&self, index: u64) {
        let now = OffsetDateTime::now_utc();
        self.metrics
            .consul_last_answer_timestamp
            .set(now.unix_timestamp() as f64);
        self.metrics
            .consul_watch_index
            .set(i64::try_from(index).unwrap_or(i64::MAX));
        self.update_status(|s| {
            s.reachable = true;
            s.last_answer_at = Some(now);
            s.watch_index = index;
            s.last_error = None;
        });
    }

    fn record_error(&self, error: &consul::Error) {
        self.metrics
            .consul_watch_errors
            .with_label_values(&[error_kind(error)])
            .inc();
        let text = error.to_string();
        self.update_status(|s| {
            s.reachable = false;
            s.last_error = Some(text.clone());
        });
    }
}

/// A short, stable label for an error, for metrics.
fn error_kind(error: &consul::Error) -> &'static str {
    match error {
        consul::Error::Unreachable { .. } => "unreachable",
        consul::Error::Timeout { .. } => "timeout",
        consul::Error::AclDenied { .. } => "acl_denied",
        consul::Error::NoLeader { .. } => "no_leader",
        consul::Error::TooManyConnections { .. } => "too_many_connections",
        consul::Error::Decode { .. } => "decode",
        consul::Error::Status { .. } => "http_status",
        _ => "other",
    }
}

#[async_trait]
impl Followed for GateWatcher {
    type Answer = KvRead;

    fn describe(&self) -> String {
        format!("the gate key {}", self.key)
    }

    async fn read(&self, index: u64) -> Result<(KvRead, u64), consul::Error> {
        let options = QueryOptions::blocking(index, self.wait).with_consistency(self.consistency);
        let read = self.client.kv_get(&self.key, &options).await?;
        let answered = read.meta.index;
        Ok((read, answered))
    }

    async fn take(&self, read: KvRead, index: u64) {
        self.record_answer(index);
        self.apply(read);
    }

    fn failed(&self, error: &consul::Error) {
        self.record_error(error);
    }
}

#[async_trait]
impl BackgroundService for GateWatcher {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        self.restore_saved_state();
        follow(self, shutdown, ready).await;
    }
}
