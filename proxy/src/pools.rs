//! Upstream pools: a round-robin load balancer per pool with active health checks, fed either by
//! the configured server list or by the passing instances of a Consul service, followed with
//! blocking queries so a box put into Consul maintenance leaves the pool by itself.
//!
//! A TLS pool's requests and health checks connect alike ([`crate::upstream_tls`]): same name,
//! CAs and client certificate; a `tcp` check of a TLS pool is a whole handshake.

use crate::config::{HealthCheckSettings, PoolSettings, PoolSource};
use crate::follow::{follow, Followed, ReadKind, Taken};
use crate::log_pace::EachSecond;
use crate::upstream_tls::{handshake_failure, TlsHandshakeCheck, UpstreamTls};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::consul::{self, Client, Consistency, Failover};
use drawbridge_core::status::{PoolStatus, ServerStatus};
use pingora::lb::discovery::{ServiceDiscovery, Static};
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as BackendAddr;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use pingora::upstreams::peer::{HttpPeer, Peer};
use prometheus::{IntGauge, IntGaugeVec};
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one blocking read of a Consul-service pool waits.
const POOL_WATCH_WAIT: Duration = Duration::from_secs(60);

/// One pool as the request path uses it.
pub struct Pool {
    pub name: String,
    /// `static` or `consul:<service>`, for `/status`.
    pub source: String,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How the servers are spoken to over TLS; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// Pingora's connection-reuse group of this pool's TLS peers (a hash of its name).
    group: u64,
    /// Failed handshakes are logged at most once a second.
    handshake_failures: EachSecond,
    /// Requests in flight to each server.
    in_flight: InFlight,
}

/// The requests in flight to each server of a pool: gauges of
/// `drawbridge_upstream_requests_in_flight`, found without a lock on the request path (a
/// server seen for the first time takes a short one, to add its gauge).
struct InFlight {
    pool: String,
    gauges: IntGaugeVec,
    by_server: ArcSwap<HashMap<BackendAddr, IntGauge>>,
    /// Taken to add a gauge; holds when each server that left the pool was first seen idle.
    adding: Mutex<HashMap<BackendAddr, Instant>>,
}

/// How long the gauge of a server that left its pool and is idle is kept: a request that
/// picked the server just before it left may still be counting on it.
const DEPARTED_KEPT: Duration = Duration::from_secs(60);

impl InFlight {
    fn new(pool: &str, gauges: IntGaugeVec) -> InFlight {
        InFlight {
            pool: pool.to_owned(),
            gauges,
            by_server: ArcSwap::default(),
            adding: Mutex::new(HashMap::new()),
        }
    }

    /// The gauge of `server`, added the first time it is asked for ([`InFlight::gauge_at`]).
    fn gauge(&self, server: &BackendAddr, is_current: impl Fn(&BackendAddr) -> bool) -> IntGauge {
        self.gauge_at(server, is_current, Instant::now())
    }

    /// The gauge of `server`, added the first time it is asked for (`now`); then the gauges of
    /// servers that have left the pool (`is_current` says which are in it) and have been idle
    /// for [`DEPARTED_KEPT`] go, series and all, so a pool whose servers come and go does not
    /// grow.
    fn gauge_at(
        &self,
        server: &BackendAddr,
        is_current: impl Fn(&BackendAddr) -> bool,
        now: Instant,
    ) -> IntGauge {
        if let Some(gauge) = self.by_server.load().get(server) {
            return gauge.clone();
        }
        let mut idle_since = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_server = HashMap::clone(&self.by_server.load());
        by_server.retain(|addr, gauge| {
            if is_current(addr) || gauge.get() != 0 {
                idle_since.remove(addr);
                return true;
            }
            let since = *idle_since.entry(addr.clone()).or_insert(now);
            if now.saturating_duration_since(since) < DEPARTED_KEPT {
                return true;
            }
            idle_since.remove(addr);
            let _ = self
                .gauges
                .remove_label_values(&[self.pool.as_str(), &addr.to_string()]);
            false
        });
        let gauge = by_server
            .entry(server.clone())
            .or_insert_with(|| {
                self.gauges
                    .with_label_values(&[self.pool.as_str(), &server.to_string()])
            })
            .clone();
        self.by_server.store(Arc::new(by_server));
        gauge
    }

