//! The gate watcher: a background service that follows the gate key with blocking queries and
//! swaps a new, fully built gate state in whenever a valid value with a newer index appears.
//!
//! The served state never steps back: an answer whose index is below the applied one (a server
//! restarted a moment ago answers from a store that is still replaying its log, even "key
//! missing") is refused, counted and confirmed with the leader first; only the leader's word
//! moves the state to a lower index (a cluster that was really rebuilt). An error, a timeout, an
//! unchanged index or a value that does not parse never changes the served state either (the
//! loop itself, with its read kinds and retry rules, is `follow`). The last applied state is
//! saved locally and restored at start, so a proxy that starts while Consul does not answer
//! serves what it served before.
//!
//! When the state is unknown, the proxy fails closed: a state file that cannot be used (logged
//! and counted) and, once the first read has finished without a state, a missing one make it
//! serve `server.unknown_state` (source `fail_safe`) until Consul's first valid answer, which
//! replaces that state whatever its index.

use crate::follow::{follow, Followed, ReadKind, Taken};
use crate::gate_state::{GateState, StateBuilder, StateSource};
use crate::metrics::Metrics;
use crate::one_line::OneLine;
use crate::state_file::{self, SavedState};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::consul::{self, Client, Consistency, Failover, KvRead};
use drawbridge_core::gate::{GateDoc, Mode};
use drawbridge_core::status::RejectedValue;
use drawbridge_core::timestamp;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// What the watcher knows about its connection to Consul, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct WatchStatus {
    pub reachable: bool,
    pub last_answer_at: Option<OffsetDateTime>,
    /// Until when the read now open counts as contact: a blocking query that is open and not yet
    /// timed out is a healthy watch, however long ago the last answer came.
    pub open_read_until: Option<OffsetDateTime>,
    /// The address the watcher reads from now.
    pub reading_from: String,
    pub watch_index: u64,
    pub last_error: Option<String>,
    pub last_rejected: Option<RejectedValue>,
}

impl WatchStatus {
    /// Seconds without contact at `now`: 0 while a read is open and not yet timed out, else
    /// since the last answer; `None` before the first answer.
    pub fn seconds_without_contact(&self, now: OffsetDateTime) -> Option<f64> {
        if self.open_read_until.is_some_and(|until| now <= until) {
            return Some(0.0);
        }
        self.last_answer_at
            .map(|at| (now - at).as_seconds_f64().max(0.0))
    }

    /// Stale when there has been no contact for longer than `stale_after`, or never any.
    pub fn is_stale(&self, now: OffsetDateTime, stale_after: Duration) -> bool {
        self.seconds_without_contact(now)
            .is_none_or(|s| s > stale_after.as_secs_f64())
    }
}

/// Everything the watcher shares with the rest of the proxy.
pub struct GateWatcher {
    pub consul: Arc<Failover>,
    pub key: String,
    pub wait: Duration,
    pub consistency: Consistency,
    pub state_file: PathBuf,
    /// The mode served while the gate state is unknown (`server.unknown_state`).
    pub unknown_state: Mode,
    pub builder: StateBuilder,
    pub gate: Arc<ArcSwap<GateState>>,
    pub status: Arc<ArcSwap<WatchStatus>>,
    pub metrics: Arc<Metrics>,
}

/// What one answer means for the served state.
#[derive(Debug, PartialEq, Eq)]
enum Judgement {
    /// The served state already stands for it.
    Unchanged,
    /// Older than the served state and not confirmed by the leader.
    StepBack,
    /// Not confirmed by the leader while the served state stands for no index (fail-safe, or
    /// none yet): a follower without a leader may answer from an empty or rebuilt store.
    Unconfirmed,
    /// A value refused before, at the same index.
    RejectedBefore,
    /// A newer value, or the leader's word: build and apply it.
    New,
}

