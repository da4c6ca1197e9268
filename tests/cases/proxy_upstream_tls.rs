//! TLS to upstream pools: a pool with `[pools.<name>.tls]` reaches HTTPS upstreams with its
//! name (SNI) and CA; a certificate that is untrusted or names another host is a 502 in the
//! route's form, logged with the pool, the server and the reason, and counted, with one
//! handshake tried and nothing served; `verify = false` serves it (with a warning at start); a
//! client certificate goes to an upstream that requires one; health checks speak TLS the same
//! way; and `--check` refuses a bad TLS file with its key.
//!
//! The certificates are made by each test in its folder with `rcgen`.

use std::path::Path;
use std::time::{Duration, Instant};

use drawbridge_core::status::StatusReport;
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{header, run_drawbridge, test_key, Drawbridge, Route};
use drawbridge_tests::tls_ca::{Issued, TestCa};
use drawbridge_tests::upstream::{Handshake, Kind, Upstream};

/// The name the pools send and verify.
const SNI: &str = "api.internal";
/// Health checks run every 500 ms; a change shows in a few intervals.
const HEALTH_DEADLINE: Duration = Duration::from_secs(15);

/// A `[pools.<name>]` table: `servers`, the health check `health` (a TOML inline table) and the
/// `tls` table `tls` (TOML `key = value` lines).
fn pool(servers: &[&Upstream], health: &str, tls: &str) -> toml::Value {
    let servers: Vec<String> = servers
        .iter()
        .map(|u| format!("{:?}", u.addr().to_string()))
        .collect();
    let text = format!(
        "servers = [{}]\nconnect_timeout = \"1s\"\nread_timeout = \"5s\"\nhealth_check = {health}\n\
         [tls]\n{tls}\n",
        servers.join(", ")
    );
    toml::Value::Table(toml::from_str(&text).expect("a pool table"))
}

/// A pool without health checks, so each request tries the handshake itself.
fn unchecked_pool(servers: &[&Upstream], tls: &str) -> toml::Value {
    pool(servers, "{ type = \"none\" }", tls)
}

/// The `tls` lines of a pool sending [`SNI`] and trusting the CA in `ca`.
fn trusting(ca: &Path) -> String {
    format!("sni = {SNI:?}\nca_file = {:?}\n", ca.display().to_string())
}

/// An unrelated CA (its own name), in its own folder under the test's.
fn other_ca(dir: &TestDir) -> TestCa {
    let other = dir.path().join("other-ca");
    std::fs::create_dir_all(&other).expect("a folder for the other CA");
    TestCa::named(&other, "unrelated-e2e-ca")
}

/// An HTTPS upstream `name` serving `cert`.
fn tls_upstream(name: &str, cert: &Issued) -> Upstream {
    Upstream::builder(name)
        .kind(Kind::Api)
        .tls(&cert.cert, &cert.key)
        .start()
}

/// The metric `drawbridge_upstream_errors_total{pool, status="502"}` reads `value`.
async fn wait_502s(edge: &Drawbridge, pool: &str, value: f64) {
    edge.wait_metric(
        "drawbridge_upstream_errors_total",
        &[("pool", pool), ("status", "502")],
        value,
    )
    .await;
}

/// `GET path` answers 502 as problem+json (an API route), quickly: no retry, no hang.
async fn assert_api_502(edge: &Drawbridge, path: &str) {
    let started = Instant::now();
    let answer = edge.get(path).await;
    let took = started.elapsed();
    assert_eq!(answer.status(), 502, "GET {path}\n{}", edge.log_tail());
    assert!(took < Duration::from_secs(3), "GET {path} took {took:?}");
    let ct = header(&answer, "content-type").unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    let problem: serde_json::Value =
        serde_json::from_slice(&answer.bytes().await.expect("a body")).expect("problem+json");
    assert_eq!(problem["status"], 502);
    assert_eq!(
        problem["type"],
        "urn:drawbridge:problem:upstream-unavailable"
    );
}

