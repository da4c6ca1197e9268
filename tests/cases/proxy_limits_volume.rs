//! `[limits]` at volume, with legitimate traffic measured beside: thousands of requests over
//! the size limits (a 64 KiB header against 32 KiB, 150 header lines against 100, a 16 KiB URI
//! against 8 KiB, an announced 2 MiB body against 1 MiB) each get 431, 431, 414 or 413 at once
//! and a closed connection, reach nobody and leave the proxy's memory where it was (within
//! 5 MiB); and clients that ask for a large answer and take it slowly (1 KiB a second through a
//! tiny receive window) or not at all are cut at `limits.send_timeout`, the proxy's memory within
//! 64 MiB of where it was meanwhile.
//!
//! The slow readers: once the socket buffers are full, the proxy cuts each within the configured
//! value + 2 s (read from its access log: the request's time and its write-timeout error), and
//! the client never gets the whole answer. An answer the socket buffers take whole (on loopback
//! about 2.7 MB, so a 1 MiB one) is written at once and the request is over; its connection is
//! then idle and closed at `keepalive_timeout`, set to the same value here. Either way the
//! proxy's side of every slow connection is checked closed (`/proc/net/tcp`) at the configured
//! value + 2 s.
//!
//! The suite runs small sizes; the long runs take theirs from the environment (each test prints
//! its figures):
//! - the size limits: `DRAWBRIDGE_LIMITS_REQUESTS` (requests of each kind, 200; the figure is
//!   1 000), `DRAWBRIDGE_LIMITS_PARALLEL` (connections sending them at once, 4),
//!   `DRAWBRIDGE_LIMITS_ATTACK_RATE` (how many a second in all, 200; 0: as fast as they are
//!   answered), `DRAWBRIDGE_LIMITS_ANSWER_MS` (the slowest refusal allowed, 100);
//! - the slow readers: `DRAWBRIDGE_SLOW_READ_CONNECTIONS` (half reading 1 KiB a second, half not
//!   reading; 20, the figure is 500), `DRAWBRIDGE_SLOW_READ_BYTES` (the answer, 16 MiB: more
//!   than the socket buffers take, so the proxy's writes block; the figure's 1 MiB checks the
//!   idle close instead), `DRAWBRIDGE_SLOW_READ_SEND_SECS` (`send_timeout`, 2),
//!   `DRAWBRIDGE_SLOW_READ_CONNECT_RATE` (new slow clients a second, 20; slowhttptest's default
//!   is 50);
//! - both: `DRAWBRIDGE_LIMITS_RATE` (legitimate requests a second, 100; the figure is 500) and
//!   `DRAWBRIDGE_LIMITS_SLOWEST_MS` (250). The suite runs beside other tests on a small machine,
//!   so the legitimate p99 under attack may be its bound times the baseline p99 (2 for the size
//!   limits, 3 for the slow readers) or this, whichever is more; a long run on a quiet machine
//!   sets 0 for the bare ratio.
//!
//! The long runs measure a release build of the proxy (`cargo build --release -p drawbridge`,
//! then `DRAWBRIDGE_BIN=target/release/drawbridge`): on two cores a debug build cannot serve 500
//! legitimate requests a second beside the attack, and its timers fall behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_tests::load::{open_loop, Served};
use drawbridge_tests::process::rss_kib;
use drawbridge_tests::proxy::Site;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The floor of the legitimate p99 bound (`DRAWBRIDGE_LIMITS_SLOWEST_MS`).
fn slowest_allowed() -> Duration {
    Duration::from_millis(from_env("DRAWBRIDGE_LIMITS_SLOWEST_MS", 250))
}

/// Legitimate requests a second (`DRAWBRIDGE_LIMITS_RATE`).
fn legitimate_rate() -> u64 {
    from_env("DRAWBRIDGE_LIMITS_RATE", 100).max(1)
}

