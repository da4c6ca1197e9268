//! The gate key switches a real proxy: normal proxying, maintenance on and off, the page and
//! problem+json answers with their headers, `Retry-After`, scope, read-only and
//! `/.well-known/maintenance`.

use std::time::Duration;

use drawbridge_core::gate::Mode;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::proxy::{header, retry_after, rfc3339_in, Site};
use drawbridge_tests::raw_http::RawConnection;
use reqwest::Method;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Asserts the headers every maintenance answer carries, whatever its kind.
fn assert_maintenance_headers(answer: &reqwest::Response, what: &str) {
    assert_eq!(answer.status(), 503, "{what}: status");
    let cache = header(answer, "cache-control").unwrap_or_default();
    assert!(
        cache.contains("no-store"),
        "{what}: Cache-Control {cache:?}"
    );
    let vary = header(answer, "vary")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(vary.contains("accept"), "{what}: Vary {vary:?}");
    assert_eq!(
        header(answer, "x-drawbridge-outage").as_deref(),
        Some("planned"),
        "{what}: X-Drawbridge-Outage"
    );
    assert!(
        header(answer, "retry-after").is_some(),
        "{what}: Retry-After"
    );
}

/// Asserts the answer keeps the connection open for the next request.
fn assert_keep_alive(answer: &reqwest::Response, what: &str) {
    assert_ne!(
        header(answer, "connection").map(|c| c.to_ascii_lowercase()),
        Some("close".to_string()),
        "{what}: Connection"
    );
}

fn content_type(answer: &reqwest::Response) -> String {
    header(answer, "content-type").unwrap_or_default()
}

fn instant(rfc3339: &str) -> OffsetDateTime {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"))
}

/// A GET of `/api/orders` sent with `Origin: origin`.
async fn get_orders_from(site: &Site, origin: &str) -> reqwest::Response {
    site.edge
        .send(
            site.edge
                .request(Method::GET, "/api/orders")
                .header("origin", origin),
        )
        .await
}

/// With the key missing, the page route and the API route proxy to their pools: the upstream
/// answers 200, names itself in `X-Upstream`, gets the query string and sees the client in
/// `X-Forwarded-For`; `/status` says normal, from Consul.
#[tokio::test]
async fn normal_mode_proxies_page_and_api_routes() {
    let site = Site::start("normal_mode_proxies_page_and_api_routes").await;

    let page = site.edge.get("/hello").await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "x-upstream").as_deref(), Some("ui"));
    assert!(content_type(&page).starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("GET /hello"));

    let api = site.edge.get("/api/orders?page=2").await;
    assert_eq!(api.status(), 200);
    assert_eq!(header(&api, "x-upstream").as_deref(), Some("api"));
    let body: Value = serde_json::from_str(&api.text().await.unwrap()).unwrap();
    assert_eq!(body["upstream"], "api");
    assert_eq!(body["path"], "/api/orders");

    let seen = site
        .api
        .last_request()
        .expect("the api upstream got the request");
    assert_eq!(seen.path_and_query, "/api/orders?page=2");
    let xff = seen.header("x-forwarded-for").unwrap_or_default();
    assert!(xff.contains("127.0.0.1"), "X-Forwarded-For {xff:?}");
    assert_eq!(site.ui.proxied_requests(), 1);
    assert_eq!(site.api.proxied_requests(), 1);

    let status = site.edge.status().await;
    assert_eq!(status.gate.mode, Mode::Normal);
    assert_eq!(status.gate.source, "consul");
}