/// A TLS pool reaches an HTTPS upstream with its CA: 200, and the upstream saw the pool's name
/// in the handshake and no client certificate.
#[tokio::test]
async fn a_tls_pool_is_served_with_its_name_and_ca() {
    let dir = TestDir::new("a_tls_pool_is_served_with_its_name_and_ca");
    let consul = ConsulServer::start(&dir).await;
    let ca = TestCa::new(dir.path());
    let up = tls_upstream("api-tls", &ca.issue("api", &[SNI]));
    let edge = Drawbridge::builder(&consul.http_addr(), &test_key("upstream_tls_ok"))
        .setting("pools", "api", unchecked_pool(&[&up], &trusting(&ca.cert)))
        .route(Route::api("api", "/api/", "api"))
        .start(&dir)
        .await;

    for i in 0..3 {
        let answer = edge.get(&format!("/api/orders/{i}")).await;
        assert_eq!(answer.status(), 200, "request {i}\n{}", edge.log_tail());
        assert_eq!(header(&answer, "x-upstream").as_deref(), Some("api-tls"));
    }
    let last = up.last_request().expect("the upstream got the requests");
    assert_eq!(last.path_and_query, "/api/orders/2");
    let handshakes = up.handshakes();
    assert!(!handshakes.is_empty());
    assert!(
        handshakes.iter().all(|h| *h
            == Handshake {
                sni: Some(SNI.to_string()),
                client_certificate: false
            }),
        "{handshakes:?}"
    );
}

/// A certificate from a CA the pool does not trust, and one that names another host: each is
/// a 502 in its route's form within a moment, one line in the log naming the pool, the server
/// and the reason, one count in `drawbridge_upstream_errors_total`, one handshake tried (no
/// retry) and no request served. The same server in a pool with `verify = false` serves, and
/// that pool was warned about at start.
#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_a_502_and_verify_false_serves_it() {
    let dir = TestDir::new("an_untrusted_or_misnamed_certificate_is_a_502");
    let consul = ConsulServer::start(&dir).await;
    let ca = TestCa::new(dir.path());
    let other = other_ca(&dir);
    let untrusted = tls_upstream("untrusted", &other.issue("api", &[SNI]));
    let misnamed = tls_upstream("misnamed", &ca.issue("other", &["other.internal"]));
    let verify_off = format!("{}verify = false\n", trusting(&ca.cert));
    let edge = Drawbridge::builder(&consul.http_addr(), &test_key("upstream_tls_bad"))
        .setting(
            "pools",
            "untrusted",
            unchecked_pool(&[&untrusted], &trusting(&ca.cert)),
        )
        .setting(
            "pools",
            "misnamed",
            unchecked_pool(&[&misnamed], &trusting(&ca.cert)),
        )
        .setting("pools", "lax", unchecked_pool(&[&untrusted], &verify_off))
        .route(Route::api("untrusted", "/api/", "untrusted"))
        .route(Route::page("misnamed", "/misnamed/", "misnamed"))
        .route(Route::api("lax", "/lax/", "lax"))
        .start(&dir)
        .await;
    assert!(
        edge.log()
            .contains("pools.lax.tls.verify: is false: the servers' certificates are not checked"),
        "no warning at start about pools.lax:\n{}",
        edge.log_tail()
    );

    assert_api_502(&edge, "/api/orders").await;
    let line = format!(
        "pool untrusted: server {}: TLS certificate not trusted (unknown issuer) for SNI {SNI}",
        untrusted.addr()
    );
    let log = edge.log();
    assert_eq!(log.matches(&line).count(), 1, "{line:?} once in\n{log}");
    wait_502s(&edge, "untrusted", 1.0).await;
    assert_eq!(untrusted.tls_connections(), 1, "one handshake, no retry");
    assert!(untrusted.handshakes().is_empty());
    assert_eq!(untrusted.proxied_requests(), 0, "nothing served");

    let started = Instant::now();
    let page = edge.get("/misnamed/settings").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(page.status(), 502);
    let ct = header(&page, "content-type").unwrap_or_default();
    assert!(ct.starts_with("text/html"), "{ct}");
    let line = format!(
        "pool misnamed: server {}: TLS certificate not valid for the name (",
        misnamed.addr()
    );
    let log = edge.log();
    let logged: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
    assert_eq!(logged.len(), 1, "{line:?} once in\n{log}");
    assert!(
        logged[0].contains(&format!(
            "(certificate is only valid for other.internal) for SNI {SNI}"
        )),
        "{}",
        logged[0]
    );
    wait_502s(&edge, "misnamed", 1.0).await;
    assert_eq!(misnamed.tls_connections(), 1, "one handshake, no retry");
    assert_eq!(misnamed.proxied_requests(), 0, "nothing served");

    let answer = edge.get("/lax/orders").await;
    assert_eq!(answer.status(), 200, "{}", edge.log_tail());
    assert_eq!(header(&answer, "x-upstream").as_deref(), Some("untrusted"));
    assert_eq!(
        untrusted.handshakes(),
        [Handshake {
            sni: Some(SNI.to_string()),
            client_certificate: false
        }]
    );
    assert_eq!(untrusted.requests_to("/api/orders"), 0);
}

