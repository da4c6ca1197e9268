//! HTTP/2 downstream, over TLS by ALPN and on the plain listener with prior knowledge (h2c,
//! `server.h2c`): every answer HTTP/1.1 clients get, in the same form (routing, the maintenance
//! page and problem+json, read-only, the bypass by token and by cookie,
//! `/.well-known/maintenance`, 502 in its route's form); requests in flight finish across a
//! switch and through SIGTERM (GOAWAY, then the streams in flight end); the HTTP/2 limits.

use std::time::Duration;

use drawbridge_core::bypass::{BypassKey, Keyring};
use drawbridge_tests::proxy::{h2c_test_client, header, now_unix, Site, TlsCerts, SLOW_PATH_DELAY};
use drawbridge_tests::raw_http::RawConnection;
use drawbridge_tests::tls_ca::TestCa;
use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode, Version};

const ENV: &str = "e2e";
const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";
const HOST: &str = "a.test";

fn bypass_token() -> String {
    let keyring = Keyring::new(vec![
        BypassKey::new("k1", SECRET.as_bytes()).expect("a valid test key")
    ])
    .expect("one key is a valid keyring");
    keyring.sign(ENV, now_unix(), Duration::from_secs(600), Some("test"))
}

/// A site whose proxy serves HTTP/2 on both listeners: TLS (certificate for [`HOST`]) and plain
/// with `server.h2c`.
async fn h2_site(test: &str) -> (Site, TlsCerts) {
    Site::start_tls(test, HOST, |b| {
        b.bypass_key(ENV, "k1", SECRET)
            .setting("server", "h2c", true)
    })
    .await
}

/// One way of speaking HTTP/2 to the proxy.
struct H2Client {
    name: &'static str,
    client: reqwest::Client,
    base: String,
}

impl H2Client {
    /// Over TLS by ALPN, and h2c on the plain listener.
    fn both(site: &Site, ca: &TestCa) -> [H2Client; 2] {
        let tls = site.edge.tls_url(HOST, "");
        [
            H2Client {
                name: "h2 over TLS",
                client: site.edge.tls_client(&ca.cert, &[HOST]),
                base: tls,
            },
            H2Client {
                name: "h2c",
                client: h2c_test_client(),
                base: site.edge.url(""),
            },
        ]
    }

    /// Sends `method path` with `headers`; the answer must come over HTTP/2.
    async fn send(
        &self,
        site: &Site,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let answer = site.edge.send(request).await;
        assert_eq!(answer.version(), Version::HTTP_2, "{}: {path}", self.name);
        answer
    }

    async fn get(&self, site: &Site, path: &str) -> reqwest::Response {
        self.send(site, Method::GET, path, &[]).await
    }
}

/// Asserts a maintenance answer: 503, planned, `Retry-After`, and the body's form.
async fn assert_maintenance(answer: reqwest::Response, json: bool, what: &str) {
    assert_eq!(answer.status(), 503, "{what}");
    assert_eq!(
        header(&answer, "x-drawbridge-outage").as_deref(),
        Some("planned"),
        "{what}"
    );
    assert!(header(&answer, "retry-after").is_some(), "{what}");
    let kind = header(&answer, "content-type").unwrap_or_default();
    let body = answer.text().await.expect("a whole body");
    if json {
        assert!(
            kind.starts_with("application/problem+json"),
            "{what}: {kind}"
        );
        let problem: serde_json::Value = serde_json::from_str(&body).expect("problem+json");
        assert_eq!(problem["status"], 503, "{what}: {problem}");
        assert_eq!(problem["detail"], "Back soon", "{what}: {problem}");
    } else {
        assert!(kind.starts_with("text/html"), "{what}: {kind}");
        assert!(body.contains("Back soon"), "{what}");
    }
}

