//! What one client may hold of the proxy: a request header trickled past `header_timeout` is
//! cut however slowly its bytes come, connections over `max_connections` and
//! `max_connections_per_client` are closed at once while the admin listener answers, a
//! kept-alive connection waits at most `keepalive_timeout` for its next request, requests over
//! the size limits get 431, 414 or 413 at once, and a body slower than `body_min_rate` gets 408.
//! Legitimate slow parts (a header within its deadline, a slow body within the grace, a
//! 100-continue upload) pass.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drawbridge_tests::proxy::Site;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `header_timeout` of the proxies in these tests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Slack for a cut: the proxy's timer and this machine's scheduling.
const CUT_SLACK: Duration = Duration::from_millis(1500);

/// Reads until the proxy closes the connection (end of file or reset); returns when, or `None`
/// if it is still open after `within`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok()
}

/// Connects to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    socket
        .connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"))
}

/// Sends a whole GET on `stream` and reads the status of the answer.
async fn get_status(stream: &mut TcpStream, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: limits.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_status(stream).await
}

/// Reads an answer's status line (and whatever came with it).
async fn read_status(stream: &mut TcpStream) -> u16 {
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// Writes `bytes` one at a time, `gap` apart; stops at the first failed write.
async fn trickle(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8], gap: Duration) {
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test]
async fn request_headers_trickled_past_the_deadline_are_cut_while_others_are_served() {
    let site = Site::start_with(
        "request_headers_trickled_past_the_deadline_are_cut_while_others_are_served",
        |b| b.limit("header_timeout", "2s"),
    )
    .await;
    let addr = site.edge.listen_addr();
    let header: &'static [u8] = b"GET /slowloris HTTP/1.1\r\nHost: limits.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut attackers = Vec::new();
    for i in 0..20 {
        attackers.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let started = Instant::now();
            let (mut reader, mut writer) = stream.into_split();
            // Half of them send a byte every 100 ms (the header would take 10 s), the others
            // nothing at all; both keep their side open.
            let keep_writing = async move {
                if i % 2 == 0 {
                    trickle(&mut writer, header, Duration::from_millis(100)).await;
                }
                std::future::pending::<()>().await;
                drop(writer);
            };
            tokio::select! {
                closed = closed_within(&mut reader, HEADER_TIMEOUT + CUT_SLACK * 2) => {
                    closed.map(|at| at - started)
                }
                () = keep_writing => None,
            }
        }));
    }
    // Meanwhile, whole requests are served.
    for _ in 0..10 {
        assert_eq!(site.edge.get("/served").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for (i, attacker) in attackers.into_iter().enumerate() {
        let after = attacker
            .await
            .expect("the attacker task does not panic")
            .unwrap_or_else(|| panic!("slow connection {i} is still open after the deadline"));
        assert!(
            after >= HEADER_TIMEOUT - Duration::from_millis(100) && after <= HEADER_TIMEOUT + CUT_SLACK,
            "slow connection {i} was closed after {after:?}, not at header_timeout ({HEADER_TIMEOUT:?})"
        );
    }
    assert_eq!(
        site.ui.requests_to("/slowloris"),
        0,
        "no trickled request reached the upstream"
    );
    let metrics = site.edge.metrics().await;
    let cut = metrics.value(
        "drawbridge_refused_requests_total",
        &[("reason", "header_timeout")],
    );
    assert!(cut >= 20.0, "{cut} header timeouts counted, 20 expected");
    let log = site.edge.log();
    assert!(
        log.contains("refused: request header not complete within limits.header_timeout"),
        "the cut is logged:\n{}",
        site.edge.log_tail()
    );
    // Once a second at most: 20 cuts within about a second make one or two lines, and the HTTP
    // code logs nothing of its own about them.
    let lines = log.matches("refused: request header not complete").count();
    assert!(lines <= 3, "{lines} log lines for 20 cuts");
    assert!(!log.contains("Fail to proxy"), "{}", site.edge.log_tail());
}

#[tokio::test]
async fn slow_parts_within_their_limits_pass() {
    let site = Site::start_with("slow_parts_within_their_limits_pass", |b| {
        b.limit("header_timeout", "2s")
    })
    .await;
    let addr = site.edge.listen_addr();

    // A header that takes 1.2 s, then a second request on the same connection after an idle
    // time longer than header_timeout: each request has its own deadline.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    trickle(
        &mut stream,
        b"GET /first HTTP/1.1\r\nHost: limits.test\r\n\r\n",
        Duration::from_millis(30),
    )
    .await;
    assert_eq!(
        read_status(&mut stream).await,
        200,
        "a slow but timely header"
    );
    tokio::time::sleep(HEADER_TIMEOUT + Duration::from_millis(500)).await;
    assert_eq!(get_status(&mut stream, "/second").await, 200, "kept alive");

    // A body trickled over 3 s is not held to the header deadline.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: limits.test\r\nContent-Length: 30\r\n\
              Content-Type: application/json\r\n\r\n",
        )
        .await
        .expect("write the header");
    trickle(&mut stream, &[b'x'; 30], Duration::from_millis(100)).await;
    assert_eq!(read_status(&mut stream).await, 200, "a slow body");

    // An upload that waits for 100 Continue, then sends its body slowly.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: limits.test\r\nContent-Length: 30\r\n\
              Expect: 100-continue\r\nContent-Type: application/json\r\n\r\n",
        )
        .await
        .expect("write the header");
    let mut interim = [0u8; 256];
    if let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut interim)).await
    {
        let interim = String::from_utf8_lossy(&interim[..n]);
        assert!(
            interim.starts_with("HTTP/1.1 100"),
            "before the body: {interim:?}"
        );
    }
    trickle(&mut stream, &[b'y'; 30], Duration::from_millis(100)).await;
    let status = read_status(&mut stream).await;
    assert_eq!(
        status, 200,
        "a 100-continue upload slower than header_timeout"
    );
    assert_eq!(site.api.requests_to("/api/upload"), 2);
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_at_once_and_the_admin_listener_answers() {
    let site = Site::start_with(
        "connections_over_the_caps_are_closed_at_once_and_the_admin_listener_answers",
        |b| {
            b.limit("header_timeout", "30s")
                .limit("max_connections", 12)
                .limit("max_connections_per_client", 4)
        },
    )
    .await;
    let addr = site.edge.listen_addr();

    // The per-client cap: a fifth connection from 127.0.0.1 is closed, another address is not.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Connections are admitted as the proxy gets to them: once these four are, the fifth is the
    // one over the cap.
    site.edge
        .wait_metric("drawbridge_client_connections", &[], 4.0)
        .await;
    let mut fifth = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    closed_within(&mut fifth, Duration::from_secs(1))
        .await
        .expect("the fifth connection of one client is closed within 1 s");
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    assert_eq!(
        get_status(&mut other, "/other-client").await,
        200,
        "another client is served"
    );
    drop(other);
    // Its place is given back before the proxy's cap is filled.
    site.edge
        .wait_metric("drawbridge_client_connections", &[], 4.0)
        .await;

    // The proxy's cap: with 12 open, the next one is closed whoever it comes from.
    for from in 3..=10u8 {
        held.push(connect_from([127, 0, 0, from], addr).await);
    }
    // Each admitted connection proves it is held by being served.
    for stream in held.iter_mut().skip(4) {
        assert_eq!(get_status(stream, "/held").await, 200);
    }
    let mut over = connect_from([127, 0, 0, 11], addr).await;
    closed_within(&mut over, Duration::from_secs(1))
        .await
        .expect("the connection over max_connections is closed within 1 s");

    let healthz = Instant::now();
    let answer = site
        .edge
        .client()
        .get(site.edge.admin_url("/healthz"))
        .send()
        .await
        .expect("the admin listener answers while the public one is full");
    assert_eq!(answer.status(), 200);
    assert!(
        healthz.elapsed() < Duration::from_millis(500),
        "/healthz took {:?}",
        healthz.elapsed()
    );

    let metrics = site.edge.metrics().await;
    for reason in ["max_connections", "max_connections_per_client"] {
        assert!(
            metrics.value("drawbridge_refused_requests_total", &[("reason", reason)]) >= 1.0,
            "{reason} is counted"
        );
    }

    // Once the connections close, new clients are served at once.
    drop(held);
    let freed = Instant::now();
    let mut status = 0;
    while freed.elapsed() < Duration::from_secs(1) && status != 200 {
        let mut stream = connect_from([127, 0, 0, 12], addr).await;
        status = tokio::time::timeout(
            Duration::from_millis(500),
            get_status(&mut stream, "/after"),
        )
        .await
        .unwrap_or(0);
    }
    assert_eq!(status, 200, "served within 1 s of the flood's end");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_keepalive_timeout() {
    let site = Site::start_with(
        "an_idle_kept_alive_connection_is_closed_after_keepalive_timeout",
        |b| b.limit("keepalive_timeout", "1s"),
    )
    .await;
    let mut stream = TcpStream::connect(site.edge.listen_addr())
        .await
        .expect("connect");
    assert_eq!(get_status(&mut stream, "/once").await, 200);
    let answered = Instant::now();
    closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("the idle connection is closed");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle <= Duration::from_millis(1000) + CUT_SLACK,
        "closed after {idle:?} idle, keepalive_timeout is 1 s"
    );
}

