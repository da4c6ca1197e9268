//! `Edge`, the proxy's `ProxyHttp`: each phase takes a few facts from the session and hands them
//! to the pure `decide` and `respond` functions. The gate state is loaded once per request, so a
//! switch mid-request cannot split its decision, and requests in flight finish as they started.

use crate::config::{AccessLog, BypassSettings, MaintenanceSettings, RouteSettings};
use crate::decide::{decide, BypassVia, Decision, RequestFacts, Router, WELL_KNOWN_PATH};
use crate::facts::{client_ip, cookie_value, prefers_json};
use crate::gate_state::GateState;
use crate::metrics::{Metrics, RequestCounters};
use crate::pools::Pool;
use crate::respond::{self, BYPASSED_HEADER};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use drawbridge_core::gate::Mode;
use http::header::{self, HeaderName, HeaderValue};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where the client chain is read from and recorded (a constant, so no request parses the name).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The most request body read and dropped to keep a connection open after a maintenance answer.
const DRAIN_LIMIT: usize = 64 * 1024;
/// The longest a request body is waited for before a maintenance answer.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The edge proxy.
pub struct Edge {
    pub gate: Arc<ArcSwap<GateState>>,
    pub routes: Vec<RouteSettings>,
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
    state: Option<Arc<GateState>>,
    route: Option<usize>,
    decision: Option<Decision>,
    peer_ip: Option<IpAddr>,
    /// The token came from the cookie, so the cookie is removed before forwarding.
    token_in_cookie: bool,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Edge {
    fn decide_request(
        &self,
        req: &RequestHeader,
        peer: Option<IpAddr>,
        ctx: &mut RequestCtx,
        state: &GateState,
    ) -> Decision {
        let path = req.uri.path();
        if path == WELL_KNOWN_PATH && matches!(req.method, Method::GET | Method::HEAD) {
            return Decision::WellKnown;
        }
        let host = req
            .uri
            .host()
            .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        let Some(route_index) = self.router.find(&self.routes, host, path) else {
            return Decision::NoRoute;
        };
        ctx.route = Some(route_index);
        let route = &self.routes[route_index];
        let mode = state.mode_for(route_index);
        if mode == Mode::Normal {
            return Decision::Pass;
        }
        let headers = &req.headers;
        let header_token = headers
            .get(&self.bypass.header)
            .and_then(|v| v.to_str().ok());
        let cookie_token = if header_token.is_none() {
            cookie_value(
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .map(HeaderValue::as_bytes),
                &self.bypass.cookie,
            )
        } else {
            None
        };
        ctx.token_in_cookie = cookie_token.is_some();
        let facts = RequestFacts {
            method: &req.method,
            path,
            client_ip: peer.and_then(|peer| {
                client_ip(
                    peer,
                    headers
                        .get_all(&X_FORWARDED_FOR)
                        .iter()
                        .map(HeaderValue::as_bytes),
                    &self.bypass.trusted_proxies,
                )
            }),
            prefers_json: prefers_json(headers.get(header::ACCEPT).map(HeaderValue::as_bytes)),
            is_preflight: req.method == Method::OPTIONS
                && headers.contains_key(header::ORIGIN)
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD),
            token: header_token.or(cookie_token),
        };
        decide(mode, route, &facts, &self.bypass, |token| {
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
            route: None,
            decision: None,
            peer_ip: None,
            token_in_cookie: false,
        }
    }

    /// Decides the request against the gate and answers it here unless it passes.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let state = self.gate.load_full();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer_ip = peer;
        let decision = self.decide_request(session.req_header(), peer, ctx, &state);
        ctx.decision = Some(decision);
        let origin = session.req_header().headers.get(header::ORIGIN).cloned();
        let maintenance = |answer| {
            respond::maintenance(
                &state,
                answer,
                &self.maintenance,
                origin.as_ref(),
                now_unix(),
            )
        };
        let response = match decision {
            Decision::Pass | Decision::Bypass(_) => None,
            Decision::NoRoute => Some(respond::no_route()?),
            Decision::WellKnown => Some(respond::well_known(
                &state,
                &self.maintenance,
                origin.as_ref(),
            )?),
            Decision::Preflight(answer) => {
                let req = session.req_header();
                let preflight = respond::preflight(
                    &self.maintenance,
                    origin.as_ref(),
                    req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD),
                    req.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
                )?;
                match preflight {
                    Some(h) => Some((h, Bytes::new())),
                    None => Some(maintenance(answer)?),
                }
            }
            Decision::Maintenance(answer) => Some(maintenance(answer)?),
        };
        let answered = response.is_some();
        if let Some((h, body)) = response {
            Self::write(session, h, body).await?;
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
        let route = ctx.route.ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "request passed the gate without a route",
            )
        })?;
        let pool = &self.pools[self.routes[route].pool];
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
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream.remove_header(&self.bypass.header);
        if ctx.token_in_cookie {
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
        if let Some(Decision::Bypass(via)) = ctx.decision {
            upstream_response.insert_header(BYPASSED_HEADER, via.as_str())?;
        }
        Ok(())
    }

    /// Counts the request and writes its access-log line.
    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
        let route_name = ctx.route.map_or("", |i| self.routes[i].name.as_str());
        let mode = match (&ctx.state, ctx.route) {
            (Some(state), Some(i)) => Some(state.mode_for(i)),
            (Some(state), None) => Some(state.doc.mode),
            _ => None,
        };
        self.counters.request(ctx.route, mode, status);
        let mode = mode.map_or("", Mode::as_str);
        let decision = match ctx.decision {
            Some(Decision::Maintenance(answer)) => {
                if let Some(route) = ctx.route {
                    self.counters.maintenance(route, answer);
                }
                "maintenance"
            }
            Some(Decision::Bypass(via)) => {
                self.metrics
                    .bypasses
                    .with_label_values(&[route_name, via.as_str()])
                    .inc();
                match via {
                    BypassVia::Cidr => "bypass_cidr",
                    BypassVia::Token => "bypass_token",
                }
            }
            Some(Decision::Pass) => "pass",
            Some(Decision::Preflight(_)) => "preflight",
            Some(Decision::WellKnown) => "well_known",
            Some(Decision::NoRoute) => "no_route",
            None => "error",
        };
        if error.is_some() && matches!(ctx.decision, Some(Decision::Pass | Decision::Bypass(_))) {
            if let Some(route) = ctx.route {
                let pool = &self.pools[self.routes[route].pool].name;
                self.metrics
                    .upstream_errors
                    .with_label_values(&[pool])
                    .inc();
            }
        }
        if self.access_log == AccessLog::Off {
            return;
        }
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
