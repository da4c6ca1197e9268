//! Routes split between their own pool and a second one by the split document
//! ([`drawbridge_core::split`]), followed in Consul as the gate key is: [`SplitWatcher`] applies
//! each new valid document whole ([`SplitState`], swapped at once, so a request sees one
//! document from its first filter to its log line), refuses a bad one (the split stays as it
//! was, and `/status` says why), and never steps back to an older document a lagging server
//! answers. Each applied document is saved beside the gate's state file and restored at start,
//! so a proxy restarted while Consul is away keeps its split; without one (or with one that
//! cannot be used), nothing is split until Consul answers. A missing key splits nothing.
//!
//! A client keeps its side: its bucket (0–99) comes from the [`SPLIT_COOKIE`] cookie, or for a
//! client without a valid one from its address (the same on every proxy), and is set in that
//! cookie with the answer; buckets below a route's percentage go to the second pool. Answers of a split route name the pool that
//! served them ([`POOL_HEADER`]), and each side's requests, answers by class and durations are
//! counted apart, so a canary is compared with the pool it replaces.

use crate::follow::{follow, Followed, ReadKind, Taken};
use crate::metrics::Metrics;
use crate::one_line::OneLine;
use crate::state_file::{self, SavedState};
use crate::watcher::answer_index;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::consul::{self, Client, Consistency, Failover, KvRead};
use drawbridge_core::split::SplitDoc;
use drawbridge_core::status::{RejectedValue, SplitStatus};
use drawbridge_core::timestamp;
use http::header::{HeaderName, HeaderValue};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use prometheus::{Histogram, IntCounter};
use rand::Rng;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The cookie that keeps a client's bucket.
pub const SPLIT_COOKIE: &str = "drawbridge_split";

/// How long a client keeps its bucket without a request (the cookie's `Max-Age`).
const BUCKET_KEPT_SECS: u64 = 7 * 24 * 3600;

/// The header that names the pool an answer of a split route came from.
pub const POOL_HEADER: HeaderName = HeaderName::from_static("x-drawbridge-pool");

/// The classes answers are counted by, per side.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// A client's place among the buckets, and whether it was drawn for this request (its cookie
/// is then set with the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub value: u8,
    pub drawn: bool,
}

impl Bucket {
    /// The bucket a cookie value names (`0` to `99`); without a valid one, the bucket of the
    /// client's address (the same on every proxy, so a client that keeps no cookie keeps its
    /// side too), or one drawn at random when the address is not known.
    pub fn from_cookie(value: Option<&str>, client: Option<IpAddr>) -> Bucket {
        if let Some(value) = value
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|b| *b < 100)
        {
            return Bucket {
                value,
                drawn: false,
            };
        }
        let value = match client {
            Some(ip) => address_bucket(ip),
            None => rand::rng().random_range(0..100),
        };
        Bucket { value, drawn: true }
    }

    /// The `Set-Cookie` value that keeps this bucket (`Secure` over TLS).
    pub fn cookie(self, tls: bool) -> HeaderValue {
        let secure = if tls { "; Secure" } else { "" };
        let text = format!(
            "{SPLIT_COOKIE}={}; Path=/; Max-Age={BUCKET_KEPT_SECS}; HttpOnly; SameSite=Lax{secure}",
            self.value
        );
        HeaderValue::try_from(text).expect("a cookie of digits and fixed words is a header value")
    }
}

/// The bucket of address `ip`: FNV-1a of its bytes (of an IPv6 address, its /64, which a
/// client keeps while its privacy addresses change), modulo 100, so that every proxy, of any
/// version, puts an address in the same bucket.
fn address_bucket(ip: IpAddr) -> u8 {
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
    };
    let hash = octets.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 100) as u8
}

/// Which pool of a split route served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The route's own pool.
    Own,
    /// The document's second pool.
    Second,
}

/// One side of a split route: its pool and its meters.
pub struct SideMeter {
    /// Index into the edge's pools.
    pub pool: usize,
    /// The pool's name, as [`POOL_HEADER`] carries it.
    pub pool_header: HeaderValue,
    answers: [IntCounter; 6],
    duration: Histogram,
}

impl SideMeter {
    /// Counts an answer of `status` (0: none was written) that took `seconds`.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        self.answers[class].inc();
        self.duration.observe(seconds);
    }
}

/// A split route: its second pool's share and both sides.
struct RouteSides {
    percent: u8,
    own: SideMeter,
    second: SideMeter,
}

/// The split document applied, checked against the routes and pools, with the meters of each
/// side resolved.
pub struct SplitState {
    /// The Consul index it stands for; 0 before the first answer.
    pub applied_index: u64,
    /// It stands for a missing key.
    pub from_missing_key: bool,
    /// The document as applied (nothing split before the first answer or for a missing key).
    pub doc: SplitDoc,
    /// By route index.
    by_route: Vec<Option<RouteSides>>,
}