/// Sends `head` (a request line and header lines, without the blank line) and an announced
/// body of `body` bytes sent at once; returns the status and whether the proxy closed the
/// connection after it.
async fn refused_at_once(addr: SocketAddr, head: &str, body: usize) -> (u16, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{head}\r\n\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'z', body));
    // The proxy may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(&request).await;
    let started = Instant::now();
    let status = read_status(&mut stream).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the refusal took {:?}",
        started.elapsed()
    );
    let closed = closed_within(&mut stream, Duration::from_secs(2))
        .await
        .is_some();
    (status, closed)
}

#[tokio::test]
async fn requests_over_the_size_limits_get_431_414_and_413_and_reach_nobody() {
    let site = Site::start_with(
        "requests_over_the_size_limits_get_431_414_and_413_and_reach_nobody",
        |b| {
            b.limit("max_header_bytes", 32 * 1024)
                .limit("max_headers", 100)
                .limit("max_uri_bytes", 8 * 1024)
                .limit("max_body_bytes", 1024 * 1024)
        },
    )
    .await;
    let addr = site.edge.listen_addr();
    let host = "Host: limits.test";

    let big_header = format!(
        "GET /big-header HTTP/1.1\r\n{host}\r\nX-Big: {}",
        "b".repeat(64 * 1024)
    );
    assert_eq!(
        refused_at_once(addr, &big_header, 0).await,
        (431, true),
        "a 64 KiB header"
    );

    let many: String = (0..150).map(|i| format!("\r\nX-Line-{i}: {i}")).collect();
    let many_headers = format!("GET /many-headers HTTP/1.1\r\n{host}{many}");
    assert_eq!(
        refused_at_once(addr, &many_headers, 0).await,
        (431, true),
        "150 header lines"
    );

    let long_uri = format!("GET /long-uri?{} HTTP/1.1\r\n{host}", "q".repeat(16 * 1024));
    assert_eq!(
        refused_at_once(addr, &long_uri, 0).await,
        (414, true),
        "a 16 KiB URI"
    );

    let announced = format!(
        "POST /api/announced HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\nContent-Length: {}",
        2 * 1024 * 1024
    );
    let (status, closed) = refused_at_once(addr, &announced, 64 * 1024).await;
    assert_eq!((status, closed), (413, true), "an announced 2 MiB body");

    // A chunked body is counted as it passes: cut past 1 MiB.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!(
                "POST /api/chunked HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write the header");
    let chunk = format!("10000\r\n{}\r\n", "c".repeat(0x10000));
    for _ in 0..32 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    assert_eq!(read_status(&mut stream).await, 413, "a 2 MiB chunked body");

    for path in [
        "/big-header",
        "/many-headers",
        "/long-uri",
        "/api/announced",
    ] {
        assert_eq!(
            site.ui.requests_to(path) + site.api.requests_to(path),
            0,
            "{path} reached an upstream"
        );
    }
    let metrics = site.edge.metrics().await;
    for (reason, least) in [
        ("header_size", 1.0),
        ("header_count", 1.0),
        ("uri_length", 1.0),
        ("body_size", 2.0),
    ] {
        let counted = metrics.value("drawbridge_refused_requests_total", &[("reason", reason)]);
        assert!(counted >= least, "{reason}: {counted} counted");
    }
    // The proxy still serves.
    assert_eq!(site.edge.get("/after").await.status(), 200);
}

