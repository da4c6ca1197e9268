//! The proxy's own limits: connection caps at accept and the whole-request-header deadline,
//! below Pingora's HTTP code; the size and pace limits of a request, checked by the edge
//! ([`refusal_for`], [`BodyPace`]); and the one place refusals are counted and logged.
//!
//! Pingora times each read of a request header on its own (60 s), so a client sending one byte
//! every few seconds holds its connection forever (cloudflare/pingora#447). [`Gatehouse`] counts
//! the open connections, per proxy and per client address, and closes the excess at once; every
//! admitted HTTP/1 connection reads through a [`Guarded`] stream that ends it when a request
//! header is not complete within `header_timeout` of its first byte (of the accept, for the
//! first request), however slowly the bytes come.

use crate::config::{Limits, BODY_RATE_GRACE};
use crate::metrics::Metrics;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::ServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why a connection or a request was cut before Pingora answered it (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The proxy already holds `max_connections`.
    MaxConnections,
    /// The client address already holds `max_connections_per_client`.
    MaxConnectionsPerClient,
    /// A request header not complete within `header_timeout`.
    HeaderTimeout,
    /// A header block over `max_header_bytes` (431).
    HeaderSize,
    /// More header lines than `max_headers` (431).
    HeaderCount,
    /// A request target over `max_uri_bytes` (414).
    UriLength,
    /// A body over `max_body_bytes`, announced or counted (413).
    BodySize,
    /// A body slower than `body_min_rate` (408).
    BodyPace,
}

/// How many kinds of refusal there are.
const REFUSALS: usize = 8;

impl Refusal {
    /// The label value in `drawbridge_refused_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerClient => "max_connections_per_client",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::HeaderSize => "header_size",
            Refusal::HeaderCount => "header_count",
            Refusal::UriLength => "uri_length",
            Refusal::BodySize => "body_size",
            Refusal::BodyPace => "body_pace",
        }
    }

    /// The status a refused request is answered with (0: the connection is just closed).
    pub fn status(self) -> u16 {
        match self {
            Refusal::HeaderSize | Refusal::HeaderCount => 431,
            Refusal::UriLength => 414,
            Refusal::BodySize => 413,
            Refusal::BodyPace => 408,
            Refusal::MaxConnections | Refusal::MaxConnectionsPerClient | Refusal::HeaderTimeout => {
                0
            }
        }
    }
}

/// Counts refusals and logs them, at most one line a second per reason (a flood of refused
/// connections must not become a flood of log lines): the line says how many were cut since.
pub struct RefusalLog {
    metrics: Arc<Metrics>,
    /// Per reason: the second of the last line, and the refusals not logged since.
    last_logged: [AtomicU64; REFUSALS],
    not_logged: [AtomicU64; REFUSALS],
    started: Instant,
}

impl RefusalLog {
    pub fn new(metrics: Arc<Metrics>) -> RefusalLog {
        RefusalLog {
            metrics,
            last_logged: Default::default(),
            not_logged: Default::default(),
            started: Instant::now(),
        }
    }

    /// Counts a refusal of `client` and logs it unless a line for `reason` went out this second.
    pub fn refused(&self, reason: Refusal, client: Option<IpAddr>, detail: &str) {
        self.metrics
            .refused
            .with_label_values(&[reason.as_str()])
            .inc();
        let slot = reason as usize;
        // Seconds since start, plus one so that the first refusal is always logged.
        let second = self.started.elapsed().as_secs() + 1;
        let last = self.last_logged[slot].load(Ordering::Relaxed);
        if second == last
            || self.last_logged[slot]
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.not_logged[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let also = self.not_logged[slot].swap(0, Ordering::Relaxed);
        let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::warn!(
            reason = reason.as_str(),
            client = %client,
            refused_since_last_line = also,
            "refused: {detail}"
        );
    }
}

/// The listening app with connection caps and guarded streams in front of `inner`.
pub struct Gatehouse<A> {
    inner: Arc<A>,
    limits: Limits,
    /// Peers exempt from the per-client cap: the load balancers in front (`bypass.trusted_proxies`),
    /// whose connections carry many clients.
    trusted_proxies: Vec<IpNet>,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    log: Arc<RefusalLog>,
}

impl<A> Gatehouse<A> {
    pub fn new(
        inner: A,
        limits: Limits,
        trusted_proxies: Vec<IpNet>,
        log: Arc<RefusalLog>,
    ) -> Self {
        Gatehouse {
            inner: Arc::new(inner),
            limits,
            trusted_proxies,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            log,
        }
    }