    /// The requests in flight to `server` now.
    fn count(&self, server: &BackendAddr) -> u64 {
        self.by_server.load().get(server).map_or(0, gauge_count)
    }

    /// The servers not [`is_current`] that still have requests in flight, with their counts.
    fn departed(&self, is_current: impl Fn(&BackendAddr) -> bool) -> Vec<(BackendAddr, u64)> {
        self.by_server
            .load()
            .iter()
            .filter(|(addr, _)| !is_current(addr))
            .map(|(addr, gauge)| (addr.clone(), gauge_count(gauge)))
            .filter(|&(_, count)| count > 0)
            .collect()
    }
}

fn gauge_count(gauge: &IntGauge) -> u64 {
    u64::try_from(gauge.get()).unwrap_or(0)
}

/// A request's place among those in flight to one server; given back when dropped (the
/// request ended, failed, or moved to another server).
pub struct UpstreamRequest(IntGauge);

impl Drop for UpstreamRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Pool {
    /// The peer to connect to server `addr` with: plain, or TLS with the pool's name, CAs and
    /// client certificate.
    pub fn peer(&self, addr: pingora::protocols::l4::socket::SocketAddr) -> HttpPeer {
        match &self.tls {
            Some(tls) => tls.peer(addr, self.group),
            None => HttpPeer::new(addr, false, String::new()),
        }
    }

    /// Logs why a connection to `peer` failed when it failed in the TLS handshake (at most a
    /// line a second, with how many failed since), naming the pool, the server and the name, e.g. `pool api: server 10.0.1.10:443: TLS certificate not
    /// trusted (unknown issuer) for SNI api.internal`.
    pub fn connect_failed(&self, peer: &HttpPeer, e: &pingora::Error) {
        if self.tls.is_none() {
            return;
        }
        let Some(reason) = handshake_failure(e) else {
            return;
        };
        if let Some(also) = self.handshake_failures.note() {
            tracing::warn!(
                failed_since_last_line = also,
                "pool {}: server {}: {reason} for SNI {}",
                self.name,
                peer.address(),
                peer.sni()
            );
        }
    }

    /// Counts a request in flight to `server` until the returned place is dropped.
    pub fn start_request(&self, server: &BackendAddr) -> UpstreamRequest {
        let gauge = self.in_flight.gauge(server, |addr| {
            self.lb
                .backends()
                .get_backend()
                .iter()
                .any(|backend| backend.addr == *addr)
        });
        gauge.inc();
        UpstreamRequest(gauge)
    }

    /// The next healthy server, round robin; `None` when every server is down.
    pub fn select(&self) -> Option<Backend> {
        self.lb.select(b"", 64)
    }

    /// The pool's servers and their health, for `/status`; then the servers that have left it
    /// while requests to them are still in flight (`in_pool: false`).
    pub fn status(&self) -> PoolStatus {
        let backends = self.lb.backends();
        let current = backends.get_backend();
        let mut servers: Vec<ServerStatus> = current
            .iter()
            .map(|b| ServerStatus {
                address: b.addr.to_string(),
                healthy: backends.ready(b),
                in_flight: self.in_flight.count(&b.addr),
                in_pool: true,
            })
            .collect();
        let mut departed = self
            .in_flight
            .departed(|addr| current.iter().any(|b| b.addr == *addr));
        departed.sort_by_key(|(addr, _)| addr.to_string());
        servers.extend(departed.into_iter().map(|(addr, in_flight)| ServerStatus {
            address: addr.to_string(),
            healthy: false,
            in_flight,
            in_pool: false,
        }));
        PoolStatus {
            name: self.name.clone(),
            source: self.source.clone(),
            servers,
        }
    }
}

