//! A JSON document key followed in Consul as the gate key is (the split document, the
//! maintenance windows): [`DocWatcher`] applies each new valid document whole ([`Applied`],
//! swapped at once, so a request sees one document from its first filter to its log line),
//! refuses a bad one (what was applied stays, and `/status` says why), and never steps back to
//! an older document a lagging server answers. Each applied document is saved beside the gate's
//! state file and restored at start, so a proxy restarted while Consul is away keeps it; without
//! one (or with one that cannot be used) the kind's default document applies until Consul
//! answers, as it does for a missing key.

use crate::follow::{follow, Followed, ReadKind, Taken};
use crate::metrics::Metrics;
use crate::one_line::OneLine;
use crate::state_file::{self, Document, SavedState};
use crate::watcher::answer_index;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::consul::{self, Client, Consistency, Failover, KvRead};
use drawbridge_core::status::RejectedValue;
use drawbridge_core::timestamp;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use prometheus::{IntCounter, IntGauge};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// What a followed document is, and what the proxy makes of it.
pub trait DocKind: Send + Sync + 'static {
    /// The document as stored; its default stands for a missing key.
    type Doc: Document + Clone + Default + Send + Sync + 'static;
    /// The document made ready for the request path.
    type Built: Send + Sync + 'static;
    /// The document's name in log lines (`split`, `windows`).
    const NAME: &'static str;
    /// What the proxy does while it has no document, for log lines.
    const WITHOUT: &'static str;

    /// Reads a value of the key.
    ///
    /// # Errors
    /// What is wrong with the value.
    fn parse(raw: &[u8]) -> Result<Self::Doc, String>;

    /// `doc` in a few words for a log line (a document may be large).
    fn summary(doc: &Self::Doc) -> String;

    /// Makes `doc` ready for this proxy.
    ///
    /// # Errors
    /// What in `doc` does not fit this proxy (a route or pool it does not have).
    fn build(&self, doc: &Self::Doc) -> Result<Self::Built, String>;

    /// The metrics the counters below are part of.
    fn metrics(&self) -> &Metrics;

    /// The gauge of the applied document's Consul index.
    fn applied_index_gauge(&self) -> &IntGauge;

    /// The counter of refused values.
    fn rejected_counter(&self) -> &IntCounter;
}

/// A document applied, with what the proxy made of it (reached through `Deref`).
pub struct Applied<K: DocKind> {
    /// The Consul index it stands for; 0 before the first answer.
    pub applied_index: u64,
    /// It stands for a missing key.
    pub from_missing_key: bool,
    /// The document as applied (the default before the first answer or for a missing key).
    pub doc: K::Doc,
    pub built: K::Built,
}

impl<K: DocKind> Applied<K> {
    /// The default document, standing for no answer yet.
    pub fn nothing(kind: &K) -> Applied<K> {
        let doc = K::Doc::default();
        let built = kind
            .build(&doc)
            .expect("the default document names nothing a proxy could lack");
        Applied {
            applied_index: 0,
            from_missing_key: false,
            doc,
            built,
        }
    }
}

impl<K: DocKind> Deref for Applied<K> {
    type Target = K::Built;

    fn deref(&self) -> &K::Built {
        &self.built
    }
}

/// How the watch on a document key is doing, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct DocWatch {
    pub last_error: Option<String>,
    pub last_rejected: Option<RejectedValue>,
}

/// Follows one document key and applies its documents.
pub struct DocWatcher<K: DocKind> {
    pub consul: Arc<Failover>,
    pub key: String,
    /// Where the applied document is saved (beside `server.state_file`).
    pub state_file: PathBuf,
    pub wait: Duration,
    pub consistency: Consistency,
    pub kind: K,
    pub state: Arc<ArcSwap<Applied<K>>>,
    pub watch: Arc<ArcSwap<DocWatch>>,
}

impl<K: DocKind> DocWatcher<K> {
    /// Applies the document saved by the last run for this key, if there is one that still
    /// fits this proxy; a file that cannot be used is logged and counted.
    pub(crate) fn restore_saved(&self) {
        let file = self.state_file.display();
        let refusal = match state_file::load::<K::Doc>(&self.state_file, &self.key) {
            Ok(None) => return,
            Ok(Some(saved)) => match self.kind.build(&saved.doc) {
                Ok(built) => {
                    tracing::info!(
                        index = saved.applied_index,
                        doc = %K::summary(&saved.doc),
                        file = %file,
                        "restored the last applied {} document",
                        K::NAME
                    );
                    self.kind
                        .applied_index_gauge()
                        .set(i64::try_from(saved.applied_index).unwrap_or(i64::MAX));
                    self.state.store(Arc::new(Applied {
                        applied_index: saved.applied_index,
                        from_missing_key: false,
                        doc: saved.doc,
                        built,
                    }));
                    return;
                }
                Err(detail) => state_file::Unusable::InvalidDocument {
                    path: self.state_file.clone(),
                    detail: format!("it does not fit this proxy: {detail}"),
                },
            },
            Err(refusal) => refusal,
        };
        self.kind
            .metrics()
            .state_file_refused
            .with_label_values(&[refusal.reason()])
            .inc();
        tracing::error!(
            file = %file,
            reason = refusal.reason(),
            "{refusal}; {} until Consul answers",
            K::WITHOUT
        );
    }

