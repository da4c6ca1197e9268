//! The gate watcher against a misbehaving or churning Consul, seen through an index relay that
//! sits between a proxy and its agent, logs every read of the key and can answer reads with a
//! chosen `X-Consul-Index`: an index lower than before resets the watch (a confirming read), a 0
//! is never sent back as a blocking index, the same index answered again and again is read at a
//! bounded pace, and a key rewritten 100 times a second is followed at a bounded pace, with the
//! last value served within 1 s after the churn.
//!
//! The suite runs the reliability figures with small counts where they are slow; the long runs
//! take them from the environment: `DRAWBRIDGE_INDEX_SAME` (same-index answers in a row, 20;
//! the figure is 100), `DRAWBRIDGE_CHURN_SECS` (10), `DRAWBRIDGE_CHURN_WRITES` (writes a second,
//! 100), `DRAWBRIDGE_CHURN_PROXIES` (2) and `DRAWBRIDGE_CHURN_RATE` (client requests a second,
//! 200). Each test prints its figures.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drawbridge_core::consul::PutMode;
use drawbridge_core::gate::Mode;
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::http_thread::ServerThread;
use drawbridge_tests::ports::free_port;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{set_gate, test_key, Drawbridge, Route};
use drawbridge_tests::upstream::{Kind, Upstream};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Longest an index relay serves, whatever the test does.
const RELAY_LIFETIME: Duration = Duration::from_secs(300);

/// A planned answer to a blocking read of the key: Consul's last answer with another index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anomaly {
    /// Half the index the read was sent with: lower than before.
    Lower,
    /// `X-Consul-Index: 0`.
    Zero,
    /// The index the read was sent with, at once: no news.
    Same,
}

/// One read of the key as the relay saw it.
#[derive(Debug, Clone)]
struct Read {
    at: Instant,
    /// The `index` of the query; absent for a read that does not block.
    index: Option<u64>,
    /// Whether the read asked for the leader's confirmation (`consistent`).
    consistent: bool,
    /// The anomaly it was answered with instead of Consul's answer.
    anomaly: Option<Anomaly>,
    /// The `X-Consul-Index` it was answered with (0 when none could be given).
    answered: u64,
}

#[derive(Debug)]
struct Shared {
    consul: String,
    key_path: String,
    http: reqwest::Client,
    reads: Mutex<Vec<Read>>,
    /// Consul's last answer to a read of the key, kept for the anomalies.
    last: Mutex<Option<(u16, HeaderMap, Bytes)>>,
    planned: Mutex<VecDeque<Anomaly>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A forwarder between a proxy and its Consul agent that logs the reads of one key and answers
/// blocking reads with planned anomalies; dropping it closes the port and every connection.
struct IndexRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: ServerThread,
}

impl IndexRelay {
    /// Starts a relay on a free loopback port in front of the agent at `consul`, watching `key`.
    fn start(consul: &str, key: &str) -> IndexRelay {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("the index relay cannot listen on {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a bound listener can be made non-blocking");
        let shared = Arc::new(Shared {
            consul: consul.trim_end_matches('/').to_owned(),
            key_path: format!("/v1/kv/{}", key.trim_start_matches('/')),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client with these settings always builds"),
            reads: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            planned: Mutex::new(VecDeque::new()),
        });
        let server = ServerThread::spawn(
            "index-relay",
            listener,
            Some(RELAY_LIFETIME),
            Arc::clone(&shared),
            relay,
        )
        .expect("the relay thread starts");
        IndexRelay {
            addr,
            shared,
            _server: server,
        }
    }

    fn http_addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next blocking reads of the key with `anomalies`, in order, at once.
    fn plan(&self, anomalies: impl IntoIterator<Item = Anomaly>) {
        lock(&self.shared.planned).extend(anomalies);
    }

    fn planned_left(&self) -> usize {
        lock(&self.shared.planned).len()
    }