/// An upstream that requires a client certificate from the test CA serves the pool that has
/// `client_cert` and `client_key`; the pool without them gets 502 and nothing is served.
#[tokio::test]
async fn a_client_certificate_is_sent_to_an_upstream_that_requires_one() {
    let dir = TestDir::new("a_client_certificate_is_sent_to_an_upstream");
    let consul = ConsulServer::start(&dir).await;
    let ca = TestCa::new(dir.path());
    let server = ca.issue("api", &[SNI]);
    let client = ca.issue("edge-client", &["edge.internal"]);
    let up = Upstream::builder("mtls")
        .tls(&server.cert, &server.key)
        .require_client_certificate(&ca.cert)
        .start();
    let with_cert = format!(
        "{}client_cert = {:?}\nclient_key = {:?}\n",
        trusting(&ca.cert),
        client.cert.display().to_string(),
        client.key.display().to_string()
    );
    let edge = Drawbridge::builder(&consul.http_addr(), &test_key("upstream_tls_client"))
        .setting("pools", "with", unchecked_pool(&[&up], &with_cert))
        .setting(
            "pools",
            "without",
            unchecked_pool(&[&up], &trusting(&ca.cert)),
        )
        .route(Route::api("with", "/with/", "with"))
        .route(Route::api("without", "/without/", "without"))
        .start(&dir)
        .await;

    let answer = edge.get("/with/orders").await;
    assert_eq!(answer.status(), 200, "{}", edge.log_tail());
    assert_eq!(
        up.handshakes(),
        [Handshake {
            sni: Some(SNI.to_string()),
            client_certificate: true
        }]
    );

    assert_api_502(&edge, "/without/orders").await;
    wait_502s(&edge, "without", 1.0).await;
    assert_eq!(up.requests_to("/without/orders"), 0, "nothing served");
    assert_eq!(
        up.handshakes().len(),
        1,
        "the handshake without a certificate failed"
    );
}

/// Whether `/status` reports `address` of `pool` healthy; `None` when it is not listed.
fn server_health(report: &StatusReport, pool: &str, address: &str) -> Option<bool> {
    report
        .pools
        .iter()
        .find(|p| p.name == pool)?
        .servers
        .iter()
        .find(|s| s.address == address)
        .map(|s| s.healthy)
}

