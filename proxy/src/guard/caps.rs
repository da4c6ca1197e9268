//! Connection caps: the open connections counted per proxy and per client address, looked at
//! in the accept loop ([`EarlyRefusal`], before a task or a TLS handshake is spent) and taken
//! by the [`Gatehouse`], which also times each connection's request headers.

use super::clock::{is_h2, Guarded, HeaderClock, CLOCK};
use super::{Refusal, RefusalLog};
use crate::config::Limits;
use crate::one_line::OneLine;
use crate::tls::TlsAcceptor;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The connection caps and the connections they count, shared by the accept-time filter and
/// the gatehouse.
pub struct Caps {
    max_connections: usize,
    max_connections_per_client: usize,
    /// Peers exempt from the per-client cap: the load balancers in front (`bypass.trusted_proxies`),
    /// whose connections carry many clients.
    trusted_proxies: Vec<IpNet>,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// The admitted connections, as `drawbridge_client_connections` shows them.
    admitted: IntGauge,
    log: Arc<RefusalLog>,
}

impl Caps {
    /// The caps of `limits`; peers in `trusted_proxies` are exempt from the per-client one.
    pub fn new(
        limits: &Limits,
        trusted_proxies: Vec<IpNet>,
        admitted: IntGauge,
        log: Arc<RefusalLog>,
    ) -> Caps {
        Caps {
            max_connections: limits.max_connections,
            max_connections_per_client: limits.max_connections_per_client,
            trusted_proxies,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            admitted,
            log,
        }
    }

    /// The address counted against the per-client cap: `None` for a trusted proxy; an IPv6
    /// client counts by its /64, the block one subscriber gets.
    fn counted(&self, client: Option<IpAddr>) -> Option<IpAddr> {
        let ip = client.filter(|ip| !self.trusted_proxies.iter().any(|n| n.contains(ip)))?;
        Some(match ip {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        })
    }

    /// Which cap a connection from `client` would meet now, if any (a look, not a place).
    fn full_for(&self, client: Option<IpAddr>) -> Option<Refusal> {
        if self.open.load(Ordering::Relaxed) >= self.max_connections {
            return Some(Refusal::MaxConnections);
        }
        let ip = self.counted(client)?;
        let per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let held = per_client.get(&ip).copied().unwrap_or(0);
        (held >= self.max_connections_per_client).then_some(Refusal::MaxConnectionsPerClient)
    }

    /// Takes a place for a connection from `client`, or says which cap refuses it.
    fn admit(&self, client: Option<IpAddr>) -> Result<Admitted<'_>, Refusal> {
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        let mut place = Admitted {
            caps: self,
            client: None,
            shown: false,
        };
        if open >= self.max_connections {
            return Err(Refusal::MaxConnections);
        }
        if let Some(ip) = self.counted(client) {
            let mut per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let held = per_client.entry(ip).or_insert(0);
            if *held >= self.max_connections_per_client {
                return Err(Refusal::MaxConnectionsPerClient);
            }
            *held += 1;
            place.client = Some(ip);
        }
        self.admitted.inc();
        place.shown = true;
        Ok(place)
    }

    fn refused(&self, refusal: Refusal, client: Option<IpAddr>) {
        self.log.refused(refusal, client, || match refusal {
            Refusal::MaxConnections => format!(
                "the proxy holds its limits.max_connections ({})",
                self.max_connections
            ),
            _ => format!(
                "the client holds its limits.max_connections_per_client ({})",
                self.max_connections_per_client
            ),
        });
    }
}

/// A connection's place; given back when dropped.
struct Admitted<'a> {
    caps: &'a Caps,
    /// The address counted in `per_client`, once counted.
    client: Option<IpAddr>,
    /// Counted in the `admitted` gauge.
    shown: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.caps.open.fetch_sub(1, Ordering::Relaxed);
        if self.shown {
            self.caps.admitted.dec();
        }
        if let Some(ip) = self.client {
            let mut per_client = self
                .caps
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(held) = per_client.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    per_client.remove(&ip);
                }
            }
        }
    }
}