/// A pool with the background services that keep it current (health checks, Consul watch).
pub struct BuiltPool {
    pub pool: Arc<Pool>,
    pub services: Vec<Box<dyn ServiceWithDependents>>,
}

/// Builds a pool; `consul` holds the agents Consul-service pools read from, `in_flight` the
/// gauges of its requests in flight.
pub fn build(settings: &PoolSettings, consul: &Arc<Failover>, in_flight: IntGaugeVec) -> BuiltPool {
    let group = {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        settings.name.hash(&mut hasher);
        hasher.finish()
    };
    // A TLS pool's checks connect as its requests do; the address is each server's.
    let tls_peer = settings
        .tls
        .as_ref()
        .map(|tls| tls.peer(l4_addr(SocketAddr::from(([0, 0, 0, 0], 1))), group));
    let (discovery, source, watch): (Box<dyn ServiceDiscovery + Send + Sync>, String, _) =
        match &settings.source {
            PoolSource::Static(addrs) => {
                let backends: BTreeSet<Backend> = addrs.iter().map(|a| backend(*a)).collect();
                (Static::new(backends), "static".to_string(), None)
            }
            PoolSource::ConsulService(service) => {
                let discovery = Arc::new(ConsulDiscovery::default());
                (
                    Box::new(ConsulDiscoveryHandle(discovery.clone())),
                    format!("consul:{service}"),
                    Some((service.clone(), discovery)),
                )
            }
        };
    let mut backends = Backends::new(discovery);
    let interval = match &settings.health_check {
        HealthCheckSettings::None => None,
        HealthCheckSettings::Tcp { interval } => {
            match tls_peer {
                Some(mut peer) => {
                    peer.options.connection_timeout = Some(Duration::from_secs(1));
                    backends.set_health_check(Box::new(TlsHandshakeCheck::new(peer)));
                }
                None => backends.set_health_check(TcpHealthCheck::new()),
            }
            Some(*interval)
        }
        HealthCheckSettings::Http { path, interval } => {
            let mut check = match (&settings.tls, tls_peer) {
                (Some(tls), Some(mut peer)) => {
                    // The name the server is reached by is the Host too.
                    let mut check = HttpHealthCheck::new(&tls.sni, true);
                    peer.options.connection_timeout =
                        check.peer_template.options.connection_timeout;
                    peer.options.read_timeout = check.peer_template.options.read_timeout;
                    check.peer_template = peer;
                    check
                }
                _ => HttpHealthCheck::new(&settings.name, false),
            };
            check.req.set_uri(
                http::Uri::try_from(path.as_str()).unwrap_or_else(|_| http::Uri::from_static("/")),
            );
            // Any 2xx or 3xx answer is healthy, not only 200.
            check.validator = Some(Box::new(|resp| {
                let code = resp.status.as_u16();
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::Custom("unhealthy"),
                        format!("health check answered {code}"),
                    )
                }
            }));
            backends.set_health_check(Box::new(check));
            Some(*interval)
        }
    };
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(backends);
    lb.health_check_frequency = interval;
    lb.parallel_health_check = true;
    let lb_service = background_service(&format!("pool {}", settings.name), lb);
    let lb = lb_service.task();
    let mut services: Vec<Box<dyn ServiceWithDependents>> = vec![Box::new(lb_service)];
    if let Some((service, discovery)) = watch {
        services.push(Box::new(background_service(
            &format!("pool {} consul watch", settings.name),
            ConsulPoolWatcher {
                consul: consul.clone(),
                service,
                discovery,
                lb: lb.clone(),
            },
        )));
    }
    BuiltPool {
        pool: Arc::new(Pool {
            name: settings.name.clone(),
            source,
            lb,
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            tls: settings.tls.clone(),
            group,
            handshake_failures: EachSecond::default(),
            in_flight: InFlight::new(&settings.name, in_flight),
        }),
        services,
    }
}

fn l4_addr(addr: SocketAddr) -> pingora::protocols::l4::socket::SocketAddr {
    pingora::protocols::l4::socket::SocketAddr::Inet(addr)
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: l4_addr(addr),
        weight: 1,
        ext: http::Extensions::new(),
    }
}