/// Judges an answer against the served state; `confirmed` when the leader gave it.
fn judge(
    current: &GateState,
    read: &KvRead,
    confirmed: bool,
    last_rejected: Option<&RejectedValue>,
) -> Judgement {
    let index = answer_index(read);
    let already_served = current.source == StateSource::Consul
        && match &read.entry {
            Some(_) => current.applied_index == index,
            // A missing key keeps being missing while unrelated keys change the index.
            None => current.from_missing_key,
        };
    if already_served {
        return Judgement::Unchanged;
    }
    if !confirmed && !current.source.has_index() {
        return Judgement::Unconfirmed;
    }
    if !confirmed && index < current.applied_index {
        return Judgement::StepBack;
    }
    if read.entry.is_some() && last_rejected.is_some_and(|r| r.modify_index == index) {
        return Judgement::RejectedBefore;
    }
    Judgement::New
}

/// The index an answer stands for: the key's ModifyIndex, or Consul's index for a missing key.
pub(crate) fn answer_index(read: &KvRead) -> u64 {
    match &read.entry {
        Some(entry) => entry.modify_index,
        None => read.meta.index,
    }
}

impl GateWatcher {
    /// Serves the saved state until Consul answers; a file that cannot be used is logged,
    /// counted, and the fail-safe state served instead. Without a file nothing changes yet: the
    /// first read decides (see [`GateWatcher::fail_safe_if_unknown`]).
    fn restore_saved_state(&self) {
        let now = OffsetDateTime::now_utc();
        let refusal = match state_file::load(&self.state_file, &self.key) {
            Ok(None) => {
                tracing::info!(
                    file = %self.state_file.display(),
                    "no saved gate state (a first start, or the file was removed)"
                );
                return;
            }
            Ok(Some(saved)) => {
                match self.builder.build(
                    saved.doc,
                    saved.applied_index,
                    StateSource::StateFile,
                    now,
                ) {
                    Ok(state) => {
                        tracing::info!(
                            mode = %state.doc.mode,
                            index = state.applied_index,
                            file = %self.state_file.display(),
                            "restored the last applied gate state"
                        );
                        self.publish(state);
                        return;
                    }
                    Err(detail) => state_file::Unusable::InvalidDocument {
                        path: self.state_file.clone(),
                        detail: format!("it does not fit this proxy's routes: {detail}"),
                    },
                }
            }
            Err(refusal) => refusal,
        };
        self.metrics
            .state_file_refused
            .with_label_values(&[refusal.reason()])
            .inc();
        tracing::error!(
            file = %refusal.path().display(),
            reason = refusal.reason(),
            "{refusal}; serving {} (server.unknown_state) until Consul answers",
            self.unknown_state
        );
        self.publish(self.builder.fail_safe(self.unknown_state, now));
    }

    /// After the first read: when it brought no state (it failed or timed out, or its value was
    /// refused) and no saved state was restored, the state is unknown: serves the fail-safe one.
    fn fail_safe_if_unknown(&self) {
        if self.gate.load().source != StateSource::Default {
            return;
        }
        let status = self.status.load();
        let why = match (&status.last_error, &status.last_rejected) {
            (Some(error), _) => format!("the first read of Consul failed: {}", OneLine(error)),
            (None, Some(rejected)) => {
                format!(
                    "the value at the key was refused: {}",
                    OneLine(&rejected.error)
                )
            }
            (None, None) => "Consul did not answer in time".to_owned(),
        };
        tracing::error!(
            file = %self.state_file.display(),
            key = %self.key,
            "the gate state is unknown (no state file, and {why}); serving {} \
             (server.unknown_state) until Consul answers",
            self.unknown_state
        );
        self.publish(
            self.builder
                .fail_safe(self.unknown_state, OffsetDateTime::now_utc()),
        );
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
        m.gate_fail_safe
            .set(i64::from(state.source == StateSource::FailSafe));
        self.gate.store(Arc::new(state));
    }