/// Sends `GET <url>` at `rate` a second until `on` is cleared or `most` has passed, on a thread
/// and runtime of its own (what the test sends beside it must not delay its answers' timing),
/// and waits for every answer.
async fn legitimate_load(url: &str, rate: u64, on: Arc<AtomicBool>, most: Duration) -> Served {
    let url = url.to_owned();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime with the default settings builds")
            .block_on(requests_at(&url, rate, &on, most))
    });
    tokio::task::spawn_blocking(move || thread.join().expect("the load thread does not panic"))
        .await
        .expect("the load thread is joined")
}

/// `GET <url>` at `rate` a second with a client of its own ([`open_loop`]).
async fn requests_at(url: &str, rate: u64, on: &AtomicBool, most: Duration) -> Served {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client");
    open_loop(&client, url, rate, most, Some(on)).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One of the four requests over a size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Oversized {
    /// A 64 KiB header against `max_header_bytes` 32 KiB.
    HeaderBytes,
    /// 150 header lines against `max_headers` 100.
    HeaderCount,
    /// A 16 KiB URI against `max_uri_bytes` 8 KiB.
    Uri,
    /// An announced 2 MiB body against `max_body_bytes` 1 MiB (64 KiB of it sent).
    Body,
}

impl Oversized {
    const ALL: [Oversized; 4] = [
        Oversized::HeaderBytes,
        Oversized::HeaderCount,
        Oversized::Uri,
        Oversized::Body,
    ];

    /// The status it must get.
    fn expected(self) -> u16 {
        match self {
            Oversized::HeaderBytes | Oversized::HeaderCount => 431,
            Oversized::Uri => 414,
            Oversized::Body => 413,
        }
    }

    /// Its reason in `drawbridge_refused_requests_total`.
    fn reason(self) -> &'static str {
        match self {
            Oversized::HeaderBytes => "header_size",
            Oversized::HeaderCount => "header_count",
            Oversized::Uri => "uri_length",
            Oversized::Body => "body_size",
        }
    }

    /// The request of this kind, as sent.
    fn request(self) -> Vec<u8> {
        let host = "Host: volume.test";
        let head = match self {
            Oversized::HeaderBytes => format!(
                "GET /volume/header-bytes HTTP/1.1\r\n{host}\r\nX-Big: {}",
                "b".repeat(64 * 1024)
            ),
            Oversized::HeaderCount => {
                let many: String = (0..150).map(|i| format!("\r\nX-Line-{i}: {i}")).collect();
                format!("GET /volume/header-count HTTP/1.1\r\n{host}{many}")
            }
            Oversized::Uri => format!(
                "GET /volume/uri?{} HTTP/1.1\r\n{host}",
                "q".repeat(16 * 1024)
            ),
            Oversized::Body => format!(
                "POST /api/volume/body HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}",
                2 * 1024 * 1024
            ),
        };
        let mut bytes = format!("{head}\r\n\r\n").into_bytes();
        if self == Oversized::Body {
            bytes.extend(std::iter::repeat_n(b'z', 64 * 1024));
        }
        bytes
    }
}

/// What one oversized request got.
#[derive(Debug)]
struct Refused {
    kind: Oversized,
    /// 0 when no status line came.
    status: u16,
    /// From the connect to the status line.
    took: Duration,
    /// Whether the proxy closed the connection after the answer (within 2 s).
    closed: bool,
}

/// Sends `request`, of `kind`, on a new connection and reads its answer.
async fn send_oversized(addr: SocketAddr, kind: Oversized, request: &[u8]) -> Refused {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut buf = vec![0u8; 16 * 1024];
    let status = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let took = started.elapsed();
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    Refused {
        kind,
        status,
        took,
        closed,
    }
}

