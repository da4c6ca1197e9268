//! The gate watcher: a background service that follows the gate key with blocking queries and
//! swaps a new, fully built gate state in whenever a valid value with a new index appears.
//!
//! Rules (see RELIABILITY-TESTS §3.4): an error, a timeout, an unchanged index or a value that does
//! not parse never changes the served state; the index resets when it goes backwards and is never
//! below 1; reads are rate-limited by a token bucket; errors back off with full jitter, forever.
//! The last applied state is saved locally and restored at start when Consul does not answer.

use crate::gate_state::{rfc3339, GateState, StateBuilder, StateSource};
use crate::metrics::Metrics;
use crate::state_file::{self, SavedState};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::consul::{
    self, Backoff, Client, Consistency, KvRead, QueryOptions, TokenBucket,
};
use drawbridge_core::gate::{GateDoc, Mode};
use drawbridge_core::status::RejectedValue;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How long the first read may take before the proxy starts serving from the state file.
const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Reads go straight through while calm; under churn at most one per this interval.
const CHURN_INTERVAL: Duration = Duration::from_millis(100);

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

    /// One read of the key: blocking after `index`, or at once when `index` is 0.
    async fn read(&self, index: u64) -> Result<KvRead, consul::Error> {
        let options = QueryOptions::blocking(index, self.wait).with_consistency(self.consistency);
        self.client.kv_get(&self.key, &options).await
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
impl BackgroundService for GateWatcher {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        self.restore_saved_state();
        let mut index = 0;
        match tokio::time::timeout(FIRST_READ_TIMEOUT, self.read(0)).await {
            Ok(Ok(read)) => {
                index = consul::next_index(0, read.meta.index);
                self.record_answer(index);
                self.apply(read);
            }
            Ok(Err(e)) => {
                tracing::warn!("first read of the gate key failed, serving the saved state: {e}");
                self.record_error(&e);
            }
            Err(_) => tracing::warn!(
                "Consul did not answer within {FIRST_READ_TIMEOUT:?}, serving the saved state"
            ),
        }
        ready.notify_ready();

        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut bucket = TokenBucket::new(2, CHURN_INTERVAL, Instant::now());
        loop {
            let pause = match bucket.try_take(Instant::now()) {
                Ok(()) => None,
                Err(wait) => Some(wait),
            };
            if let Some(wait) = pause {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                result = self.read(index) => result,
            };
            match result {
                Ok(read) => {
                    backoff.reset();
                    if read.meta.index < index {
                        tracing::info!(
                            previous = index,
                            answered = read.meta.index,
                            "Consul index went backwards, re-reading from the start"
                        );
                    }
                    index = consul::next_index(index, read.meta.index);
                    self.record_answer(index);
                    self.apply(read);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        attempt = backoff.attempt(),
                        "watching the gate key failed, keeping the served state, retrying in {delay:?}: {e}"
                    );
                    self.record_error(&e);
                    // After an outage the index may belong to another Consul history (a restarted
                    // dev agent): start over, the ModifyIndex comparison keeps this safe.
                    index = 0;
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