/// The caps looked at as a connection is accepted, before a task, a buffer or a TLS handshake is
/// spent on it: a flood is closed in the accept loop. The gatehouse still takes the place
/// (connections accepted at the same moment are not counted yet here).
pub struct EarlyRefusal(pub Arc<Caps>);

impl std::fmt::Debug for EarlyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyRefusal").finish_non_exhaustive()
    }
}

#[async_trait]
impl ConnectionFilter for EarlyRefusal {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let client = addr.map(|a| a.ip().to_canonical());
        match self.0.full_for(client) {
            Some(refusal) => {
                self.0.refused(refusal, client);
                false
            }
            None => true,
        }
    }
}

/// The listening app with the connection caps, the TLS handshakes and guarded streams in front
/// of `inner`.
pub struct Gatehouse<A> {
    inner: Arc<A>,
    caps: Arc<Caps>,
    header_timeout: Duration,
    /// Plain connections may start with the HTTP/2 preface (`server.h2c`).
    h2c: bool,
    /// The handshakes of the TLS listeners' connections.
    tls: Option<TlsAcceptor>,
}

impl<A> Gatehouse<A> {
    /// `inner` behind `caps`, each HTTP/1 connection with the `header_timeout` deadline (and a
    /// TLS one's handshake before it); with `h2c`, a plain connection that starts with the
    /// HTTP/2 preface speaks HTTP/2.
    pub fn new(
        inner: A,
        caps: Arc<Caps>,
        header_timeout: Duration,
        h2c: bool,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        Gatehouse {
            inner: Arc::new(inner),
            caps,
            header_timeout,
            h2c,
            tls,
        }
    }

    /// The TLS handshake of a connection accepted on a TLS listener, held to `header_timeout`;
    /// other connections as they are. `None` when the handshake failed or came too late
    /// (counted and logged).
    async fn handshake(&self, stream: Stream, client: Option<IpAddr>) -> Option<Stream> {
        let Some(tls) = self.tls.as_ref().filter(|tls| tls.serves(&stream)) else {
            return Some(stream);
        };
        let detail = match tokio::time::timeout(self.header_timeout, tls.handshake(stream)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => format!("the TLS handshake failed: {}", OneLine(&e.to_string())),
            Err(_) => format!(
                "no TLS handshake within limits.header_timeout ({:?})",
                self.header_timeout
            ),
        };
        self.caps
            .log
            .refused(Refusal::TlsHandshake, client, || detail);
        None
    }

    /// Whether `stream` speaks HTTP/2: by ALPN on TLS; on a plain connection with `h2c`, by
    /// its first bytes, read as they come until they leave the HTTP/2 preface (an HTTP/1
    /// request is known by its first byte, however short) and put back. They must come within
    /// `header_timeout`. `None` when the connection is over: it closed, or sent too little in
    /// time (refused).
    async fn speaks_h2(&self, stream: Stream, client: Option<IpAddr>) -> Option<(Stream, bool)> {
        if is_h2(&stream) {
            return Some((stream, true));
        }
        if !self.h2c || stream.get_ssl_digest().is_some() {
            return Some((stream, false));
        }
        let mut tcp = match stream.into_any().downcast::<TcpStream>() {
            Ok(tcp) => tcp,
            // Only plain TCP listeners take h2c.
            Err(_) => return None,
        };
        let mut first = [0u8; H2_PREFACE.len()];
        let mut len = 0;
        let read = tokio::time::timeout(self.header_timeout, async {
            while len < first.len() {
                let n = tcp.read(&mut first[len..]).await?;
                if n == 0 {
                    // Closed after a short request (or before any): HTTP/1, or nothing.
                    return Ok::<_, std::io::Error>((len > 0).then_some(false));
                }
                len += n;
                if first[..len] != H2_PREFACE[..len] {
                    return Ok(Some(false));
                }
            }
            Ok(Some(true))
        })
        .await;
        tcp.rewind(&first[..len]);
        match read {
            Ok(Ok(Some(h2))) => Some((tcp, h2)),
            Ok(Ok(None) | Err(_)) => None,
            Err(_) => {
                self.header_timed_out(client);
                None
            }
        }
    }

