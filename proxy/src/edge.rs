//! `Edge`, the proxy's `ProxyHttp`: thin glue over the pure request path. `request_filter` takes
//! the request's facts, decides, builds the response the proxy answers itself and writes it; the
//! later phases forward, mark and log by that decision. The gate state is loaded once per
//! request, so a switch mid-request cannot split its decision, and requests in flight finish as
//! they started.
//!
//! What goes upstream is cleaned on every proxied request, whatever the gate: no bypass token
//! (header or cookie), no client-sent `X-Drawbridge-*`, `Forwarded` or `True-Client-IP`, one
//! `X-Forwarded-For` line (the whole chain, then the peer) and `X-Real-IP` set to the client as
//! resolved by the trust rules ([`prepare_upstream`]). A request that cannot be proxied gets 502
//! or 504 with a body in its route's form (`fail_to_proxy`).
//!
//! A request of a split route goes to the side of its client's bucket under the split document
//! it met first ([`crate::split`]); a retry stays on that side.

use crate::config::{AccessLog, BypassSettings, Limits, MaintenanceSettings, RouteKind};
use crate::decide::{decide, Answer, Decision};
use crate::facts::{
    cookie_value, forwarded_for_chain, has_cookie, prefers_json, without_cookie, RequestFacts,
    X_FORWARDED_FOR,
};
use crate::gate_state::GateState;
use crate::guard::{self, refusal_for, BodyPace, Refusal, RefusalLog};
use crate::https::{self, HttpsSettings};
use crate::metrics::{Metrics, RequestCounters};
use crate::one_line::OneLine;
use crate::pools::{Pool, UpstreamRequest};
use crate::respond;
use crate::router::Router;
use crate::split::{Bucket, Side, SplitState, POOL_HEADER, SPLIT_COOKIE};
use crate::windows::{WindowsState, ANNOUNCEMENT_HEADER};
use arc_swap::{ArcSwap, Guard};
use async_trait::async_trait;
use bytes::Bytes;
use drawbridge_core::bypass::BYPASSED_HEADER;
use drawbridge_core::gate::Mode;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Pingora's errors for a chunked request body it cannot read: a chunk (an overflowing size, a
/// bare LF) or the end of the trailers.
const BROKEN_CHUNKS: [ErrorType; 2] = [
    ErrorType::Custom("InvalidChunk"),
    ErrorType::Custom("InvalidTrailerEnd"),
];

/// The largest HTTP/2 request body read whole before an upstream is chosen: what Pingora's
/// retry buffer holds and sends on.
const H2_BODY_READ_FIRST: usize = 64 * 1024;

/// The most request body read and dropped to keep a connection open after a maintenance answer.
const DRAIN_LIMIT: usize = 64 * 1024;
/// The longest a request body is waited for before a maintenance answer.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Request headers in Drawbridge's name start with this; a client may not send any of them on.
const OWN_HEADER_PREFIX: &str = "x-drawbridge-";
/// Where the resolved client goes for the application.
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Client-address and scheme headers the proxy does not vouch for: a client could write anything
/// there, and applications read them (Rack reads `X-Forwarded-Ssl` and `X-Forwarded-Scheme`
/// before `X-Forwarded-Proto`).
const UNVOUCHED: [HeaderName; 6] = [
    header::FORWARDED,
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("front-end-https"),
];
/// The scheme the client used, as the application sees it.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The host the client asked for, as the application sees it.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The edge proxy.
pub struct Edge {
    pub gate: Arc<ArcSwap<GateState>>,
    pub router: Router,
    /// By pool index, as `RouteSettings::pool` refers to them.
    pub pools: Vec<Arc<Pool>>,
    pub bypass: BypassSettings,
    pub maintenance: MaintenanceSettings,
    pub metrics: Arc<Metrics>,
    /// The request counters of `metrics`, resolved per route.
    pub counters: RequestCounters,
    pub access_log: AccessLog,
    /// The size and pace limits of a request (`[limits]`).
    pub limits: Limits,
    /// Where refusals are counted and logged, shared with the listener's gatehouse.
    pub refusals: Arc<RefusalLog>,
    /// The redirect of plain requests to HTTPS, and HSTS.
    pub https: HttpsSettings,
    /// The routes split between two pools.
    pub split: Arc<ArcSwap<SplitState>>,
    /// The maintenance windows, as announced.
    pub windows: Arc<ArcSwap<WindowsState>>,
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    started: Instant,
    /// The gate state the request was decided under; set when `request_filter` is done (after
    /// writing the proxy's own answer, if it has one).
    state: Option<Arc<GateState>>,
    decision: Option<Decision>,
    peer_ip: Option<IpAddr>,
    /// The client by the X-Forwarded-For trust rules; `None` when it cannot be known.
    client_ip: Option<IpAddr>,
    /// The status a failure to proxy mapped to (`respond::failure_status`), once one happened.
    failure: Option<u16>,
    /// Why the request was refused by `[limits]`, if it was.
    refused: Option<Refusal>,
    /// The request body so far, against `max_body_bytes` and `body_min_rate`.
    body: BodyPace,
    /// The request came over TLS.
    tls: bool,
    /// Counted in flight to the server it was sent to, until it ends.
    upstream: Option<UpstreamRequest>,
    /// The request was sent to HTTPS (`server.https_redirect`).
    redirected: bool,
    /// The pool the request was sent to (index into the edge's pools).
    pool: Option<usize>,
    /// Of a split route: the split it met and its side.
    split: Option<(Arc<SplitState>, Side)>,
    /// Of a split route: the client's bucket.
    bucket: Option<Bucket>,
    /// The side was taken (a retry keeps it, even when the route was not split then).
    side_taken: bool,
}