/// Normal, maintenance (page and problem+json), the bypass by header and by cookie,
/// `/.well-known/maintenance`, read-only and an upstream failure, each over HTTP/2 by ALPN and
/// by prior knowledge, with what reaches the upstream cleaned as for HTTP/1.1. The plain
/// listener still serves HTTP/1.1 beside h2c.
#[tokio::test]
async fn every_answer_is_the_same_over_http2() {
    let test = "every_answer_is_the_same_over_http2";
    let (mut site, certs) = h2_site(test).await;
    let ca = &certs.ca;
    let clients = H2Client::both(&site, ca);

    for c in &clients {
        let page = c
            .send(
                &site,
                Method::GET,
                "/page",
                &[("x-drawbridge-outage", "forged".into())],
            )
            .await;
        assert_eq!(page.status(), 200, "{}", c.name);
        assert_eq!(header(&page, "x-upstream").as_deref(), Some("ui"));
        let seen = site
            .ui
            .last_request()
            .expect("the upstream saw the request");
        assert!(seen.header("x-drawbridge-outage").is_none(), "{}", c.name);
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "{}",
            c.name
        );
        assert!(
            seen.header("host").is_some(),
            "{}: no Host upstream",
            c.name
        );
        let api = c.get(&site, "/api/orders").await;
        assert_eq!(header(&api, "x-upstream").as_deref(), Some("api"));
    }
    // HTTP/1.1 on the plain listener beside h2c.
    let h1 = site.edge.get("/page").await;
    assert_eq!(
        (h1.status(), h1.version()),
        (StatusCode::OK, Version::HTTP_11)
    );

    site.put_gate(r#"{"mode":"maintenance","message":"Back soon"}"#)
        .await;
    let before = site.ui.proxied_requests() + site.api.proxied_requests();
    for c in &clients {
        assert_maintenance(c.get(&site, "/page").await, false, c.name).await;
        assert_maintenance(c.get(&site, "/api/orders").await, true, c.name).await;
        let known = c.get(&site, "/.well-known/maintenance").await;
        assert_eq!(known.status(), 200, "{}", c.name);
        let state: serde_json::Value =
            serde_json::from_str(&known.text().await.expect("a body")).expect("JSON");
        assert_eq!(state["mode"], "maintenance", "{}: {state}", c.name);
    }
    assert_eq!(
        site.ui.proxied_requests() + site.api.proxied_requests(),
        before,
        "a request reached an upstream through the closed gate"
    );
    for c in &clients {
        let token = bypass_token();
        for (via, headers) in [
            ("header", vec![("x-drawbridge-bypass", token.clone())]),
            (
                "cookie",
                vec![("cookie", format!("drawbridge_bypass={token}"))],
            ),
        ] {
            let passed = c.send(&site, Method::GET, "/api/orders", &headers).await;
            assert_eq!(passed.status(), 200, "{} by {via}", c.name);
            assert_eq!(
                header(&passed, "x-drawbridge-bypassed").as_deref(),
                Some("token"),
                "{} by {via}",
                c.name
            );
            let seen = site.api.last_request().expect("the upstream saw it");
            assert!(seen.header("x-drawbridge-bypass").is_none(), "{}", c.name);
            assert!(
                !seen.header("cookie").unwrap_or_default().contains(&token),
                "{}: the token reached the upstream",
                c.name
            );
        }
    }

    site.put_gate(r#"{"mode":"read_only","message":"Back soon"}"#)
        .await;
    for c in &clients {
        assert_eq!(
            c.get(&site, "/api/orders").await.status(),
            200,
            "{}",
            c.name
        );
        let write = c.send(&site, Method::POST, "/api/orders", &[]).await;
        assert_maintenance(write, true, c.name).await;
    }

    site.delete_gate().await;
    site.api.stop();
    for c in &clients {
        let failed = c.get(&site, "/api/orders").await;
        assert_eq!(failed.status(), 502, "{}", c.name);
        assert!(
            header(&failed, "x-drawbridge-outage").is_none(),
            "{}",
            c.name
        );
        let kind = header(&failed, "content-type").unwrap_or_default();
        assert!(kind.starts_with("application/problem+json"), "{kind}");
    }
}

/// A slow request in flight on an HTTP/2 connection finishes with 200 when the gate closes
/// under it; another one in flight when SIGTERM comes finishes too (the connection is told
/// GOAWAY and ends after it), and the proxy exits 0.
#[tokio::test]
async fn http2_requests_in_flight_finish_across_a_switch_and_sigterm() {
    let test = "http2_requests_in_flight_finish";
    let (mut site, certs) = h2_site(test).await;
    let ca = &certs.ca;
    let [tls, h2c] = H2Client::both(&site, ca);

    let over_tls = site
        .start_slow_at(
            &tls.client,
            tls.base.clone() + "/slow/report",
            "/slow/report",
        )
        .await;
    let cleartext = site
        .start_slow_at(
            &h2c.client,
            h2c.base.clone() + "/slow/export",
            "/slow/export",
        )
        .await;
    site.put_gate(r#"{"mode":"maintenance","message":"Back soon"}"#)
        .await;
    assert_maintenance(tls.get(&site, "/page").await, false, tls.name).await;
    for slow in [over_tls, cleartext] {
        let answer = site.slow_answer(slow).await;
        assert_eq!(
            (answer.status(), answer.version()),
            (StatusCode::OK, Version::HTTP_2)
        );
    }

    site.delete_gate().await;
    let over_tls = site
        .start_slow_at(&tls.client, tls.base.clone() + "/slow/again", "/slow/again")
        .await;
    let started = std::time::Instant::now();
    site.edge.signal(Signal::SIGTERM);
    let answer = site.slow_answer(over_tls).await;
    assert_eq!(answer.status(), 200, "{}", site.edge.log_tail());
    assert!(
        answer.text().await.is_ok(),
        "the body of the request in flight was cut"
    );
    assert!(started.elapsed() < SLOW_PATH_DELAY + Duration::from_secs(2));
    let exit = site
        .edge
        .wait_exit(Duration::from_secs(10))
        .expect("drawbridge exits after SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", site.edge.log_tail());
}

/// `limits.max_header_bytes` holds the decoded header list of an HTTP/2 request (the client is
/// answered 431 by the h2 layer), and `limits.h2_max_streams` is what the proxy announces: a
/// client with more requests than that at once queues them and every one is served.
#[tokio::test]
async fn http2_requests_are_held_to_the_limits() {
    let site = Site::start_with("http2_limits", |builder| {
        builder
            .setting("server", "h2c", true)
            .limit("max_header_bytes", 4096)
            .limit("h2_max_streams", 2)
    })
    .await;
    let client = h2c_test_client();
    let big = client
        .get(site.edge.url("/page"))
        .header("x-big", "a".repeat(8 * 1024))
        .send()
        .await;
    match big {
        Ok(answer) => assert_eq!(answer.status(), 431),
        Err(e) => panic!("a header over the limit was not answered 431: {e:?}"),
    }
    assert_eq!(
        site.ui.requests_to("/page"),
        0,
        "an oversize header was proxied"
    );

    let requests: Vec<_> = (0..6)
        .map(|i| {
            let url = site.edge.url(&format!("/slow/{i}"));
            tokio::spawn(client.get(url).send())
        })
        .collect();
    for request in requests {
        let answer = request.await.expect("no panic").expect("served");
        assert_eq!(answer.status(), 200);
    }
}

/// A client that opens an HTTP/2 connection (TLS with ALPN h2, or a plain one on an h2c
/// listener) and never sends its preface is closed at `limits.header_timeout`, counted as a
/// header timeout; one that sends it is served.
#[tokio::test]
async fn an_http2_connection_without_its_preface_is_closed_at_the_header_deadline() {
    let (site, certs) = Site::start_tls("http2_preface_deadline", HOST, |b| {
        b.setting("server", "h2c", true)
            .limit("header_timeout", "2s")
    })
    .await;
    let ca = &certs.ca;
    let started = std::time::Instant::now();
    let silent_tls = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            "h2",
            "-servername",
            HOST,
            "-connect",
        ])
        .arg(site.edge.tls_addr().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl runs");
    let silent_plain = tokio::spawn({
        let addr = site.edge.listen_addr();
        async move {
            use tokio::io::AsyncReadExt;
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut byte = [0u8; 1];
            // The first byte of a partial preface, then nothing.
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"P")
                .await
                .expect("write");
            let _ = stream.read(&mut byte).await;
            started.elapsed()
        }
    });
    let tls_closed = tokio::time::timeout(Duration::from_secs(10), silent_tls.wait_with_output())
        .await
        .expect("the silent TLS connection is closed within 10 s")
        .expect("openssl ends");
    let tls_after = started.elapsed();
    let plain_after = tokio::time::timeout(Duration::from_secs(10), silent_plain)
        .await
        .expect("the silent h2c connection is closed within 10 s")
        .expect("no panic");
    for (what, after) in [("TLS h2", tls_after), ("h2c", plain_after)] {
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(4)).contains(&after),
            "{what}: closed after {after:?} ({tls_closed:?})"
        );
    }
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "header_timeout")],
            2.0,
        )
        .await;
    // A short HTTP/1.0 request (22 bytes, less than the HTTP/2 preface) on the h2c listener is
    // answered at once, as a load balancer's health check must be.
    let asked = std::time::Instant::now();
    let mut short = RawConnection::connect(site.edge.listen_addr()).await;
    short.send("GET /page HTTP/1.0\r\n\r\n").await;
    let answer = short.read_answer("a short HTTP/1.0 request").await;
    assert_eq!(answer.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // Clients that speak keep being served after the deadline.
    let client = site.edge.tls_client(&ca.cert, &[HOST]);
    let answer = site
        .edge
        .send(client.get(site.edge.tls_url(HOST, "/page")))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = site
        .edge
        .send(client.get(site.edge.tls_url(HOST, "/page")))
        .await;
    assert_eq!(
        (answer.version(), again.status()),
        (Version::HTTP_2, StatusCode::OK)
    );
}