    /// Takes a place for a connection from `client`, or says which cap refuses it.
    fn admit(&self, client: Option<IpAddr>) -> Result<Admitted<'_, A>, Refusal> {
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        let mut admitted = Admitted {
            gatehouse: self,
            client: None,
        };
        if open >= self.limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        let Some(ip) = client.filter(|ip| !self.trusted_proxies.iter().any(|n| n.contains(ip)))
        else {
            return Ok(admitted);
        };
        let mut per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let held = per_client.entry(ip).or_insert(0);
        if *held >= self.limits.max_connections_per_client {
            return Err(Refusal::MaxConnectionsPerClient);
        }
        *held += 1;
        admitted.client = Some(ip);
        Ok(admitted)
    }
}

/// A connection's place; given back when dropped.
struct Admitted<'a, A> {
    gatehouse: &'a Gatehouse<A>,
    /// The address counted in `per_client`, once counted.
    client: Option<IpAddr>,
}

impl<A> Drop for Admitted<'_, A> {
    fn drop(&mut self) {
        self.gatehouse.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.client {
            let mut per_client = self
                .gatehouse
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

fn client_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?;
    Some(addr.ip().to_canonical())
}

/// Why `req` is refused by the size limits, checked before anything else is done with it.
pub fn refusal_for(req: &RequestHeader, limits: &Limits) -> Option<(Refusal, String)> {
    let target = req.raw_path().len();
    if target > limits.max_uri_bytes {
        return Some((
            Refusal::UriLength,
            format!(
                "a request target of {target} bytes, over limits.max_uri_bytes ({})",
                limits.max_uri_bytes
            ),
        ));
    }
    let lines = req.headers.len();
    if lines > limits.max_headers {
        return Some((
            Refusal::HeaderCount,
            format!(
                "{lines} header lines, over limits.max_headers ({})",
                limits.max_headers
            ),
        ));
    }
    // As sent: "Name: value\r\n" each, after the request line.
    let bytes = target
        + req.method.as_str().len()
        + 12
        + req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if bytes > limits.max_header_bytes {
        return Some((
            Refusal::HeaderSize,
            format!(
                "a header of {bytes} bytes, over limits.max_header_bytes ({})",
                limits.max_header_bytes
            ),
        ));
    }
    let announced = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limits.max_body_bytes => Some((
            Refusal::BodySize,
            format!(
                "a body of {length} bytes announced, over limits.max_body_bytes ({})",
                limits.max_body_bytes
            ),
        )),
        _ => None,
    }
}

/// The pace of one request body: its size so far against `max_body_bytes`, and its average rate
/// against `body_min_rate` once [`BODY_RATE_GRACE`] has passed.
#[derive(Debug, Default)]
pub struct BodyPace {
    received: u64,
}

impl BodyPace {
    /// Counts `chunk`, `elapsed` after the request's header was read; says why the body is
    /// refused, if it is.
    pub fn take(
        &mut self,
        chunk: usize,
        elapsed: Duration,
        limits: &Limits,
    ) -> Option<(Refusal, String)> {
        self.received += chunk as u64;
        if self.received > limits.max_body_bytes {
            return Some((
                Refusal::BodySize,
                format!(
                    "a body over limits.max_body_bytes ({})",
                    limits.max_body_bytes
                ),
            ));
        }
        let counted = elapsed.saturating_sub(BODY_RATE_GRACE).as_secs_f64();
        let due = (limits.body_min_rate as f64 * counted) as u64;
        (self.received < due).then(|| {
            (
                Refusal::BodyPace,
                format!(
                    "a body of {} bytes after {elapsed:.1?}, slower than limits.body_min_rate ({} bytes/s)",
                    self.received, limits.body_min_rate
                ),
            )
        })
    }
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
        let _admitted = match self.admit(client) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let detail = match refusal {
                    Refusal::MaxConnections => format!(
                        "the proxy holds its limit.max_connections ({})",
                        self.limits.max_connections
                    ),
                    _ => format!(
                        "the client holds its limit.max_connections_per_client ({})",
                        self.limits.max_connections_per_client
                    ),
                };
                self.log.refused(refusal, client, &detail);
                // Dropping the stream closes the connection.
                return None;
            }
        };
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(Guarded::new(
                stream,
                self.limits.header_timeout,
                client,
                self.log.clone(),
            ))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Finds the end of an HTTP/1 request header in the bytes as they come: the first empty line
/// after a line with content (empty lines before the request line are skipped, as parsers do).
#[derive(Debug, Default, Clone, Copy)]
pub struct HeaderScan {
    content: bool,
    newlines: u8,
}

impl HeaderScan {
    /// Reads `bytes`; `Some(n)` when the header ends after the first `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (at, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if self.content => {
                    self.newlines += 1;
                    if self.newlines == 2 {
                        return Some(at + 1);
                    }
                }
                b'\n' | b'\r' => {}
                _ => {
                    self.content = true;
                    self.newlines = 0;
                }
            }
        }
        None
    }
}