/// A JSON document with mode maintenance PUT at the key closes both routes (503, nothing
/// reaches the upstreams); DELETE of the key opens them again.
#[tokio::test]
async fn put_maintenance_closes_and_delete_reopens() {
    let site = Site::start("put_maintenance_closes_and_delete_reopens").await;
    assert_eq!(site.edge.get("/").await.status(), 200);

    let report = site
        .put_gate(r#"{"mode":"maintenance","reason":"db upgrade","by":"e2e"}"#)
        .await;
    assert_eq!(report.gate.mode, Mode::Maintenance);
    assert_eq!(report.gate.reason.as_deref(), Some("db upgrade"));
    let (ui_before, api_before) = (site.ui.proxied_requests(), site.api.proxied_requests());
    assert_eq!(site.edge.get("/").await.status(), 503);
    assert_eq!(site.edge.get("/api/orders").await.status(), 503);
    assert_eq!(
        site.ui.proxied_requests(),
        ui_before,
        "ui got a request while closed"
    );
    assert_eq!(
        site.api.proxied_requests(),
        api_before,
        "api got a request while closed"
    );

    let report = site.delete_gate().await;
    assert_eq!(report.gate.mode, Mode::Normal);
    assert_eq!(site.edge.get("/").await.status(), 200);
    assert_eq!(site.edge.get("/api/orders").await.status(), 200);
}

/// The bare lower-case words switch too: `true`/`on`/`1` close the gate, `false`/`off`/`0`
/// open it.
#[tokio::test]
async fn bare_words_close_and_open_the_gate() {
    let site = Site::start("bare_words_close_and_open_the_gate").await;
    for (on, off) in [("true", "false"), ("on", "off"), ("1", "0")] {
        assert_eq!(site.put_gate(on).await.gate.mode, Mode::Maintenance, "{on}");
        assert_eq!(site.edge.get("/").await.status(), 503, "after {on}");
        assert_eq!(site.put_gate(off).await.gate.mode, Mode::Normal, "{off}");
        assert_eq!(site.edge.get("/").await.status(), 200, "after {off}");
    }
}

/// In maintenance a page route answers the HTML page (reason and message HTML-escaped,
/// `Refresh`) and an API route answers problem+json (`status`, `detail`, `reason`, `until`,
/// `mode`); both with `Retry-After`, `Cache-Control: no-store`, `Vary: Accept`,
/// `X-Drawbridge-Outage: planned` and the connection kept alive.
#[tokio::test]
async fn page_route_gets_html_and_api_route_gets_problem_json() {
    let site = Site::start("page_route_gets_html_and_api_route_gets_problem_json").await;
    let until = rfc3339_in(600);
    let doc = serde_json::json!({
        "mode": "maintenance",
        "reason": "db <upgrade> & more",
        "message": "Back soon, <b>promise</b>",
        "until": until,
    });
    site.put_gate(doc.to_string()).await;

    let page = site.edge.get("/").await;
    assert_maintenance_headers(&page, "page");
    assert_keep_alive(&page, "page");
    assert_eq!(content_type(&page), "text/html; charset=utf-8");
    let ra = retry_after(&page);
    assert!(
        (550..=600).contains(&ra),
        "Retry-After {ra} for until in 600 s"
    );
    let refresh = header(&page, "refresh").expect("the page has Refresh");
    let refresh: u64 = refresh.trim().parse().expect("Refresh is seconds");
    assert!(
        (1..=300).contains(&refresh),
        "Refresh {refresh} above page_refresh_max"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("db &lt;upgrade&gt; &amp; more"),
        "reason not escaped:\n{html}"
    );
    assert!(
        html.contains("&lt;b&gt;promise&lt;/b&gt;"),
        "message not escaped:\n{html}"
    );
    assert!(
        !html.contains("<upgrade>") && !html.contains("<b>promise"),
        "raw markup:\n{html}"
    );

    let api = site.edge.get("/api/orders").await;
    assert_maintenance_headers(&api, "api");
    assert_keep_alive(&api, "api");
    assert!(
        content_type(&api).starts_with("application/problem+json"),
        "{}",
        content_type(&api)
    );
    let ra = retry_after(&api);
    assert!(
        (550..=600).contains(&ra),
        "Retry-After {ra} for until in 600 s"
    );
    let body: Value = serde_json::from_str(&api.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], 503, "{body:#}");
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body:#}"
    );
    assert_eq!(body["detail"], "Back soon, <b>promise</b>", "{body:#}");
    assert_eq!(body["reason"], "db <upgrade> & more", "{body:#}");
    assert_eq!(body["mode"], "maintenance", "{body:#}");
    let got_until = body["until"].as_str().expect("until is a string");
    assert_eq!(instant(got_until), instant(&until), "{body:#}");
}

