//! `maintctl::probe::probe` against real HTTP/1.1 servers on 127.0.0.1, started in-process: a
//! tiny hand-rolled responder whose answer depends on the request number, which can also be
//! stopped (connections refused) and started again on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maintctl::probe::{probe, ProbeOptions, ProbeReport};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// What the server does with request number n (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Answer with this status and a 2-byte body, keeping the connection open.
    Status(u16),
    /// Answer nothing until the client gives up.
    Hang,
    /// Close the listener (new connections are refused), then answer 200 with
    /// `Connection: close`, so the next request needs a new connection.
    StatusThenGoAway,
}

type Behaviour = Box<dyn Fn(u64) -> Reply + Send + Sync>;

struct Shared {
    behaviour: Behaviour,
    /// Requests read so far.
    served: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// The head of the last request.
    last_head: Mutex<String>,
    /// When the listener was closed by `StatusThenGoAway`.
    went_away_at: Mutex<Option<OffsetDateTime>>,
    changed: Notify,
    /// Asks the accept loop to close the listener; it answers once the socket is closed.
    shutdown: Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>,
}

/// One in-process HTTP/1.1 server on a fixed 127.0.0.1 port.
#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    async fn start(behaviour: impl Fn(u64) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                behaviour: Box::new(behaviour),
                served: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                last_head: Mutex::new(String::new()),
                went_away_at: Mutex::new(None),
                changed: Notify::new(),
                shutdown: Mutex::new(None),
            }),
        };
        server.serve(listener);
        server
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Binds the same port again (retrying briefly: the port may be in TIME_WAIT).
    async fn restart(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Waits until at least `n` requests were read.
    async fn wait_served(&self, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.shared.changed.notified();
                if self.served() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} requests within 10s: {}", self.served()));
    }

    fn serve(&self, listener: TcpListener) {
        let (tx, mut rx) = oneshot::channel::<oneshot::Sender<()>>();
        *self.shared.shutdown.lock().unwrap() = Some(tx);
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ack = &mut rx => {
                        drop(listener);
                        if let Ok(ack) = ack {
                            let _ = ack.send(());
                        }
                        return;
                    }
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        server.shared.connections.fetch_add(1, Ordering::SeqCst);
                        let server = server.clone();
                        tokio::spawn(async move { server.connection(stream).await });
                    }
                }
            }
        });
    }

    /// Closes the listener and returns once the socket is closed.
    async fn close_listener(&self) {
        let tx = self.shared.shutdown.lock().unwrap().take();
        if let Some(tx) = tx {
            let (ack, done) = oneshot::channel();
            if tx.send(ack).is_ok() {
                let _ = done.await;
            }
        }
    }

    async fn connection(&self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            // Read one request head (GET, no body).
            let head_end = loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break pos + 4;
                }
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head: Vec<u8> = buf.drain(..head_end).collect();
            *self.shared.last_head.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
            let n = self.shared.served.fetch_add(1, Ordering::SeqCst) + 1;
            let now = self.shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
            let reply = (self.shared.behaviour)(n);
            let keep = match reply {
                Reply::Status(code) => {
                    let answer = format!(
                        "HTTP/1.1 {code} Whatever\r\nContent-Length: 2\r\n\
                         Location: /elsewhere\r\n\r\nok"
                    );
                    stream.write_all(answer.as_bytes()).await.is_ok()
                }
                Reply::Hang => {
                    // Until the client closes the connection (it timed out).
                    let mut sink = [0u8; 64];
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    false
                }
                Reply::StatusThenGoAway => {
                    self.close_listener().await;
                    *self.shared.went_away_at.lock().unwrap() = Some(OffsetDateTime::now_utc());
                    let answer =
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                    false
                }
            };
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
            if !keep {
                return;
            }
        }
    }
}

fn opts(urls: Vec<String>) -> ProbeOptions {
    let mut o = ProbeOptions::new(urls);
    o.interval = Duration::from_millis(10);
    o.timeout = Duration::from_secs(2);
    o
}

async fn run_for(o: &ProbeOptions, duration: Duration) -> ProbeReport {
    let mut o = o.clone();
    o.duration = Some(duration);
    tokio::time::timeout(
        duration + Duration::from_secs(10),
        probe(&o, std::future::pending(), &mut |_| {}),
    )
    .await
    .expect("the probe ends after its duration")
}

