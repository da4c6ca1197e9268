//! In-process HTTP/1.1 upstream servers for the e2e tests and the demo origin.
//!
//! Each server binds its port before `start` returns and runs on its own thread with its own
//! runtime, so it serves sync and async tests alike and dropping it closes every connection.
//! It names itself in `X-Upstream` and in the body, counts requests and records the last one.
//!
//! An upstream may serve HTTPS instead ([`UpstreamBuilder::tls`]), optionally requiring a client
//! certificate from a given CA; it records the name each handshake asked for and whether the
//! client sent a certificate.

use crate::http_thread::ServerThread;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// The path the proxy's health checks probe; it is not recorded as the last request.
pub const HEALTH_PATH: &str = "/healthz";

/// Paths under this prefix are answered with a body of as many bytes as the next segment says
/// (`/big/1048576/any-tag`), for tests of slow readers.
pub const BIG_PATH: &str = "/big/";

/// The most bytes a [`BIG_PATH`] answer may ask for.
const BIG_MAX: usize = 256 * 1024 * 1024;

/// What an upstream answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/json`: `{"upstream":"<name>","path":"/x","method":"GET"}`.
    Api,
    /// `text/html`: a tiny page that names the upstream and the path.
    Page,
    /// 500 to every request but its health check, as a broken new version would.
    Failing,
}

/// A request the upstream received, as it arrived.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, as sent on the request line.
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// Length of the request body in bytes.
    pub body_len: usize,
}

impl RecordedRequest {
    /// The value of header `name` as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every line of header `name`, in the order received (lossy UTF-8); empty when absent.
    pub fn header_lines(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// One TLS handshake an upstream completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The name the client sent (SNI).
    pub sni: Option<String>,
    /// The client sent a certificate (that the upstream's client CA verified).
    pub client_certificate: bool,
}

/// HTTPS on an upstream: the certificate it serves, and the CA a client certificate must chain
/// to when one is required.
#[derive(Debug, Clone)]
struct TlsSettings {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// Builds an [`Upstream`]: a name, an optional address, optional slow paths, optional TLS.
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    name: String,
    listen: SocketAddr,
    kind: Kind,
    delays: Vec<(String, Duration)>,
    answer_headers: Vec<(String, String)>,
    tls: Option<TlsSettings>,
}

impl UpstreamBuilder {
    /// Adds header `name: value` to every answer but the health check's.
    pub fn answer_header(mut self, name: &str, value: &str) -> Self {
        self.answer_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:0` (e.g. `127.0.0.2:0` or a fixed demo port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Answers with HTML or JSON; the default is [`Kind::Api`].
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Waits `delay` before answering any path that starts with `prefix` (for in-flight tests).
    pub fn delay(mut self, prefix: &str, delay: Duration) -> Self {
        self.delays.push((prefix.to_string(), delay));
        self
    }

    /// Serves HTTPS with the PEM chain `cert` and its PEM key `key`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some(TlsSettings {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
        });
        self
    }

    /// Over TLS ([`UpstreamBuilder::tls`], called first), refuses a client that sends no
    /// certificate issued by the CA in the PEM file `ca`.
    ///
    /// # Panics
    /// When TLS is not set.
    pub fn require_client_certificate(mut self, ca: &Path) -> Self {
        let tls = self
            .tls
            .as_mut()
            .expect("call tls() before require_client_certificate()");
        tls.client_ca = Some(ca.to_path_buf());
        self
    }

    /// Binds the listener and starts serving; the port accepts connections when this returns.
    ///
    /// # Errors
    /// The address cannot be bound, the TLS files cannot be used, or the server thread cannot
    /// be started.
    pub fn try_start(self) -> std::io::Result<Upstream> {
        let acceptor = self.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(self.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: self.name.clone(),
            kind: self.kind,
            delays: self.delays,
            answer_headers: self.answer_headers,
            healthy: AtomicBool::new(true),
            total: AtomicU64::new(0),
            by_path: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            tls_connections: AtomicU64::new(0),
            handshakes: Mutex::new(Vec::new()),
        });
        let thread_name = format!("upstream-{}", self.name);
        let server = match acceptor {
            None => Serving::Plain(ServerThread::spawn(
                &thread_name,
                listener,
                None,
                Arc::clone(&shared),
                handle,
            )?),
            Some(acceptor) => Serving::Tls(TlsThread::spawn(
                &thread_name,
                listener,
                acceptor,
                Arc::clone(&shared),
            )?),
        };
        Ok(Upstream {
            addr,
            shared,
            server,
        })
    }

    /// Like [`UpstreamBuilder::try_start`].
    ///
    /// # Panics
    /// When the listener cannot be bound.
    pub fn start(self) -> Upstream {
        let listen = self.listen;
        self.try_start()
            .unwrap_or_else(|e| panic!("upstream cannot listen on {listen}: {e}"))
    }
}

/// A running upstream server; stopping or dropping it closes the port and its connections.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Serving,
}

/// The thread an upstream is served on.
#[derive(Debug)]
enum Serving {
    Plain(ServerThread),
    Tls(TlsThread),
}

#[derive(Debug)]
struct Shared {
    name: String,
    kind: Kind,
    delays: Vec<(String, Duration)>,
    answer_headers: Vec<(String, String)>,
    healthy: AtomicBool,
    total: AtomicU64,
    by_path: Mutex<HashMap<String, u64>>,
    last: Mutex<Option<RecordedRequest>>,
    /// Connections accepted on a TLS port, whether their handshake succeeded or not.
    tls_connections: AtomicU64,
    /// The handshakes completed, in order.
    handshakes: Mutex<Vec<Handshake>>,
}

impl Upstream {
    /// A builder for an upstream named `name`, on `127.0.0.1:0`, answering JSON.
    pub fn builder(name: &str) -> UpstreamBuilder {
        UpstreamBuilder {
            name: name.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kind: Kind::Api,
            delays: Vec::new(),
            answer_headers: Vec::new(),
            tls: None,
        }
    }

    /// Starts a JSON upstream named `name` on `127.0.0.1:0`.
    pub fn start(name: &str) -> Upstream {
        Upstream::builder(name).start()
    }

    /// The name echoed in `X-Upstream` and the body.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (`https://` over TLS) followed by `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = match self.server {
            Serving::Plain(_) => "http",
            Serving::Tls(_) => "https",
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Connections accepted on a TLS port: every handshake tried, completed or not.
    pub fn tls_connections(&self) -> u64 {
        self.shared.tls_connections.load(Ordering::SeqCst)
    }

    /// The TLS handshakes completed, in order (health checks' among them).
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.shared
            .handshakes
            .lock()
            .expect("no panics while the lock is held")
            .clone()
    }