    /// Takes one answer; `confirmed` when the leader gave it. A newer valid value replaces the
    /// state; an older one is refused and doubted, anything else keeps the state.
    fn apply(&self, read: KvRead, confirmed: bool) -> Taken {
        let current = self.gate.load();
        let index = answer_index(&read);
        let status = self.status.load();
        match judge(&current, &read, confirmed, status.last_rejected.as_ref()) {
            Judgement::Unchanged | Judgement::RejectedBefore => return Taken::Settled,
            Judgement::StepBack => {
                self.metrics.gate_step_backs_refused.inc();
                tracing::warn!(
                    key = %self.key,
                    applied = current.applied_index,
                    answered = index,
                    answer = if read.entry.is_some() { "a value" } else { "missing key" },
                    address = %status.reading_from,
                    "refused to step back to an older gate state, confirming with the leader"
                );
                return Taken::Doubted;
            }
            Judgement::Unconfirmed => {
                tracing::info!(
                    key = %self.key,
                    answered = index,
                    address = %status.reading_from,
                    "an answer without the leader's word does not replace the {} state, \
                     confirming with the leader",
                    current.source.as_str()
                );
                return Taken::Doubted;
            }
            Judgement::New => {}
        }
        let key_missing = read.entry.is_none();
        let doc = match read.entry {
            None => Ok(GateDoc::normal()),
            Some(entry) => GateDoc::parse(entry.value.as_deref().unwrap_or_default())
                .map_err(|e| e.to_string()),
        };
        let now = OffsetDateTime::now_utc();
        let built = doc.and_then(|doc| self.builder.build(doc, index, StateSource::Consul, now));
        match built {
            Ok(mut state) => {
                state.from_missing_key = key_missing;
                if current.source == StateSource::FailSafe {
                    tracing::info!(
                        key = %self.key,
                        "Consul answered: its state replaces the fail-safe state"
                    );
                }
                tracing::info!(
                    mode = %state.doc.mode,
                    index,
                    confirmed,
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
                        "cannot save the gate state (a restart during a Consul outage would serve server.unknown_state): {e}"
                    );
                }
            }
            Err(error) => {
                tracing::error!(
                    key = %self.key,
                    index,
                    "refused the value at the gate key, keeping mode {}: {}",
                    current.doc.mode,
                    OneLine(&error)
                );
                self.metrics.gate_rejected_values.inc();
                self.update_status(|s| {
                    s.last_rejected = Some(RejectedValue {
                        modify_index: index,
                        error: error.clone(),
                        at: timestamp::full(now),
                    })
                });
            }
        }
        Taken::Settled
    }

    fn update_status(&self, change: impl Fn(&mut WatchStatus)) {
        let mut next = WatchStatus::clone(&self.status.load());
        change(&mut next);
        self.status.store(Arc::new(next));
    }

    /// Notes a read about to be sent through `client`, open until `contact_for` has passed.
    fn record_read(&self, client: &Client, contact_for: Duration) {
        let address = client.address();
        let now = OffsetDateTime::now_utc();
        self.update_status(|s| {
            if s.reading_from != address {
                s.reading_from = address.to_owned();
            }
            s.open_read_until = Some(now + contact_for);
        });
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
            s.open_read_until = None;
            s.watch_index = index;
            s.last_error = None;
        });
    }

    fn record_error(&self, error: &consul::Error) {
        self.metrics
            .consul_watch_errors
            .with_label_values(&[error_kind(error)])
            .inc();
        let text = match error {
            consul::Error::AclDenied { .. } => {
                format!("{error}; the proxy needs key:read on {}", self.key)
            }
            _ => error.to_string(),
        };
        // A denial, a missing leader or an error status is an answer: Consul is reachable.
        let reached = !matches!(
            error,
            consul::Error::Unreachable { .. } | consul::Error::Timeout { .. }
        );
        self.update_status(|s| {
            s.reachable = reached;
            s.open_read_until = None;
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

    fn failover(&self) -> &Failover {
        &self.consul
    }

    async fn read(
        &self,
        client: &Client,
        kind: ReadKind,
        index: u64,
    ) -> Result<(KvRead, u64), consul::Error> {
        let options = kind.options(index, self.wait, self.consistency);
        // Until the client gives it up (wait + wait/16 + a margin, or 10 s for a prompt read), an
        // open read is a healthy watch: a busy host that answers a little late is not stale.
        self.record_read(client, options.request_timeout());
        let read = client.kv_get(&self.key, &options).await?;
        let answered = read.meta.index;
        Ok((read, answered))
    }

    async fn take(&self, read: KvRead, index: u64, kind: ReadKind) -> Taken {
        self.record_answer(index);
        self.apply(read, kind == ReadKind::Confirm)
    }

    fn failed(&self, error: &consul::Error) {
        self.record_error(error);
    }

    fn moved_on(&self) {
        self.metrics.consul_failovers.inc();
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
        // The proxy listener waits for `ready`; `follow` signals after its first read, and the
        // fail-safe state must be in place before the listener opens, so its signal is taken
        // here first.
        let (first_read, mut first_read_done) = tokio::sync::watch::channel(false);
        let mut following = pin!(follow(
            self,
            shutdown,
            ServiceReadyNotifier::new(first_read)
        ));
        tokio::select! {
            () = &mut following => return,
            _ = first_read_done.wait_for(|done| *done) => {}
        }
        self.fail_safe_if_unknown();
        ready.notify_ready();
        following.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::Cursor;
    use crate::page::PageTemplate;
    use drawbridge_core::consul::{KvEntry, QueryMeta};

    fn test_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("drawbridge-watcher-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn watcher(dir: &std::path::Path) -> GateWatcher {
        let builder = StateBuilder::for_test(
            vec!["ui".into()],
            PageTemplate::parse("<p>{{reason}}</p>").unwrap(),
            "back soon".into(),
        );
        GateWatcher {
            consul: Arc::new(Failover::new(&["http://127.0.0.1:1".into()], None).unwrap()),
            key: "gate".into(),
            wait: Duration::from_secs(60),
            consistency: Consistency::Default,
            state_file: dir.join("state.json"),
            unknown_state: Mode::Maintenance,
            gate: Arc::new(ArcSwap::from_pointee(builder.initial())),
            builder,
            status: Arc::new(ArcSwap::from_pointee(WatchStatus::default())),
            metrics: Arc::new(Metrics::new().unwrap()),
        }
    }

    fn value(mode: &str, modify_index: u64, index: u64) -> KvRead {
        KvRead {
            entry: Some(KvEntry {
                key: "gate".into(),
                value: Some(format!(r#"{{"mode":"{mode}"}}"#).into_bytes()),
                create_index: 1,
                modify_index,
                lock_index: 0,
                flags: 0,
                session: None,
            }),
            meta: QueryMeta {
                index,
                known_leader: true,
                last_contact: Duration::ZERO,
            },
        }
    }

    /// A cursor whose confirming read found no leader: the next read is a stale one.
    fn cursor_without_leader() -> Cursor {
        let mut c = Cursor::new(1);
        c.failed(
            ReadKind::Confirm,
            &consul::Error::NoLeader {
                what: "kv get gate".into(),
                address: "a".into(),
            },
            false,
        );
        c
    }

    fn missing(index: u64) -> KvRead {
        KvRead {
            entry: None,
            meta: QueryMeta {
                index,
                known_leader: true,
                last_contact: Duration::ZERO,
            },
        }
    }

    /// Feeds one answer through the watcher and the loop's cursor, as `follow` does.
    async fn feed(w: &GateWatcher, cursor: &mut Cursor, read: KvRead) -> (Mode, u64, ReadKind) {
        let (kind, _) = cursor.next();
        let answered = read.meta.index;
        let taken = w.take(read, answered, kind).await;
        cursor.answered(kind, answered, taken);
        let served = w.gate.load();
        (served.doc.mode, served.applied_index, cursor.next().0)
    }

    #[tokio::test]
    async fn the_served_state_never_steps_back_without_the_leaders_word() {
        let w = watcher(&test_dir("step-back"));
        let mut c = Cursor::new(1);
        use Mode::{Maintenance, Normal};
        use ReadKind::{Confirm, Watch};
        // Start: the leader says maintenance at 100.
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 100, 100)).await,
            (Maintenance, 100, Watch)
        );
        // A restarted server, its store still empty: "missing key" at index 1. Refused.
        assert_eq!(
            feed(&w, &mut c, missing(1)).await,
            (Maintenance, 100, Confirm)
        );
        // The leader confirms maintenance at 100.
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 100, 130)).await,
            (Maintenance, 100, Watch)
        );
        // A server half-way through its log: an older normal value at 60. Refused.
        assert_eq!(
            feed(&w, &mut c, value("normal", 60, 131)).await,
            (Maintenance, 100, Confirm)
        );
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 100, 131)).await,
            (Maintenance, 100, Watch)
        );
        // A real write: normal at 140.
        assert_eq!(
            feed(&w, &mut c, value("normal", 140, 140)).await,
            (Normal, 140, Watch)
        );
        // The key deleted at 150, then unrelated writes move a missing key's index.
        assert_eq!(feed(&w, &mut c, missing(150)).await, (Normal, 150, Watch));
        assert_eq!(feed(&w, &mut c, missing(170)).await, (Normal, 150, Watch));
        // A server behind still has the old value at 140: refused, although it is normal too.
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 120, 171)).await,
            (Normal, 150, Confirm)
        );
        assert_eq!(feed(&w, &mut c, missing(171)).await, (Normal, 150, Watch));
        // The cluster was rebuilt: indexes start over. Refused unconfirmed, applied confirmed.
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 7, 7)).await,
            (Normal, 150, Confirm)
        );
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 7, 7)).await,
            (Maintenance, 7, Watch)
        );
        assert_eq!(
            feed(&w, &mut c, value("normal", 9, 9)).await,
            (Normal, 9, Watch)
        );
        assert_eq!(w.metrics.gate_step_backs_refused.get(), 4);
    }

    #[tokio::test]
    async fn a_state_restored_from_the_file_is_not_stepped_back_either() {
        let w = watcher(&test_dir("restored"));
        let saved = SavedState {
            key: "gate".into(),
            doc: GateDoc::parse(br#"{"mode":"maintenance"}"#).unwrap(),
            applied_index: 100,
        };
        state_file::save(&w.state_file, &saved).unwrap();
        w.restore_saved_state();
        assert_eq!(w.gate.load().source, StateSource::StateFile);
        // Without a leader the first read falls back to any server: an empty store is refused.
        let mut c = cursor_without_leader();
        assert_eq!(
            feed(&w, &mut c, missing(1)).await,
            (Mode::Maintenance, 100, ReadKind::Confirm)
        );
        assert_eq!(w.gate.load().source, StateSource::StateFile);
        assert_eq!(
            feed(&w, &mut c, value("maintenance", 100, 100)).await,
            (Mode::Maintenance, 100, ReadKind::Watch)
        );
        assert_eq!(w.gate.load().source, StateSource::Consul);
    }

    /// A watcher over an empty test folder: no state file.
    fn watcher_without_state(name: &str) -> GateWatcher {
        let dir = test_dir(name);
        let _ = std::fs::remove_file(dir.join("state.json"));
        watcher(&dir)
    }

    fn refused(w: &GateWatcher, reason: &str) -> u64 {
        w.metrics
            .state_file_refused
            .with_label_values(&[reason])
            .get()
    }

    #[tokio::test]
    async fn an_unusable_state_file_serves_the_fail_safe_state_until_consul_answers() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "damaged"),
            (br#"{"key":"gate","doc":{"mode":"maint"#, "damaged"),
            (b"\x9c\x01\xfe random \x00 bytes", "damaged"),
            (
                br#"{"key":"other/gate","doc":{"mode":"normal"},"applied_index":900}"#,
                "other_key",
            ),
            (
                br#"{"key":"gate","doc":{"mode":"closed"},"applied_index":900}"#,
                "invalid_document",
            ),
        ];
        for (n, (content, reason)) in cases.into_iter().enumerate() {
            let w = watcher_without_state(&format!("unusable-{n}"));
            std::fs::write(&w.state_file, content).unwrap();
            w.restore_saved_state();
            let served = w.gate.load_full();
            assert_eq!(served.source, StateSource::FailSafe, "{reason}");
            assert_eq!(served.doc.mode, Mode::Maintenance, "{reason}");
            assert_eq!(served.applied_index, 0, "{reason}");
            assert_eq!(refused(&w, reason), 1, "{reason}");
            assert_eq!(w.metrics.gate_fail_safe.get(), 1);
            // A follower's answer without a leader does not replace it (it may come from an
            // empty store); the leader's answer, at any index, does.
            let mut c = cursor_without_leader();
            assert_eq!(
                feed(&w, &mut c, missing(3)).await,
                (Mode::Maintenance, 0, ReadKind::Confirm),
                "{reason}"
            );
            assert_eq!(w.gate.load().source, StateSource::FailSafe);
            assert_eq!(
                feed(&w, &mut c, missing(3)).await,
                (Mode::Normal, 3, ReadKind::Watch),
                "{reason}"
            );
            assert_eq!(w.gate.load().source, StateSource::Consul);
            assert_eq!(w.metrics.gate_fail_safe.get(), 0);
            assert_eq!(w.metrics.gate_step_backs_refused.get(), 0);
            // And the file is good again.
            assert!(state_file::load::<GateDoc>(&w.state_file, "gate")
                .unwrap()
                .is_some());
        }
    }

    #[test]
    fn a_saved_state_that_does_not_fit_the_routes_is_refused_too() {
        let w = watcher_without_state("routes");
        let saved = SavedState {
            key: "gate".into(),
            doc: GateDoc::parse(br#"{"mode":"normal","scope":["gone"]}"#).unwrap(),
            applied_index: 100,
        };
        state_file::save(&w.state_file, &saved).unwrap();
        w.restore_saved_state();
        assert_eq!(w.gate.load().source, StateSource::FailSafe);
        assert_eq!(w.gate.load().doc.mode, Mode::Maintenance);
        assert_eq!(refused(&w, "invalid_document"), 1);
    }

    #[test]
    fn unknown_state_chooses_the_fail_safe_mode() {
        let mut w = watcher_without_state("unknown-normal");
        w.unknown_state = Mode::Normal;
        std::fs::write(&w.state_file, b"{").unwrap();
        w.restore_saved_state();
        let served = w.gate.load();
        assert_eq!(
            (served.source, served.doc.mode),
            (StateSource::FailSafe, Mode::Normal)
        );
        assert_eq!(w.metrics.gate_fail_safe.get(), 1);
    }

    #[test]
    fn without_a_state_file_the_first_read_decides() {
        // No file: the default state until the first read has finished...
        let w = watcher_without_state("missing");
        w.restore_saved_state();
        assert_eq!(w.gate.load().source, StateSource::Default);
        assert_eq!(refused(&w, "damaged"), 0);
        // ...which brought nothing: the fail-safe state.
        w.fail_safe_if_unknown();
        let served = w.gate.load();
        assert_eq!(
            (served.source, served.doc.mode),
            (StateSource::FailSafe, Mode::Maintenance)
        );
        // A state from Consul, or a restored one, is kept.
        let w = watcher_without_state("missing-answered");
        w.restore_saved_state();
        w.apply(value("read_only", 5, 5), true);
        w.fail_safe_if_unknown();
        assert_eq!(w.gate.load().source, StateSource::Consul);
        let w = watcher_without_state("restored");
        let saved = SavedState {
            key: "gate".into(),
            doc: GateDoc::with_mode(Mode::ReadOnly),
            applied_index: 9,
        };
        state_file::save(&w.state_file, &saved).unwrap();
        w.restore_saved_state();
        w.fail_safe_if_unknown();
        assert_eq!(w.gate.load().source, StateSource::StateFile);
        assert_eq!(w.metrics.gate_fail_safe.get(), 0);
    }

    #[tokio::test]
    async fn a_refused_first_value_leaves_the_state_unknown() {
        let w = watcher_without_state("refused-first");
        w.restore_saved_state();
        let mut read = value("maintenance", 8, 8);
        read.entry.as_mut().unwrap().value = Some(b"yes".to_vec());
        w.apply(read, true);
        w.fail_safe_if_unknown();
        assert_eq!(w.gate.load().source, StateSource::FailSafe);
        // A valid value later replaces it, once the leader confirms it.
        assert!(matches!(
            w.apply(value("normal", 9, 9), false),
            Taken::Doubted
        ));
        assert_eq!(w.gate.load().source, StateSource::FailSafe);
        w.apply(value("normal", 9, 9), true);
        let served = w.gate.load();
        assert_eq!(
            (served.source, served.doc.mode),
            (StateSource::Consul, Mode::Normal)
        );
    }

    #[test]
    fn a_state_without_an_index_is_replaced_by_the_leaders_word_only() {
        let b = StateBuilder::for_test(
            vec!["ui".into()],
            PageTemplate::parse("<p>{{reason}}</p>").unwrap(),
            "back soon".into(),
        );
        for current in [
            b.initial(),
            b.fail_safe(Mode::Maintenance, OffsetDateTime::UNIX_EPOCH),
        ] {
            for read in [missing(1), value("maintenance", 2, 2)] {
                assert_eq!(judge(&current, &read, false, None), Judgement::Unconfirmed);
                assert_eq!(judge(&current, &read, true, None), Judgement::New);
            }
        }
    }

    #[tokio::test]
    async fn the_listener_opens_on_the_fail_safe_state_when_nothing_is_known() {
        // Consul at 127.0.0.1:1 refuses connections; there is no state file.
        let w = watcher_without_state("service");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (ready, mut is_ready) = tokio::sync::watch::channel(false);
        let run = w.start_with_ready_notifier(shutdown, ServiceReadyNotifier::new(ready));
        let check = async {
            is_ready.wait_for(|r| *r).await.unwrap();
            let served = w.gate.load();
            assert_eq!(
                (served.source, served.doc.mode),
                (StateSource::FailSafe, Mode::Maintenance)
            );
            stop.send(true).unwrap();
        };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, check) })
            .await
            .expect("the watcher got ready and stopped");
    }

    #[test]
    fn an_open_blocking_read_is_contact_however_long_ago_the_last_answer_came() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let limit = Duration::from_secs(30);
        let mut status = WatchStatus::default();
        assert!(status.is_stale(t0, limit), "never answered");
        status.last_answer_at = Some(t0);
        status.open_read_until = Some(t0 + Duration::from_secs(65));
        let idle = t0 + Duration::from_secs(59);
        assert_eq!(status.seconds_without_contact(idle), Some(0.0));
        assert!(!status.is_stale(idle, limit));
        // The read is overdue: counted from the last answer again.
        let overdue = t0 + Duration::from_secs(66);
        assert_eq!(status.seconds_without_contact(overdue), Some(66.0));
        assert!(status.is_stale(overdue, limit));
        status.open_read_until = None;
        assert!(
            status.is_stale(idle, limit),
            "no read open: 59 s since the answer"
        );
    }
}