/// Health checks of TLS pools connect as requests do: with the pool's name and CA, an HTTP
/// check (over TLS) and a `tcp` check (a TLS handshake) mark the trusted server healthy and the
/// untrusted one unhealthy; the HTTP check follows the server's `/healthz` over TLS.
#[tokio::test]
async fn health_checks_speak_tls_with_the_pools_name_and_ca() {
    let dir = TestDir::new("health_checks_speak_tls_with_the_pools_name_and_ca");
    let consul = ConsulServer::start(&dir).await;
    let ca = TestCa::new(dir.path());
    let other = other_ca(&dir);
    let good = tls_upstream("good", &ca.issue("api", &[SNI]));
    let bad = tls_upstream("bad", &other.issue("api", &[SNI]));
    let tls = trusting(&ca.cert);
    let edge = Drawbridge::builder(&consul.http_addr(), &test_key("upstream_tls_health"))
        .setting(
            "pools",
            "web",
            pool(
                &[&good, &bad],
                "{ type = \"http\", path = \"/healthz\", interval = \"500ms\" }",
                &tls,
            ),
        )
        .setting(
            "pools",
            "raw",
            pool(
                &[&good, &bad],
                "{ type = \"tcp\", interval = \"500ms\" }",
                &tls,
            ),
        )
        .route(Route::api("web", "/web/", "web"))
        .route(Route::api("raw", "/raw/", "raw"))
        .start(&dir)
        .await;

    let (good_addr, bad_addr) = (good.addr().to_string(), bad.addr().to_string());
    edge.wait_status(
        "the trusted server healthy, the other not",
        HEALTH_DEADLINE,
        |r| {
            ["web", "raw"].iter().all(|pool| {
                server_health(r, pool, &good_addr) == Some(true)
                    && server_health(r, pool, &bad_addr) == Some(false)
            })
        },
    )
    .await;
    assert!(
        good.requests_to("/healthz") > 0,
        "the HTTP check reached /healthz over TLS"
    );
    assert_eq!(bad.requests_to("/healthz"), 0);
    assert!(good
        .handshakes()
        .iter()
        .all(|h| h.sni.as_deref() == Some(SNI)));
    for path in ["/web/a", "/raw/b", "/web/c", "/raw/d"] {
        let answer = edge.get(path).await;
        assert_eq!(answer.status(), 200, "{path}");
        assert_eq!(header(&answer, "x-upstream").as_deref(), Some("good"));
    }

    good.set_healthy(false);
    edge.wait_status("the HTTP check sees /healthz fail", HEALTH_DEADLINE, |r| {
        server_health(r, "web", &good_addr) == Some(false)
            && server_health(r, "raw", &good_addr) == Some(true)
    })
    .await;
    good.set_healthy(true);
    edge.wait_status(
        "the HTTP check sees /healthz recover",
        HEALTH_DEADLINE,
        |r| server_health(r, "web", &good_addr) == Some(true),
    )
    .await;
}

/// `--check` refuses a pool whose CA file holds no certificate, or whose client certificate
/// comes without its key, with exit 2 and the key named.
#[tokio::test]
async fn check_refuses_a_bad_tls_file_with_its_key() {
    let dir = TestDir::new("check_refuses_a_bad_tls_file_with_its_key");
    let ca = TestCa::new(dir.path());
    let issued = ca.issue("api", &[SNI]);
    let up = Upstream::start("unused");
    let tls = format!(
        "sni = {SNI:?}\nca_file = {:?}\nclient_cert = {:?}\n",
        issued.key.display().to_string(),
        issued.cert.display().to_string()
    );
    let config = Drawbridge::builder("http://127.0.0.1:1", &test_key("upstream_tls_check"))
        .setting("pools", "api", unchecked_pool(&[&up], &tls))
        .route(Route::api("api", "/", "api"))
        .write_config(dir.path());
    let out = run_drawbridge(&config, &["--check"], Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        format!(
            "pools.api.tls.ca_file: {}: holds no \"BEGIN CERTIFICATE\" block",
            issued.key.display()
        ),
        "pools.api.tls.client_key: is required with client_cert".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in\n{stderr}");
    }
}
