//! Passing a closed gate: trusted client networks, `X-Forwarded-For` from trusted proxies
//! only, signed bypass tokens in the header or the cookie, and exempt paths. Refused tokens
//! get the ordinary maintenance answer, never an error.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use drawbridge_core::bypass::{BypassKey, Keyring};
use drawbridge_tests::proxy::{header, now_unix, test_client, Site};
use reqwest::Method;

const ENV: &str = "e2e";
const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";
const OTHER_SECRET: &str = "another-secret-of-enough-length-0123456789abc";
/// A client address outside every trusted network of these tests.
const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn keyring(id: &str, secret: &str) -> Keyring {
    Keyring::new(vec![
        BypassKey::new(id, secret.as_bytes()).expect("a valid test key")
    ])
    .expect("one key is a valid keyring")
}

fn token(env: &str, issued: i64, ttl_secs: u64) -> String {
    keyring("k1", SECRET).sign(env, issued, Duration::from_secs(ttl_secs), Some("test"))
}

/// A site with the bypass key of [`ENV`], its gate closed, and a client from an untrusted
/// address.
async fn closed_with_key(test: &str) -> (Site, reqwest::Client) {
    let site = Site::start_with(test, |b| b.bypass_key(ENV, "k1", SECRET)).await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    (site, test_client(Some(UNTRUSTED)))
}

/// Asserts `answer` is the planned maintenance answer of its route kind, not a bypass and
/// not an error.
fn assert_refused(answer: &reqwest::Response, api: bool, what: &str) {
    assert_eq!(
        answer.status(),
        503,
        "{what}: expected the maintenance answer"
    );
    assert_eq!(header(answer, "x-drawbridge-bypassed"), None, "{what}");
    assert_eq!(
        header(answer, "x-drawbridge-outage").as_deref(),
        Some("planned"),
        "{what}"
    );
    let ct = header(answer, "content-type").unwrap_or_default();
    if api {
        assert!(ct.starts_with("application/problem+json"), "{what}: {ct}");
    } else {
        assert!(ct.starts_with("text/html"), "{what}: {ct}");
    }
}

/// Asserts that `answer` passed the closed gate: a 200 with `X-Drawbridge-Bypassed: <via>`.
fn assert_bypassed(answer: &reqwest::Response, via: &str, what: &str) {
    assert_eq!(answer.status(), 200, "{what}");
    assert_eq!(
        header(answer, "x-drawbridge-bypassed").as_deref(),
        Some(via),
        "{what}"
    );
}

