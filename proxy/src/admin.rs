//! The admin listener: `/healthz` (always 200 while the proxy serves, maintenance or not),
//! `/status` (the gate state, the Consul watch, the pools, the split, the windows) and `/metrics`
//! (Prometheus text).
//! With `admin.token` set, `/status` and `/metrics` need `Authorization: Bearer <token>`; a
//! missing or wrong one is counted and logged at most once a second. Only GET and HEAD are
//! answered: nothing here changes anything, and any other method gets 405.

use crate::config_file::ConfigFile;
use crate::doc_watch::DocWatch;
use crate::gate_state::GateState;
use crate::guard::{Refusal, RefusalLog};
use crate::metrics::Metrics;
use crate::one_line::OneLine;
use crate::pools::Pool;
use crate::split::{self, SplitState};
use crate::tls::Certificates;
use crate::watcher::WatchStatus;
use crate::windows::{self, WindowsState};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::status::{ConsulStatus, GateStatus, StatusReport};
use drawbridge_core::timestamp;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The admin application.
pub struct Admin {
    pub token: Option<String>,
    pub instance: String,
    pub consul_addresses: Vec<String>,
    pub key: String,
    pub stale_after: Duration,
    pub gate: Arc<ArcSwap<GateState>>,
    pub watch: Arc<ArcSwap<WatchStatus>>,
    pub pools: Vec<Arc<Pool>>,
    pub metrics: Arc<Metrics>,
    /// Where requests refused for their token are counted and logged.
    pub refusals: Arc<RefusalLog>,
    /// The TLS listeners' certificates; `None` without TLS listeners.
    pub tls: Option<Arc<Certificates>>,
    pub config: Arc<ConfigFile>,
    pub split_key: String,
    pub split: Arc<ArcSwap<SplitState>>,
    pub split_watch: Arc<ArcSwap<DocWatch>>,
    pub windows_key: String,
    pub windows: Arc<ArcSwap<WindowsState>>,
    pub windows_watch: Arc<ArcSwap<DocWatch>>,
}

impl Admin {
    /// The report `/status` serves.
    pub fn report(&self) -> StatusReport {
        let gate = self.gate.load();
        let watch = self.watch.load();
        let now = OffsetDateTime::now_utc();
        let seconds_since_answer = watch
            .last_answer_at
            .map(|at| (now - at).as_seconds_f64().max(0.0));
        let reading_from = if watch.reading_from.is_empty() {
            self.consul_addresses.first().cloned().unwrap_or_default()
        } else {
            watch.reading_from.clone()
        };
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance: self.instance.clone(),
            gate: GateStatus {
                mode: gate.doc.mode,
                reason: gate.doc.reason.clone(),
                message: gate.doc.message.clone(),
                until: gate.doc.until.map(timestamp::full),
                by: gate.doc.by.clone(),
                scope: gate.doc.scope.clone(),
                source: gate.source.as_str().to_string(),
                applied_index: gate.applied_index,
                applied_at: timestamp::full(gate.applied_at),
                expire: gate.doc.expire,
                overdue: gate.overdue(now.unix_timestamp()),
                expired: gate.expired(now.unix_timestamp()),
            },
            consul: ConsulStatus {
                address: reading_from,
                addresses: self.consul_addresses.clone(),
                key: self.key.clone(),
                reachable: watch.reachable,
                stale: watch.is_stale(now, self.stale_after),
                seconds_without_contact: watch.seconds_without_contact(now),
                last_answer_at: watch.last_answer_at.map(timestamp::full),
                seconds_since_answer,
                watch_index: watch.watch_index,
                last_error: watch.last_error.clone(),
                last_rejected: watch.last_rejected.clone(),
            },
            pools: self.pools.iter().map(|p| p.status()).collect(),
            tls: self.tls.as_ref().map(|t| t.status()),
            config: Some(self.config.status()),
            split: Some(split::status(
                &self.split_key,
                &self.split.load(),
                &self.split_watch.load(),
            )),
            windows: Some(windows::status(
                &self.windows_key,
                &self.windows.load(),
                &self.windows_watch.load(),
                now.unix_timestamp(),
            )),
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    /// The health gauge of every server in a pool now, from the pools' own health checks.
    fn set_server_health(&self) {
        let gauge = &self.metrics.upstream_healthy;
        gauge.reset();
        for pool in &self.pools {
            let status = pool.status();
            for server in status.servers.iter().filter(|s| s.in_pool) {
                gauge
                    .with_label_values(&[status.name.as_str(), server.address.as_str()])
                    .set(i64::from(server.healthy));
            }
        }
    }

    /// Counts a request refused for its token and logs it, unless a line went out this second;
    /// the line names the client and the path, never what the client sent.
    fn token_refused(&self, session: &ServerSession, path: &str) {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.refusals.refused(Refusal::AdminToken, client, || {
            format!(
                "{} on the admin listener without the right bearer token (admin.token)",
                OneLine(path)
            )
        });
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("fixed status and header names always build")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = &session.req_header().method;
        if method != Method::GET && method != Method::HEAD {
            let mut r = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"the admin endpoints are read-only: use GET\n".to_vec(),
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match path.as_str() {
            "/healthz" => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/status" | "/metrics" if !self.authorized(session) => {
                self.token_refused(session, &path);
                let mut r = respond(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    b"send Authorization: Bearer <admin.token>\n".to_vec(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            }
            "/status" => {
                let report = self.report();
                let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
                respond(StatusCode::OK, "application/json", body)
            }
            "/metrics" => {
                let stale = self
                    .watch
                    .load()
                    .is_stale(OffsetDateTime::now_utc(), self.stale_after);
                self.metrics.consul_stale.set(i64::from(stale));
                self.set_server_health();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render().into_bytes(),
                )
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"admin endpoints: /healthz /status /metrics\n".to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!constant_time_eq(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
    }
}
