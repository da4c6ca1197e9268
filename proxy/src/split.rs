//! Routes split between their own pool and a second one by the split document
//! ([`drawbridge_core::split`]), followed in Consul as the gate key is ([`crate::doc_watch`]):
//! a bad document changes nothing, a restart while Consul is away keeps the last one, and
//! without one nothing is split until Consul answers. A missing key splits nothing.
//!
//! A client keeps its side: its bucket (0–99) comes from the [`SPLIT_COOKIE`] cookie, or for a
//! client without a valid one from its address (the same on every proxy), and is set in that
//! cookie with the answer; buckets below a route's percentage go to the second pool. Answers of a split route name the pool that
//! served them ([`POOL_HEADER`]), and each side's requests, answers by class and durations are
//! counted apart, so a canary is compared with the pool it replaces.

use crate::doc_watch::{Applied, DocKind, DocWatch, DocWatcher};
use crate::metrics::Metrics;
use drawbridge_core::split::SplitDoc;
use drawbridge_core::status::SplitStatus;
use http::header::{HeaderName, HeaderValue};
use prometheus::{Histogram, IntCounter, IntGauge};
use rand::Rng;
use std::net::IpAddr;
use std::sync::Arc;

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

/// The routes a split document splits, checked against the routes and pools, with the meters
/// of each side resolved.
pub struct SplitRoutes {
    /// By route index.
    by_route: Vec<Option<RouteSides>>,
}

/// The split document applied.
pub type SplitState = Applied<SplitBuilder>;

/// Follows the split key.
pub type SplitWatcher = DocWatcher<SplitBuilder>;

impl SplitRoutes {
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
    /// The routes `doc` splits.
    ///
    /// # Errors
    /// A route or pool the config does not have, or a route split towards its own pool.
    fn build_routes(&self, doc: &SplitDoc) -> Result<SplitRoutes, String> {
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
        Ok(SplitRoutes { by_route })
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

impl DocKind for SplitBuilder {
    type Doc = SplitDoc;
    type Built = SplitRoutes;
    const NAME: &'static str = "split";
    const WITHOUT: &'static str = "nothing is split";

    fn parse(raw: &[u8]) -> Result<SplitDoc, String> {
        SplitDoc::parse(raw).map_err(|e| e.to_string())
    }

    fn summary(doc: &SplitDoc) -> String {
        format!("{:?}", doc.routes)
    }

    fn build(&self, doc: &SplitDoc) -> Result<SplitRoutes, String> {
        self.build_routes(doc)
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn applied_index_gauge(&self) -> &IntGauge {
        &self.metrics.split_applied_index
    }

    fn rejected_counter(&self) -> &IntCounter {
        &self.metrics.split_rejected_values
    }
}

/// What `/status` shows of the split.
pub fn status(key: &str, state: &SplitState, watch: &DocWatch) -> SplitStatus {
    SplitStatus {
        key: key.to_owned(),
        applied_index: state.applied_index,
        routes: state.doc.routes.clone(),
        by: state.doc.by.clone(),
        last_error: watch.last_error.clone(),
        last_rejected: watch.last_rejected.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc_watch::tests::read as read_of;
    use crate::follow::Taken;
    use arc_swap::ArcSwap;
    use drawbridge_core::consul::{Consistency, Failover, KvRead};
    use drawbridge_core::split::RouteSplit;
    use std::time::Duration;

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
            kind: builder(),
            state: Arc::new(ArcSwap::from_pointee(Applied::nothing(&builder()))),
            watch: Arc::default(),
        }
    }

    fn read(value: Option<&str>, modify_index: u64, index: u64) -> KvRead {
        read_of("gate/split", value, modify_index, index)
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
        let state = builder().build(&doc(&[("api", "api-green", 10)])).unwrap();
        assert!(!state.splits(0));
        assert!(state.side(0, 0).is_none());
        let (side, meter) = state.side(1, 9).unwrap();
        assert_eq!((side, meter.pool), (Side::Second, 2));
        assert_eq!(meter.pool_header, "api-green");
        let (side, meter) = state.side(1, 10).unwrap();
        assert_eq!((side, meter.pool), (Side::Own, 1));
        let all = builder().build(&doc(&[("api", "api-green", 100)])).unwrap();
        assert_eq!(all.side(1, 99).unwrap().0, Side::Second);
        let none = builder().build(&doc(&[("api", "api-green", 0)])).unwrap();
        assert_eq!(none.side(1, 0).unwrap().0, Side::Own);
    }

    #[test]
    fn a_document_naming_what_the_proxy_does_not_have_is_refused() {
        let b = builder();
        let err = |d| b.build(&d).err().unwrap();
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
                .kind
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
        assert_eq!(w.kind.metrics.split_rejected_values.get(), 1);

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