/// With `trusted_cidrs = ["127.0.0.1/32"]`, a client from 127.0.0.1 passes the closed gate
/// (200 from the upstream, `X-Drawbridge-Bypassed: cidr`) while a client from 127.0.0.2 gets
/// the maintenance answer.
#[tokio::test]
async fn trusted_cidr_client_passes_and_others_get_maintenance() {
    let site = Site::start_with("trusted_cidr_client_passes", |b| {
        b.trusted_cidrs(&["127.0.0.1/32"])
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    for path in ["/", "/api/orders"] {
        let trusted = site.edge.get(path).await;
        assert_bypassed(&trusted, "cidr", &format!("trusted {path}"));
        assert!(header(&trusted, "x-upstream").is_some(), "trusted {path}");
    }
    let outsider = test_client(Some(UNTRUSTED));
    let answer = site.edge.send(outsider.get(site.edge.url("/"))).await;
    assert_refused(&answer, false, "127.0.0.2 on /");
    let answer = site
        .edge
        .send(outsider.get(site.edge.url("/api/orders")))
        .await;
    assert_refused(&answer, true, "127.0.0.2 on /api/orders");
}

/// A valid token passes from an untrusted address, in the `X-Drawbridge-Bypass` header or in
/// the `drawbridge_bypass` cookie (among other cookies), with `X-Drawbridge-Bypassed: token`;
/// the upstream never sees the bypass header.
#[tokio::test]
async fn valid_token_in_header_or_cookie_passes() {
    let (site, client) = closed_with_key("valid_token_in_header_or_cookie_passes").await;
    let token = token(ENV, now_unix(), 600);

    let by_header = site
        .edge
        .send(
            client
                .get(site.edge.url("/api/orders"))
                .header("x-drawbridge-bypass", &token),
        )
        .await;
    assert_bypassed(&by_header, "token", "token in the header");
    assert_eq!(header(&by_header, "x-upstream").as_deref(), Some("api"));
    let seen = site.api.last_request().expect("the upstream got it");
    assert_eq!(
        seen.header("x-drawbridge-bypass"),
        None,
        "the bypass header reached the upstream"
    );

    let by_cookie = site
        .edge
        .send(client.get(site.edge.url("/settings")).header(
            "cookie",
            format!("theme=dark; drawbridge_bypass={token}; lang=en"),
        ))
        .await;
    assert_bypassed(&by_cookie, "token", "token in the cookie");
    assert_eq!(header(&by_cookie, "x-upstream").as_deref(), Some("ui"));

    // Without the token the same client is refused.
    let plain = site.edge.send(client.get(site.edge.url("/settings"))).await;
    assert_refused(&plain, false, "no token");
}

/// Expired, forged (other secret, flipped character), foreign-environment, unknown-key,
/// too-long-lived, not-yet-valid and malformed tokens all get the normal maintenance answer
/// (503 page or problem+json), in the header and in the cookie, never a 4xx or 500.
#[tokio::test]
async fn expired_forged_and_foreign_tokens_get_the_maintenance_answer() {
    let (site, client) = closed_with_key("expired_forged_and_foreign_tokens_refused").await;
    let now = now_unix();

    let valid = token(ENV, now, 600);
    let flipped = {
        // Change one character of the claims part; the MAC no longer matches.
        let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
        let claims = &mut parts[2];
        let c = claims.pop().expect("claims are not empty");
        claims.push(if c == 'A' { 'B' } else { 'A' });
        parts.join(".")
    };
    let cases: Vec<(&str, String)> = vec![
        ("expired", token(ENV, now - 7200, 3600)),
        (
            "signed with another secret",
            keyring("k1", OTHER_SECRET).sign(ENV, now, Duration::from_secs(600), None),
        ),
        ("flipped character", flipped),
        ("other environment", token("prod", now, 600)),
        (
            "unknown key id",
            keyring("k9", SECRET).sign(ENV, now, Duration::from_secs(600), None),
        ),
        ("lifetime above max_ttl", token(ENV, now, 24 * 3600)),
        ("issued in the future", token(ENV, now + 3600, 600)),
        ("garbage", "garbage".to_string()),
        ("truncated", valid[..valid.len() / 2].to_string()),
        ("too long", format!("dbt1.k1.{}.x", "A".repeat(2000))),
        ("empty", String::new()),
    ];
    for (what, bad) in &cases {
        for (path, api) in [("/", false), ("/api/orders", true)] {
            let answer = site
                .edge
                .send(
                    client
                        .get(site.edge.url(path))
                        .header("x-drawbridge-bypass", bad),
                )
                .await;
            assert_refused(&answer, api, &format!("{what} in the header on {path}"));
            let answer = site
                .edge
                .send(
                    client
                        .get(site.edge.url(path))
                        .header("cookie", format!("drawbridge_bypass={bad}")),
                )
                .await;
            assert_refused(&answer, api, &format!("{what} in the cookie on {path}"));
        }
    }
    // The valid token still works, so the refusals above were about the tokens.
    let ok = site
        .edge
        .send(
            client
                .get(site.edge.url("/"))
                .header("x-drawbridge-bypass", &valid),
        )
        .await;
    assert_eq!(ok.status(), 200);
}

/// `X-Forwarded-For` from a peer that is not a trusted proxy is ignored: a client from
/// 127.0.0.2 claiming a trusted address is refused, and so is one from 127.0.0.1 when no
/// trusted proxy is configured.
#[tokio::test]
async fn forwarded_for_from_untrusted_peer_is_ignored() {
    let site = Site::start_with("forwarded_for_from_untrusted_peer_is_ignored", |b| {
        b.trusted_cidrs(&["198.51.100.0/24"])
            .trusted_proxies(&["127.0.0.3/32"])
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    let untrusted_peer = test_client(Some(UNTRUSTED));
    for client in [site.edge.client().clone(), untrusted_peer] {
        for xff in ["198.51.100.7", "203.0.113.9, 198.51.100.7"] {
            let answer = site
                .edge
                .send(
                    client
                        .get(site.edge.url("/"))
                        .header("x-forwarded-for", xff),
                )
                .await;
            assert_refused(&answer, false, &format!("X-Forwarded-For {xff}"));
        }
    }
}

/// `X-Forwarded-For` from a trusted proxy is believed: the client is the rightmost entry that
/// is not itself a trusted proxy, and it passes when that address is in `trusted_cidrs`.
#[tokio::test]
async fn forwarded_for_from_trusted_proxy_is_honoured() {
    let site = Site::start_with("forwarded_for_from_trusted_proxy_is_honoured", |b| {
        b.trusted_cidrs(&["198.51.100.0/24"])
            .trusted_proxies(&["127.0.0.1/32", "127.0.0.5/32"])
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    // (X-Forwarded-For, passes): the test client connects from 127.0.0.1, a trusted proxy.
    let cases = [
        ("198.51.100.7", true),
        ("203.0.113.9, 198.51.100.7", true),
        ("198.51.100.7, 127.0.0.5", true),
        ("198.51.100.7, 203.0.113.9", false),
        ("203.0.113.9", false),
    ];
    for (xff, passes) in cases {
        let answer = site
            .edge
            .send(
                site.edge
                    .request(Method::GET, "/")
                    .header("x-forwarded-for", xff),
            )
            .await;
        if passes {
            assert_bypassed(&answer, "cidr", &format!("X-Forwarded-For {xff}"));
        } else {
            assert_refused(&answer, false, &format!("X-Forwarded-For {xff}"));
        }
    }
    // Without the header the client is the peer itself, 127.0.0.1: not in trusted_cidrs.
    let answer = site.edge.get("/").await;
    assert_refused(&answer, false, "no X-Forwarded-For");
}

/// A route's `exempt_paths` prefixes pass to the upstream in maintenance; the rest of the
/// route is closed.
#[tokio::test]
async fn exempt_paths_pass_in_maintenance() {
    let dir_name = "exempt_paths_pass_in_maintenance";
    let site = Site::start_with(dir_name, |mut b| {
        for route in &mut b.routes {
            let exempt = if route.name == "api" {
                "/api/health"
            } else {
                "/.well-known/acme-challenge/"
            };
            route.exempt_paths.push(exempt.to_string());
        }
        b
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;

    let acme = site.edge.get("/.well-known/acme-challenge/token-1").await;
    assert_eq!(acme.status(), 200, "ACME challenge");
    assert_eq!(header(&acme, "x-upstream").as_deref(), Some("ui"));
    let health = site.edge.get("/api/health").await;
    assert_eq!(health.status(), 200, "exempt api path");
    assert_eq!(header(&health, "x-upstream").as_deref(), Some("api"));

    assert_refused(
        &site.edge.get("/.well-known/other").await,
        false,
        "not exempt",
    );
    assert_refused(&site.edge.get("/api/orders").await, true, "not exempt");
}
