//! `[limits]`: what one client may hold of the proxy. Caps on connections (per proxy and per
//! client address), the deadline of a whole request header, the keep-alive idle timeout, the
//! sizes of a request and the pace of its body and of the answer's reader.

use drawbridge_core::settings::Problems;
use serde::Deserialize;
use std::time::Duration;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    header_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_uri_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    body_timeout: Option<String>,
    body_min_rate: Option<u64>,
    send_timeout: Option<String>,
    h2_max_streams: Option<u32>,
}

/// Caps and deadlines on client connections and requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections on the public listeners; the excess is closed at accept.
    pub max_connections: usize,
    /// Open connections from one client address (the peer, before any forwarding header).
    pub max_connections_per_client: usize,
    /// From a request's first byte (from the accept, for a connection's first request) to the
    /// end of its header, however slowly the bytes come; the connection is closed after it.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub keepalive_timeout: Duration,
    /// The request line and header lines together (431 above).
    pub max_header_bytes: usize,
    /// Header lines (431 above).
    pub max_headers: usize,
    /// The request target, path and query (414 above).
    pub max_uri_bytes: usize,
    /// A request body, announced or counted (413 above).
    pub max_body_bytes: u64,
    /// The longest wait for the next bytes of a request body.
    pub body_timeout: Duration,
    /// The slowest average pace of a request body, in bytes a second, once
    /// [`BODY_RATE_GRACE`] has passed (408 below it).
    pub body_min_rate: u64,
    /// The longest wait for a client to take the next part of an answer.
    pub send_timeout: Duration,
    /// Requests in flight at once on one HTTP/2 connection; the client is told, and a stream
    /// over it is refused.
    pub h2_max_streams: u32,
}

impl Default for Limits {
    /// Every limit at its documented default.
    fn default() -> Limits {
        check_limits(FileLimits::default(), &mut Problems::default())
    }
}

/// Refuses a size below `least` (too small for real requests) or above `most` (the HTTP/1
/// parser's own bound, above which it answers 400 before this limit is looked at).
fn size_within(p: &mut Problems, key: &str, value: usize, least: usize, most: usize) {
    if !(least..=most).contains(&value) {
        p.add(
            format!("limits.{key}"),
            format!("{value} is not between {least} and {most}"),
        );
    }
}

/// The most header bytes the HTTP/1 parser reads (Pingora's `MAX_HEADER_SIZE`).
const PARSER_MAX_HEADER_BYTES: usize = 1_048_575;
/// The most header lines the HTTP/1 parser reads (Pingora's `MAX_HEADERS`).
const PARSER_MAX_HEADERS: usize = 256;

/// How long a request body may take before `body_min_rate` applies: a client on a slow network
/// gets a start.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(10);

/// Checks `[limits]`, every value with its default.
pub(super) fn check_limits(l: FileLimits, p: &mut Problems) -> Limits {
    let max_connections = l.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        p.add("limits.max_connections", "must be at least 1");
    }
    let max_connections_per_client = l.max_connections_per_client.unwrap_or(256);
    if max_connections_per_client == 0 || max_connections_per_client > max_connections {
        p.add(
            "limits.max_connections_per_client",
            format!("must be between 1 and limits.max_connections ({max_connections})"),
        );
    }
    let header_timeout = p.duration(
        "limits.header_timeout",
        l.header_timeout.as_deref(),
        Duration::from_secs(10),
    );
    if header_timeout < Duration::from_secs(1) || header_timeout > Duration::from_secs(300) {
        p.add("limits.header_timeout", "must be between \"1s\" and \"5m\"");
    }
    let keepalive_timeout = p.duration(
        "limits.keepalive_timeout",
        l.keepalive_timeout.as_deref(),
        Duration::from_secs(60),
    );
    if keepalive_timeout < Duration::from_secs(1) || keepalive_timeout > Duration::from_secs(3600) {
        p.add(
            "limits.keepalive_timeout",
            "must be between \"1s\" and \"1h\"",
        );
    }
    let max_header_bytes = l.max_header_bytes.unwrap_or(32 * 1024);
    size_within(
        p,
        "max_header_bytes",
        max_header_bytes,
        1024,
        PARSER_MAX_HEADER_BYTES,
    );
    let max_headers = l.max_headers.unwrap_or(100);
    size_within(p, "max_headers", max_headers, 16, PARSER_MAX_HEADERS);
    let max_uri_bytes = l.max_uri_bytes.unwrap_or(8 * 1024);
    size_within(
        p,
        "max_uri_bytes",
        max_uri_bytes,
        256,
        PARSER_MAX_HEADER_BYTES,
    );
    let max_body_bytes = l.max_body_bytes.unwrap_or(16 * 1024 * 1024);
    if max_body_bytes < 1024 {
        p.add(
            "limits.max_body_bytes",
            format!("{max_body_bytes} is too small for real requests; use at least 1024"),
        );
    }
    let body_min_rate = l.body_min_rate.unwrap_or(1024);
    let body_timeout = p.duration(
        "limits.body_timeout",
        l.body_timeout.as_deref(),
        Duration::from_secs(30),
    );
    let send_timeout = p.duration(
        "limits.send_timeout",
        l.send_timeout.as_deref(),
        Duration::from_secs(30),
    );
    for (key, value) in [
        ("body_timeout", body_timeout),
        ("send_timeout", send_timeout),
    ] {
        if value < Duration::from_secs(1) || value > Duration::from_secs(3600) {
            p.add(format!("limits.{key}"), "must be between \"1s\" and \"1h\"");
        }
    }
    let h2_max_streams = l.h2_max_streams.unwrap_or(100);
    if !(1..=1000).contains(&h2_max_streams) {
        p.add(
            "limits.h2_max_streams",
            format!("{h2_max_streams} is not between 1 and 1000"),
        );
    }
    Limits {
        max_connections,
        max_connections_per_client,
        header_timeout,
        keepalive_timeout,
        max_header_bytes,
        max_headers,
        max_uri_bytes,
        max_body_bytes,
        body_timeout,
        body_min_rate,
        send_timeout,
        h2_max_streams,
    }
}