impl SplitState {
    /// Nothing split, standing for no answer yet.
    pub fn none(routes: usize) -> SplitState {
        SplitState {
            applied_index: 0,
            from_missing_key: false,
            doc: SplitDoc::default(),
            by_route: (0..routes).map(|_| None).collect(),
        }
    }

    /// The side of route `route` a client in `bucket` goes to, when the route is split.
    pub fn side(&self, route: usize, bucket: u8) -> Option<(Side, &SideMeter)> {
        let sides = self.by_route.get(route)?.as_ref()?;
        Some(if bucket < sides.percent {
            (Side::Second, &sides.second)
        } else {
            (Side::Own, &sides.own)
        })
    }

    /// Whether route `route` is split.
    pub fn splits(&self, route: usize) -> bool {
        self.by_route.get(route).is_some_and(Option::is_some)
    }

    /// The meter of `side` of route `route`.
    pub fn meter(&self, route: usize, side: Side) -> Option<&SideMeter> {
        let sides = self.by_route.get(route)?.as_ref()?;
        Some(match side {
            Side::Own => &sides.own,
            Side::Second => &sides.second,
        })
    }
}

/// The routes and pools a document is checked against, and the metrics its sides count into.
pub struct SplitBuilder {
    /// Route names with their own pool's index, by route index.
    pub routes: Vec<(String, usize)>,
    /// Pool names, by pool index.
    pub pools: Vec<String>,
    pub metrics: Arc<Metrics>,
}

impl SplitBuilder {
    /// The state for `doc` at `index`.
    ///
    /// # Errors
    /// A route or pool the config does not have, or a route split towards its own pool.
    pub fn build(&self, doc: SplitDoc, index: u64) -> Result<SplitState, String> {
        let mut by_route: Vec<Option<RouteSides>> = self.routes.iter().map(|_| None).collect();
        for (name, split) in &doc.routes {
            let Some(route) = self.routes.iter().position(|(r, _)| r == name) else {
                return Err(format!(
                    "route {name:?} is not one of this proxy's routes ({})",
                    self.route_names()
                ));
            };
            let Some(to) = self.pools.iter().position(|p| *p == split.to) else {
                return Err(format!(
                    "route {name}: pool {:?} is not one of this proxy's pools ({})",
                    split.to,
                    self.pools.join(", ")
                ));
            };
            let own = self.routes[route].1;
            if to == own {
                return Err(format!(
                    "route {name}: pool {} is already its own pool; name a second one",
                    split.to
                ));
            }
            by_route[route] = Some(RouteSides {
                percent: split.percent,
                own: self.meter(name, own),
                second: self.meter(name, to),
            });
        }
        Ok(SplitState {
            applied_index: index,
            from_missing_key: false,
            doc,
            by_route,
        })
    }

    fn route_names(&self) -> String {
        let names: Vec<&str> = self.routes.iter().map(|(r, _)| r.as_str()).collect();
        names.join(", ")
    }

    fn meter(&self, route: &str, pool: usize) -> SideMeter {
        let name = self.pools[pool].as_str();
        let m = &self.metrics;
        SideMeter {
            pool,
            pool_header: HeaderValue::try_from(name)
                .unwrap_or_else(|_| HeaderValue::from_static("unnamed")),
            answers: CLASSES.map(|class| m.split_answers.with_label_values(&[route, name, class])),
            duration: m.split_duration.with_label_values(&[route, name]),
        }
    }
}

/// How the watch on the split key is doing, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct SplitWatch {
    pub last_error: Option<String>,
    pub last_rejected: Option<RejectedValue>,
}

/// Follows the split key and applies its documents.
pub struct SplitWatcher {
    pub consul: Arc<Failover>,
    pub key: String,
    /// Where the applied document is saved (`server.state_file` with `.split.json`).
    pub state_file: PathBuf,
    pub wait: Duration,
    pub consistency: Consistency,
    pub builder: SplitBuilder,
    pub state: Arc<ArcSwap<SplitState>>,
    pub watch: Arc<ArcSwap<SplitWatch>>,
}

impl SplitWatcher {
    /// Applies the document saved by the last run for this key, if there is one that still
    /// fits the routes and pools; a file that cannot be used is logged and counted.
    fn restore_saved(&self) {
        let file = self.state_file.display();
        let refusal = match state_file::load::<SplitDoc>(&self.state_file, &self.key) {
            Ok(None) => return,
            Ok(Some(saved)) => match self.builder.build(saved.doc, saved.applied_index) {
                Ok(state) => {
                    tracing::info!(
                        index = state.applied_index,
                        routes = ?state.doc.routes,
                        file = %file,
                        "restored the last applied split"
                    );
                    self.builder
                        .metrics
                        .split_applied_index
                        .set(i64::try_from(state.applied_index).unwrap_or(i64::MAX));
                    self.state.store(Arc::new(state));
                    return;
                }
                Err(detail) => state_file::Unusable::InvalidDocument {
                    path: self.state_file.clone(),
                    detail: format!("it does not fit this proxy's routes and pools: {detail}"),
                },
            },
            Err(refusal) => refusal,
        };
        self.builder
            .metrics
            .state_file_refused
            .with_label_values(&[refusal.reason()])
            .inc();
        tracing::error!(
            file = %file,
            reason = refusal.reason(),
            "{refusal}; nothing is split until Consul answers"
        );
    }