/// Clients over TLS (HTTP/2 and HTTP/1.1) and in plain (h2c and HTTP/1.1) send at a steady rate
/// while the proxy is upgraded twice (a new process takes the listening sockets, the old one
/// drains and exits 0): every request is answered 200.
#[tokio::test]
async fn clients_of_every_protocol_see_no_error_through_graceful_upgrades() {
    let test = "upgrades_under_load";
    let (mut site, certs) = h2_site(test).await;
    let ca = &certs.ca;
    let loads = [
        (
            "h2 over TLS",
            site.edge.tls_client(&ca.cert, &[HOST]),
            site.edge.tls_url(HOST, "/page"),
        ),
        (
            "HTTP/1.1 over TLS",
            site.edge.tls_client_http1(&ca.cert, &[HOST]),
            site.edge.tls_url(HOST, "/page"),
        ),
        ("h2c", h2c_test_client(), site.edge.url("/page")),
        (
            "HTTP/1.1",
            site.edge.client().clone(),
            site.edge.url("/page"),
        ),
    ];
    let sending = std::sync::atomic::AtomicBool::new(true);
    let served = futures_util::future::join_all(loads.iter().map(|(_, client, url)| {
        drawbridge_tests::load::open_loop(client, url, 40, Duration::from_secs(60), Some(&sending))
    }));
    let upgrades = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for generation in 1..=2 {
            let mut old = site.edge.upgrade(generation).await;
            let drained = tokio::task::spawn_blocking(move || {
                let exit = old.wait_timeout(Duration::from_secs(15));
                (exit, old.log_tail(20))
            })
            .await
            .expect("no panic");
            match drained {
                (Some(exit), _) if exit.success() => {}
                (exit, log) => panic!("the old process ended with {exit:?}\n{log}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
    };
    let (served, ()) = tokio::join!(served, upgrades);
    for ((name, _, _), served) in loads.iter().zip(&served) {
        println!(
            "{name}: {} / {} answered 200 through 2 upgrades, p99 {:?}",
            served.ok, served.sent, served.p99
        );
        assert!(served.sent > 40, "{name}: only {} sent", served.sent);
        assert_eq!(
            served.ok,
            served.sent,
            "{name}: failures through the upgrades: {:?}\n{}",
            served.failures,
            site.edge.log_tail()
        );
    }
}