    /// Makes `/healthz` answer 500 (`false`) or 200 (`true`) from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Every request received, health checks included.
    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// Requests received on exactly `path` (without the query string).
    pub fn requests_to(&self, path: &str) -> u64 {
        let by_path = self
            .shared
            .by_path
            .lock()
            .expect("no panics while the lock is held");
        by_path.get(path).copied().unwrap_or(0)
    }

    /// Requests received on any path but [`HEALTH_PATH`]: what the proxy passed through.
    pub fn proxied_requests(&self) -> u64 {
        self.total_requests() - self.requests_to(HEALTH_PATH)
    }

    /// The last request received on a path other than [`HEALTH_PATH`].
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared
            .last
            .lock()
            .expect("no panics while the lock is held")
            .clone()
    }

    /// Closes the listener and every open connection; the port refuses connections afterwards.
    pub fn stop(&mut self) {
        match &mut self.server {
            Serving::Plain(server) => server.stop(),
            Serving::Tls(server) => server.stop(),
        }
    }

    /// Serves until the process is killed (for the demo origin).
    pub fn wait(self) {
        match self.server {
            Serving::Plain(server) => server.wait(),
            Serving::Tls(mut server) => {
                if let Some(thread) = server.thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// The rustls server side of `tls`, with ring as the crypto provider.
fn tls_acceptor(tls: &TlsSettings) -> std::io::Result<TlsAcceptor> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{}: {e}", what.display()))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| bad(&tls.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| bad(&tls.key, &e))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&tls.cert, &e))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, &e))? {
                roots
                    .add(der.map_err(|e| bad(ca, &e))?)
                    .map_err(|e| bad(ca, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad(ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad(&tls.key, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The thread of a TLS upstream: [`ServerThread`]'s loop with a handshake before HTTP.
#[derive(Debug)]
struct TlsThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsThread {
    fn spawn(
        name: &str,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shared: Arc<Shared>,
    ) -> std::io::Result<TlsThread> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve_tls(listener, acceptor, shared, stop_rx))?;
        Ok(TlsThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TlsThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts until told to stop; each connection is counted, shakes hands (recorded when it
/// completes), then is served as HTTP/1.1. Dropping the runtime closes every socket.
fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds with the default settings");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .expect("the listener is non-blocking and the runtime has IO enabled");
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    shared.tls_connections.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(stream).await else { return };
                        let (_, connection) = stream.get_ref();
                        let handshake = Handshake {
                            sni: connection.server_name().map(str::to_owned),
                            client_certificate: connection
                                .peer_certificates()
                                .is_some_and(|certs| !certs.is_empty()),
                        };
                        shared
                            .handshakes
                            .lock()
                            .expect("no panics while the lock is held")
                            .push(handshake);
                        let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
    drop(runtime);
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map_or(0, |b| b.to_bytes().len());
    let path = parts.uri.path().to_string();
    shared.total.fetch_add(1, Ordering::SeqCst);
    *shared
        .by_path
        .lock()
        .expect("no panics while the lock is held")
        .entry(path.clone())
        .or_insert(0) += 1;

    if path == HEALTH_PATH {
        let healthy = shared.healthy.load(Ordering::SeqCst);
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let text = if healthy { "ok\n" } else { "unhealthy\n" };
        return Ok(response(&shared, status, "text/plain", text.to_string()));
    }

    *shared
        .last
        .lock()
        .expect("no panics while the lock is held") = Some(RecordedRequest {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| path.clone(), |pq| pq.as_str().to_string()),
        headers: parts.headers,
        body_len,
    });

    if let Some((_, delay)) = shared.delays.iter().find(|(p, _)| path.starts_with(p)) {
        tokio::time::sleep(*delay).await;
    }

    if let Some(len) = big_len(&path) {
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/octet-stream")
            .header("x-upstream", shared.name.as_str())
            .body(Full::new(filler(len)))
            .expect("status and header values are valid by construction"));
    }

    let (content_type, body) = match shared.kind {
        Kind::Failing => {
            let body = serde_json::json!({"upstream": shared.name, "error": "failing on purpose"});
            return Ok(response(
                &shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                body.to_string(),
            ));
        }
        Kind::Api => (
            "application/json",
            serde_json::json!({
                "upstream": shared.name,
                "path": path,
                "method": parts.method.as_str(),
            })
            .to_string(),
        ),
        Kind::Page => (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <title>{name}</title></head>\n<body><h1>{name}</h1>\
                 <p>upstream <b>{name}</b> served <code>{method} {path}</code></p></body></html>\n",
                name = escape_html(&shared.name),
                method = parts.method,
                path = escape_html(&path),
            ),
        ),
    };
    let mut answer = response(&shared, StatusCode::OK, content_type, body);
    for (name, value) in &shared.answer_headers {
        answer.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a test's header name"),
            http::HeaderValue::from_str(value).expect("a test's header value"),
        );
    }
    Ok(answer)
}

fn response(
    shared: &Shared,
    status: StatusCode,
    content_type: &str,
    body: String,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-upstream", shared.name.as_str())
        .body(Full::new(Bytes::from(body)))
        .expect("status and header values are valid by construction")
}

/// The body length a [`BIG_PATH`] path asks for.
fn big_len(path: &str) -> Option<usize> {
    let len: usize = path
        .strip_prefix(BIG_PATH)?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    (len <= BIG_MAX).then_some(len)
}

/// `len` bytes of filler, sliced from one buffer that every answer shares: hundreds of slow
/// readers cost one copy, not hundreds.
fn filler(len: usize) -> Bytes {
    static FILLER: Mutex<Bytes> = Mutex::new(Bytes::new());
    let mut shared = FILLER.lock().unwrap_or_else(|e| e.into_inner());
    if shared.len() < len {
        *shared = Bytes::from(vec![b'x'; len]);
    }
    shared.slice(..len)
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Test: 1\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn answers_with_its_name_and_counts_requests() {
        let up = Upstream::start("alpha");
        let answer = get(up.addr(), "/x?y=1");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("x-upstream: alpha"),
            "{answer}"
        );
        assert!(answer.contains(r#""upstream":"alpha""#), "{answer}");
        assert!(answer.contains(r#""path":"/x""#), "{answer}");
        assert_eq!(up.requests_to("/x"), 1);
        let last = up.last_request().expect("a request was recorded");
        assert_eq!(last.path_and_query, "/x?y=1");
        assert_eq!(last.header("x-test"), Some("1"));
        assert_eq!(last.header_lines("x-test"), ["1"]);
        assert!(last.header_lines("x-absent").is_empty());
    }

    #[test]
    fn health_can_be_flipped_and_is_not_recorded_as_last() {
        let up = Upstream::start("beta");
        assert!(get(up.addr(), HEALTH_PATH).starts_with("HTTP/1.1 200"));
        up.set_healthy(false);
        assert!(get(up.addr(), HEALTH_PATH).starts_with("HTTP/1.1 500"));
        assert!(up.last_request().is_none());
        assert_eq!(up.proxied_requests(), 0);
        assert_eq!(up.total_requests(), 2);
    }

    #[test]
    fn a_big_path_answers_that_many_bytes() {
        let up = Upstream::start("delta");
        let answer = get(up.addr(), "/big/70000/tag");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(body.len(), 70_000);
        assert_eq!(big_len("/big/x"), None);
        assert_eq!(big_len(&format!("/big/{}", BIG_MAX + 1)), None);
    }

    #[test]
    fn stopped_upstream_refuses_connections() {
        let mut up = Upstream::start("gamma");
        let addr = up.addr();
        up.stop();
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