fn status_counts(r: &ProbeReport) -> Vec<(u16, u64)> {
    r.by_status.iter().map(|(c, n)| (*c, *n)).collect()
}

#[tokio::test]
async fn all_200_is_clean_over_one_kept_alive_connection() {
    let server = Server::start(|_| Reply::Status(200)).await;
    let o = opts(vec![server.url()]);
    let mut seen = Vec::new();
    let stopper = server.clone();
    let report = probe(
        &o,
        async move { stopper.wait_served(20).await },
        &mut |r: &ProbeReport| seen.push(r.total),
    )
    .await;
    assert!(report.is_clean(), "{}", report.render_text());
    assert!(report.total >= 20, "{}", report.render_text());
    assert_eq!(status_counts(&report), [(200, report.total)]);
    assert_eq!(report.connection_errors, 0);
    assert_eq!(report.longest_unexpected_run, None);
    assert_eq!(server.shared.connections.load(Ordering::SeqCst), 1);
    // Progress came after every result, with the running total.
    assert_eq!(seen, (1..=report.total).collect::<Vec<_>>());
    assert!(report
        .render_text()
        .contains("clean: every answer was one of 200, 503"));
    assert_eq!(report.to_json()["clean"], true);
}

#[tokio::test]
async fn a_502_window_is_reported_with_times_and_its_run() {
    let server = Server::start(|n| {
        if (6..=10).contains(&n) {
            Reply::Status(502)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let before = OffsetDateTime::now_utc();
    let stopper = server.clone();
    let report = probe(
        &opts(vec![server.url()]),
        async move { stopper.wait_served(15).await },
        &mut |_| {},
    )
    .await;
    let after = OffsetDateTime::now_utc();
    assert!(!report.is_clean());
    assert_eq!(
        report.by_status.get(&502),
        Some(&5),
        "{}",
        report.render_text()
    );
    assert_eq!(report.by_status.get(&200), Some(&(report.total - 5)));
    assert_eq!(report.unexpected.len(), 5);
    let mut last = before;
    for u in &report.unexpected {
        assert_eq!(u.what, "status 502");
        assert_eq!(u.url, server.url());
        assert!(
            u.at >= last && u.at <= after,
            "{u:?} not in order within the run"
        );
        last = u.at;
    }
    let run = report.longest_unexpected_run.clone().expect("a run");
    assert_eq!(run.count, 5);
    assert_eq!(run.start, report.unexpected[0].at);
    assert_eq!(run.end, report.unexpected[4].at);
    let text = report.render_text();
    assert!(text.contains("  status 502: 5 (unexpected)\n"), "{text}");
    assert!(
        text.contains("longest unexpected run: 5 in a row"),
        "{text}"
    );
    assert!(text.contains("not clean: 5 of"), "{text}");
    let json = report.to_json();
    assert_eq!(json["longest_unexpected_run"]["count"], 5);
    assert_eq!(json["unexpected"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn a_stopped_server_shows_as_connection_refused_for_its_window() {
    let server = Server::start(|n| {
        if n == 5 {
            Reply::StatusThenGoAway
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let window = Arc::new(Mutex::new(None));
    let (controller, window_w) = (server.clone(), window.clone());
    let report = probe(
        &opts(vec![server.url()]),
        async move {
            controller.wait_served(5).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let up_at = OffsetDateTime::now_utc();
            controller.restart().await;
            *window_w.lock().unwrap() = Some(up_at);
            let served = controller.served();
            controller.wait_served(served + 5).await;
        },
        &mut |_| {},
    )
    .await;
    let down_at = server
        .shared
        .went_away_at
        .lock()
        .unwrap()
        .expect("went away");
    let up_at = window.lock().unwrap().expect("came back");
    let text = report.render_text();
    assert!(!report.is_clean());
    assert!(report.connection_errors >= 3, "{text}");
    assert_eq!(
        report.unexpected.len() as u64,
        report.connection_errors,
        "{text}"
    );
    for u in &report.unexpected {
        assert_eq!(u.what, "connection refused", "{text}");
        assert!(
            u.at >= down_at && u.at <= up_at,
            "{u:?} outside the outage\n{text}"
        );
    }
    let run = report.longest_unexpected_run.clone().expect("a run");
    assert_eq!(
        run.count, report.connection_errors,
        "one unbroken outage\n{text}"
    );
    assert!(
        report.by_status.get(&200).copied().unwrap_or(0) >= 10,
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
}

#[tokio::test]
async fn expect_is_honoured_and_redirects_are_not_followed() {
    let maintenance = Server::start(|_| Reply::Status(503)).await;
    let o = opts(vec![maintenance.url()]);
    let report = run_for(&o, Duration::from_millis(200)).await;
    assert!(report.is_clean(), "{}", report.render_text());

    let mut strict = o.clone();
    strict.expect = vec![200];
    let report = run_for(&strict, Duration::from_millis(200)).await;
    assert!(!report.is_clean());
    assert_eq!(report.unexpected.len() as u64, report.total);
    assert!(report.unexpected.iter().all(|u| u.what == "status 503"));
    assert_eq!(
        report.longest_unexpected_run.map(|r| r.count),
        Some(report.total)
    );

    let moved = Server::start(|_| Reply::Status(301)).await;
    let report = run_for(&opts(vec![moved.url()]), Duration::from_millis(200)).await;
    assert_eq!(status_counts(&report), [(301, report.total)]);
    assert!(report.unexpected.iter().all(|u| u.what == "status 301"));
    let mut lenient = opts(vec![moved.url()]);
    lenient.expect = vec![301];
    assert!(run_for(&lenient, Duration::from_millis(200))
        .await
        .is_clean());
}

#[tokio::test]
async fn urls_are_asked_in_turn_and_an_expected_answer_anywhere_ends_a_run() {
    let good = Server::start(|_| Reply::Status(200)).await;
    let bad = Server::start(|_| Reply::Status(502)).await;
    let report = run_for(
        &opts(vec![good.url(), bad.url()]),
        Duration::from_millis(400),
    )
    .await;
    let (g, b) = (good.served(), bad.served());
    assert!(g >= 5 && g.abs_diff(b) <= 1, "good {g}, bad {b}");
    assert_eq!(report.total, g + b);
    assert!(report.unexpected.iter().all(|u| u.url == bad.url()));
    assert_eq!(report.longest_unexpected_run.map(|r| r.count), Some(1));
}

#[tokio::test]
async fn a_hanging_url_times_out_with_never_two_requests_in_flight() {
    let server = Server::start(|_| Reply::Hang).await;
    let mut o = opts(vec![server.url()]);
    o.timeout = Duration::from_millis(200);
    let started = tokio::time::Instant::now();
    let report = run_for(&o, Duration::from_millis(700)).await;
    // Ends within its duration plus one timeout, once in-flight requests are done.
    assert!(started.elapsed() < Duration::from_millis(700 + 200 + 1_000));
    assert!(report.total >= 2, "{}", report.render_text());
    assert_eq!(report.connection_errors, report.total);
    assert!(report
        .unexpected
        .iter()
        .all(|u| u.what == "timeout after 0.200s"));
    assert!(report.skipped > 0);
    assert_eq!(server.shared.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn extra_headers_are_sent() {
    let server = Server::start(|_| Reply::Status(200)).await;
    let mut o = opts(vec![server.url()]);
    o.headers = vec![
        ("Host".to_owned(), "shop.example".to_owned()),
        ("X-Drawbridge-Bypass".to_owned(), "token".to_owned()),
    ];
    let report = run_for(&o, Duration::from_millis(100)).await;
    assert!(report.is_clean());
    let head = server.shared.last_head.lock().unwrap().to_lowercase();
    assert!(head.starts_with("get /health http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: shop.example\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-drawbridge-bypass: token\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nuser-agent: maintctl-probe/"), "{head}");
}

#[tokio::test]
async fn stop_ends_the_probe_and_an_empty_probe_is_not_clean() {
    let server = Server::start(|_| Reply::Status(200)).await;
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        probe(&opts(vec![server.url()]), async {}, &mut |_| {}),
    )
    .await
    .expect("stop ends the probe at once");
    assert!(report.total <= 1);
    let none = probe(
        &ProbeOptions::new(vec![]),
        std::future::pending(),
        &mut |_| {},
    )
    .await;
    assert!(!none.is_clean());
    assert_eq!(none.by_status, BTreeMap::new());
}