/// Where a connection is in its current exchange of request and answer.
#[derive(Debug)]
enum Phase {
    /// Reading a request header; the connection ends at `deadline`.
    Header { scan: HeaderScan, deadline: Instant },
    /// The header is read: the body and the answer take the time they need (their own
    /// timeouts apply).
    Body,
    /// The answer has started; the next bytes read begin the next request.
    Answered,
    /// Switched protocols (101): bytes flow both ways until the end.
    Tunnel,
}

/// Follows request and answer through the bytes read and written, and says when the current
/// request header must be complete.
#[derive(Debug)]
pub struct Exchange {
    phase: Phase,
    header_timeout: Duration,
}

impl Exchange {
    /// A new connection: its first request header is due `header_timeout` after `accepted`.
    pub fn new(accepted: Instant, header_timeout: Duration) -> Exchange {
        Exchange {
            phase: Phase::Header {
                scan: HeaderScan::default(),
                deadline: accepted + header_timeout,
            },
            header_timeout,
        }
    }

    /// When the header being read is due; `None` outside a header.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Header { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Takes bytes read at `now`; returns the deadline of a request header they begin.
    pub fn read(&mut self, bytes: &[u8], now: Instant) -> Option<Instant> {
        if bytes.is_empty() {
            return None;
        }
        let mut started = None;
        if matches!(self.phase, Phase::Answered) {
            let deadline = now + self.header_timeout;
            started = Some(deadline);
            self.phase = Phase::Header {
                scan: HeaderScan::default(),
                deadline,
            };
        }
        if let Phase::Header { scan, .. } = &mut self.phase {
            if scan.feed(bytes).is_some() {
                self.phase = Phase::Body;
            }
        }
        started
    }

    /// Takes the first bytes of a write: an interim answer (1xx but 101) does not end the
    /// request, 101 turns the connection into a tunnel, any other answer ends it.
    pub fn write(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Body) || bytes.is_empty() {
            return;
        }
        let status = bytes
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| bytes.strip_prefix(b"HTTP/1.0 "));
        self.phase = match status {
            Some(s) if s.starts_with(b"101") => Phase::Tunnel,
            Some(s) if s.first() == Some(&b'1') => Phase::Body,
            _ => Phase::Answered,
        };
    }
}

/// A connection's stream with the request-header deadline.
pub struct Guarded {
    inner: Stream,
    exchange: Exchange,
    timer: Pin<Box<Sleep>>,
    client: Option<IpAddr>,
    log: Arc<RefusalLog>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Guarded {
    fn new(
        inner: Stream,
        header_timeout: Duration,
        client: Option<IpAddr>,
        log: Arc<RefusalLog>,
    ) -> Guarded {
        let exchange = Exchange::new(Instant::now(), header_timeout);
        let first_deadline = exchange.deadline().unwrap_or_else(Instant::now);
        Guarded {
            inner,
            exchange,
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            client,
            log,
        }
    }

    fn header_timed_out(&self) -> io::Error {
        let timeout = self.exchange.header_timeout;
        self.log.refused(
            Refusal::HeaderTimeout,
            self.client,
            &format!("request header not complete within limit.header_timeout ({timeout:?})"),
        );
        io::Error::new(
            io::ErrorKind::TimedOut,
            "request header not complete within limit.header_timeout",
        )
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let now = Instant::now();
                if let Some(deadline) = this.exchange.read(&buf.filled()[before..], now) {
                    this.timer.as_mut().reset(deadline);
                }
                match this.exchange.deadline() {
                    Some(deadline) if now >= deadline => Poll::Ready(Err(this.header_timed_out())),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Pending => {
                if this.exchange.deadline().is_some() && this.timer.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(this.header_timed_out()))
                } else {
                    Poll::Pending
                }
            }
            ready_err => ready_err,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.exchange.write(buf);
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.exchange.write(first);
        }
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(chunks: &[&[u8]]) -> Option<(usize, usize)> {
        let mut scan = HeaderScan::default();
        chunks
            .iter()
            .enumerate()
            .find_map(|(i, c)| scan.feed(c).map(|n| (i, n)))
    }