    fn update_watch(&self, change: impl Fn(&mut SplitWatch)) {
        let mut next = SplitWatch::clone(&self.watch.load());
        change(&mut next);
        self.watch.store(Arc::new(next));
    }

    /// Takes one answer; `confirmed` when the leader gave it.
    fn apply(&self, read: KvRead, confirmed: bool) -> Taken {
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
                "refused to step back to an older split document, confirming with the leader"
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
        let missing = read.entry.is_none();
        let built = match &read.entry {
            None => Ok(SplitDoc::default()),
            Some(entry) => SplitDoc::parse(entry.value.as_deref().unwrap_or_default())
                .map_err(|e| e.to_string()),
        }
        .and_then(|doc| self.builder.build(doc, index))
        .map(|state| SplitState {
            from_missing_key: missing,
            ..state
        });
        match built {
            Ok(state) => {
                tracing::info!(
                    index,
                    confirmed,
                    routes = ?state.doc.routes,
                    "split applied"
                );
                self.builder
                    .metrics
                    .split_applied_index
                    .set(i64::try_from(index).unwrap_or(i64::MAX));
                let saved = SavedState {
                    key: self.key.clone(),
                    doc: state.doc.clone(),
                    applied_index: index,
                };
                self.state.store(Arc::new(state));
                if let Err(e) = state_file::save(&self.state_file, &saved) {
                    tracing::error!(
                        file = %self.state_file.display(),
                        "cannot save the split (a restart during a Consul outage would split nothing): {e}"
                    );
                }
            }
            Err(error) => {
                tracing::error!(
                    key = %self.key,
                    index,
                    "refused the value at the split key, keeping the split as it was: {}",
                    OneLine(&error)
                );
                self.builder.metrics.split_rejected_values.inc();
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

    /// What `/status` shows of the split.
    pub fn status(key: &str, state: &SplitState, watch: &SplitWatch) -> SplitStatus {
        SplitStatus {
            key: key.to_owned(),
            applied_index: state.applied_index,
            routes: state.doc.routes.clone(),
            by: state.doc.by.clone(),
            last_error: watch.last_error.clone(),
            last_rejected: watch.last_rejected.clone(),
        }
    }
}

#[async_trait]
impl Followed for SplitWatcher {
    type Answer = KvRead;

    fn describe(&self) -> String {
        format!("the split key {}", self.key)
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
impl BackgroundService for SplitWatcher {
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
mod tests {
    use super::*;
    use drawbridge_core::consul::{KvEntry, QueryMeta};
    use drawbridge_core::split::RouteSplit;

    fn builder() -> SplitBuilder {
        SplitBuilder {
            routes: vec![("ui".into(), 0), ("api".into(), 1)],
            pools: vec!["ui".into(), "api".into(), "api-green".into()],
            metrics: Arc::new(Metrics::new().unwrap()),
        }
    }

    fn watcher(name: &str) -> SplitWatcher {
        let dir =
            std::env::temp_dir().join(format!("drawbridge-split-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        SplitWatcher {
            consul: Arc::new(Failover::new(&["http://127.0.0.1:1".into()], None).unwrap()),
            key: "gate/split".into(),
            state_file: dir.join("gate-state.split.json"),
            wait: Duration::from_secs(60),
            consistency: Consistency::Default,
            builder: builder(),
            state: Arc::new(ArcSwap::from_pointee(SplitState::none(2))),
            watch: Arc::default(),
        }
    }

    fn read(value: Option<&str>, modify_index: u64, index: u64) -> KvRead {
        KvRead {
            entry: value.map(|v| KvEntry {
                key: "gate/split".into(),
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

    /// A document splitting each `(route, to, percent)`.
    fn doc(routes: &[(&str, &str, u8)]) -> SplitDoc {
        SplitDoc {
            routes: routes
                .iter()
                .map(|(route, to, percent)| {
                    (
                        route.to_string(),
                        RouteSplit {
                            to: to.to_string(),
                            percent: *percent,
                        },
                    )
                })
                .collect(),
            by: None,
        }
    }

    const TEN: &str = r#"{"routes": {"api": {"to": "api-green", "percent": 10}}}"#;

    #[test]
    fn buckets_below_the_percentage_go_to_the_second_pool() {
        let state = builder()
            .build(doc(&[("api", "api-green", 10)]), 7)
            .unwrap();
        assert!(!state.splits(0));
        assert!(state.side(0, 0).is_none());
        let (side, meter) = state.side(1, 9).unwrap();
        assert_eq!((side, meter.pool), (Side::Second, 2));
        assert_eq!(meter.pool_header, "api-green");
        let (side, meter) = state.side(1, 10).unwrap();
        assert_eq!((side, meter.pool), (Side::Own, 1));
        let all = builder()
            .build(doc(&[("api", "api-green", 100)]), 8)
            .unwrap();
        assert_eq!(all.side(1, 99).unwrap().0, Side::Second);
        let none = builder().build(doc(&[("api", "api-green", 0)]), 9).unwrap();
        assert_eq!(none.side(1, 0).unwrap().0, Side::Own);
    }

    #[test]
    fn a_document_naming_what_the_proxy_does_not_have_is_refused() {
        let b = builder();
        let err = |d| b.build(d, 1).err().unwrap();
        assert!(err(doc(&[("admin", "ui", 5)])).contains("route \"admin\" is not one of"));
        assert!(err(doc(&[("api", "api-blue", 5)])).contains("pool \"api-blue\" is not one of"));
        assert!(err(doc(&[("api", "api", 5)])).contains("already its own pool"));
    }

    #[test]
    fn a_cookie_keeps_the_bucket_and_else_the_address_gives_one() {
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(
            Bucket::from_cookie(Some("42"), Some(client)),
            Bucket {
                value: 42,
                drawn: false
            }
        );
        let by_address = Bucket::from_cookie(None, Some(client));
        assert!(by_address.drawn && by_address.value < 100);
        for bad in [Some("100"), Some("-1"), Some("x"), Some(""), Some("4 2")] {
            assert_eq!(
                Bucket::from_cookie(bad, Some(client)),
                by_address,
                "{bad:?}"
            );
            let b = Bucket::from_cookie(bad, None);
            assert!(b.drawn && b.value < 100, "{bad:?}: {b:?}");
        }
        // FNV-1a of 203.0.113.7: fixed, so proxies of every version agree.
        assert_eq!(by_address.value, address_bucket(client));
        let spread: std::collections::BTreeSet<u8> = (0..=255u8)
            .map(|i| address_bucket(IpAddr::from([10, 0, 0, i])))
            .collect();
        assert!(
            spread.len() > 80,
            "{} buckets for 256 addresses",
            spread.len()
        );
        let cookie = Bucket {
            value: 7,
            drawn: true,
        }
        .cookie(true);
        assert_eq!(
            cookie,
            "drawbridge_split=7; Path=/; Max-Age=604800; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn new_documents_apply_bad_ones_change_nothing_and_old_ones_are_doubted() {
        let w = watcher("apply");
        assert_eq!(w.apply(read(Some(TEN), 10, 10), false), Taken::Settled);
        assert_eq!(w.state.load().applied_index, 10);
        assert!(w.state.load().splits(1));

        // Saved, and restored by the next start.
        let next = SplitWatcher {
            state_file: w.state_file.clone(),
            ..watcher("apply-next")
        };
        next.restore_saved();
        assert_eq!(next.state.load().applied_index, 10);
        assert_eq!(next.state.load().side(1, 5).unwrap().0, Side::Second);
        // A file for another key is refused: nothing split.
        let other = SplitWatcher {
            state_file: w.state_file.clone(),
            key: "other/split".into(),
            ..watcher("apply-other")
        };
        other.restore_saved();
        assert!(!other.state.load().splits(1));
        assert_eq!(
            other
                .builder
                .metrics
                .state_file_refused
                .with_label_values(&["other_key"])
                .get(),
            1
        );

        // Refused: the split stays, the reason is kept.
        let bad = r#"{"routes": {"api": {"to": "api-green", "percent": 150}}}"#;
        assert_eq!(w.apply(read(Some(bad), 11, 11), false), Taken::Settled);
        assert_eq!(w.state.load().applied_index, 10);
        let rejected = w.watch.load().last_rejected.clone().unwrap();
        assert_eq!(rejected.modify_index, 11);
        assert!(
            rejected.error.contains("more than 100"),
            "{}",
            rejected.error
        );
        assert_eq!(w.builder.metrics.split_rejected_values.get(), 1);

        // An older answer from a server behind: doubted unless the leader says so.
        assert_eq!(w.apply(read(None, 0, 5), false), Taken::Doubted);
        assert!(w.state.load().splits(1));

        // The key deleted: nothing split.
        assert_eq!(w.apply(read(None, 0, 12), true), Taken::Settled);
        let state = w.state.load();
        assert!(state.from_missing_key && !state.splits(1));
        assert_eq!(state.applied_index, 12);
    }
}