    /// Serves the connection, which is dropped (closed, with no request in flight) when its
    /// `clock` expires.
    async fn within_deadline(
        &self,
        served: impl Future<Output = Option<Stream>>,
        clock: &HeaderClock,
        client: Option<IpAddr>,
    ) -> Option<Stream> {
        tokio::select! {
            biased;
            served = served => served,
            () = clock.expired() => {
                self.header_timed_out(client);
                None
            }
        }
    }

    fn header_timed_out(&self, client: Option<IpAddr>) {
        let timeout = self.header_timeout;
        self.caps.log.refused(Refusal::HeaderTimeout, client, || {
            format!("request header not complete within limits.header_timeout ({timeout:?})")
        });
    }
}

/// How an HTTP/2 connection starts (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn client_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?;
    Some(addr.ip().to_canonical())
}

#[async_trait]
impl<A> ServerApp for Gatehouse<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = client_ip(&stream);
        let _admitted = match self.caps.admit(client) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.caps.refused(refusal, client);
                // Dropping the stream closes the connection.
                return None;
            }
        };
        let stream = self.handshake(stream, client).await?;
        let clock = HeaderClock::new(self.header_timeout);
        let log = self.caps.log.clone();
        let (stream, h2) = self.speaks_h2(stream, client).await?;
        if h2 {
            // The preface is timed; then the h2 layer's limits and idle timeout hold.
            let stream: Stream = Box::new(Guarded::h2(stream, clock.clone(), client, log));
            let served = self.inner.process_new(stream, shutdown);
            return self.within_deadline(served, &clock, client).await;
        }
        let stream: Stream = Box::new(Guarded::new(stream, clock.clone(), client, log));
        let served = CLOCK.scope(clock.clone(), self.inner.process_new(stream, shutdown));
        self.within_deadline(served, &clock, client).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn caps(per_client: usize, trusted: &[&str]) -> Caps {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_client: per_client,
            ..Limits::default()
        };
        let trusted = trusted.iter().map(|n| n.parse().unwrap()).collect();
        let metrics = Arc::new(Metrics::new().unwrap());
        let gauge = metrics.client_connections.clone();
        Caps::new(&limits, trusted, gauge, Arc::new(RefusalLog::new(metrics)))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn places_are_counted_per_proxy_and_per_client_and_given_back() {
        let caps = caps(2, &["10.0.0.0/8"]);
        let a1 = caps.admit(ip("192.0.2.1")).unwrap();
        let _a2 = caps.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            caps.full_for(ip("192.0.2.1")),
            Some(Refusal::MaxConnectionsPerClient)
        );
        assert_eq!(
            caps.admit(ip("192.0.2.1")).err(),
            Some(Refusal::MaxConnectionsPerClient)
        );
        drop(a1);
        let _a3 = caps.admit(ip("192.0.2.1")).unwrap();
        // A trusted proxy is not held to the per-client cap, but to the proxy's.
        let _lb = caps.admit(ip("10.1.2.3")).unwrap();
        assert_eq!(caps.full_for(ip("10.1.2.3")), Some(Refusal::MaxConnections));
        assert_eq!(
            caps.admit(ip("10.1.2.3")).err(),
            Some(Refusal::MaxConnections)
        );
        assert_eq!(caps.open.load(Ordering::Relaxed), 3);
        assert_eq!(caps.admitted.get(), 3);
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let caps = caps(1, &[]);
        let _a = caps.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            caps.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::MaxConnectionsPerClient)
        );
        assert!(caps.admit(ip("2001:db8:1:3::1")).is_ok());
    }
}
