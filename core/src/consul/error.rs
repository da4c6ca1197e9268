//! The one error type of the Consul client, with a variant for each failure a caller branches on.
//!
//! The watcher retries on transient variants and keeps its last state; `maintctl` aborts on
//! [`Error::AclDenied`] and treats [`Error::SessionNotFound`] as "lock lost".

use std::time::Duration;

/// The cause behind [`Error::Decode`]: a JSON, base64 or header parse failure.
pub type DecodeSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed call to Consul; every message names the call, its object and the agent address.
///
/// `what` reads like `kv get drawbridge/gate` or `session renew 3f2c…`, so a message reads
/// `consul kv get drawbridge/gate at http://127.0.0.1:8500: …`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address given to the client is not a usable plain-HTTP Consul address.
    #[error("invalid consul address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it was refused and what to give instead.
        reason: String,
    },

    /// The ACL token (argument, `CONSUL_HTTP_TOKEN` or `CONSUL_HTTP_TOKEN_FILE`) cannot be used.
    #[error("invalid consul token: {reason}")]
    InvalidToken {
        /// Why it was refused; never contains the token itself.
        reason: String,
    },

    /// No TCP connection to the agent: it is down, or the address is wrong.
    #[error(
        "consul {what} at {address}: cannot connect; is the consul agent running there? \
         (set the address with CONSUL_HTTP_ADDR)"
    )]
    Unreachable {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// Connected, but no complete answer came within the request timeout.
    #[error("consul {what} at {address}: no answer within {timeout:?}")]
    Timeout {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// The request timeout that ran out.
        timeout: Duration,
    },

    /// The connection broke in another way (reset, malformed HTTP).
    #[error("consul {what} at {address}: the connection failed")]
    Transport {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// HTTP 403: the token is unknown or its policy lacks the rights for this call.
    #[error(
        "consul {what} at {address}: permission denied (403: {body}); give a token with the \
         needed ACL rights in CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"
    )]
    AclDenied {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// Consul's answer, e.g. `Permission denied` or `ACL not found`.
        body: String,
    },

    /// HTTP 500 "No cluster leader": the servers are electing; retry, or read with `stale`.
    #[error(
        "consul {what} at {address}: no cluster leader (500); retry later, or read with \
         stale consistency"
    )]
    NoLeader {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
    },

    /// HTTP 500 "No known Consul servers": the agent runs but has lost every server (a client
    /// agent whose servers are down or partitioned away); it reconnects by itself.
    #[error(
        "consul {what} at {address}: the agent knows no consul server (500); the servers are \
         down or unreachable from this agent"
    )]
    NoServers {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
    },

    /// HTTP 429: this client IP holds more connections than `limits.http_max_conns_per_client`.
    #[error(
        "consul {what} at {address}: too many concurrent connections from this address (429); \
         use fewer watches or raise limits.http_max_conns_per_client"
    )]
    TooManyConnections {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
    },

    /// Any other unexpected HTTP status.
    #[error("consul {what} at {address}: http {code}: {body}")]
    Status {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// The HTTP status code.
        code: u16,
        /// The start of Consul's answer (Consul explains errors in plain text).
        body: String,
    },

    /// The answer arrived but could not be understood.
    #[error("consul {what} at {address}: cannot decode the answer")]
    Decode {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// The parse error.
        #[source]
        source: DecodeSource,
    },

    /// The session does not exist (expired, invalidated or destroyed): any lock it held is lost.
    #[error(
        "consul {what} at {address}: session {id} not found (expired or destroyed); \
         the lock it held is lost"
    )]
    SessionNotFound {
        /// The call and its object.
        what: String,
        /// The agent address.
        address: String,
        /// The session id.
        id: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (network, timeout, leader, 429, 5xx).
    ///
    /// Writes that failed this way may still have been applied: re-read before re-writing.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Transport { .. }
            | Error::NoLeader { .. }
            | Error::NoServers { .. }
            | Error::TooManyConnections { .. } => true,
            Error::Status { code, .. } => *code >= 500,
            _ => false,
        }
    }

    /// The HTTP status Consul answered with, when the failure is an HTTP answer.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::AclDenied { .. } => Some(403),
            Error::NoLeader { .. } | Error::NoServers { .. } => Some(500),
            Error::TooManyConnections { .. } => Some(429),
            Error::SessionNotFound { .. } => Some(404),
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}
