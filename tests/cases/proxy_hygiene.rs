//! What the upstream receives and what a failing upstream looks like to clients: the bypass
//! token never reaches the application (header or cookie, open gate or closed), the client
//! chain arrives whole in one `X-Forwarded-For` line, headers in Drawbridge's name and
//! client-written addresses are not passed on, an upstream that hangs or refuses gets 504 or 502
//! with a body in the route's form, `Retry-After` stays within a day, a value at the gate key
//! cannot forge a log line, and a short admin token is refused.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use drawbridge_core::bypass::{BypassKey, Keyring};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{
    header, now_unix, retry_after, run_drawbridge, test_client, Drawbridge, Route, Site,
};
use drawbridge_tests::raw_http::RawConnection;
use drawbridge_tests::upstream::{RecordedRequest, Upstream};

const ENV: &str = "e2e";
const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";
/// A client address outside every trusted network of these tests.
const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A valid bypass token for ten minutes.
fn token() -> String {
    Keyring::new(vec![
        BypassKey::new("k1", SECRET.as_bytes()).expect("a valid test key")
    ])
    .expect("one key is a valid keyring")
    .sign(ENV, now_unix(), Duration::from_secs(600), Some("test"))
}

/// The last request `upstream` received on `path`.
fn received(upstream: &Upstream, path: &str) -> RecordedRequest {
    let seen = upstream
        .last_request()
        .unwrap_or_else(|| panic!("{} received nothing", upstream.name()));
    assert_eq!(seen.path_and_query, path, "the last request upstream");
    seen
}

/// Sends `request` (a whole HTTP/1.1 request) on a connection of its own from 127.0.0.1 and
/// returns the status.
async fn send_raw(edge: &Drawbridge, request: &str, what: &str) -> u16 {
    let mut conn = RawConnection::connect(edge.listen_addr()).await;
    conn.send(request).await;
    conn.read_answer(what).await.status
}

/// The bypass cookie is cut out of what the upstream receives with the gate open and closed,
/// also from a second `Cookie` line, and with a token header beside it; the other cookies arrive
/// as sent and a line left empty is dropped.
#[tokio::test]
async fn the_bypass_cookie_never_reaches_the_upstream() {
    let site = Site::start_with("the_bypass_cookie_never_reaches_the_upstream", |b| {
        b.bypass_key(ENV, "k1", SECRET)
    })
    .await;
    let token = token();
    let client = test_client(Some(UNTRUSTED));

    // Open gate: nothing reads the token, and it still does not go upstream.
    let open = site
        .edge
        .send(client.get(site.edge.url("/open")).header(
            "cookie",
            format!("theme=dark; drawbridge_bypass={token}; lang=\"en GB\""),
        ))
        .await;
    assert_eq!(open.status(), 200);
    let seen = received(&site.ui, "/open");
    assert_eq!(
        seen.header_lines("cookie"),
        ["theme=dark; lang=\"en GB\""],
        "open gate"
    );

    let status = send_raw(
        &site.edge,
        &format!(
            "GET /open-lines HTTP/1.1\r\nHost: shop.test\r\nCookie: theme=dark\r\n\
             Cookie: drawbridge_bypass={token}\r\nCookie: a=1;drawbridge_bypass={token}\r\n\r\n"
        ),
        "two Cookie lines",
    )
    .await;
    assert_eq!(status, 200);
    let seen = received(&site.ui, "/open-lines");
    assert_eq!(
        seen.header_lines("cookie"),
        ["theme=dark", "a=1"],
        "several Cookie lines"
    );

    // Closed gate, the token in the header and in the cookie: the bypass works, neither arrives.
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let bypassed = site
        .edge
        .send(
            client
                .get(site.edge.url("/closed"))
                .header("x-drawbridge-bypass", &token)
                .header("cookie", format!("drawbridge_bypass={token}; theme=dark")),
        )
        .await;
    assert_eq!(bypassed.status(), 200, "a valid token passes");
    assert_eq!(
        header(&bypassed, "x-drawbridge-bypassed").as_deref(),
        Some("token")
    );
    let seen = received(&site.ui, "/closed");
    assert_eq!(seen.header("x-drawbridge-bypass"), None, "token header");
    assert_eq!(seen.header_lines("cookie"), ["theme=dark"], "closed gate");

    // Only the token cookie: the Cookie header is gone altogether.
    let only = site
        .edge
        .send(
            client
                .get(site.edge.url("/api/only-token"))
                .header("cookie", format!("drawbridge_bypass={token}")),
        )
        .await;
    assert_eq!(only.status(), 200);
    let seen = received(&site.api, "/api/only-token");
    assert!(seen.header_lines("cookie").is_empty(), "{:?}", seen.headers);
}