/// A page route answers problem+json when the client asks for JSON ahead of HTML
/// (`Accept: application/json` or `application/problem+json`), and the page otherwise.
#[tokio::test]
async fn page_route_answers_json_clients_with_problem_json() {
    let site = Site::start("page_route_answers_json_clients_with_problem_json").await;
    site.put_gate(r#"{"mode":"maintenance","reason":"r"}"#)
        .await;

    let cases = [
        (Some("application/json"), true),
        (Some("application/problem+json"), true),
        (Some("application/json, text/html;q=0.9"), true),
        (
            Some("text/html,application/xhtml+xml,application/json;q=0.9"),
            false,
        ),
        (Some("text/html"), false),
        (Some("*/*"), false),
        (None, false),
    ];
    for (accept, json) in cases {
        let mut req = site.edge.request(Method::GET, "/account");
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let answer = site.edge.send(req).await;
        assert_maintenance_headers(&answer, &format!("Accept {accept:?}"));
        let ct = content_type(&answer);
        if json {
            assert!(
                ct.starts_with("application/problem+json"),
                "Accept {accept:?}: {ct}"
            );
            let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            assert_eq!(body["status"], 503);
            assert_eq!(body["reason"], "r");
        } else {
            assert_eq!(ct, "text/html; charset=utf-8", "Accept {accept:?}");
        }
    }
}

/// `Retry-After` is the seconds left to `until` and counts down; the page's `Refresh` is
/// capped at `page_refresh_max`; without `until`, or with one in the past, `Retry-After` is
/// `default_retry_after`.
#[tokio::test]
async fn retry_after_counts_down_to_until() {
    let site = Site::start_with("retry_after_counts_down_to_until", |b| {
        let mut b = b;
        b.default_retry_after = Some("7m".to_string());
        b.page_refresh_max = Some("30s".to_string());
        b
    })
    .await;

    let doc = serde_json::json!({"mode": "maintenance", "until": rfc3339_in(120)});
    site.put_gate(doc.to_string()).await;
    let first = site.edge.get("/").await;
    let first_ra = retry_after(&first);
    assert!(
        (100..=120).contains(&first_ra),
        "Retry-After {first_ra} for until in 120 s"
    );
    assert_eq!(
        header(&first, "refresh").as_deref(),
        Some("30"),
        "Refresh capped at 30 s"
    );
    let api_ra = retry_after(&site.edge.get("/api/x").await);
    assert!((100..=120).contains(&api_ra), "API Retry-After {api_ra}");

    // Counts down: within a few seconds the same request gets a smaller number.
    let edge = &site.edge;
    let later = eventually(
        "Retry-After counts down",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || async move {
            let ra = retry_after(&edge.get("/").await);
            if ra < first_ra {
                Ok(ra)
            } else {
                Err(format!("still {ra}"))
            }
        },
    )
    .await;
    assert!(
        later + 5 >= first_ra,
        "dropped from {first_ra} to {later} too fast"
    );

    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let answer = site.edge.get("/").await;
    assert_eq!(retry_after(&answer), 420, "no until: default_retry_after");
    assert_eq!(header(&answer, "refresh").as_deref(), Some("30"));

    let doc = serde_json::json!({"mode": "maintenance", "until": rfc3339_in(-60)});
    site.put_gate(doc.to_string()).await;
    assert_eq!(
        retry_after(&site.edge.get("/").await),
        420,
        "past until: default"
    );
    assert_eq!(
        retry_after(&site.edge.get("/api/x").await),
        420,
        "past until: default"
    );
}

/// `scope: ["api"]` puts only the route named `api` in maintenance; the `ui` route passes.
#[tokio::test]
async fn scope_limits_maintenance_to_the_named_routes() {
    let site = Site::start("scope_limits_maintenance_to_the_named_routes").await;
    let report = site
        .put_gate(r#"{"mode":"maintenance","scope":["api"],"reason":"api only"}"#)
        .await;
    assert_eq!(report.gate.scope, Some(vec!["api".to_string()]));

    let api = site.edge.get("/api/orders").await;
    assert_maintenance_headers(&api, "api in scope");
    let page = site.edge.get("/dashboard").await;
    assert_eq!(page.status(), 200, "ui is not in scope");
    assert_eq!(header(&page, "x-upstream").as_deref(), Some("ui"));
}

/// In `read_only`, GET, HEAD and OPTIONS pass to the upstream; POST, PUT, DELETE and PATCH get
/// the maintenance answer and never reach it.
#[tokio::test]
async fn read_only_passes_safe_methods_and_refuses_writes() {
    let site = Site::start("read_only_passes_safe_methods_and_refuses_writes").await;
    site.put_gate(r#"{"mode":"read_only","reason":"migration"}"#)
        .await;

    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        for path in ["/page", "/api/orders"] {
            let answer = site
                .edge
                .send(site.edge.request(method.clone(), path))
                .await;
            assert_eq!(answer.status(), 200, "{method} {path}");
            assert!(
                header(&answer, "x-upstream").is_some(),
                "{method} {path} not proxied"
            );
        }
    }
    let before = site.ui.proxied_requests() + site.api.proxied_requests();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        for path in ["/page", "/api/orders"] {
            let answer = site
                .edge
                .send(site.edge.request(method.clone(), path).body("{}"))
                .await;
            assert_maintenance_headers(&answer, &format!("{method} {path}"));
        }
    }
    let api = site
        .edge
        .send(site.edge.request(Method::POST, "/api/orders").body("{}"))
        .await;
    let body: Value = serde_json::from_str(&api.text().await.unwrap()).unwrap();
    assert_eq!(body["mode"], "read_only", "{body:#}");
    assert_eq!(
        site.ui.proxied_requests() + site.api.proxied_requests(),
        before,
        "a write reached an upstream"
    );
}

/// `GET /.well-known/maintenance` answers the gate state as JSON with `no-store` on every
/// route, in normal and in maintenance, and is never proxied.
#[tokio::test]
async fn well_known_maintenance_reports_the_state_in_any_mode() {
    let site = Site::start("well_known_maintenance_reports_the_state_in_any_mode").await;

    let check = |expect_mode: &'static str, planned: bool| {
        let edge = &site.edge;
        async move {
            let answer = edge.get("/.well-known/maintenance").await;
            assert_eq!(answer.status(), 200, "mode {expect_mode}");
            let cache = header(&answer, "cache-control").unwrap_or_default();
            assert!(cache.contains("no-store"), "Cache-Control {cache:?}");
            assert!(content_type(&answer).starts_with("application/json"));
            let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            assert_eq!(body["mode"], expect_mode, "{body:#}");
            assert_eq!(body["planned"], planned, "{body:#}");
            for field in ["reason", "message", "until", "started_at", "scope"] {
                assert!(body.get(field).is_some(), "field {field} missing: {body:#}");
            }
            body
        }
    };

    check("normal", false).await;
    let until = rfc3339_in(900);
    let started = rfc3339_in(-60);
    let doc = serde_json::json!({
        "mode": "maintenance", "reason": "upgrade", "message": "soon",
        "until": until, "started_at": started,
    });
    site.put_gate(doc.to_string()).await;
    let body = check("maintenance", true).await;
    assert_eq!(body["reason"], "upgrade");
    assert_eq!(body["message"], "soon");
    assert_eq!(instant(body["until"].as_str().unwrap()), instant(&until));
    assert_eq!(
        instant(body["started_at"].as_str().unwrap()),
        instant(&started)
    );
    assert_eq!(site.ui.proxied_requests(), 0, "well-known was proxied");
    assert_eq!(site.api.proxied_requests(), 0, "well-known was proxied");
}