    /// Every read of the key so far, oldest first.
    fn reads(&self) -> Vec<Read> {
        lock(&self.shared.reads).clone()
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "content-length" | "transfer-encoding" | "upgrade"
    )
}

fn answer(status: u16, headers: HeaderMap, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
}

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
    let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut headers = resp.headers().clone();
    let hop: Vec<HeaderName> = headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
    for name in hop {
        headers.remove(name);
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, headers, body))
}

fn consul_index(headers: &HeaderMap) -> u64 {
    headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn relay(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    if parts.method != Method::GET || parts.uri.path() != shared.key_path {
        return Ok(
            match forward(
                &shared,
                &parts.method,
                &path_and_query,
                &parts.headers,
                body,
            )
            .await
            {
                Ok((status, headers, body)) => answer(status, headers, body),
                Err(e) => answer(502, HeaderMap::new(), Bytes::from(e)),
            },
        );
    }
    let pairs: Vec<&str> = parts.uri.query().unwrap_or("").split('&').collect();
    let index = pairs
        .iter()
        .find_map(|p| p.strip_prefix("index="))
        .and_then(|i| i.parse().ok());
    let consistent = pairs.contains(&"consistent");
    let mut read = Read {
        at: Instant::now(),
        index,
        consistent,
        anomaly: None,
        answered: 0,
    };
    // Only blocking reads meet the anomalies; confirming reads always get Consul's word.
    let planned = match index {
        Some(_) if lock(&shared.last).is_some() => lock(&shared.planned).pop_front(),
        _ => None,
    };
    if let (Some(anomaly), Some(sent), Some((status, mut headers, body))) =
        (planned, index, lock(&shared.last).clone())
    {
        let given = match anomaly {
            Anomaly::Lower => (sent / 2).max(1),
            Anomaly::Zero => 0,
            Anomaly::Same => sent,
        };
        headers.insert("x-consul-index", HeaderValue::from(given));
        read.anomaly = Some(anomaly);
        read.answered = given;
        lock(&shared.reads).push(read);
        return Ok(answer(status, headers, body));
    }
    let forwarded = forward(
        &shared,
        &parts.method,
        &path_and_query,
        &parts.headers,
        body,
    )
    .await;
    Ok(match forwarded {
        Ok((status, headers, body)) => {
            read.answered = consul_index(&headers);
            lock(&shared.reads).push(read);
            if status == 200 || status == 404 {
                *lock(&shared.last) = Some((status, headers.clone(), body.clone()));
            }
            answer(status, headers, body)
        }
        Err(e) => {
            lock(&shared.reads).push(read);
            answer(502, HeaderMap::new(), Bytes::from(e))
        }
    })
}

/// The most reads in any one-second window of `reads`.
fn most_in_a_second(reads: &[Read]) -> usize {
    let mut most = 0;
    for (i, first) in reads.iter().enumerate() {
        let within = reads[i..]
            .iter()
            .take_while(|r| r.at.duration_since(first.at) < Duration::from_secs(1))
            .count();
        most = most.max(within);
    }
    most
}

fn describe(reads: &[Read], since: Instant) -> String {
    reads
        .iter()
        .map(|r| {
            format!(
                "{:>7.1} ms index={:<5} consistent={:<5} answered={} {:?}",
                r.at.saturating_duration_since(since).as_secs_f64() * 1000.0,
                r.index.map_or("-".into(), |i| i.to_string()),
                r.consistent,
                r.answered,
                r.anomaly
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// RELIABILITY-TESTS §6, test 7. An index lower than before, then 0, then the same index
/// answered at once again and again: the watcher confirms with the leader after the lower one
/// and after the 0 (it never blocks on index 0), reads the same-index answers at most 3 times a
/// second, never changes the served state, and applies the next real change within one wait.
#[tokio::test]
async fn index_anomalies_change_nothing_and_same_index_answers_are_paced() {
    let same = from_env("DRAWBRIDGE_INDEX_SAME", 20) as usize;
    let dir = TestDir::new("index_anomalies_change_nothing_and_same_index_answers_are_paced");
    let consul = ConsulServer::start(&dir).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let key = test_key("index_anomalies");
    let first = set_gate(
        &consul.client(),
        &key,
        r#"{"mode":"maintenance","reason":"steady"}"#,
    )
    .await;
    let relay = IndexRelay::start(&consul.http_addr(), &key);
    let wait = Duration::from_secs(2);
    let edge = Drawbridge::builder(&relay.http_addr(), &key)
        .consul_wait("2s")
        .stale_after("30s")
        .static_pool("ui", &[&ui], None)
        .route(Route::page("ui", "/", "ui"))
        .start(&dir)
        .await;
    edge.wait_applied(first).await;
    let applied_before = edge.applied_states();

    let planned_at = Instant::now();
    relay.plan([Anomaly::Lower, Anomaly::Zero]);
    relay.plan(std::iter::repeat_n(Anomaly::Same, same));
    // Watch the served state while the relay works through its plan (the read open now
    // returns after its wait, about 2 s, then the plan is answered).
    let deadline = planned_at + wait * 3 + Duration::from_secs(same as u64);
    let mut samples = 0;
    while relay.planned_left() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} planned answers left after {:?}:\n{}\n{}",
            relay.planned_left(),
            planned_at.elapsed(),
            describe(&relay.reads(), planned_at),
            edge.log_tail()
        );
        let report = edge.status().await;
        assert_eq!(
            (report.gate.mode, report.gate.applied_index),
            (Mode::Maintenance, first),
            "the served state changed during the anomalies"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The read after the last planned answer, if it comes, is Consul's again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = relay.reads();
    let at = |anomaly: Anomaly| {
        reads
            .iter()
            .position(|r| r.anomaly == Some(anomaly))
            .unwrap_or_else(|| panic!("no {anomaly:?} answer given"))
    };
    let log = describe(&reads, planned_at);

    // Every blocking read carries an index of at least 1; a read without one is a leader's
    // confirmation, never a watch from index 0.
    for r in &reads {
        assert!(
            r.index.is_some_and(|i| i >= 1) || r.consistent,
            "a read with neither an index nor consistent:\n{log}"
        );
    }
    let lower = at(Anomaly::Lower);
    let next = reads.get(lower + 1).expect("a read after the lower index");
    assert!(
        next.consistent && next.index.is_none(),
        "after a lower index the watch starts over with a confirming read:\n{log}"
    );
    let zero = at(Anomaly::Zero);
    let next = reads.get(zero + 1).expect("a read after the 0");
    assert!(
        next.consistent && next.index.is_none(),
        "after an index of 0 the watch starts over with a confirming read:\n{log}"
    );
    let then = reads.get(zero + 2).expect("a blocking read after the 0");
    assert!(
        then.index.is_some_and(|i| i >= 1),
        "after the 0 the watch blocks from an index of at least 1:\n{log}"
    );

    let burst: Vec<Read> = reads
        .iter()
        .filter(|r| r.anomaly == Some(Anomaly::Same))
        .cloned()
        .collect();
    assert_eq!(burst.len(), same);
    let first_same = at(Anomaly::Same);
    // The burst: the same-index answers and the read that followed the last one.
    let during = &reads[first_same..reads.len().min(first_same + same + 1)];
    let took = during[during.len() - 1].at - during[0].at;
    let average = (during.len() - 1) as f64 / took.as_secs_f64().max(f64::EPSILON);
    let peak = most_in_a_second(during);
    eprintln!(
        "index anomalies: {} reads in all; after the lower index: confirm; after 0: confirm, \
         then index {}; {same} same-index answers read in {:.2} s: {average:.2} reads/s on \
         average, at most {peak} in one second; served state checked {samples} times",
        reads.len(),
        then.index.unwrap_or(0),
        took.as_secs_f64(),
    );

    // The next real change is applied within one wait.
    let written = set_gate(
        &consul.client(),
        &key,
        r#"{"mode":"normal","reason":"the change"}"#,
    )
    .await;
    let acknowledged = Instant::now();
    edge.wait_status("the change after the anomalies", wait, |r| {
        r.gate.applied_index >= written
    })
    .await;
    let applied_after = acknowledged.elapsed();
    eprintln!("index anomalies: the next change applied {applied_after:?} after its write");
    let applied = edge.applied_states();
    assert_eq!(
        applied[applied_before.len()..],
        [("normal".to_owned(), written)],
        "the served state changed only with the new ModifyIndex: {applied:?}"
    );
    assert_eq!(edge.get("/").await.status(), 200);
    assert!(
        peak <= 3,
        "{peak} reads in one second during the same-index burst (3 at most):\n{log}"
    );
}

/// What one client request during the churn got.
#[derive(Debug)]
enum Seen {
    Expected,
    Unexpected(String),
}

/// A request for `path` on a route of `kind`: 200 from the upstream, or 503 in the route's form.
async fn classify(client: reqwest::Client, url: String, kind: Kind) -> Seen {
    let answer = match client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(answer) => answer,
        Err(e) => return Seen::Unexpected(format!("{url}: {e}")),
    };
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = answer.bytes().await;
    let expected_type = match kind {
        Kind::Page => "text/html",
        Kind::Api | Kind::Failing => "application/problem+json",
    };
    match (status, body) {
        (_, Err(e)) => Seen::Unexpected(format!("{url}: reading the body: {e}")),
        (200, Ok(_)) => Seen::Expected,
        (503, Ok(_)) if content_type.starts_with(expected_type) => Seen::Expected,
        (status, Ok(body)) => Seen::Unexpected(format!(
            "{url}: {status} {content_type}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// RELIABILITY-TESTS §6, test 8. The key rewritten 100 times a second for 10 s, alternating
/// maintenance and normal, while clients send requests: each proxy reads from Consul at most 20
/// times a second, serves the last value within 1 s after the churn stops, and every client
/// answer is a 200 or a 503 in the route's form.
#[tokio::test]
async fn key_churn_is_followed_at_a_bounded_pace_and_settles_within_a_second() {
    let secs = from_env("DRAWBRIDGE_CHURN_SECS", 10);
    let writes_per_sec = from_env("DRAWBRIDGE_CHURN_WRITES", 100).max(1);
    let proxies = from_env("DRAWBRIDGE_CHURN_PROXIES", 2) as usize;
    let rate = from_env("DRAWBRIDGE_CHURN_RATE", 200).max(1);
    let dir = TestDir::new("key_churn_is_followed_at_a_bounded_pace_and_settles_within_a_second");
    let consul = ConsulServer::start(&dir).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let api = Upstream::builder("api").kind(Kind::Api).start();
    let key = test_key("key_churn");
    set_gate(
        &consul.client(),
        &key,
        r#"{"mode":"normal","reason":"start"}"#,
    )
    .await;
    let mut relays = Vec::new();
    let mut edges = Vec::new();
    for i in 0..proxies {
        let relay = IndexRelay::start(&consul.http_addr(), &key);
        let edge = Drawbridge::builder(&relay.http_addr(), &key)
            .name(&format!("churn-{i}"))
            .static_pool("ui", &[&ui], None)
            .static_pool("api", &[&api], None)
            .route(Route::api("api", "/api/", "api"))
            .route(Route::page("ui", "/", "ui"))
            .limit("max_connections_per_client", 10_000)
            .start(&dir)
            .await;
        relays.push(relay);
        edges.push(edge);
    }

    // Client traffic: an open loop over every proxy, page and API routes in turn.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client");
    let traffic_on = Arc::new(AtomicBool::new(true));
    let targets: Vec<(String, Kind)> = edges
        .iter()
        .flat_map(|e| {
            [
                (e.url("/churn"), Kind::Page),
                (e.url("/api/churn"), Kind::Api),
            ]
        })
        .collect();
    let traffic = {
        let traffic_on = traffic_on.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            let mut requests = Vec::new();
            let mut n = 0;
            while traffic_on.load(Ordering::Relaxed) {
                ticks.tick().await;
                let (url, kind) = targets[n % targets.len()].clone();
                n += 1;
                requests.push(tokio::spawn(classify(client.clone(), url, kind)));
            }
            let mut unexpected = Vec::new();
            let sent = requests.len();
            for request in requests {
                if let Seen::Unexpected(what) = request.await.expect("a request task") {
                    unexpected.push(what);
                }
            }
            (sent, unexpected)
        })
    };

    let writer = consul.client();
    let churn_started = Instant::now();
    let reads_before: Vec<usize> = relays.iter().map(|r| r.reads().len()).collect();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / writes_per_sec as u32);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut written = 0u64;
    while churn_started.elapsed() < Duration::from_secs(secs) {
        ticks.tick().await;
        written += 1;
        let mode = if written % 2 == 0 {
            "normal"
        } else {
            "maintenance"
        };
        let value = format!(r#"{{"mode":"{mode}","reason":"churn {written}"}}"#);
        writer
            .kv_put(&key, value.as_bytes(), PutMode::Always)
            .await
            .unwrap_or_else(|e| panic!("write {written}: {e}"));
    }
    // The last write: maintenance, waited for by every proxy.
    let last = set_gate(
        &writer,
        &key,
        r#"{"mode":"maintenance","reason":"the last write"}"#,
    )
    .await;
    let churn = churn_started.elapsed();
    let stopped = Instant::now();
    let mut settled = Vec::new();
    for edge in &edges {
        let report = edge
            .wait_status("the last write applied", Duration::from_secs(5), |r| {
                r.gate.applied_index >= last
            })
            .await;
        settled.push(stopped.elapsed());
        assert_eq!(report.gate.mode, Mode::Maintenance);
        assert_eq!(edge.get("/after-the-churn").await.status(), 503);
    }
    traffic_on.store(false, Ordering::Relaxed);
    let (sent, unexpected) = traffic.await.expect("the traffic task");

    let mut pace = Vec::new();
    for (i, relay) in relays.iter().enumerate() {
        let reads: Vec<Read> = relay
            .reads()
            .into_iter()
            .skip(reads_before[i])
            .filter(|r| r.at <= stopped)
            .collect();
        let average = reads.len() as f64 / churn.as_secs_f64();
        pace.push((average, most_in_a_second(&reads)));
    }
    let applied: Vec<usize> = edges.iter().map(|e| e.applied_states().len()).collect();
    eprintln!(
        "key churn: {} writes in {:.2} s ({:.0}/s); reads from Consul per proxy (average/s, most \
         in one second): {pace:?}; states applied per proxy: {applied:?}; last value served \
         {settled:?} after the last write; client requests: {sent} at {rate}/s, {} unexpected",
        written + 1,
        churn.as_secs_f64(),
        (written + 1) as f64 / churn.as_secs_f64(),
        unexpected.len(),
    );
    assert!(
        written + 1 >= secs * writes_per_sec * 8 / 10,
        "only {written} writes in {churn:?}: the churn was not reached"
    );
    for (i, (average, most)) in pace.iter().enumerate() {
        assert!(
            *most <= 20,
            "proxy {i} read from Consul {most} times in one second (average {average:.1}/s)"
        );
    }
    for (i, after) in settled.iter().enumerate() {
        assert!(
            *after <= Duration::from_secs(1),
            "proxy {i} served the last value {after:?} after the churn"
        );
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers of {sent}, first: {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
}