impl RequestCtx {
    /// The gate mode the request met: its route's, or the document's when no route matched.
    fn mode(&self) -> Option<Mode> {
        let state = self.state.as_ref()?;
        Some(match self.decision.and_then(Decision::route) {
            Some(route) => state.mode_for(route),
            None => state.doc.mode,
        })
    }
}

/// The HTTP/2 stream error under `e`, if it is one.
fn stream_error(e: &Error) -> Option<h2::Reason> {
    e.root_cause().downcast_ref::<h2::Error>()?.reason()
}

/// Whether the request came over TLS.
fn over_tls(session: &Session) -> bool {
    session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Edge {
    /// Writes the answer to a request that failed or was refused: `status` with a body in the
    /// form of `route` (problem+json for API routes and clients that prefer JSON, else the
    /// page), when no answer has begun; the connection is closed after it.
    async fn write_failure(&self, session: &mut Session, route: Option<usize>, status: u16) {
        let api = route.is_some_and(|route| self.router.route(route).kind == RouteKind::Api);
        let req = session.req_header();
        let answer =
            if api || prefers_json(req.headers.get(header::ACCEPT).map(HeaderValue::as_bytes)) {
                Answer::Problem
            } else {
                Answer::Page
            };
        let head_only = req.method == Method::HEAD;
        let tls = over_tls(session);
        let answer = respond::failure(status, answer).and_then(|(mut header, body)| {
            self.mark_tls(&mut header, tls).map(|()| (header, body))
        });
        let written = match answer {
            Ok((header, body)) => {
                let body = if head_only { Bytes::new() } else { body };
                session
                    .as_downstream_mut()
                    .write_error_response(header, body)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(write_error) = written {
            tracing::debug!("cannot write the {status} answer: {write_error}");
        }
    }

    /// Refuses a request over a `[limits]` size: counted, logged, answered with the refusal's
    /// status, and the connection closed (its body is not read).
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Option<usize>,
        refusal: Refusal,
        detail: String,
    ) {
        self.refusals
            .refused(refusal, ctx.client_ip.or(ctx.peer_ip), || detail);
        ctx.refused = Some(refusal);
        if let Some(status) = refusal.status() {
            self.write_failure(session, route, status).await;
        }
    }

    /// Reads a whole HTTP/2 request body of at most [`H2_BODY_READ_FIRST`] bytes before an
    /// upstream is chosen, so that the h2 layer has checked it against its `content-length`:
    /// a body that does not match is refused here instead of being cut halfway to the upstream.
    /// Pingora sends the body read from its retry buffer. A `content-length: 0` is read too:
    /// Pingora takes it for "no body" without waiting for the end of the stream, so DATA after
    /// it would otherwise follow a whole empty request to the upstream. Says why the request is
    /// refused.
    async fn read_small_h2_body(&self, session: &mut Session) -> Result<Option<(Refusal, String)>> {
        let req = session.req_header();
        let small = req.version == Version::HTTP_2
            && req
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_some_and(|length| length <= H2_BODY_READ_FIRST);
        if !small {
            return Ok(None);
        }
        let downstream = session.as_downstream_mut();
        downstream.enable_retry_buffering();
        let timeout = self.limits.body_timeout;
        let read = tokio::time::timeout(timeout, async {
            while downstream.read_request_body().await?.is_some() {}
            Ok::<_, Box<Error>>(())
        })
        .await;
        match read {
            Ok(Ok(())) => Ok(None),
            Ok(Err(e)) if stream_error(&e) == Some(h2::Reason::PROTOCOL_ERROR) => Ok(Some((
                Refusal::Ambiguous,
                format!("an HTTP/2 request body that does not match its content-length: {e}"),
            ))),
            // The client's stream ended otherwise (a cancel): its error, not the proxy's.
            Ok(Err(e)) => Err(e.into_down()),
            Err(_) => Ok(Some((
                Refusal::BodyTimeout,
                format!("no whole request body within limits.body_timeout ({timeout:?})"),
            ))),
        }
    }

    /// Puts the window announced now on an API answer ([`ANNOUNCEMENT_HEADER`]); an upstream's
    /// own copy of that header never reaches the client. No clock is read: the windows know
    /// which one is announced ([`crate::windows::Announcements::refresh`]).
    fn announce(&self, answer: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
        answer.remove_header(&ANNOUNCEMENT_HEADER);
        let api = ctx
            .decision
            .and_then(Decision::route)
            .is_some_and(|route| self.router.route(route).kind == RouteKind::Api);
        if !api {
            return Ok(());
        }
        if let Some(window) = self.windows.load().announced_now() {
            answer.insert_header(ANNOUNCEMENT_HEADER, window.header.clone())?;
        }
        Ok(())
    }

    /// Adds `Strict-Transport-Security` (`tls.hsts`) to an answer over TLS.
    fn mark_tls(&self, header: &mut ResponseHeader, tls: bool) -> Result<()> {
        if let Some(hsts) = self.https.hsts.as_ref().filter(|_| tls) {
            header.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        Ok(())
    }

    /// Picks the side of split route `route` for the request once: the client's bucket from
    /// its cookie (else from its address), under the split document loaded now. An unsplit
    /// route keeps no bucket, and sets no cookie.
    fn take_side(&self, session: &Session, ctx: &mut RequestCtx, route: usize) {
        let split = self.split.load();
        if !split.splits(route) {
            return;
        }
        let cookies = session.req_header().headers.get_all(header::COOKIE);
        let bucket = Bucket::from_cookie(
            cookie_value(cookies.iter().map(HeaderValue::as_bytes), SPLIT_COOKIE),
            ctx.client_ip,
        );
        ctx.bucket = Some(bucket);
        if let Some((side, _)) = split.side(route, bucket.value) {
            ctx.split = Some((Guard::into_inner(split), side));
        }
    }

    /// Verifies a bypass token against the keyring, logging who was let through.
    fn token_is_valid(&self, token: &str) -> bool {
        self.bypass.keyring.as_ref().is_some_and(|keys| {
            match keys.verify(
                token,
                &self.bypass.environment,
                now_unix(),
                self.bypass.max_ttl,
            ) {
                Ok(claims) => {
                    tracing::info!(
                        sub = claims.sub.as_deref().unwrap_or(""),
                        nonce = claims.nonce.as_str(),
                        "bypass token accepted"
                    );
                    true
                }
                Err(e) => {
                    tracing::debug!("bypass token refused: {}", OneLine(&e.to_string()));
                    false
                }
            }
        })
    }

    /// Writes a response the proxy answers itself, keeping the connection open: a small request
    /// body is read and dropped first (Pingora closes a connection whose request body was not
    /// finished); a large or slow one closes the connection after the answer instead.
    async fn write(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<()> {
        if !session.as_downstream_mut().is_body_empty() {
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                let mut read = 0;
                while let Some(chunk) = session.as_downstream_mut().read_request_body().await? {
                    read += chunk.len();
                    if read > DRAIN_LIMIT {
                        return Ok(false);
                    }
                }
                Ok::<_, Box<Error>>(true)
            })
            .await;
            if !matches!(drained, Ok(Ok(true))) {
                session.as_downstream_mut().set_keepalive(None);
            }
        }
        let head_only = session.req_header().method == Method::HEAD;
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            state: None,
            decision: None,
            peer_ip: None,
            client_ip: None,
            failure: None,
            refused: None,
            body: BodyPace::default(),
            tls: false,
            upstream: None,
            redirected: false,
            pool: None,
            split: None,
            bucket: None,
            side_taken: false,
        }
    }

    /// The request header is read: its deadline is met.
    async fn early_request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        guard::header_read();
        Ok(())
    }

    /// Decides the request against the gate and answers it here unless it passes.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let state = GateState::serving(self.gate.load_full(), now_unix);
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.tls = over_tls(session);
        let facts = RequestFacts::from_request(session.req_header(), ctx.peer_ip);
        ctx.client_ip = facts.client_ip(&self.bypass.trusted_proxies);
        // A tunnel, an ambiguous request, one over a size limit: refused before anything else.
        let refusal = (session.req_header().method == Method::CONNECT)
            .then(|| {
                let detail = "a CONNECT request: this proxy opens no tunnels";
                (Refusal::ConnectMethod, detail.to_owned())
            })
            .or_else(|| guard::ambiguous(session.as_downstream()))
            .or_else(|| {
                guard::broken_chunked_body().map(|reason| {
                    let detail = format!(
                        "a chunked request body two parsers could read two ways ({reason}), \
                         answered 400 before the request was read"
                    );
                    (Refusal::Ambiguous, detail)
                })
            })
            .or_else(|| refusal_for(session.req_header(), &self.limits));
        if let Some((refusal, detail)) = refusal {
            let route = self.router.find(facts.host, facts.path);
            self.refuse(session, ctx, route, refusal, detail).await;
            return Ok(true);
        }
        // Behind a trusted proxy that ended TLS, the client is on HTTPS already.
        let on_https = ctx.tls
            || vouched_scheme(session.req_header(), &self.bypass, ctx.peer_ip) == Some("https");
        if let Some(port) = self.https.redirect_port.filter(|_| !on_https) {
            let req = session.req_header();
            let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
            if let Some(location) = https::redirect_location(facts.host, facts.path, target, port) {
                ctx.redirected = true;
                Self::write(session, https::redirect(&location)?, Bytes::new()).await?;
                return Ok(true);
            }
        }
        let decision = decide(
            &state,
            &self.router,
            &facts,
            &self.bypass,
            &self.maintenance.cors,
            |token| self.token_is_valid(token),
        );
        ctx.decision = Some(decision);
        let response = respond::response_for(
            decision,
            &state,
            &self.windows,
            &facts,
            &self.maintenance,
            now_unix,
        )?;
        let mut answered = response.is_some();
        if let Some((mut header, body)) = response {
            self.mark_tls(&mut header, ctx.tls)?;
            Self::write(session, header, body).await?;
        } else if let Some((refusal, detail)) = self.read_small_h2_body(session).await? {
            self.refuse(session, ctx, decision.route(), refusal, detail)
                .await;
            answered = true;
        }
        ctx.state = Some(state);
        Ok(answered)
    }

    /// Picks the next healthy server of the route's pool; over TLS for a TLS pool.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // A retry starts over: the place at the previous server is given back, and the body is
        // counted again as Pingora sends it again.
        ctx.upstream = None;
        ctx.body = BodyPace::default();
        let route = ctx.decision.and_then(Decision::route).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "request passed the gate without a route",
            )
        })?;
        if !ctx.side_taken {
            ctx.side_taken = true;
            self.take_side(session, ctx, route);
        }
        let own = self.router.route(route).pool;
        let pool_index = ctx
            .split
            .as_ref()
            .and_then(|(split, side)| split.meter(route, *side))
            .map_or(own, |side| side.pool);
        ctx.pool = Some(pool_index);
        let pool = &self.pools[pool_index];
        let backend = pool.select().ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("no healthy server in pool {}", pool.name),
            )
        })?;
        ctx.upstream = Some(pool.start_request(&backend.addr));
        let mut peer = pool.peer(backend.addr);
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        Ok(Box::new(peer))
    }

    /// Logs a failed TLS handshake with the pool and the server ([`Pool::connect_failed`]);
    /// the error itself goes on as it is (no retry: the client gets 502).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        if let Some(pool) = ctx.pool {
            self.pools[pool].connect_failed(peer, &e);
        }
        e
    }

    /// Cleans the request for the upstream ([`prepare_upstream`]).
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let from = Client {
            peer: ctx.peer_ip,
            resolved: ctx.client_ip,
            tls: ctx.tls,
        };
        prepare_upstream(upstream, &self.bypass, from)
    }

    /// Holds the request body to `max_body_bytes` and `body_min_rate` as it is passed on; a
    /// body over either ends the request with 413 or 408 ([`Self::fail_to_proxy`]).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let chunk = body.as_ref().map_or(0, Bytes::len);
        let Some((refusal, detail)) = ctx.body.take(chunk, Instant::now(), &self.limits) else {
            return Ok(());
        };
        self.refusals
            .refused(refusal, ctx.client_ip.or(ctx.peer_ip), || detail.clone());
        ctx.refused = Some(refusal);
        let status = refusal.status().unwrap_or(400);
        Error::e_explain(ErrorType::HTTPStatus(status), detail)
    }

    /// Marks responses that passed a closed gate; adds HSTS over TLS.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(Decision::Bypass { via, .. }) = ctx.decision {
            upstream_response.insert_header(BYPASSED_HEADER, via.as_str())?;
        }
        if let (Some((split, side)), Some(route)) =
            (&ctx.split, ctx.decision.and_then(Decision::route))
        {
            if let Some(meter) = split.meter(route, *side) {
                upstream_response.insert_header(POOL_HEADER, meter.pool_header.clone())?;
            }
        }
        if let Some(bucket) = ctx.bucket.filter(|b| b.drawn) {
            upstream_response.append_header(header::SET_COOKIE, bucket.cookie(ctx.tls))?;
        }
        self.announce(upstream_response, ctx)?;
        self.mark_tls(upstream_response, ctx.tls)
    }

    /// Answers a request that could not be proxied: 504 when the upstream timed out, 502 for
    /// other upstream failures, with a body in the route's form ([`respond::failure`]). Nothing
    /// is written when the client is gone or the upstream's answer has already begun.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = respond::failure_status(e);
        ctx.failure = Some(status);
        let client = ctx.client_ip.or(ctx.peer_ip);
        if status == 408 && ctx.refused.is_none() {
            ctx.refused = Some(Refusal::BodyTimeout);
            let timeout = self.limits.body_timeout;
            self.refusals.refused(Refusal::BodyTimeout, client, || {
                format!("no bytes of the request body for limits.body_timeout ({timeout:?})")
            });
        }
        if BROKEN_CHUNKS.contains(e.etype()) && e.esource() == &ErrorSource::Downstream {
            // A chunked body let through as it came (`guard::framing`): its head went upstream
            // already, and the cut body ends that request there.
            ctx.refused = Some(Refusal::Ambiguous);
            self.refusals.refused(Refusal::Ambiguous, client, || {
                format!(
                    "a chunked request body that cannot be read: {}",
                    OneLine(&e.to_string())
                )
            });
        }
        if status > 0 {
            let route = ctx.decision.and_then(Decision::route);
            self.write_failure(session, route, status).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request and writes its access-log line.
    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
        let route = ctx.decision.and_then(Decision::route);
        let route_name = route.map_or("", |i| self.router.route(i).name.as_str());
        let mode = ctx.mode();
        self.counters.request(route, mode, status);
        match ctx.decision {
            Some(Decision::Maintenance { route, answer }) => {
                self.counters.maintenance(route, answer);
            }
            Some(Decision::Bypass { via, .. }) => {
                self.metrics
                    .bypasses
                    .with_label_values(&[route_name, via.as_str()])
                    .inc();
            }
            _ => {}
        }
        if let (Some((split, side)), Some(route)) = (&ctx.split, route) {
            if let Some(meter) = split.meter(route, *side) {
                meter.observe(status, ctx.started.elapsed().as_secs_f64());
            }
        }
        if let (Some(failure @ (502 | 504)), Some(pool)) = (ctx.failure, ctx.pool) {
            let pool = &self.pools[pool].name;
            let status = if failure == 504 { "504" } else { "502" };
            self.metrics
                .upstream_errors
                .with_label_values(&[pool, status])
                .inc();
        }
        if self.access_log == AccessLog::Off {
            return;
        }
        let mode = mode.map_or("", Mode::as_str);
        let decision = match (ctx.refused, ctx.decision) {
            (Some(refusal), _) => refusal.as_str(),
            (None, Some(decision)) => decision.label(),
            (None, None) if ctx.redirected => "https_redirect",
            (None, None) => "error",
        };
        let req = session.req_header();
        let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        let client = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let peer = ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let error = error.map(|e| e.to_string()).unwrap_or_default();
        match self.access_log {
            AccessLog::Json => {
                let line = serde_json::json!({
                    "client": client,
                    "peer": peer,
                    "method": req.method.as_str(),
                    "path": req.uri.path(),
                    "host": req.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
                    "status": status,
                    "route": route_name,
                    "mode": mode,
                    "decision": decision,
                    "ms": (elapsed_ms * 1000.0).round() / 1000.0,
                    "error": error,
                });
                tracing::info!(target: "access", "{line}");
            }
            _ => tracing::info!(
                target: "access",
                "{} {} {} {status} route={route_name} mode={mode} decision={decision} peer={} ms={elapsed_ms:.3}{}{}",
                if client.is_empty() { "-" } else { &client },
                req.method,
                OneLine(req.uri.path()),
                if peer.is_empty() { "-" } else { &peer },
                if error.is_empty() { "" } else { " error=" },
                OneLine(&error),
            ),
        }
    }
}

