//! `Edge`, the proxy's `ProxyHttp`: thin glue over the pure request path. `request_filter` takes
//! the request's facts, decides, builds the response the proxy answers itself and writes it; the
//! later phases forward, mark and log by that decision. The gate state is loaded once per
//! request, so a switch mid-request cannot split its decision, and requests in flight finish as
//! they started.

use crate::config::{AccessLog, BypassSettings, MaintenanceSettings};
use crate::decide::{decide, Decision};
use crate::facts::{RequestFacts, X_FORWARDED_FOR};
use crate::gate_state::GateState;
use crate::metrics::{Metrics, RequestCounters};
use crate::pools::Pool;
use crate::respond;
use crate::router::Router;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use drawbridge_core::bypass::BYPASSED_HEADER;
use drawbridge_core::gate::Mode;
use http::header;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The most request body read and dropped to keep a connection open after a maintenance answer.
const DRAIN_LIMIT: usize = 64 * 1024;
/// The longest a request body is waited for before a maintenance answer.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

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
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    started: Instant,
    /// The gate state the request was decided under; set when `request_filter` is done (after
    /// writing the proxy's own answer, if it has one).
    state: Option<Arc<GateState>>,
    decision: Option<Decision>,
    peer_ip: Option<IpAddr>,
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

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Edge {
    /// Verifies a bypass token against the keyring, logging who was let through.
    fn token_is_valid(&self, token: &str) -> bool {
        self.bypass.keyring.as_ref().is_some_and(|keys| {
            match keys.verify(token, &self.bypass.environment, now_unix(), self.bypass.max_ttl) {
                Ok(claims) => {
                    tracing::info!(sub = claims.sub.as_deref().unwrap_or(""), nonce = %claims.nonce, "bypass token accepted");
                    true
                }
                Err(e) => {
                    tracing::debug!("bypass token refused: {e}");
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
        }
    }

    /// Decides the request against the gate and answers it here unless it passes.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let state = self.gate.load_full();
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let facts = RequestFacts::from_request(session.req_header(), ctx.peer_ip);
        let decision = decide(
            &state,
            &self.router,
            &facts,
            &self.bypass,
            &self.maintenance.cors,
            |token| self.token_is_valid(token),
        );
        ctx.decision = Some(decision);
        let response =
            respond::response_for(decision, &state, &facts, &self.maintenance, now_unix)?;
        let answered = response.is_some();
        if let Some((header, body)) = response {
            Self::write(session, header, body).await?;
        }
        ctx.state = Some(state);
        Ok(answered)
    }

    /// Picks the next healthy server of the route's pool.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.decision.and_then(Decision::route).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "request passed the gate without a route",
            )
        })?;
        let pool = &self.pools[self.router.route(route).pool];
        let backend = pool.select().ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("no healthy server in pool {}", pool.name),
            )
        })?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        Ok(Box::new(peer))
    }

    /// Removes the bypass token and records the client in `X-Forwarded-For`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The token header never goes upstream. The token cookie is removed only where the
        // route's gate was not open, as only such a gate reads the token.
        let token_in_cookie = ctx.mode() != Some(Mode::Normal)
            && RequestFacts::from_request(session.req_header(), ctx.peer_ip)
                .token(&self.bypass)
                .is_some_and(|token| token.in_cookie);
        upstream.remove_header(&self.bypass.header);
        if token_in_cookie {
            strip_cookie(upstream, &self.bypass.cookie)?;
        }
        if let Some(peer) = ctx.peer_ip {
            let forwarded = match upstream
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(previous) => format!("{previous}, {peer}"),
                None => peer.to_string(),
            };
            upstream.insert_header(X_FORWARDED_FOR, forwarded)?;
        }
        Ok(())
    }

    /// Marks responses that passed a closed gate.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(Decision::Bypass { via, .. }) = ctx.decision {
            upstream_response.insert_header(BYPASSED_HEADER, via.as_str())?;
        }
        Ok(())
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
        if let (Some(_), Some(Decision::Pass { route } | Decision::Bypass { route, .. })) =
            (error, ctx.decision)
        {
            let pool = &self.pools[self.router.route(route).pool].name;
            self.metrics
                .upstream_errors
                .with_label_values(&[pool])
                .inc();
        }
        if self.access_log == AccessLog::Off {
            return;
        }
        let mode = mode.map_or("", Mode::as_str);
        let decision = ctx.decision.map_or("error", Decision::label);
        let req = session.req_header();
        let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        let client = ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let error = error.map(|e| e.to_string()).unwrap_or_default();
        match self.access_log {
            AccessLog::Json => {
                let line = serde_json::json!({
                    "client": client,
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
                "{client} {} {} {status} route={route_name} mode={mode} decision={decision} ms={elapsed_ms:.3}{}{error}",
                req.method,
                req.uri.path(),
                if error.is_empty() { "" } else { " error=" },
            ),
        }
    }
}

/// Removes cookie `name` from the request's `Cookie` header lines.
fn strip_cookie(req: &mut RequestHeader, name: &str) -> Result<()> {
    let kept: Vec<String> = req
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_string)
        .collect();
    req.remove_header(&header::COOKIE);
    if !kept.is_empty() {
        req.insert_header(header::COOKIE, kept.join("; "))?;
    }
    Ok(())
}
