//! A thin async client for exactly the Consul HTTP endpoints `drawbridge` and `maintctl` use.
//!
//! KV with blocking reads, sessions for locks, the agent endpoints (maintenance, services) and
//! health reads, on `reqwest` over plain HTTP. Written against Consul 1.8.7; see
//! `shared/PINGORA-CONSUL-NOTES.md` §3 for why it is ours rather than a published crate.
//!
//! # Layout
//! * this module: the read options ([`QueryOptions`], [`Consistency`]), what a read says about
//!   its answer ([`QueryMeta`]), and the timeouts.
//! * `transport`: [`Client`]: one request to one agent, failures mapped to [`Error`], the
//!   query headers read, paths and query strings escaped.
//! * `error`: [`Error`], one variant per failure a caller branches on.
//! * `kv`: reads (blocking capable, a missing key is a value), writes with cas/acquire/release.
//! * `session`: create, renew (404 means "lock lost"), destroy, info.
//! * `agent`: the endpoints that act on the agent called: self, maintenance, service (de)registration.
//! * `health`: service and node health, the leader.
//! * `blocking`: the index rules and the backoff a watch loop needs.
//! * `failover`: several agent addresses for one follower, moving on when one cannot serve.

mod agent;
pub mod blocking;
mod duration;
mod error;
mod failover;
mod health;
mod kv;
mod session;
mod transport;

use std::time::Duration;

pub use agent::{AgentSelf, CheckTarget, ServiceCheck, ServiceRegistration};
pub use blocking::{next_index, Backoff, TokenBucket};
pub use error::{DecodeSource, Error};
pub use failover::Failover;
pub use health::{CheckStatus, HealthCheck, ServiceEntry, ServiceInstance, ServiceNode};
pub use kv::{KvEntry, KvRead, PutMode};
pub use session::{SessionBehavior, SessionInfo, SessionRequest};
pub use transport::Client;
// What the endpoint modules build their calls from.
use transport::{escape_key, escape_segment, Query, Request};

/// The check id Consul gives node maintenance (`api.NodeMaint` in Consul's Go API).
pub const NODE_MAINTENANCE_CHECK: &str = "_node_maintenance";

/// The check id prefix of service maintenance; the service id follows (`api.ServiceMaintPrefix`).
pub const SERVICE_MAINTENANCE_CHECK_PREFIX: &str = "_service_maintenance:";

/// The address used when neither an argument nor `CONSUL_HTTP_ADDR` gives one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// Timeout of a call that does not block.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of establishing the TCP connection, kept short so a dead agent is noticed fast.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Slack added to a blocking call's `wait + wait/16` so the client never gives up before Consul.
pub const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

/// Consul's own default `wait` when a blocking read sends none (or zero).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);

/// Consul's cap on `wait`; longer waits are cut to this by the server.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// Read consistency of a query (`api-docs/features/consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The leader answers; fails without a leader.
    #[default]
    Default,
    /// Any server answers, even without a leader; `QueryMeta::last_contact` says how stale.
    Stale,
    /// The leader confirms its leadership with a quorum first (slower).
    Consistent,
}

/// Options of a read: the blocking index and wait, and the consistency mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryOptions {
    /// Block until the data's index exceeds this; 0 answers at once.
    pub index: u64,
    /// How long a blocking read may wait; `None` or zero means Consul's default of 5 minutes,
    /// and anything above 10 minutes is cut to 10 minutes (Consul does the same).
    pub wait: Option<Duration>,
    /// The consistency mode.
    pub consistency: Consistency,
}

impl QueryOptions {
    /// A blocking read after `index`, waiting at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> QueryOptions {
        QueryOptions {
            index,
            wait: Some(wait),
            consistency: Consistency::Default,
        }
    }

    /// The same options with another consistency mode.
    pub fn with_consistency(mut self, consistency: Consistency) -> QueryOptions {
        self.consistency = consistency;
        self
    }

    /// The wait Consul will apply, when the read blocks at all (`index > 0`).
    pub fn effective_wait(&self) -> Option<Duration> {
        if self.index == 0 {
            return None;
        }
        Some(match self.wait {
            None => DEFAULT_WAIT,
            Some(w) if w.is_zero() => DEFAULT_WAIT,
            Some(w) => w.min(MAX_WAIT),
        })
    }

    /// The HTTP timeout for this read: `wait + wait/16 + 5 s` when blocking, else 10 s.
    pub fn request_timeout(&self) -> Duration {
        match self.effective_wait() {
            Some(wait) => wait + wait / 16 + BLOCKING_MARGIN,
            None => DEFAULT_REQUEST_TIMEOUT,
        }
    }

    fn append_to(&self, query: &mut Query) {
        match self.consistency {
            Consistency::Default => {}
            Consistency::Stale => query.flag("stale"),
            Consistency::Consistent => query.flag("consistent"),
        }
        if let Some(wait) = self.effective_wait() {
            query.pair("index", &self.index.to_string());
            // Milliseconds, at least 1: Consul reads "0ms" as its 5 minute default.
            let ms = wait.as_millis().max(1);
            query.pair("wait", &format!("{ms}ms"));
        }
    }
}

/// What Consul says about the answer of a read: its index and how fresh it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryMeta {
    /// `X-Consul-Index`: pass it back as [`QueryOptions::index`] (through [`next_index`]).
    pub index: u64,
    /// `X-Consul-KnownLeader`: whether the answering server knew a leader.
    pub known_leader: bool,
    /// `X-Consul-LastContact`: time since the answering server last heard from the leader.
    pub last_contact: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeout_covers_wait_jitter_and_margin() {
        let q = QueryOptions::default();
        assert_eq!(q.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
        // No index: does not block even with a wait.
        let q = QueryOptions {
            wait: Some(Duration::from_secs(60)),
            ..QueryOptions::default()
        };
        assert_eq!(q.effective_wait(), None);
        let q = QueryOptions::blocking(7, Duration::from_secs(64));
        assert_eq!(q.request_timeout(), Duration::from_secs(64 + 4 + 5));
        let q = QueryOptions::blocking(7, Duration::ZERO);
        assert_eq!(q.effective_wait(), Some(DEFAULT_WAIT));
        let q = QueryOptions::blocking(7, Duration::from_secs(3600));
        assert_eq!(q.effective_wait(), Some(MAX_WAIT));
    }

    #[test]
    fn blocking_query_string_has_index_wait_and_consistency() {
        let mut query = Query::default();
        QueryOptions::blocking(42, Duration::from_micros(10))
            .with_consistency(Consistency::Stale)
            .append_to(&mut query);
        assert_eq!(query.finish(), "?stale&index=42&wait=1ms");
        let mut query = Query::default();
        QueryOptions::default().append_to(&mut query);
        assert_eq!(query.finish(), "");
    }
}