/// Who sent a request, as the proxy knows it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The address of the connection's other end.
    pub peer: Option<IpAddr>,
    /// The client as resolved by the trust rules, when known.
    pub resolved: Option<IpAddr>,
    /// The connection is TLS.
    pub tls: bool,
}

/// Cleans a request for the upstream, open gate or closed:
/// * drops the bypass token header and every client-sent `X-Drawbridge-*` header (the proxy's
///   own names: an application must be able to trust them), and `Forwarded`, `True-Client-IP`,
///   `X-Real-IP` and the scheme headers other than `X-Forwarded-Proto` (`X-Forwarded-Ssl`, …),
///   which the proxy does not vouch for;
/// * cuts the bypass cookie out of the `Cookie` lines, the other cookies kept byte for byte; a
///   line left empty is dropped;
/// * sends one `X-Forwarded-For` line: every line the request had, in order, then the peer;
/// * sets `X-Real-IP` to the client as resolved by the trust rules, when known;
/// * sets `X-Forwarded-Host` to the request's host, and `X-Forwarded-Proto` (`https` or `http`)
///   from the connection, unless the peer is one of `bypass.trusted_proxies` and its last
///   `X-Forwarded-Proto` line names a scheme (which is then the one line sent).
///
/// Hop-by-hop headers, and those a `Connection` line names, are Pingora's to drop before this
/// runs (its standard upstream request policy). Headers are only rebuilt where there is
/// something to remove.
///
/// # Errors
/// Only if a header cannot be stored, which values taken from the request rule out.
pub fn prepare_upstream(
    upstream: &mut RequestHeader,
    bypass: &BypassSettings,
    from: Client,
) -> Result<()> {
    let Client {
        peer,
        resolved: client,
        tls,
    } = from;
    // Collecting nothing allocates nothing: the usual request pays one pass over its names.
    let unwanted: Vec<HeaderName> = upstream
        .headers
        .keys()
        .filter(|name| {
            name.as_str().starts_with(OWN_HEADER_PREFIX)
                || **name == bypass.header
                || **name == X_REAL_IP
                || UNVOUCHED.contains(*name)
        })
        .cloned()
        .collect();
    for name in &unwanted {
        upstream.remove_header(name);
    }

    let cookies = || upstream.headers.get_all(header::COOKIE).iter();
    if has_cookie(cookies().map(HeaderValue::as_bytes), &bypass.cookie) {
        let lines: Vec<HeaderValue> = cookies()
            .filter_map(
                |line| match without_cookie(line.as_bytes(), &bypass.cookie) {
                    None => Some(Ok(line.clone())),
                    Some(kept) if kept.is_empty() => None,
                    Some(kept) => Some(HeaderValue::from_maybe_shared(Bytes::from(kept))),
                },
            )
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "a Cookie line", e))?;
        upstream.remove_header(&header::COOKIE);
        for line in lines {
            upstream.append_header(header::COOKIE, line)?;
        }
    }

    let forwarded = upstream.headers.get_all(&X_FORWARDED_FOR);
    let lines = forwarded.iter().count();
    if peer.is_some() || lines > 1 {
        let chain = forwarded_for_chain(forwarded.iter().map(HeaderValue::as_bytes), peer);
        match chain {
            Some(chain) => {
                let chain = HeaderValue::from_maybe_shared(Bytes::from(chain)).map_err(|e| {
                    Error::because(ErrorType::InvalidHTTPHeader, "X-Forwarded-For", e)
                })?;
                upstream.insert_header(X_FORWARDED_FOR, chain)?;
            }
            None => {
                upstream.remove_header(&X_FORWARDED_FOR);
            }
        }
    }

    if let Some(client) = client {
        let mut text = String::with_capacity(39);
        // An address prints as ASCII; writing to a String cannot fail.
        let _ = write!(text, "{client}");
        upstream.insert_header(X_REAL_IP, text)?;
    }

    let scheme =
        vouched_scheme(upstream, bypass, peer).unwrap_or(if tls { "https" } else { "http" });
    upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(scheme))?;
    let host = match upstream.headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => upstream
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok()),
    };
    match host {
        Some(host) => upstream.insert_header(X_FORWARDED_HOST, host)?,
        None => {
            upstream.remove_header(&X_FORWARDED_HOST);
        }
    }
    Ok(())
}

