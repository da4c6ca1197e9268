//! A fault relay: an HTTP/1.1 forwarder on a free loopback port in front of a real Consul agent.
//! It passes every request to Consul and Consul's answer back, except that while a [`Fault`] is
//! set, a PUT or DELETE of the one key it guards gets a failure answer instead: after Consul
//! applied it (a 500, or no answer at all), or without forwarding it. That is what a client sees
//! when a write meets an election: the write may commit although its answer says otherwise.
//!
//! It also keeps Consul's first answer to a read of the key, and can answer later reads that are
//! not leader-confirmed (no `consistent` in the query) with that old answer: what a server that
//! was just restarted answers while it replays its log.
//!
//! Like the upstreams, it runs on its own thread and runtime: dropping it (or its lifetime
//! running out) closes the port and every connection.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http_thread::ServerThread;
use crate::ports::free_port;

/// Longest a relay serves, whatever the test does.
pub const RELAY_LIFETIME: Duration = Duration::from_secs(300);

/// Longest one forwarded request may take at Consul (a blocking read through the relay must
/// wait less; a longer one is answered 502).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the relay does to a write (PUT or DELETE) of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: forward it and pass Consul's answer back.
    Pass,
    /// Forward it, wait for Consul's answer, then answer `status` with `body` instead.
    AnswerAfterForwarding { status: u16, body: String },
    /// Forward it, wait for Consul's answer, then answer nothing for `hold` (make it longer
    /// than the client's request timeout), then 500.
    SwallowAfterForwarding { hold: Duration },
    /// Answer `status` with `body` without forwarding it: the write never reaches Consul.
    RejectWithoutForwarding { status: u16, body: String },
}

/// A write of the key the relay acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intercepted {
    pub method: Method,
    /// Path and query as the client sent them, e.g. `/v1/kv/a/b?cas=0`.
    pub path_and_query: String,
    /// The fault it met.
    pub fault: Fault,
    /// Consul's own answer (status and body), when the write was forwarded; the client never
    /// saw it.
    pub consul_answer: Option<(u16, String)>,
}

#[derive(Debug)]
struct Shared {
    /// `http://host:port` of the Consul agent.
    consul: String,
    /// The request path of the guarded key: `/v1/kv/<key>`.
    key_path: String,
    fault: Mutex<Fault>,
    intercepted: Mutex<Vec<Intercepted>>,
    /// Consul's first answer to a read of the key.
    first_read: Mutex<Option<(u16, HeaderMap, Bytes)>>,
    /// How many more unconfirmed reads of the key get `first_read` instead of Consul's answer.
    old_reads_to_give: Mutex<u32>,
    old_reads_given: Mutex<u32>,
    http: reqwest::Client,
}

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct FaultRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: ServerThread,
}