/// HEAD in maintenance gets the 503 and all maintenance headers, with an empty body.
#[tokio::test]
async fn head_gets_the_maintenance_headers_without_a_body() {
    let site = Site::start("head_gets_the_maintenance_headers_without_a_body").await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    for path in ["/", "/api/orders"] {
        let answer = site.edge.send(site.edge.request(Method::HEAD, path)).await;
        assert_maintenance_headers(&answer, &format!("HEAD {path}"));
        let body = answer.bytes().await.unwrap();
        assert!(
            body.is_empty(),
            "HEAD {path} has a body of {} bytes",
            body.len()
        );
    }
}

/// An API maintenance answer to an allowed `Origin` carries `Access-Control-Allow-Origin` for
/// that origin, exposes `Retry-After` and `X-Drawbridge-Outage`, and varies on Origin; any
/// other origin gets no `Access-Control-Allow-Origin`.
#[tokio::test]
async fn cors_is_echoed_only_for_allowed_origins() {
    let site = Site::start_with("cors_is_echoed_only_for_allowed_origins", |b| {
        b.cors_allowed_origins(&["https://app.example.test"])
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    let allowed = get_orders_from(&site, "https://app.example.test").await;
    assert_maintenance_headers(&allowed, "allowed origin");
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://app.example.test")
    );
    let expose = header(&allowed, "access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        expose.contains("retry-after") && expose.contains("x-drawbridge-outage"),
        "Access-Control-Expose-Headers {expose:?}"
    );
    let vary = header(&allowed, "vary")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(vary.contains("origin"), "Vary {vary:?}");

    let other = get_orders_from(&site, "https://evil.example.test").await;
    assert_maintenance_headers(&other, "other origin");
    assert_eq!(header(&other, "access-control-allow-origin"), None);
}

/// Maintenance answers keep the connection alive: no `Connection: close`, and the next request
/// on the same connection is answered (checked on a raw socket), for a GET and for a POST with
/// a small body.
#[tokio::test]
async fn maintenance_answers_keep_the_connection_alive() {
    let site = Site::start("maintenance_answers_keep_the_connection_alive").await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    let post = site
        .edge
        .send(
            site.edge
                .request(Method::POST, "/api/orders")
                .body(r#"{"n":1}"#),
        )
        .await;
    assert_maintenance_headers(&post, "POST with a body");
    assert_keep_alive(&post, "POST with a body");

    // Two requests one after the other on one connection, the first a POST with a body: both
    // answered. (Pingora does not serve pipelined requests, so the second is sent only after the
    // first answer, as clients do.)
    let mut conn = RawConnection::connect(site.edge.listen_addr()).await;
    conn.send(
        "POST /api/orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: 7\r\n\r\n{\"n\":1}",
    )
    .await;
    let first = conn.read_answer("the POST with a body").await;
    assert_eq!(first.status, 503, "{}", first.head);
    conn.send("GET /page HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let second = conn
        .read_answer("the GET after it on the same connection")
        .await;
    assert_eq!(second.status, 503, "{}", second.head);
}

/// Re-writing the key while down (a new message and `until`) changes what clients see and never
/// opens traffic: every request in between gets a 503, none reaches the upstreams.
#[tokio::test]
async fn rewriting_the_key_while_down_updates_the_answer_without_opening() {
    let site = Site::start("rewriting_the_key_while_down_updates_the_answer_without_opening").await;
    site.put_gate(r#"{"mode":"maintenance","message":"Back at nine"}"#)
        .await;
    let before = site.api.proxied_requests();
    let first = site.edge.get("/api/orders").await;
    assert_eq!(first.status(), 503);
    let body: Value = serde_json::from_str(&first.text().await.unwrap()).unwrap();
    assert_eq!(body["detail"], "Back at nine");

    let until = rfc3339_in(7200);
    let report = site
        .put_gate(&format!(
            r#"{{"mode":"maintenance","message":"Back at eleven","until":"{until}"}}"#
        ))
        .await;
    assert_eq!(report.gate.mode, Mode::Maintenance);
    let second = site.edge.get("/api/orders").await;
    assert_eq!(second.status(), 503);
    let retry = retry_after(&second);
    assert!(
        (7000..=7200).contains(&retry),
        "Retry-After {retry} after the new until"
    );
    let body: Value = serde_json::from_str(&second.text().await.unwrap()).unwrap();
    assert_eq!(body["detail"], "Back at eleven");
    assert_eq!(
        site.api.proxied_requests(),
        before,
        "traffic opened during the rewrite"
    );
}