/// The scheme a trusted proxy in front (`bypass.trusted_proxies`) says the client used: the
/// last `X-Forwarded-Proto` line of a request from `peer`, when it is `https` or `http` (a proxy
/// that appends its line puts it last).
fn vouched_scheme(
    req: &RequestHeader,
    bypass: &BypassSettings,
    peer: Option<IpAddr>,
) -> Option<&'static str> {
    let trusted = peer.is_some_and(|ip| bypass.trusted_proxies.iter().any(|n| n.contains(&ip)));
    if !trusted {
        return None;
    }
    match req
        .headers
        .get_all(&X_FORWARDED_PROTO)
        .iter()
        .next_back()?
        .as_bytes()
    {
        b"https" => Some("https"),
        b"http" => Some("http"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::{bypass, request};

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// A plain-HTTP client at `peer`, resolved to `resolved`.
    fn from(peer: Option<IpAddr>, resolved: Option<IpAddr>) -> Client {
        Client {
            peer,
            resolved,
            tls: false,
        }
    }

    /// Every value of header `name`, in order.
    fn all<'a>(req: &'a RequestHeader, name: &str) -> Vec<&'a str> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// `headers` after [`prepare_upstream`] from peer 10.0.0.2 resolved to client `client`.
    fn prepared(headers: &[(&str, &str)], client: Option<IpAddr>) -> RequestHeader {
        let mut req = request(Method::GET, "/", headers);
        prepare_upstream(&mut req, &bypass(), from(ip("10.0.0.2"), client)).unwrap();
        req
    }

    #[test]
    fn the_bypass_cookie_never_goes_upstream_and_other_cookies_are_kept_as_sent() {
        let req = prepared(
            &[
                ("cookie", "theme=dark;lang=en"),
                ("cookie", "a=1; drawbridge_bypass=dbt1.k1.x.y; b=\"q r\""),
                ("cookie", "drawbridge_bypass=dbt1.k1.x.y"),
            ],
            None,
        );
        assert_eq!(
            all(&req, "cookie"),
            ["theme=dark;lang=en", "a=1; b=\"q r\""]
        );
        let only_ours = prepared(&[("cookie", "drawbridge_bypass=t")], None);
        assert!(all(&only_ours, "cookie").is_empty());
        let none_of_ours = prepared(&[("cookie", "a=1;  b=2")], None);
        assert_eq!(all(&none_of_ours, "cookie"), ["a=1;  b=2"]);
    }

    #[test]
    fn headers_in_our_name_and_unvouched_addresses_are_dropped() {
        let req = prepared(
            &[
                ("x-drawbridge-bypass", "dbt1.k1.x.y"),
                ("X-Drawbridge-Bypassed", "token"),
                ("x-drawbridge-outage", "planned"),
                ("x-drawbridge-anything", "1"),
                ("forwarded", "for=192.0.2.1"),
                ("x-forwarded-ssl", "on"),
                ("x-forwarded-scheme", "https"),
                ("front-end-https", "on"),
                ("true-client-ip", "192.0.2.1"),
                ("x-real-ip", "192.0.2.1"),
                ("x-drawbridgeish", "kept"),
                ("accept", "text/html"),
            ],
            None,
        );
        let mut names: Vec<&str> = req.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "x-drawbridgeish",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
    }

    #[test]
    fn forwarded_proto_comes_from_the_connection_unless_a_trusted_proxy_says_and_host_from_the_request(
    ) {
        let sent = [
            ("host", "shop.test"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ];
        let untrusted = prepared(&sent, None);
        assert_eq!(all(&untrusted, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&untrusted, "x-forwarded-host"), ["shop.test"]);

        let mut settings = bypass();
        settings.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let mut req = request(Method::GET, "/", &sent);
        prepare_upstream(&mut req, &settings, from(ip("10.0.0.2"), None)).unwrap();
        assert_eq!(all(&req, "x-forwarded-proto"), ["https"]);
        // The host is the request's, whoever sent the header.
        assert_eq!(all(&req, "x-forwarded-host"), ["shop.test"]);
        // A load balancer that appends its line: the client's earlier one does not count.
        let mut appended = request(
            Method::GET,
            "/",
            &[
                ("host", "shop.test"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-proto", "http"),
            ],
        );
        prepare_upstream(&mut appended, &settings, from(ip("10.0.0.2"), None)).unwrap();
        assert_eq!(all(&appended, "x-forwarded-proto"), ["http"]);
        // Even a trusted proxy's scheme must be one.
        let mut odd = request(
            Method::GET,
            "/",
            &[("host", "shop.test"), ("x-forwarded-proto", "gopher")],
        );
        prepare_upstream(&mut odd, &settings, from(ip("10.0.0.2"), None)).unwrap();
        assert_eq!(all(&odd, "x-forwarded-proto"), ["http"]);

        let mut tls = request(Method::GET, "/", &[("host", "shop.test")]);
        let over_tls = Client {
            tls: true,
            ..from(ip("192.0.2.1"), None)
        };
        prepare_upstream(&mut tls, &bypass(), over_tls).unwrap();
        assert_eq!(all(&tls, "x-forwarded-proto"), ["https"]);
    }

    #[test]
    fn a_configured_token_header_is_dropped_too() {
        let mut settings = bypass();
        settings.header = HeaderName::from_static("x-ops-pass");
        let mut req = request(Method::GET, "/", &[("x-ops-pass", "t"), ("a", "1")]);
        prepare_upstream(&mut req, &settings, from(None, None)).unwrap();
        assert!(req.headers.get("x-ops-pass").is_none());
        assert_eq!(all(&req, "a"), ["1"]);
    }

    #[test]
    fn the_upstream_gets_one_forwarded_for_line_with_the_whole_chain_and_the_peer() {
        let req = prepared(
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "198.51.100.7, 10.0.0.5"),
            ],
            ip("198.51.100.7"),
        );
        assert_eq!(
            all(&req, "x-forwarded-for"),
            ["203.0.113.9, 198.51.100.7, 10.0.0.5, 10.0.0.2"]
        );
        assert_eq!(all(&req, "x-real-ip"), ["198.51.100.7"]);

        let first = prepared(&[], ip("10.0.0.2"));
        assert_eq!(all(&first, "x-forwarded-for"), ["10.0.0.2"]);
        assert_eq!(all(&first, "x-real-ip"), ["10.0.0.2"]);

        // Not on TCP/IP: the lines are still joined into one.
        let mut req = request(
            Method::GET,
            "/",
            &[
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-for", "192.0.2.2"),
            ],
        );
        prepare_upstream(&mut req, &bypass(), from(None, None)).unwrap();
        assert_eq!(all(&req, "x-forwarded-for"), ["192.0.2.1, 192.0.2.2"]);
        assert!(req.headers.get("x-real-ip").is_none());
    }
}