#[tokio::test]
async fn a_body_slower_than_body_min_rate_is_cut_with_408() {
    let site = Site::start_with("a_body_slower_than_body_min_rate_is_cut_with_408", |b| {
        let mut b = b.limit("body_min_rate", 100);
        // The upstream waits for the body: its read timeout must not end the request first.
        for pool in &mut b.pools {
            pool.read_timeout = "60s".to_string();
        }
        b
    })
    .await;
    let mut stream = TcpStream::connect(site.edge.listen_addr())
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /api/trickle HTTP/1.1\r\nHost: limits.test\r\nContent-Type: application/json\r\n\
              Content-Length: 100000\r\n\r\n",
        )
        .await
        .expect("write the header");
    let started = Instant::now();
    // 20 bytes a second against 100 after a 10 s grace, both from the first byte of the body:
    // 20 t falls below 100 (t - 10) after 12.5 s.
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        trickle(&mut writer, &[b'w'; 1000], Duration::from_millis(50)).await;
        writer
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), reader.read(&mut answer))
        .await
        .expect("an answer within 20 s")
        .expect("read the answer");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(
        took >= Duration::from_millis(12_400) && took < Duration::from_millis(14_500),
        "cut after {took:?}, 12.5 s expected"
    );
    writing.abort();
    let metrics = site.edge.metrics().await;
    assert_eq!(
        metrics.value(
            "drawbridge_refused_requests_total",
            &[("reason", "body_pace")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_request_the_parser_cannot_read_is_counted_and_logged() {
    let site = Site::start("a_request_the_parser_cannot_read_is_counted_and_logged").await;
    let mut stream = TcpStream::connect(site.edge.listen_addr())
        .await
        .expect("connect");
    // A space in a header name: no parser may read it.
    stream
        .write_all(b"GET /unreadable HTTP/1.1\r\nHost: limits.test\r\nX Bad: 1\r\n\r\n")
        .await
        .expect("write the request");
    // The proxy's own 400, whole, then the connection closed; nothing of the parser's bare one
    // (no body, `Server: Pingora`, a date of 1994).
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the connection closed within 10 s")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no whole answer: {answer:?}"));
    assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{answer}"
    );
    assert!(
        !head.contains("pingora") && !head.contains("1994"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_str(body).expect("a problem+json body");
    assert_eq!(problem["status"], 400);
    assert_eq!(problem["title"], "bad request");
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "bad_request")],
            1.0,
        )
        .await;
    assert!(
        site.edge
            .log()
            .contains("refused: a request the HTTP/1 parser could not read"),
        "{}",
        site.edge.log_tail()
    );
    assert_eq!(site.ui.requests_to("/unreadable"), 0);
    // A request it can read is not counted.
    assert_eq!(site.edge.get("/readable").await.status(), 200);
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "bad_request")],
            1.0,
        )
        .await;
}