/// Sends `each` requests of every kind over `parallel` connections at a time, the kinds in turn,
/// at most `rate` a second in all (0: as fast as they are answered).
async fn send_all_oversized(
    addr: SocketAddr,
    each: usize,
    parallel: usize,
    rate: u64,
) -> Vec<Refused> {
    let total = each * Oversized::ALL.len();
    let parallel = parallel.max(1);
    let requests: Arc<Vec<Vec<u8>>> =
        Arc::new(Oversized::ALL.iter().map(|k| k.request()).collect());
    let mut workers = Vec::new();
    for w in 0..parallel {
        let requests = requests.clone();
        workers.push(tokio::spawn(async move {
            let mut ticks = (rate > 0).then(|| {
                let mut ticks =
                    tokio::time::interval(Duration::from_secs(parallel as u64) / rate as u32);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            let mut refused = Vec::new();
            for i in (w..total).step_by(parallel) {
                if let Some(ticks) = ticks.as_mut() {
                    ticks.tick().await;
                }
                let k = i % Oversized::ALL.len();
                refused.push(send_oversized(addr, Oversized::ALL[k], &requests[k]).await);
            }
            refused
        }));
    }
    let mut all = Vec::with_capacity(total);
    for worker in workers {
        all.extend(worker.await.expect("a sending task does not panic"));
    }
    all
}

/// RELIABILITY-TESTS §6, test 14: every oversized request gets its status within 100 ms and a
/// closed connection, the proxy's RSS grows by 5 MiB at most over the run (after a warm-up), and
/// a legitimate load beside it keeps 100 % success and its p99.
#[tokio::test]
async fn thousands_of_oversized_requests_are_refused_at_once_and_cost_no_memory() {
    let each = from_env("DRAWBRIDGE_LIMITS_REQUESTS", 200) as usize;
    let parallel = from_env("DRAWBRIDGE_LIMITS_PARALLEL", 4) as usize;
    let attack_rate = from_env("DRAWBRIDGE_LIMITS_ATTACK_RATE", 200);
    let answer_bound = Duration::from_millis(from_env("DRAWBRIDGE_LIMITS_ANSWER_MS", 100));
    let rate = legitimate_rate();
    let site = Site::start_with(
        "thousands_of_oversized_requests_are_refused_at_once_and_cost_no_memory",
        |b| {
            b.limit("max_header_bytes", 32 * 1024)
                .limit("max_headers", 100)
                .limit("max_uri_bytes", 8 * 1024)
                .limit("max_body_bytes", 1024 * 1024)
                .limit("max_connections_per_client", 10_000)
        },
    )
    .await;
    let addr = site.edge.listen_addr();
    let pid = site.edge.pid();
    let url = site.edge.url("/legit");
    let rss_start = rss_kib(pid);
    // A few of each first: the allocator's arenas and the buffers of the first requests are
    // not a leak.
    const WARM_UP: usize = 10;
    let warm_up = send_all_oversized(addr, WARM_UP, parallel, 0).await;
    let always = Arc::new(AtomicBool::new(true));
    let baseline = legitimate_load(&url, rate, always.clone(), Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);

    let attacking = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let attack = {
        let attacking = attacking.clone();
        tokio::spawn(async move {
            let refused = send_all_oversized(addr, each, parallel, attack_rate).await;
            attacking.store(false, Ordering::Relaxed);
            refused
        })
    };
    let served = legitimate_load(&url, rate, attacking, Duration::from_secs(600)).await;
    let refused = attack.await.expect("the attack task does not panic");
    let attack_took = started.elapsed();
    let rss_after = rss_kib(pid);

    let mut summary = Vec::new();
    for kind in Oversized::ALL {
        let mut of_kind: Vec<&Refused> = refused.iter().filter(|r| r.kind == kind).collect();
        of_kind.sort_by_key(|r| r.took);
        let right = of_kind
            .iter()
            .filter(|r| r.status == kind.expected())
            .count();
        let closed = of_kind.iter().filter(|r| r.closed).count();
        let p99 = of_kind[(of_kind.len() * 99 / 100).min(of_kind.len() - 1)].took;
        let slowest = of_kind[of_kind.len() - 1].took;
        summary.push(format!(
            "{kind:?}: {right}/{} got {}, {closed} closed, p99 {:.1} ms, slowest {:.1} ms",
            of_kind.len(),
            kind.expected(),
            ms(p99),
            ms(slowest)
        ));
    }
    eprintln!(
        "size limits: {each} of each kind over {parallel} connections at a time in {:.1} s; {}; \
         legitimate {}/{} ok at {rate}/s, p50 {:.1} ms, p99 {:.1} ms (baseline p99 {:.1} ms); \
         proxy RSS {rss_start} KiB at start, {rss_before} KiB after {WARM_UP} of each, \
         {rss_after} KiB after the run ({:+} KiB)",
        attack_took.as_secs_f64(),
        summary.join("; "),
        served.ok,
        served.sent,
        ms(served.p50),
        ms(served.p99),
        ms(baseline.p99),
        rss_after as i64 - rss_before as i64,
    );
    for r in warm_up.iter().chain(&refused) {
        assert_eq!(r.status, r.kind.expected(), "{r:?}");
        assert!(r.closed, "the connection stayed open after {r:?}");
    }
    let slow: Vec<&Refused> = refused.iter().filter(|r| r.took > answer_bound).collect();
    assert!(
        slow.is_empty(),
        "{} refusals took longer than {answer_bound:?}, e.g. {:?}",
        slow.len(),
        slow.first()
    );
    assert!(
        rss_after <= rss_before + 5 * 1024,
        "the proxy's RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    served.assert_unhurt(&baseline, 2, slowest_allowed());
    // Nothing oversized reached an upstream, and every refusal is counted.
    assert_eq!(site.api.proxied_requests(), 0);
    assert_eq!(
        site.ui.proxied_requests(),
        (baseline.sent + served.sent) as u64
    );
    let metrics = site.edge.metrics().await;
    for kind in Oversized::ALL {
        let counted = metrics.value(
            "drawbridge_refused_requests_total",
            &[("reason", kind.reason())],
        );
        assert_eq!(counted, (each + WARM_UP) as f64, "{kind:?}");
    }
}

/// The receive buffer a slow client asks for (the kernel doubles it): a tiny window.
const TINY_WINDOW: u32 = 4096;

/// Slack of the cut over `send_timeout`, from the figure.
const CUT_SLACK: Duration = Duration::from_secs(2);

/// How a slow client takes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// 1 KiB a second.
    Trickle,
    /// Not at all.
    Never,
}

/// What one slow client got.
#[derive(Debug)]
struct SlowRead {
    path: String,
    reader: Reader,
    /// Answer bytes received, header included.
    received: usize,
    /// Header and body bytes the whole answer has (0 when no header came).
    whole: usize,
    /// How and when (after the request) the connection ended, if it did by the end of the drain.
    end: Option<String>,
    /// Whether the proxy's side of the connection was still open at the cut deadline.
    open_at_deadline: bool,
}

/// Whether the proxy's end (`proxy`) of its connection with `client` is still open: the kernel's
/// table shows it established. Closed, it is gone, or waits to send what is queued. The table
/// is read on a blocking thread: with thousands of sockets it takes milliseconds, which would
/// hold up every client of the test's runtime.
async fn proxy_side_open(proxy: SocketAddr, client: SocketAddr) -> bool {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    // `local remote state`, state 01 being established.
    let established = format!(" {} {} 01 ", hex(proxy), hex(client));
    tokio::task::spawn_blocking(move || {
        std::fs::read_to_string("/proc/net/tcp")
            .expect("/proc/net/tcp is readable")
            .contains(&established)
    })
    .await
    .expect("reading /proc/net/tcp does not panic")
}

/// Asks `addr`, from the loopback address `from`, for `path` (a body of `len` bytes) and takes the answer
/// as `reader` says until `deadline` after the request; notes then whether the proxy still holds
/// the connection, and reads what is left as fast as it comes.
async fn slow_client(
    addr: SocketAddr,
    from: std::net::Ipv4Addr,
    path: String,
    len: usize,
    reader: Reader,
    deadline: Duration,
) -> SlowRead {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(TINY_WINDOW)
        .expect("a receive buffer size");
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    let mut stream = socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: slow.test\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let local = stream.local_addr().expect("a connected socket's address");
    let sent = Instant::now();
    let check_at = sent + deadline;
    let mut head = Vec::new();
    let mut received = 0;
    let mut end = None;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < check_at {
        let mut wake = check_at;
        if reader == Reader::Trickle && end.is_none() {
            // 1 KiB, then the rest of the second.
            wake = wake.min(Instant::now() + Duration::from_secs(1));
            let read = stream.read(&mut buf[..1024]);
            match tokio::time::timeout_at(tokio::time::Instant::from_std(wake), read).await {
                Ok(Ok(0)) => end = Some(format!("end of file after {:?}", sent.elapsed())),
                Ok(Err(e)) => end = Some(format!("{e} after {:?}", sent.elapsed())),
                Ok(Ok(n)) => received += keep_head(&mut head, &buf[..n]),
                Err(_) => {}
            }
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
    let open_at_deadline = proxy_side_open(addr, local).await;
    if end.is_none() {
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return format!("end of file after {:?}", sent.elapsed()),
                    Err(e) => return format!("{e} after {:?}", sent.elapsed()),
                    Ok(n) => received += keep_head(&mut head, &buf[..n]),
                }
            }
        })
        .await;
        end = drained.ok();
    }
    let whole = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |end| end + 4 + len);
    SlowRead {
        path,
        reader,
        received,
        whole,
        end,
        open_at_deadline,
    }
}

