//! The whole-request-header deadline, driven by the HTTP code itself: [`next_request`] when a
//! connection is about to read its next request, [`header_read`] once the header is parsed,
//! and the connection's [`Guarded`] stream notes the first byte of each header. The gatehouse
//! waits on [`HeaderClock::expired`] beside the connection and drops it when the deadline
//! passes, so no request is in flight and nothing else has to log it. An answer written while a
//! header is still being read can only be the HTTP/1 parser's own 400 for a request it could
//! not read: the stream counts and logs it as a refusal, and writes the proxy's own 400 in its
//! place ([`respond::unreadable_request`]): the parser's has no body, names Pingora and carries a
//! fixed date of 1994. On an HTTP/1 connection the stream also hands the HTTP code only what
//! `framing` lets through: a chunked request waits until its body has ended in valid chunk
//! lines, or only its head is read and the proxy refuses it ([`broken_chunked_body`]). On an
//! HTTP/2 connection the clock times the client's preface, and the stream watches its control
//! frames (`h2_frames`).

use super::framing::{Framing, Verdict};
use super::h2_frames::{FrameWatch, CONTROL_BURST, CONTROL_PER_SECOND};
use super::{Refusal, RefusalLog};
use crate::respond;
use bytes::{Buf, Bytes, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

tokio::task_local! {
    /// The clock of the connection the current task serves.
    pub(super) static CLOCK: Arc<HeaderClock>;
}

/// What is written in place of the HTTP/1 parser's 400.
static UNREADABLE_REQUEST: LazyLock<Bytes> = LazyLock::new(respond::unreadable_request);

/// No request header is being read (the header was parsed; body and answer take their time).
const NOT_READING: u64 = 0;
/// Waiting for the first byte of the next request: keep-alive's timeout applies, not this one.
const WAITING: u64 = 1;
/// From here on: reading a header whose first byte came `state - FIRST_BYTE` ms after the accept.
const FIRST_BYTE: u64 = 2;

/// When the request header being read is due.
pub struct HeaderClock {
    accepted: Instant,
    timeout: Duration,
    /// [`NOT_READING`], [`WAITING`], or [`FIRST_BYTE`] plus the milliseconds from the accept to
    /// the header's first byte: one word, so that a byte and the end of a header cannot cross.
    state: AtomicU64,
    changed: Notify,
    /// Why the chunked body of the request being read is broken ([`Framing`]), once it is.
    broken_body: OnceLock<&'static str>,
}

impl HeaderClock {
    /// The clock of a connection accepted now: its first request header is due `timeout`
    /// after the accept.
    pub(super) fn new(timeout: Duration) -> Arc<HeaderClock> {
        Arc::new(HeaderClock {
            accepted: Instant::now(),
            timeout,
            state: AtomicU64::new(FIRST_BYTE),
            changed: Notify::new(),
            broken_body: OnceLock::new(),
        })
    }

    /// The connection waits for its next request (the first one is timed from the accept).
    fn waiting(&self) {
        let _ =
            self.state
                .compare_exchange(NOT_READING, WAITING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether a request header is being read (or awaited).
    fn reading(&self) -> bool {
        self.state.load(Ordering::Acquire) != NOT_READING
    }

    /// The header is parsed.
    fn stopped(&self) {
        self.state.store(NOT_READING, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: the first of a header starts its clock.
    fn bytes_arrived(&self) {
        if self.state.load(Ordering::Acquire) != WAITING {
            return;
        }
        let at = self.accepted.elapsed().as_millis() as u64 + FIRST_BYTE;
        if self
            .state
            .compare_exchange(WAITING, at, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// Completes when a request header has been read for longer than the timeout.
    pub(super) async fn expired(&self) {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state < FIRST_BYTE {
                self.changed.notified().await;
                continue;
            }
            let started = self.accepted + Duration::from_millis(state - FIRST_BYTE);
            tokio::select! {
                () = tokio::time::sleep_until(started + self.timeout) => {
                    if self.state.load(Ordering::Acquire) == state {
                        return;
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }
}

/// The connection is about to read its next request (called by the HTTP app for each one).
pub fn next_request() {
    let _ = CLOCK.try_with(|clock| clock.waiting());
}

/// The request header is parsed (called by the proxy's first filter).
pub fn header_read() {
    let _ = CLOCK.try_with(|clock| clock.stopped());
}

/// Why the chunked body of the request just read is broken, when it is: only its head was
/// handed on ([`Framing`]); the request must be refused before anything is done with it.
pub fn broken_chunked_body() -> Option<&'static str> {
    CLOCK
        .try_with(|clock| clock.broken_body.get().copied())
        .ok()
        .flatten()
}

/// Whether `stream` speaks HTTP/2 (by ALPN): its own framing, no HTTP/1 header to time.
pub(super) fn is_h2(stream: &Stream) -> bool {
    matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
}

/// A connection's stream that tells its clock when bytes arrive, and counts the parser's own
/// refusal of a request. On an HTTP/2 connection it times the client's preface instead: the
/// clock stops once its bytes are in, and the h2 layer's own limits and idle timeout take over.
pub(super) struct Guarded {
    inner: Stream,
    clock: Arc<HeaderClock>,
    client: Option<IpAddr>,
    refusals: Arc<RefusalLog>,
    /// The parser's 400 is being replaced: what is left to write of the proxy's own answer
    /// (empty once written: the rest of the parser's answer is dropped, the connection closes).
    replacing: Option<Bytes>,
    /// HTTP/2: what the client has sent so far.
    h2: Option<H2Client>,
    /// HTTP/1: where the client's requests stand; the bytes the HTTP code may not read yet are
    /// in `held`.
    framing: Framing,
    held: BytesMut,
    /// When the held chunked request (by where it starts) is let through as it comes
    /// ([`HOLD_TIME`]).
    hold_ends: Option<(u64, Pin<Box<tokio::time::Sleep>>)>,
    /// How many bytes the HTTP code has read.
    handed: u64,
    /// The client closed its side.
    client_done: bool,
}

/// What an HTTP/2 client has sent so far: its preface, then frames.
struct H2Client {
    /// The bytes of the client's preface still to come.
    preface_left: usize,
    frames: FrameWatch,
}

/// The length of the client's HTTP/2 connection preface (RFC 9113, 3.4).
pub(super) const H2_PREFACE_LEN: usize = 24;

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HeaderClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderClock")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Guarded {
    pub(super) fn new(
        inner: Stream,
        clock: Arc<HeaderClock>,
        client: Option<IpAddr>,
        refusals: Arc<RefusalLog>,
    ) -> Guarded {
        Guarded {
            inner,
            clock,
            client,
            refusals,
            replacing: None,
            h2: None,
            framing: Framing::default(),
            held: BytesMut::new(),
            hold_ends: None,
            handed: 0,
            client_done: false,
        }
    }

    /// An HTTP/2 connection's stream: its `clock` stops once the client's preface is read, and
    /// a flood of control frames ends the connection ([`FrameWatch`]).
    pub(super) fn h2(
        inner: Stream,
        clock: Arc<HeaderClock>,
        client: Option<IpAddr>,
        refusals: Arc<RefusalLog>,
    ) -> Guarded {
        Guarded {
            h2: Some(H2Client {
                preface_left: H2_PREFACE_LEN,
                frames: FrameWatch::new(std::time::Instant::now()),
            }),
            ..Guarded::new(inner, clock, client, refusals)
        }
    }

    /// HTTP/2 bytes arrived: the preface's stop the clock, frames are watched. `false` when
    /// the client floods.
    fn h2_read(&mut self, bytes: &[u8]) -> bool {
        let Some(h2) = self.h2.as_mut() else {
            return true;
        };
        let preface = h2.preface_left.min(bytes.len());
        if preface > 0 {
            h2.preface_left -= preface;
            if h2.preface_left == 0 {
                self.clock.stopped();
            }
        }
        if h2.frames.read(&bytes[preface..], std::time::Instant::now()) {
            return true;
        }
        self.refusals
            .refused(Refusal::H2ControlFlood, self.client, || {
                format!(
                "an HTTP/2 client sent more than {CONTROL_BURST} SETTINGS and PING frames at once \
                 (then {CONTROL_PER_SECOND} a second)"
            )
            });
        false
    }

    /// An answer of `len` bytes is to be written. While an HTTP/1 header is read that is the
    /// parser's 400: counted, and the proxy's own answer written in its place, after which the
    /// parser's bytes are taken and dropped. `None` for any other answer, written as it is.
    fn poll_replace(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            if self.h2.is_some() || !self.clock.reading() {
                return None;
            }
            self.refusals.refused(Refusal::BadRequest, self.client, || {
                "a request the HTTP/1 parser could not read (answered 400)".to_owned()
            });
            self.replacing = Some(UNREADABLE_REQUEST.clone());
        }
        let rest = self.replacing.as_mut()?;
        while !rest.is_empty() {
            match Pin::new(&mut *self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => rest.advance(n),
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        Some(Poll::Ready(Ok(len)))
    }
}

/// The room made for one read from the client while its bytes are held.
const HOLD_READ: usize = 8 * 1024;

/// The longest a chunked request is held for its body to end (or half the header deadline,
/// if less): a client that sends it at once, as an attacker does, is well within it; a slow or
/// streaming upload then goes on as it comes.
const HOLD_TIME: Duration = Duration::from_secs(1);

impl Guarded {
    /// HTTP/1 bytes for the HTTP code: what [`Framing`] lets through, read from the client
    /// as needed; straight into `buf` when nothing is held and the bytes need no look.
    /// Hands the first `n` held bytes, or as many as `buf` takes, to the HTTP code.
    fn hand_held(&mut self, n: usize, buf: &mut ReadBuf<'_>) {
        let n = n.min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.advance(n);
        self.handed += n as u64;
    }

    fn poll_read_http1(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let (may, broken) = match self.framing.verdict() {
                Verdict::Release(upto) => (upto, false),
                Verdict::Broken { head_end, reason } => {
                    let _ = self.clock.broken_body.set(reason);
                    (head_end, true)
                }
            };
            let ready = may.saturating_sub(self.handed).min(self.held.len() as u64) as usize;
            if ready > 0 {
                self.hand_held(ready, buf);
                return Poll::Ready(Ok(()));
            }
            if broken {
                // Only the head: the proxy refuses the request once it is read.
                return Poll::Ready(Ok(()));
            }
            if self.client_done {
                // A cut request: the parser and the decoder see it as it came.
                self.hand_held(self.held.len(), buf);
                return Poll::Ready(Ok(()));
            }
            let straight = self.held.is_empty()
                && (self.framing.passes_through()
                    || self
                        .framing
                        .body_left()
                        .is_some_and(|left| left >= buf.remaining() as u64));
            if straight {
                let before = buf.filled().len();
                ready!(Pin::new(&mut *self.inner).poll_read(cx, buf))?;
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    self.clock.bytes_arrived();
                    self.framing.feed(got);
                    self.handed += got.len() as u64;
                }
                return Poll::Ready(Ok(()));
            }
            match self.framing.held_request() {
                Some(start) => {
                    if self
                        .hold_ends
                        .as_ref()
                        .is_none_or(|(held, _)| *held != start)
                    {
                        let hold = HOLD_TIME.min(self.clock.timeout / 2);
                        self.hold_ends = Some((start, Box::pin(tokio::time::sleep(hold))));
                    }
                    let ends = &mut self.hold_ends.as_mut().expect("set above").1;
                    if ends.as_mut().poll(cx).is_ready() {
                        self.hold_ends = None;
                        self.framing.stop_holding();
                        continue;
                    }
                }
                None => self.hold_ends = None,
            }
            let before = self.held.len();
            self.held.reserve(HOLD_READ);
            let this = &mut *self;
            if ready!(poll_read_buf(
                Pin::new(&mut *this.inner),
                cx,
                &mut this.held
            ))? == 0
            {
                self.client_done = true;
                continue;
            }
            self.clock.bytes_arrived();
            let this = &mut *self;
            this.framing.feed(&this.held[before..]);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.h2.is_none() {
            return self.poll_read_http1(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if !matches!(polled, Poll::Ready(Ok(()))) || buf.filled().len() == before {
            return polled;
        }
        if !self.h2_read(&buf.filled()[before..]) {
            return Poll::Ready(Err(io::Error::other("HTTP/2 control frame flood")));
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(replaced) = self.poll_replace(cx, buf.len()) {
            return replaced;
        }
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        if let Some(replaced) = self.poll_replace(cx, len) {
            return replaced;
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

#[async_trait::async_trait]
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

    /// `h2` on an HTTP/2 connection, h2c included: the HTTP layer goes by it.
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        match self.h2 {
            Some(_) => Some(ALPN::H2),
            None => self.inner.selected_alpn_proto(),
        }
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

#[async_trait::async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.held.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = buf.len().min(self.held.len());
        buf[..n].copy_from_slice(&self.held[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Whether the clock has expired after `advance` of paused time.
    async fn expired_after(clock: &HeaderClock, advance: Duration) -> bool {
        tokio::select! {
            biased;
            () = clock.expired() => true,
            () = tokio::time::sleep(advance) => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_header_is_due_from_the_accept() {
        let clock = HeaderClock::new(TIMEOUT);
        assert!(!expired_after(&clock, TIMEOUT - Duration::from_millis(10)).await);
        // Bytes do not move the deadline.
        clock.bytes_arrived();
        assert!(expired_after(&clock, Duration::from_millis(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_header_stops_the_clock_until_the_next_request_sends_a_byte() {
        let clock = HeaderClock::new(TIMEOUT);
        clock.stopped();
        // Body and answer, then keep-alive: no deadline however long.
        assert!(!expired_after(&clock, TIMEOUT * 10).await);
        clock.waiting();
        assert!(!expired_after(&clock, TIMEOUT * 10).await);
        // The next request's first byte starts its clock.
        clock.bytes_arrived();
        assert!(!expired_after(&clock, TIMEOUT - Duration::from_millis(10)).await);
        assert!(expired_after(&clock, Duration::from_millis(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_between_header_and_next_request_do_not_start_a_clock() {
        // Body bytes, also those drained after an early answer, count for nothing.
        let clock = HeaderClock::new(TIMEOUT);
        clock.stopped();
        clock.bytes_arrived();
        clock.bytes_arrived();
        assert!(!expired_after(&clock, TIMEOUT * 3).await);
        // `waiting` only follows a read header: the first request keeps its accept deadline.
        let fresh = HeaderClock::new(TIMEOUT);
        fresh.waiting();
        assert!(expired_after(&fresh, TIMEOUT + Duration::from_millis(10)).await);
    }
}