/// Two `X-Forwarded-For` lines from a trusted proxy: the client is resolved over both, the
/// upstream receives one line with the whole chain and the peer appended, `X-Real-IP` is the
/// resolved client, and the access log records the client and the peer.
#[tokio::test]
async fn forwarded_for_lines_arrive_joined_in_one_line() {
    let site = Site::start_with("forwarded_for_lines_arrive_joined_in_one_line", |b| {
        b.trusted_cidrs(&["198.51.100.0/24"])
            .trusted_proxies(&["127.0.0.1/32"])
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    // The load balancer's entry is in the second line: it is the one that lets the client pass.
    let status = send_raw(
        &site.edge,
        "GET /xff-joined HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-For: 198.51.100.7\r\nX-Real-IP: 203.0.113.66\r\n\r\n",
        "two X-Forwarded-For lines",
    )
    .await;
    assert_eq!(status, 200, "198.51.100.7 is trusted: a cidr bypass");
    let seen = received(&site.ui, "/xff-joined");
    assert_eq!(
        seen.header_lines("x-forwarded-for"),
        ["203.0.113.9, 198.51.100.7, 127.0.0.1"]
    );
    assert_eq!(seen.header_lines("x-real-ip"), ["198.51.100.7"]);

    let log = site.dir.join("drawbridge.stderr.log");
    let line = eventually(
        "the access-log line of /xff-joined",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            text.lines()
                .find(|l| l.contains(" GET /xff-joined "))
                .map(str::to_string)
                .ok_or_else(|| "no line yet".to_string())
        },
    )
    .await;
    assert!(
        line.contains("198.51.100.7 GET /xff-joined 200 "),
        "the resolved client: {line}"
    );
    assert!(line.contains(" peer=127.0.0.1 "), "the peer: {line}");
}

/// Client-sent `X-Drawbridge-*`, `X-Real-IP`, `Forwarded`, `True-Client-IP`, hop-by-hop headers
/// (also those `Connection` names) and `X-Forwarded-Proto`/`-Host` do not reach the upstream as
/// sent: they are dropped, or set by the proxy (`X-Real-IP`, `X-Forwarded-*`).
#[tokio::test]
async fn forged_headers_do_not_reach_the_upstream() {
    let site = Site::start("forged_headers_do_not_reach_the_upstream").await;
    let forged = [
        ("x-drawbridge-bypassed", "token"),
        ("x-drawbridge-outage", "planned"),
        ("x-drawbridge-bypass", "dbt1.k1.x.y"),
        ("x-drawbridge-role", "admin"),
        ("x-real-ip", "203.0.113.66"),
        ("forwarded", "for=203.0.113.66;proto=https"),
        ("true-client-ip", "203.0.113.66"),
        ("connection", "x-secret-hop"),
        ("x-secret-hop", "1"),
        ("proxy-connection", "keep-alive"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-scheme", "https"),
    ];
    for (path, upstream) in [("/forged", &site.ui), ("/api/forged", &site.api)] {
        let mut req = site.edge.request(reqwest::Method::GET, path);
        for (name, value) in forged {
            req = req.header(name, value);
        }
        let answer = site.edge.send(req).await;
        assert_eq!(answer.status(), 200, "{path}");
        let seen = received(upstream, path);
        for name in [
            "x-drawbridge-bypassed",
            "x-drawbridge-outage",
            "x-drawbridge-bypass",
            "x-drawbridge-role",
            "forwarded",
            "true-client-ip",
            "x-secret-hop",
            "proxy-connection",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
        ] {
            assert!(
                seen.header_lines(name).is_empty(),
                "{path}: {name} reached the upstream: {:?}",
                seen.headers
            );
        }
        assert_eq!(seen.header_lines("x-real-ip"), ["127.0.0.1"], "{path}");
        assert_eq!(seen.header_lines("x-forwarded-proto"), ["http"], "{path}");
        assert_eq!(
            seen.header_lines("x-forwarded-host"),
            [site.edge.listen_addr().to_string()],
            "{path}"
        );
        assert_eq!(
            seen.header_lines("x-forwarded-for"),
            ["127.0.0.1"],
            "{path}"
        );
    }
}

/// An upstream that does not answer within `read_timeout` gets 504: problem+json on the API
/// route, the page on a page route (problem+json there too for a client preferring JSON),
/// counted per pool with `status="504"`.
#[tokio::test]
async fn a_hanging_upstream_gets_504_with_a_body_in_the_route_form() {
    let site = Site::start_with("a_hanging_upstream_gets_504", |mut b| {
        for pool in &mut b.pools {
            // The site's upstreams take 1.5 s under /slow and /api/slow.
            pool.read_timeout = "300ms".to_string();
        }
        b
    })
    .await;

    let api = site.edge.get("/api/slow/orders").await;
    assert_eq!(api.status(), 504, "API route");
    let ct = header(&api, "content-type").unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    assert_eq!(header(&api, "x-drawbridge-outage"), None, "not planned");
    let problem: serde_json::Value =
        serde_json::from_slice(&api.bytes().await.expect("a body")).expect("a problem+json body");
    assert_eq!(problem["status"], 504);
    assert_eq!(problem["title"], "Gateway Timeout");

    let page = site.edge.get("/slow/settings").await;
    assert_eq!(page.status(), 504, "page route");
    let ct = header(&page, "content-type").unwrap_or_default();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = page.text().await.expect("a page body");
    assert!(html.contains("Gateway Timeout"), "{html}");

    let json = site
        .edge
        .send(
            site.edge
                .request(reqwest::Method::GET, "/slow/settings")
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(json.status(), 504);
    let ct = header(&json, "content-type").unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "{ct}");

    let edge = &site.edge;
    eventually(
        "the 504s are counted",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async move {
            let m = edge.metrics().await;
            let errors = |pool| {
                m.value(
                    "drawbridge_upstream_errors_total",
                    &[("pool", pool), ("status", "504")],
                )
            };
            let requests = m.value(
                "drawbridge_requests_total",
                &[("route", "ui"), ("status", "504")],
            );
            if errors("api") >= 1.0 && errors("ui") >= 2.0 && requests >= 2.0 {
                Ok(())
            } else {
                Err(m.text)
            }
        },
    )
    .await;
}

/// An upstream that refuses connections gets 502 with a body in the route's form.
#[tokio::test]
async fn a_refused_connection_gets_502_with_a_body() {
    let mut site = Site::start("a_refused_connection_gets_502_with_a_body").await;
    site.api.stop();
    site.ui.stop();

    let api = site.edge.get("/api/orders").await;
    assert_eq!(api.status(), 502, "API route");
    let ct = header(&api, "content-type").unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    let problem: serde_json::Value =
        serde_json::from_slice(&api.bytes().await.expect("a body")).expect("a problem+json body");
    assert_eq!(problem["status"], 502);
    assert_eq!(problem["title"], "Bad Gateway");

    let page = site.edge.get("/settings").await;
    assert_eq!(page.status(), 502, "page route");
    let ct = header(&page, "content-type").unwrap_or_default();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = page.text().await.expect("a page body");
    assert!(html.contains("Bad Gateway"), "{html}");

    let edge = &site.edge;
    eventually(
        "the 502s are counted",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async move {
            let m = edge.metrics().await;
            let errors = m.value(
                "drawbridge_upstream_errors_total",
                &[("pool", "api"), ("status", "502")],
            );
            if errors >= 1.0 {
                Ok(())
            } else {
                Err(m.text)
            }
        },
    )
    .await;
}

/// An `until` in year 9999 gives `Retry-After` a day, not centuries.
#[tokio::test]
async fn retry_after_is_capped_at_a_day() {
    let site = Site::start("retry_after_is_capped_at_a_day").await;
    site.put_gate(r#"{"mode":"maintenance","until":"9999-12-31T23:59:59Z"}"#)
        .await;
    for path in ["/", "/api/orders"] {
        let answer = site.edge.get(path).await;
        assert_eq!(answer.status(), 503, "{path}");
        assert_eq!(retry_after(&answer), 86_400, "{path}");
    }
}

/// A value at the gate key that carries line breaks is logged on one line: whoever can write
/// the key cannot forge the proxy's log.
#[tokio::test]
async fn a_value_at_the_key_cannot_forge_a_log_line() {
    let site = Site::start("a_value_at_the_key_cannot_forge_a_log_line").await;
    // A JSON escape: the mode decoded from it holds a line break.
    site.put_rejected(r#"{"mode":"x\nFORGED gate state applied mode=normal"}"#)
        .await;
    let log = site.edge.log();
    assert!(
        log.contains("refused the value at the gate key"),
        "the refusal is logged:\n{}",
        site.edge.log_tail()
    );
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED")),
        "a line of the value became a log line of its own:\n{}",
        site.edge.log_tail()
    );
}

/// `drawbridge --check` refuses an admin token of 5 characters with exit 2, naming the key.
#[tokio::test]
async fn a_short_admin_token_is_refused_at_load() {
    let dir = TestDir::new("a_short_admin_token_is_refused_at_load");
    let up = Upstream::start("unused");
    let config = Drawbridge::builder("http://127.0.0.1:8500", "drawbridge/test/hygiene/gate")
        .static_pool("ui", &[&up], None)
        .route(Route::page("ui", "/", "ui"))
        .admin_token("short")
        .write_config(dir.path());
    let out = run_drawbridge(&config, &["--check"], Duration::from_secs(20)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("admin.token: has 5 characters; use at least 16"),
        "stderr: {stderr}"
    );
}

/// A CONNECT request (a tunnel) gets 405 in the page form, is counted, and reaches no upstream;
/// the connection is closed.
#[tokio::test]
async fn connect_is_refused_in_the_proxys_own_form() {
    let site = Site::start("connect_is_refused_in_the_proxys_own_form").await;
    let mut conn = RawConnection::connect(site.edge.listen_addr()).await;
    conn.send("CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test:443\r\n\r\n")
        .await;
    let answer = conn.read_answer("the answer to CONNECT").await;
    assert_eq!(answer.status, 405);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{answer:?}"
    );
    assert!(
        String::from_utf8_lossy(&answer.body).contains("tunnels"),
        "{answer:?}"
    );
    assert!(conn.closed_by_peer().await, "the connection stays open");
    assert_eq!(site.ui.total_requests() + site.api.total_requests(), 0);
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "connect_method")],
            1.0,
        )
        .await;
}
