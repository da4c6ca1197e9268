//! How a call reaches Consul: the [`Client`] bound to one agent, sending one request and reading
//! the whole answer, mapping failures and statuses to [`Error`], and reading the query headers.
//!
//! The endpoint modules build a [`Request`] (escaped path, [`Query`], body, timeout) and decode
//! the [`Answer`] with the helpers here.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::{DecodeSource, Error, QueryMeta, QueryOptions};
use super::{CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

/// Longest error body kept in [`Error::Status`] and [`Error::AclDenied`].
const MAX_ERROR_BODY: usize = 512;

/// Characters escaped in a path segment: everything but RFC 3986 unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Characters escaped in a KV key: as [`SEGMENT`], but `/` separates the key's own levels.
const KEY: &AsciiSet = &SEGMENT.remove(b'/');

/// A Consul HTTP API client bound to one agent address; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub(super) address: String,
    token: Option<HeaderValue>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Client {
    /// A client for the agent at `address`, sending `token` as `X-Consul-Token` when given.
    ///
    /// `address` is `host:port` or `http://host:port` (a trailing `/` is ignored; a missing port
    /// means 80, as for the consul CLI). Only plain HTTP is supported.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] for `https://`, other schemes, paths or unparseable addresses;
    /// [`Error::InvalidToken`] when the token cannot be sent as a header.
    pub fn new(address: &str, token: Option<String>) -> Result<Client, Error> {
        let address = normalize_address(address)?;
        let token = match token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => {
                let mut value = HeaderValue::from_str(t).map_err(|_| Error::InvalidToken {
                    reason: "it contains characters not allowed in an HTTP header".into(),
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Consul is on loopback or the local network: never through an HTTP proxy from
            // the environment, and never follow a redirect (it would turn a PUT into a GET).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidAddress {
                address: address.clone(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Client {
            http,
            address,
            token,
        })
    }

    /// The agent address, normalized to `http://host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether an ACL token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Sends one request and reads the whole answer; classifies transport failures only.
    ///
    /// A GET that fails on the connection itself (not connect, not timeout) is sent once more:
    /// after an agent restart the pooled keep-alive connection is dead, and the first request
    /// on it fails with "connection closed before message completed" even though the agent may
    /// be back. The retry opens a fresh connection, so the caller sees either the answer or an
    /// accurate [`Error::Unreachable`]. Writes are never retried (they may have been applied).
    pub(super) async fn call(&self, req: Request<'_>) -> Result<Answer, Error> {
        let url = format!("{}{}{}", self.address, req.path, req.query.finish());
        let retries = if req.method == Method::GET && req.body.is_none() {
            1
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            match self.send_once(&req, &url).await {
                Err(e) if attempt < retries && !e.is_connect() && !e.is_timeout() => attempt += 1,
                Err(e) => return Err(self.transport_error(req.what, req.timeout, e)),
                Ok(answer) => return Ok(answer),
            }
        }
    }

    async fn send_once(&self, req: &Request<'_>, url: &str) -> Result<Answer, reqwest::Error> {
        let mut builder = self
            .http
            .request(req.method.clone(), url)
            .timeout(req.timeout);
        if let Some(token) = &self.token {
            builder = builder.header("X-Consul-Token", token.clone());
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn transport_error(&self, what: &str, timeout: Duration, e: reqwest::Error) -> Error {
        let (what, address) = (what.to_owned(), self.address.clone());
        // A connect timeout is both; it means the agent is not there, so connect goes first.
        if e.is_connect() {
            Error::Unreachable {
                what,
                address,
                source: e,
            }
        } else if e.is_timeout() {
            Error::Timeout {
                what,
                address,
                timeout,
            }
        } else {
            Error::Transport {
                what,
                address,
                source: e,
            }
        }
    }

    /// Maps a non-success answer to the matching error; 404 is left to the caller.
    pub(super) fn status_error(&self, what: &str, answer: &Answer) -> Error {
        let (what, address) = (what.to_owned(), self.address.clone());
        let body = answer.body_text();
        match answer.status {
            StatusCode::FORBIDDEN => Error::AclDenied {
                what,
                address,
                body,
            },
            StatusCode::TOO_MANY_REQUESTS => Error::TooManyConnections { what, address },
            StatusCode::INTERNAL_SERVER_ERROR if body.contains("No cluster leader") => {
                Error::NoLeader { what, address }
            }
            StatusCode::INTERNAL_SERVER_ERROR if body.contains("No known Consul servers") => {
                Error::NoServers { what, address }
            }
            status => Error::Status {
                what,
                address,
                code: status.as_u16(),
                body,
            },
        }
    }

    pub(super) fn decode_error(&self, what: &str, source: impl Into<DecodeSource>) -> Error {
        Error::Decode {
            what: what.to_owned(),
            address: self.address.clone(),
            source: source.into(),
        }
    }

    /// Calls and insists on 200; returns the answer.
    pub(super) async fn call_ok(&self, req: Request<'_>) -> Result<Answer, Error> {
        let what = req.what;
        let answer = self.call(req).await?;
        if answer.status == StatusCode::OK {
            Ok(answer)
        } else {
            Err(self.status_error(what, &answer))
        }
    }

    /// Decodes a JSON body.
    pub(super) fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        answer: &Answer,
    ) -> Result<T, Error> {
        serde_json::from_slice(&answer.body).map_err(|e| self.decode_error(what, e))
    }

    /// Decodes the literal `true`/`false` body of KV and session writes.
    pub(super) fn bool_body(&self, what: &str, answer: &Answer) -> Result<bool, Error> {
        match answer.body_text().trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(self.decode_error(
                what,
                format!("expected true or false, got {:?}", truncate(other, 64)),
            )),
        }
    }

    /// Reads `X-Consul-Index`, `X-Consul-KnownLeader` and `X-Consul-LastContact`.
    pub(super) fn query_meta(&self, what: &str, answer: &Answer) -> Result<QueryMeta, Error> {
        let header = |name: &str| -> Result<Option<&str>, Error> {
            match answer.headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| self.decode_error(what, format!("header {name} is not ASCII"))),
            }
        };
        let number = |name: &str| -> Result<u64, Error> {
            match header(name)? {
                None | Some("") => Ok(0),
                Some(s) => s.parse::<u64>().map_err(|_| {
                    self.decode_error(what, format!("header {name} is not a number: {s:?}"))
                }),
            }
        };
        Ok(QueryMeta {
            index: number("X-Consul-Index")?,
            known_leader: header("X-Consul-KnownLeader")? == Some("true"),
            last_contact: Duration::from_millis(number("X-Consul-LastContact")?),
        })
    }
}

/// One request to make: the method, the escaped path, the query, the body and the timeout.
pub(super) struct Request<'a> {
    what: &'a str,
    method: Method,
    path: String,
    pub(super) query: Query,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl<'a> Request<'a> {
    pub(super) fn new(what: &'a str, method: Method, path: String) -> Request<'a> {
        Request {
            what,
            method,
            path,
            query: Query::default(),
            body: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    pub(super) fn get(what: &'a str, path: String) -> Request<'a> {
        Request::new(what, Method::GET, path)
    }

    pub(super) fn put(what: &'a str, path: String) -> Request<'a> {
        Request::new(what, Method::PUT, path)
    }

    pub(super) fn body(mut self, body: Vec<u8>) -> Request<'a> {
        self.body = Some(body);
        self
    }

    pub(super) fn options(mut self, q: &QueryOptions) -> Request<'a> {
        q.append_to(&mut self.query);
        self.timeout = q.request_timeout();
        self
    }
}

/// A query string built from escaped parts.
#[derive(Default)]
pub(super) struct Query(String);

impl Query {
    fn sep(&mut self) {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
    }

    /// A bare flag such as `?stale` or `?recurse`.
    pub(super) fn flag(&mut self, name: &str) {
        self.sep();
        self.0.push_str(name);
    }

    /// `name=value`, with the value escaped.
    pub(super) fn pair(&mut self, name: &str, value: &str) {
        self.sep();
        self.0.push_str(name);
        self.0.push('=');
        self.0.push_str(&escape_segment(value));
    }

    pub(super) fn finish(&self) -> &str {
        &self.0
    }
}

/// A complete answer: status, headers and the whole body.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn body_text(&self) -> String {
        truncate(String::from_utf8_lossy(&self.body).trim(), MAX_ERROR_BODY).to_owned()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Escapes one path segment or query value (ids, names, reasons): `/` is escaped too.
pub(super) fn escape_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Escapes a KV key, keeping `/` between its levels; leading `/` are dropped (Consul keys
/// never start with one, and `//` in a path makes Consul's HTTP server answer a redirect).
pub(super) fn escape_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key.trim_start_matches('/'), KEY).to_string()
}

/// Turns `host:port` or `http://host:port/` into `http://host:port`; refuses everything else.
fn normalize_address(address: &str) -> Result<String, Error> {
    let refuse = |reason: &str| Error::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(refuse("it is empty; give host:port, e.g. 127.0.0.1:8500"));
    }
    let with_scheme = match trimmed.split_once("://") {
        None => format!("http://{trimmed}"),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => trimmed.to_owned(),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(refuse(
                "https is not supported: drawbridge talks plain HTTP to the local consul \
                 agent; give http://host:port",
            ))
        }
        Some((scheme, _)) => {
            return Err(refuse(&format!(
                "scheme {scheme:?} is not supported; give http://host:port"
            )))
        }
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| refuse(&format!("{e}; give host:port, e.g. 127.0.0.1:8500")))?;
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h,
        _ => return Err(refuse("no host; give host:port, e.g. 127.0.0.1:8500")),
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(refuse(
            "a path, query or fragment is not supported; give host:port",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse(
            "credentials in the address are not supported; use CONSUL_HTTP_TOKEN",
        ));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_http() {
        assert_eq!(
            normalize_address("127.0.0.1:8500").unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            normalize_address(" http://localhost:8500/ ").unwrap(),
            "http://localhost:8500"
        );
        assert_eq!(
            normalize_address("HTTP://[::1]:8500").unwrap(),
            "http://[::1]:8500"
        );
        assert_eq!(
            normalize_address("consul.local").unwrap(),
            "http://consul.local:80"
        );
    }

    #[test]
    fn https_and_other_schemes_are_refused_with_a_reason() {
        let err = normalize_address("https://127.0.0.1:8501").unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }));
        assert!(err.to_string().contains("https is not supported"), "{err}");
        let err = normalize_address("unix:///run/consul.sock").unwrap_err();
        assert!(
            err.to_string().contains("\"unix\" is not supported"),
            "{err}"
        );
        assert!(normalize_address("").is_err());
        assert!(normalize_address("http://127.0.0.1:8500/v1").is_err());
        assert!(normalize_address("http://user:pw@127.0.0.1:8500").is_err());
        assert!(normalize_address("127.0.0.1:notaport").is_err());
    }

    #[test]
    fn keys_keep_slashes_and_escape_the_rest() {
        assert_eq!(escape_key("drawbridge/gate"), "drawbridge/gate");
        assert_eq!(escape_key("/a b/c?d#e%"), "a%20b/c%3Fd%23e%25");
        assert_eq!(escape_key("ü"), "%C3%BC");
        assert_eq!(escape_segment("db migration/2"), "db%20migration%2F2");
        assert_eq!(escape_segment("a&b=c+d"), "a%26b%3Dc%2Bd");
    }

    #[test]
    fn token_with_newline_is_refused_without_echoing_it() {
        let err = Client::new("127.0.0.1:8500", Some("abc\ndef".into())).unwrap_err();
        assert!(matches!(err, Error::InvalidToken { .. }));
        assert!(!err.to_string().contains("abc"));
    }

    #[test]
    fn debug_never_prints_the_token() {
        let c = Client::new("127.0.0.1:8500", Some("secret-token".into())).unwrap();
        assert!(c.has_token());
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }
}