/// The last set of passing instances of a Consul service.
#[derive(Default)]
struct ConsulDiscovery {
    backends: ArcSwap<BTreeSet<Backend>>,
}

/// The discovery the load balancer calls: it reads the watcher's last snapshot and never
/// blocks on Consul itself.
struct ConsulDiscoveryHandle(Arc<ConsulDiscovery>);

#[async_trait]
impl ServiceDiscovery for ConsulDiscoveryHandle {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0.backends.load()), HashMap::new()))
    }
}

/// Follows the passing instances of a Consul service and rebuilds the pool on every change.
struct ConsulPoolWatcher {
    consul: Arc<Failover>,
    service: String,
    discovery: Arc<ConsulDiscovery>,
    lb: Arc<LoadBalancer<RoundRobin>>,
}

#[async_trait]
impl Followed for ConsulPoolWatcher {
    type Answer = BTreeSet<Backend>;

    fn describe(&self) -> String {
        format!("the passing instances of Consul service {}", self.service)
    }

    fn failover(&self) -> &Failover {
        &self.consul
    }

    async fn read(
        &self,
        client: &Client,
        kind: ReadKind,
        index: u64,
    ) -> Result<(BTreeSet<Backend>, u64), consul::Error> {
        let options = kind.options(index, POOL_WATCH_WAIT, Consistency::Default);
        let (entries, meta) = client.health_service(&self.service, true, &options).await?;
        let mut backends = BTreeSet::new();
        for entry in &entries {
            let text = format!("{}:{}", entry.address(), entry.service.port);
            match text.parse::<SocketAddr>() {
                Ok(addr) => {
                    backends.insert(backend(addr));
                }
                Err(_) => tracing::warn!(
                    service = %self.service,
                    instance = %entry.service.id,
                    "skipping an instance whose address {text:?} is not an ip:port"
                ),
            }
        }
        Ok((backends, meta.index))
    }

    async fn take(&self, backends: BTreeSet<Backend>, _index: u64, _kind: ReadKind) -> Taken {
        if **self.discovery.backends.load() == backends {
            return Taken::Settled;
        }
        tracing::info!(
            service = %self.service,
            servers = ?backends.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>(),
            "pool follows the passing instances"
        );
        self.discovery.backends.store(Arc::new(backends));
        if let Err(e) = self.lb.update().await {
            tracing::error!(service = %self.service, "rebuilding the pool failed: {e}");
        }
        Taken::Settled
    }
}

#[async_trait]
impl BackgroundService for ConsulPoolWatcher {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        follow(self, shutdown, ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(port: u16) -> BackendAddr {
        l4_addr(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    #[test]
    fn the_gauge_of_a_departed_idle_server_is_kept_a_while_then_goes() {
        let gauges = IntGaugeVec::new(
            prometheus::Opts::new("in_flight_test", "test"),
            &["pool", "server"],
        )
        .unwrap();
        let in_flight = InFlight::new("api", gauges);
        let t0 = Instant::now();
        let (a, b, c, d) = (server(1), server(2), server(3), server(4));
        // `a` is counting a request that picked it just before it left.
        let a_gauge = in_flight.gauge_at(&a, |_| true, t0);
        in_flight.gauge_at(&b, |s| *s != a, t0);
        a_gauge.inc();
        assert_eq!(in_flight.departed(|s| *s != a), vec![(a.clone(), 1)]);
        a_gauge.dec();
        // Idle and gone from the pool: kept for a while, then dropped.
        in_flight.gauge_at(&c, |s| *s != a, t0 + Duration::from_secs(1));
        assert!(in_flight.by_server.load().contains_key(&a));
        in_flight.gauge_at(&d, |s| *s != a, t0 + DEPARTED_KEPT + Duration::from_secs(2));
        assert!(!in_flight.by_server.load().contains_key(&a));
        assert!(in_flight.by_server.load().contains_key(&b));
    }
}