/// Keeps the first 8 KiB of an answer (its header); returns the length of `read`.
fn keep_head(head: &mut Vec<u8>, read: &[u8]) -> usize {
    let room = (8 * 1024usize).saturating_sub(head.len());
    head.extend_from_slice(&read[..read.len().min(room)]);
    read.len()
}

/// One access log line of the proxy: how long the request took and its error.
#[derive(Debug, Clone)]
struct Logged {
    status: u16,
    ms: f64,
    error: String,
}

/// The access log lines of requests for paths under `prefix`, by path.
fn access_lines(log: &str, prefix: &str) -> HashMap<String, Logged> {
    let mut lines = HashMap::new();
    for line in log.lines().filter(|l| l.contains(" access: ")) {
        let Some(rest) = line.split(" GET ").nth(1) else {
            continue;
        };
        let mut words = rest.split(' ');
        let path = words.next().unwrap_or("");
        if !path.starts_with(prefix) {
            continue;
        }
        let status = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let ms = rest
            .split(" ms=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::MAX);
        let error = rest
            .split_once(" error=")
            .map_or(String::new(), |(_, e)| e.to_owned());
        lines.insert(path.to_owned(), Logged { status, ms, error });
    }
    lines
}

/// Waits until the access log has a line for the request of each of `reads`; returns them.
async fn wait_logged(site: &Site, reads: &[SlowRead], within: Duration) -> HashMap<String, Logged> {
    let started = Instant::now();
    loop {
        let lines = access_lines(&site.edge.log(), "/big/");
        let missing: Vec<&SlowRead> = reads
            .iter()
            .filter(|r| !lines.contains_key(&r.path))
            .collect();
        if missing.is_empty() {
            return lines;
        }
        assert!(
            started.elapsed() < within,
            "{} of {} slow requests not ended by the proxy within {within:?}, e.g. {:?}\n{}",
            missing.len(),
            reads.len(),
            &missing[..missing.len().min(3)],
            site.edge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the proxy ended the slow requests: the times of the write-timeout cuts in ms, sorted,
/// and how many answers it wrote whole into the socket buffers (then closed the idle
/// connection).
#[derive(Debug)]
struct Cuts {
    by_send_timeout: Vec<f64>,
    written_whole: usize,
}

/// Checks every slow request: the proxy's side of its connection is closed at `timeout` + 2 s;
/// an answer cut by the write timeout was cut within that, with a write-timeout error, and its
/// client did not get all of it; any other was written whole at once, without an error.
fn assert_cut(reads: &[SlowRead], logged: &HashMap<String, Logged>, timeout: Duration) -> Cuts {
    let bound = ms(timeout + CUT_SLACK);
    let mut cuts = Cuts {
        by_send_timeout: Vec::new(),
        written_whole: 0,
    };
    for read in reads {
        let line = &logged[&read.path];
        assert!(
            !read.open_at_deadline,
            "{} ({:?}): the proxy still held the connection {bound:.0} ms after the request              ({line:?})",
            read.path,
            read.reader
        );
        if line.error.is_empty() {
            assert!(
                line.ms <= 1000.0 && line.status == 200,
                "{} ({:?}) ended without an error after {:.0} ms: {line:?}",
                read.path,
                read.reader,
                line.ms
            );
            cuts.written_whole += 1;
            continue;
        }
        assert!(
            line.error.contains("WriteTimedout"),
            "{} ({:?}) ended without a write timeout: {line:?}",
            read.path,
            read.reader
        );
        assert!(
            line.ms <= bound,
            "{} ({:?}) was cut after {:.0} ms, send_timeout is {timeout:?}",
            read.path,
            read.reader,
            line.ms
        );
        assert!(
            read.whole > 0 && read.received < read.whole && read.end.is_some(),
            "{} ({:?}) got {} of {} bytes, connection ended: {:?}",
            read.path,
            read.reader,
            read.received,
            read.whole,
            read.end
        );
        cuts.by_send_timeout.push(line.ms);
    }
    cuts.by_send_timeout.sort_by(f64::total_cmp);
    cuts
}

/// RELIABILITY-TESTS §6, test 16 (slow read), one of each: an answer larger than the socket
/// buffers, taken at 1 KiB a second or not at all, is cut by the write timeout within
/// `send_timeout` + 2 s while other requests are served.
#[tokio::test]
async fn a_slow_reader_and_one_that_never_reads_are_cut_at_send_timeout() {
    let len = from_env("DRAWBRIDGE_SLOW_READ_BYTES", 16 * 1024 * 1024) as usize;
    let send = Duration::from_secs(from_env("DRAWBRIDGE_SLOW_READ_SEND_SECS", 2));
    let site = Site::start_with(
        "a_slow_reader_and_one_that_never_reads_are_cut_at_send_timeout",
        |b| b.limit("send_timeout", format!("{}s", send.as_secs())),
    )
    .await;
    let addr = site.edge.listen_addr();
    let mut clients = Vec::new();
    for (i, reader) in [Reader::Trickle, Reader::Never].into_iter().enumerate() {
        let path = format!("/big/{len}/single-{i}");
        clients.push(tokio::spawn(slow_client(
            addr,
            std::net::Ipv4Addr::LOCALHOST,
            path,
            len,
            reader,
            send + CUT_SLACK,
        )));
    }
    // Meanwhile, other requests are served.
    let started = Instant::now();
    while started.elapsed() < send + CUT_SLACK {
        assert_eq!(site.edge.get("/beside").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reads = Vec::new();
    for client in clients {
        reads.push(client.await.expect("a slow client does not panic"));
    }
    let logged = wait_logged(&site, &reads, Duration::from_secs(5)).await;
    for read in &reads {
        eprintln!(
            "slow read ({:?}): {} of {} bytes received; proxy: {:?}",
            read.reader, read.received, read.whole, logged[&read.path]
        );
    }
    let cuts = assert_cut(&reads, &logged, send);
    assert_eq!(
        cuts.by_send_timeout.len(),
        reads.len(),
        "a {len}-byte answer fit in the socket buffers: {cuts:?}"
    );
    assert_eq!(site.edge.get("/after").await.status(), 200);
}

/// RELIABILITY-TESTS §6, test 16 (slow read) at volume: every slow connection is closed by the
/// proxy within the timeout + 2 s, legitimate requests keep 100 % success and their p99, and the
/// proxy's RSS stays within 64 MiB of its baseline.
#[tokio::test]
async fn many_slow_readers_are_cut_at_send_timeout_while_legitimate_traffic_is_served() {
    let connections = from_env("DRAWBRIDGE_SLOW_READ_CONNECTIONS", 20) as usize;
    let len = from_env("DRAWBRIDGE_SLOW_READ_BYTES", 16 * 1024 * 1024) as usize;
    let send = Duration::from_secs(from_env("DRAWBRIDGE_SLOW_READ_SEND_SECS", 2));
    let connect_rate = from_env("DRAWBRIDGE_SLOW_READ_CONNECT_RATE", 20).max(1);
    let rate = legitimate_rate();
    let site = Site::start_with(
        "many_slow_readers_are_cut_at_send_timeout_while_legitimate_traffic_is_served",
        |b| {
            let secs = format!("{}s", send.as_secs());
            b.limit("send_timeout", secs.as_str())
                .limit("keepalive_timeout", secs.as_str())
                .limit("max_connections", (connections + 10_000) as i64)
                .limit("max_connections_per_client", 10_000)
        },
    )
    .await;
    let addr = site.edge.listen_addr();
    let pid = site.edge.pid();
    let url = site.edge.url("/legit");
    let always = Arc::new(AtomicBool::new(true));
    let baseline = legitimate_load(&url, rate, always.clone(), Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);

    // The slow clients, half of each kind, spread over 200 loopback addresses and started at
    // `connect_rate` a second (each fills its socket buffers at once, megabytes through the
    // proxy), with the legitimate load and memory samples from the first to the last cut.
    let deadline = send + CUT_SLACK;
    let spread = Duration::from_secs_f64(connections as f64 / connect_rate as f64);
    let load = {
        let url = url.clone();
        let most = spread + deadline;
        tokio::spawn(async move { legitimate_load(&url, rate, always, most).await })
    };
    let loading = Arc::new(AtomicBool::new(true));
    let sampler = {
        let loading = loading.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while loading.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let mut clients = Vec::new();
    let mut starts = tokio::time::interval(Duration::from_secs(1) / connect_rate as u32);
    for i in 0..connections {
        starts.tick().await;
        let reader = if i % 2 == 0 {
            Reader::Trickle
        } else {
            Reader::Never
        };
        let path = format!("/big/{len}/many-{i}");
        // A loopback address of its own: a client port used again soon after from the same
        // address meets the proxy's side of the closed connection before it is gone.
        let from = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, 1 + (i % 250) as u8);
        clients.push(tokio::spawn(slow_client(
            addr, from, path, len, reader, deadline,
        )));
    }
    let served = load.await.expect("the legitimate load does not panic");
    let mut reads = Vec::new();
    for client in clients {
        reads.push(client.await.expect("a slow client does not panic"));
    }
    loading.store(false, Ordering::Relaxed);
    let rss_peak = sampler.await.expect("the sampler does not panic");
    let logged = wait_logged(&site, &reads, Duration::from_secs(5)).await;
    let statuses: Vec<u16> = reads.iter().map(|r| logged[&r.path].status).collect();
    let cuts = assert_cut(&reads, &logged, send);
    let rss_after = rss_kib(pid);
    let by_send = &cuts.by_send_timeout;
    let at = |i: usize| by_send.get(i).copied().unwrap_or(f64::NAN);
    eprintln!(
        "slow readers: {connections} connections ({connect_rate} a second) asking {len} bytes \
         each (half at 1 KiB/s, half not reading), send_timeout and keepalive_timeout {send:?}: {} cut by send_timeout \
         after {:.0}..{:.0} ms (median {:.0}), {} written whole then closed idle, every proxy \
         side closed {:?} after its request; statuses {:?}; legitimate {}/{} ok at {rate}/s, \
         p50 {:.1} ms, p99 {:.1} ms (baseline p99 {:.1} ms); proxy RSS {} KiB before, {} KiB \
         at the peak, {} KiB after",
        by_send.len(),
        at(0),
        at(by_send.len().saturating_sub(1)),
        at(by_send.len() / 2),
        cuts.written_whole,
        send + CUT_SLACK,
        statuses.iter().collect::<std::collections::BTreeSet<_>>(),
        served.ok,
        served.sent,
        ms(served.p50),
        ms(served.p99),
        ms(baseline.p99),
        rss_before,
        rss_peak,
        rss_after,
    );
    served.assert_unhurt(&baseline, 3, slowest_allowed());
    assert!(
        rss_peak <= rss_before + 64 * 1024,
        "the proxy's RSS went from {rss_before} KiB to {rss_peak} KiB"
    );
}