    fn update_watch(&self, change: impl Fn(&mut DocWatch)) {
        let mut next = DocWatch::clone(&self.watch.load());
        change(&mut next);
        self.watch.store(Arc::new(next));
    }

    /// Takes one answer; `confirmed` when the leader gave it.
    pub(crate) fn apply(&self, read: KvRead, confirmed: bool) -> Taken {
        let current = self.state.load();
        let index = answer_index(&read);
        let unchanged = current.applied_index > 0
            && match &read.entry {
                Some(_) => !current.from_missing_key && current.applied_index == index,
                None => current.from_missing_key,
            };
        if unchanged {
            return Taken::Settled;
        }
        if !confirmed && index < current.applied_index {
            tracing::warn!(
                key = %self.key,
                applied = current.applied_index,
                answered = index,
                "refused to step back to an older {} document, confirming with the leader",
                K::NAME
            );
            return Taken::Doubted;
        }
        let rejected_before = self
            .watch
            .load()
            .last_rejected
            .as_ref()
            .is_some_and(|r| r.modify_index == index);
        if read.entry.is_some() && rejected_before {
            return Taken::Settled;
        }
        let from_missing_key = read.entry.is_none();
        let doc = match &read.entry {
            None => Ok(K::Doc::default()),
            Some(entry) => K::parse(entry.value.as_deref().unwrap_or_default()),
        };
        let built = doc.and_then(|doc| self.kind.build(&doc).map(|built| (doc, built)));
        match built {
            Ok((doc, built)) => {
                tracing::info!(
                    index,
                    confirmed,
                    doc = %K::summary(&doc),
                    "{} document applied",
                    K::NAME
                );
                self.kind
                    .applied_index_gauge()
                    .set(i64::try_from(index).unwrap_or(i64::MAX));
                let saved = SavedState {
                    key: self.key.clone(),
                    doc: doc.clone(),
                    applied_index: index,
                };
                self.state.store(Arc::new(Applied {
                    applied_index: index,
                    from_missing_key,
                    doc,
                    built,
                }));
                if let Err(e) = state_file::save(&self.state_file, &saved) {
                    tracing::error!(
                        file = %self.state_file.display(),
                        "cannot save the {} document (a restart during a Consul outage would \
                         lose it): {e}",
                        K::NAME
                    );
                }
            }
            Err(error) => {
                tracing::error!(
                    key = %self.key,
                    index,
                    "refused the value at the {} key, keeping what was applied: {}",
                    K::NAME,
                    OneLine(&error)
                );
                self.kind.rejected_counter().inc();
                let at = timestamp::full(OffsetDateTime::now_utc());
                self.update_watch(|w| {
                    w.last_rejected = Some(RejectedValue {
                        modify_index: index,
                        error: error.clone(),
                        at: at.clone(),
                    });
                });
            }
        }
        Taken::Settled
    }
}

#[async_trait]
impl<K: DocKind> Followed for DocWatcher<K> {
    type Answer = KvRead;

    fn describe(&self) -> String {
        format!("the {} key {}", K::NAME, self.key)
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
        let read = client.kv_get(&self.key, &options).await?;
        let answered = read.meta.index;
        Ok((read, answered))
    }

    async fn take(&self, read: KvRead, _index: u64, kind: ReadKind) -> Taken {
        if self.watch.load().last_error.is_some() {
            self.update_watch(|w| w.last_error = None);
        }
        self.apply(read, kind == ReadKind::Confirm)
    }

    fn failed(&self, error: &consul::Error) {
        let text = error.to_string();
        self.update_watch(|w| w.last_error = Some(text.clone()));
    }
}

#[async_trait]
impl<K: DocKind> BackgroundService for DocWatcher<K> {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        self.restore_saved();
        follow(self, shutdown, ready).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use drawbridge_core::consul::{KvEntry, KvRead, QueryMeta};
    use std::time::Duration;

    /// An answer for key `key`: `value` at `modify_index` (none: the key is missing), with
    /// Consul's index `index`.
    pub(crate) fn read(key: &str, value: Option<&str>, modify_index: u64, index: u64) -> KvRead {
        KvRead {
            entry: value.map(|v| KvEntry {
                key: key.into(),
                value: Some(v.as_bytes().to_vec()),
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
}