    #[test]
    fn the_header_ends_at_the_first_empty_line_after_content() {
        assert_eq!(
            end_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"]),
            Some((0, 27))
        );
        assert_eq!(end_of(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some((0, 24)));
        // One byte at a time, as a slow client sends it.
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let bytes: Vec<&[u8]> = request.chunks(1).collect();
        assert_eq!(end_of(&bytes), Some((request.len() - 1, 1)));
    }

    #[test]
    fn empty_lines_before_the_request_and_partial_headers_do_not_end_it() {
        // Leading empty lines are skipped by parsers: they must not stop the clock.
        assert_eq!(end_of(&[b"\r\n\r\n\r\n", b"GET / HTTP/1.1\r\n"]), None);
        assert_eq!(
            end_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"X: \r\r\n"]),
            None
        );
        assert_eq!(
            end_of(&[b"\r\n", b"GET / HTTP/1.1\r\n", b"\r\n"]),
            Some((2, 2))
        );
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            max_connections_per_client: 10,
            header_timeout: TIMEOUT,
            keepalive_timeout: TIMEOUT,
            max_header_bytes: 2048,
            max_headers: 20,
            max_uri_bytes: 512,
            max_body_bytes: 10_000,
            body_timeout: TIMEOUT,
            body_min_rate: 100,
            send_timeout: TIMEOUT,
        }
    }

    fn get(path: &str, headers: &[(&str, String)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), value.as_str()).unwrap();
        }
        req
    }

    fn refused(req: &RequestHeader) -> Option<Refusal> {
        refusal_for(req, &limits()).map(|(refusal, _)| refusal)
    }

    #[test]
    fn requests_over_a_size_limit_are_refused_with_its_status() {
        assert_eq!(refused(&get("/", &[("host", "a".into())])), None);
        let long = format!("/{}", "a".repeat(600));
        assert_eq!(refused(&get(&long, &[])), Some(Refusal::UriLength));
        let many: Vec<_> = (0..21).map(|i| ("x-n", i.to_string())).collect();
        assert_eq!(refused(&get("/", &many)), Some(Refusal::HeaderCount));
        let big = [("x-big", "b".repeat(2100))];
        assert_eq!(refused(&get("/", &big)), Some(Refusal::HeaderSize));
        let announced = [("content-length", "10001".to_string())];
        assert_eq!(refused(&get("/", &announced)), Some(Refusal::BodySize));
        let statuses: Vec<u16> = [
            Refusal::HeaderSize,
            Refusal::HeaderCount,
            Refusal::UriLength,
            Refusal::BodySize,
            Refusal::BodyPace,
        ]
        .iter()
        .map(|r| r.status())
        .collect();
        assert_eq!(statuses, [431, 431, 414, 413, 408]);
    }

    #[test]
    fn a_body_is_held_to_its_size_and_after_the_grace_to_its_pace() {
        let limits = limits();
        let mut pace = BodyPace::default();
        // Slow but within the grace.
        assert!(pace.take(10, BODY_RATE_GRACE, &limits).is_none());
        // 5 s after the grace 100 bytes/s want 500 bytes: 10 + 500 is enough, 10 + 100 is not.
        let later = BODY_RATE_GRACE + Duration::from_secs(5);
        assert!(BodyPace::default().take(510, later, &limits).is_none());
        let slow = pace.take(100, later, &limits).map(|(r, _)| r);
        assert_eq!(slow, Some(Refusal::BodyPace));
        let mut big = BodyPace::default();
        assert!(big.take(10_000, Duration::ZERO, &limits).is_none());
        let over = big.take(1, Duration::ZERO, &limits).map(|(r, _)| r);
        assert_eq!(over, Some(Refusal::BodySize));
    }

    #[test]
    fn the_first_header_is_due_from_the_accept_and_each_next_one_from_its_first_byte() {
        let accepted = Instant::now();
        let mut exchange = Exchange::new(accepted, TIMEOUT);
        assert_eq!(exchange.deadline(), Some(accepted + TIMEOUT));
        exchange.read(b"GET / HTTP/1.1\r\nHost: a\r\n", accepted);
        assert_eq!(
            exchange.deadline(),
            Some(accepted + TIMEOUT),
            "not reset by bytes"
        );
        exchange.read(b"\r\n", accepted);
        assert_eq!(exchange.deadline(), None, "the body takes its own time");
        exchange.write(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(
            exchange.deadline(),
            None,
            "waiting for the next request is keep-alive's"
        );
        let later = accepted + Duration::from_secs(30);
        assert_eq!(exchange.read(b"G", later), Some(later + TIMEOUT));
        assert_eq!(exchange.deadline(), Some(later + TIMEOUT));
    }

    #[test]
    fn interim_answers_keep_the_request_and_101_makes_a_tunnel() {
        let now = Instant::now();
        let mut exchange = Exchange::new(now, TIMEOUT);
        exchange.read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", now);
        exchange.write(b"HTTP/1.1 100 Continue\r\n\r\n");
        // The body that follows a 100 is not the next request.
        assert_eq!(exchange.read(b"a body\r\n", now), None);
        assert_eq!(exchange.deadline(), None);

        let mut exchange = Exchange::new(now, TIMEOUT);
        exchange.read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", now);
        exchange.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        exchange.write(b"\x81\x05hello");
        assert_eq!(exchange.read(b"\x81\x05hello", now), None);
        assert_eq!(exchange.deadline(), None, "frames are not requests");
    }
}
