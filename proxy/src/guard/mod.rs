//! The proxy's own limits, and the one place their refusals are counted and logged.
//!
//! * `caps`: connection caps, per proxy and per client address, looked at in the accept loop
//!   and taken by the [`Gatehouse`], the listening app in front of the HTTP code.
//! * `clock`: the whole-request-header deadline. Pingora times each read of a header on its own
//!   (60 s), so a client sending one byte every few seconds would hold its connection forever
//!   (cloudflare/pingora#447); the gatehouse ends a connection whose request header is not read
//!   within `header_timeout` of its first byte, however slowly the bytes come. An HTTP/2
//!   connection owes its preface within the same time.
//! * `framing`: an HTTP/1 connection's requests as their bytes come; a chunked one is held back
//!   until its body has ended in valid chunk lines.
//! * `h2_frames`: the HTTP/2 control frames (SETTINGS, PING) a client may send, per connection.
//! * `request`: the size and pace limits of one request, checked by the edge.
//! * `strict`: strict HTTP/1: a request two parsers could read two ways (request smuggling) is
//!   refused with 400 before it reaches an upstream.

mod caps;
mod clock;
mod framing;
mod h2_frames;
mod request;
mod strict;

pub use caps::{Caps, EarlyRefusal, Gatehouse};
pub use clock::{broken_chunked_body, header_read, next_request};
pub use request::{refusal_for, BodyPace};
pub use strict::{ambiguity, ambiguous};

use crate::log_pace::EachSecond;
use crate::metrics::Metrics;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a connection or a request was cut before it was served (the `reason` label).
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
    /// No bytes of a body for `body_timeout` (408).
    BodyTimeout,
    /// An admin request without the right bearer token (the admin listener answers 401).
    AdminToken,
    /// A request the HTTP/1 parser could not read (400, written by the guarded stream).
    BadRequest,
    /// An HTTP/1 request two parsers could read two ways (400): `strict`'s rules.
    Ambiguous,
    /// An HTTP/2 client that sent more SETTINGS and PINGs than `h2_frames` allows.
    H2ControlFlood,
    /// A CONNECT request: the proxy opens no tunnels (405).
    ConnectMethod,
    /// A TLS handshake that failed, or did not end within `header_timeout`.
    TlsHandshake,
}

/// How many kinds of refusal there are.
const REFUSALS: usize = 15;

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
            Refusal::BodyTimeout => "body_timeout",
            Refusal::AdminToken => "admin_token",
            Refusal::BadRequest => "bad_request",
            Refusal::Ambiguous => "ambiguous_request",
            Refusal::H2ControlFlood => "h2_control_flood",
            Refusal::ConnectMethod => "connect_method",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }

    /// The status a refused request is answered with; `None` for a connection that is closed
    /// without an answer.
    pub fn status(self) -> Option<u16> {
        match self {
            Refusal::BadRequest | Refusal::Ambiguous => Some(400),
            Refusal::HeaderSize | Refusal::HeaderCount => Some(431),
            Refusal::UriLength => Some(414),
            Refusal::BodySize => Some(413),
            Refusal::BodyPace | Refusal::BodyTimeout => Some(408),
            Refusal::ConnectMethod => Some(405),
            Refusal::MaxConnections
            | Refusal::MaxConnectionsPerClient
            | Refusal::HeaderTimeout
            | Refusal::AdminToken
            | Refusal::H2ControlFlood
            | Refusal::TlsHandshake => None,
        }
    }
}

/// Counts refusals and logs them, at most one line a second per reason (a flood of refused
/// connections must not become a flood of log lines): the line says how many were cut since.
pub struct RefusalLog {
    metrics: Arc<Metrics>,
    lines: [EachSecond; REFUSALS],
}

impl RefusalLog {
    /// Counts into `metrics`' `drawbridge_refused_requests_total`.
    pub fn new(metrics: Arc<Metrics>) -> RefusalLog {
        RefusalLog {
            metrics,
            lines: Default::default(),
        }
    }

    /// Counts a refusal of `client` and logs it with `detail` (only written when the line goes
    /// out) unless a line for `reason` went out this second.
    pub fn refused(
        &self,
        reason: Refusal,
        client: Option<IpAddr>,
        detail: impl FnOnce() -> String,
    ) {
        self.metrics
            .refused
            .with_label_values(&[reason.as_str()])
            .inc();
        let Some(also) = self.lines[reason as usize].note() else {
            return;
        };
        let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::warn!(
            reason = reason.as_str(),
            client = %client,
            refused_since_last_line = also,
            "refused: {}",
            detail()
        );
    }
}