impl FaultRelay {
    /// Starts a relay on a free loopback port in front of the agent at `consul` (`host:port` or
    /// `http://host:port`), guarding writes of `key`, with no fault set; it accepts connections
    /// when this returns, for at most [`RELAY_LIFETIME`].
    ///
    /// # Panics
    /// When the port cannot be bound or the thread not started.
    pub fn start(consul: &str, key: &str) -> FaultRelay {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("the fault relay cannot listen on {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a bound listener can be made non-blocking");
        let consul = consul.trim_end_matches('/');
        let shared = Arc::new(Shared {
            consul: if consul.starts_with("http://") {
                consul.to_owned()
            } else {
                format!("http://{consul}")
            },
            key_path: format!("/v1/kv/{}", key.trim_start_matches('/')),
            fault: Mutex::new(Fault::Pass),
            intercepted: Mutex::new(Vec::new()),
            first_read: Mutex::new(None),
            old_reads_to_give: Mutex::new(0),
            old_reads_given: Mutex::new(0),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .timeout(FORWARD_TIMEOUT)
                .build()
                .expect("a client with these settings always builds"),
        });
        let server = ServerThread::spawn(
            "fault-relay",
            listener,
            Some(RELAY_LIFETIME),
            Arc::clone(&shared),
            handle,
        )
        .expect("the relay thread starts");
        FaultRelay {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`: give this to the client instead of Consul's address.
    pub fn http_addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the next writes of the key meet, until changed.
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Every write of the key that met a fault, oldest first.
    pub fn intercepted(&self) -> Vec<Intercepted> {
        self.shared
            .intercepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers the next `n` reads of the key that are not leader-confirmed with Consul's first
    /// answer to a read of it, as a server behind would.
    pub fn give_old_reads(&self, n: u32) {
        *lock(&self.shared.old_reads_to_give) = n;
    }

    /// How many reads got the old answer so far.
    pub fn old_reads_given(&self) -> u32 {
        *lock(&self.shared.old_reads_given)
    }

    /// Stops serving: closes the port and every connection (also on drop).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Headers that belong to one connection, not to the request or answer passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "content-length" | "transfer-encoding" | "upgrade"
    )
}

fn answer(status: u16, headers: HeaderMap, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
}

fn text(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer(status, headers, body.to_owned())
}

/// Consul's answer to one request: status, headers and body.
async fn forward(
    shared: &Shared,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let url = format!("{}{path_and_query}", shared.consul);
    let mut req = shared.http.request(method.clone(), &url);
    for (name, value) in headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        req = req.header(name, value);
    }
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let mut headers = resp.headers().clone();
    let hop: Vec<HeaderName> = headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
    for name in hop {
        headers.remove(name);
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    Ok((status, headers, body))
}

/// A read of the key: the old answer while some are to be given (and the read is not
/// confirmed), else Consul's, the first of which is kept.
async fn read_of_key(
    shared: &Shared,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Response<Full<Bytes>> {
    let confirmed = path_and_query
        .split(['?', '&'])
        .skip(1)
        .any(|pair| pair == "consistent");
    if !confirmed {
        let old = lock(&shared.first_read).clone();
        let mut to_give = lock(&shared.old_reads_to_give);
        if let (Some((status, headers, body)), true) = (old, *to_give > 0) {
            *to_give -= 1;
            *lock(&shared.old_reads_given) += 1;
            return answer(status, headers, body);
        }
    }
    match forward(shared, &Method::GET, path_and_query, headers, Bytes::new()).await {
        Ok((status, headers, body)) => {
            lock(&shared.first_read).get_or_insert_with(|| (status, headers.clone(), body.clone()));
            answer(status, headers, body)
        }
        Err(e) => text(502, &format!("fault relay: {e}")),
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(text(400, &format!("fault relay: reading the request: {e}"))),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let of_key = parts.uri.path() == shared.key_path;
    if of_key && parts.method == Method::GET {
        return Ok(read_of_key(&shared, &parts.headers, &path_and_query).await);
    }
    let guarded = matches!(parts.method, Method::PUT | Method::DELETE) && of_key;
    let fault = if guarded {
        shared
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    } else {
        Fault::Pass
    };
    let record = |consul_answer: Option<(u16, String)>| {
        shared
            .intercepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Intercepted {
                method: parts.method.clone(),
                path_and_query: path_and_query.clone(),
                fault: fault.clone(),
                consul_answer,
            });
    };
    if let Fault::RejectWithoutForwarding { status, body } = &fault {
        record(None);
        return Ok(text(*status, body));
    }
    let forwarded = forward(
        &shared,
        &parts.method,
        &path_and_query,
        &parts.headers,
        body,
    )
    .await;
    let seen = forwarded
        .as_ref()
        .map(|(status, _, body)| (*status, String::from_utf8_lossy(body).into_owned()))
        .map_err(Clone::clone);
    Ok(match (&fault, forwarded) {
        (Fault::Pass, Ok((status, headers, body))) => answer(status, headers, body),
        (Fault::Pass, Err(e)) => text(502, &format!("fault relay: {e}")),
        (Fault::AnswerAfterForwarding { status, body }, _) => {
            record(Some(seen.unwrap_or_else(|e| (0, e))));
            text(*status, body)
        }
        (Fault::SwallowAfterForwarding { hold }, _) => {
            record(Some(seen.unwrap_or_else(|e| (0, e))));
            tokio::time::sleep(*hold).await;
            text(500, "fault relay: the answer was held back")
        }
        (Fault::RejectWithoutForwarding { .. }, _) => unreachable!("answered above"),
    })
}
