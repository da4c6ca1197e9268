//! Attacks on a closed gate against the real binary. Thousands of forged bypass tokens, and a
//! valid token in places the proxy does not read (query string, other names), get the ordinary
//! maintenance answer and reach no upstream; a valid token passes and never reaches the upstream
//! itself; a key rotated out (config and restart; keys are not reloaded live) no longer passes.
//! A table of client-address spoofing attempts from chosen loopback peers: none gets a bypass
//! it is not owed, and each resolves, in the access log too, to the rightmost untrusted address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use drawbridge_core::bypass::{BypassKey, Keyring, CLOCK_SKEW};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::proxy::{header, now_unix, test_client, Site};
use drawbridge_tests::upstream::Upstream;
use rand::Rng;
use reqwest::header::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const ENV: &str = "e2e";
const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";
const OTHER_SECRET: &str = "another-secret-of-enough-length-0123456789abc";
/// The client of the token tests: in no trusted network.
const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// `bypass.max_ttl` of the token tests.
const MAX_TTL_SECS: u64 = 3600;
/// Requests in flight at once during the forged-token flood (keep-alive connections).
const FLOOD_WORKERS: usize = 8;
/// How many tokens of each random kind the flood sends.
const RANDOM_EACH: usize = 600;

fn keyring(id: &str, secret: &str) -> Keyring {
    Keyring::new(vec![
        BypassKey::new(id, secret.as_bytes()).expect("a valid test key")
    ])
    .expect("one key is a valid keyring")
}

/// A token of `ring` for ten minutes from now.
fn fresh(ring: &Keyring) -> String {
    ring.sign(ENV, now_unix(), Duration::from_secs(600), Some("attack"))
}

/// At most 120 characters of `text`, for failure messages.
fn clip(text: &str) -> String {
    if text.chars().count() <= 120 {
        text.to_string()
    } else {
        let start: String = text.chars().take(120).collect();
        format!("{start}…({} bytes)", text.len())
    }
}

/// Where a forged token travels.
#[derive(Debug, Clone)]
enum Carry {
    /// These header lines, as built.
    Fixed(Vec<(HeaderName, HeaderValue)>),
    /// A token signed with the right key at send time, issued `iat_from_now` seconds from
    /// then, valid for `ttl` seconds: for the cases a second boundary must not turn valid.
    Timed {
        iat_from_now: i64,
        ttl: u64,
        cookie: bool,
    },
}

/// One request of the flood.
#[derive(Debug, Clone)]
struct Attempt {
    kind: &'static str,
    path: String,
    /// The route answers problem+json (else the page).
    api: bool,
    carry: Carry,
}

fn token_header(token: &str) -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        HeaderName::from_static("x-drawbridge-bypass"),
        HeaderValue::from_str(token).unwrap_or_else(|e| panic!("{e}: {}", clip(token))),
    )]
}

fn cookie_lines(lines: &[String]) -> Vec<(HeaderName, HeaderValue)> {
    lines
        .iter()
        .map(|line| {
            (
                HeaderName::from_static("cookie"),
                HeaderValue::from_str(line).unwrap_or_else(|e| panic!("{e}: {}", clip(line))),
            )
        })
        .collect()
}

fn token_cookie(token: &str) -> Vec<(HeaderName, HeaderValue)> {
    cookie_lines(&[format!("theme=dark; drawbridge_bypass={token}; lang=en")])
}

/// The parts of a signed token: `dbt1.<key id>`, the claims as JSON, the MAC.
fn split(token: &str) -> (String, Vec<u8>, Vec<u8>) {
    let (signed, mac) = token.rsplit_once('.').expect("a signed token");
    let (head, claims) = signed.rsplit_once('.').expect("a signed token");
    (
        head.to_string(),
        URL_SAFE_NO_PAD.decode(claims).expect("base64url claims"),
        URL_SAFE_NO_PAD.decode(mac).expect("a base64url MAC"),
    )
}

fn join(head: &str, claims: &[u8], mac: &[u8]) -> String {
    format!(
        "{head}.{}.{}",
        URL_SAFE_NO_PAD.encode(claims),
        URL_SAFE_NO_PAD.encode(mac)
    )
}

fn random_text(rng: &mut impl Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

fn random_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

/// Every forged token of the flood, by kind; each travels in the header or the cookie, on the
/// page route or the API route, in turn.
fn forged_tokens(valid: &str) -> Vec<(&'static str, String)> {
    let mut rng = rand::rng();
    let (head, claims, mac) = split(valid);
    let signed = valid.rsplit_once('.').expect("a signed token").0;
    let now = now_unix();
    let ring = keyring("k1", SECRET);
    let mut out: Vec<(&'static str, String)> = Vec::new();

    let base64url = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let visible: Vec<u8> = (0x21..0x7f).collect();
    for _ in 0..RANDOM_EACH {
        let len = rng.random_range(1..400);
        out.push((
            "random base64url text",
            random_text(&mut rng, base64url, len),
        ));
        let len = rng.random_range(1..400);
        out.push(("random visible ASCII", random_text(&mut rng, &visible, len)));
        let claims_len = rng.random_range(1..200);
        out.push((
            "right shape, random claims and MAC",
            join(
                "dbt1.k1",
                &random_bytes(&mut rng, claims_len),
                &random_bytes(&mut rng, 32),
            ),
        ));
        out.push((
            "real claims, random MAC",
            format!(
                "{signed}.{}",
                URL_SAFE_NO_PAD.encode(random_bytes(&mut rng, 32))
            ),
        ));
    }
    for bit in 0..mac.len() * 8 {
        let mut flipped = mac.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        out.push(("one bit of the MAC flipped", join(&head, &claims, &flipped)));
    }
    for bit in 0..claims.len() * 8 {
        let mut flipped = claims.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        out.push(("one bit of the claims flipped", join(&head, &flipped, &mac)));
    }
    for head in [
        "dbt0.k1",
        "dbt2.k1",
        "DBT1.k1",
        "dbt1.K1",
        "dbt1.k2",
        "dbt1.",
        "dbt1.k1.k1",
        ".k1",
        "k1",
        "dbt1.k1 ",
    ] {
        out.push(("prefix or key id changed", join(head, &claims, &mac)));
    }
    for id in ["k2", "K1", "k10", "k", "k1-old", "kid", "x", "k1_"] {
        for _ in 0..25 {
            out.push(("unknown key id", fresh(&keyring(id, SECRET))));
        }
    }
    for _ in 0..200 {
        out.push((
            "signed with another secret",
            fresh(&keyring("k1", OTHER_SECRET)),
        ));
    }
    for _ in 0..200 {
        out.push((
            "lifetime over max_ttl by 1 s",
            ring.sign(ENV, now, Duration::from_secs(MAX_TTL_SECS + 1), None),
        ));
    }
    for env in [
        "prod", "staging", "E2E", "e2e ", " e2e", "", "e2e2", "e2", "e2e\u{0}",
    ] {
        for _ in 0..25 {
            out.push((
                "another environment",
                ring.sign(env, now, Duration::from_secs(600), None),
            ));
        }
    }
    for len in 0..valid.len() {
        out.push(("truncated", valid[..len].to_string()));
        out.push(("front cut off", valid[valid.len() - len..].to_string()));
    }
    let kib64 = 64 * 1024;
    for long in [
        "A".repeat(kib64),
        ".".repeat(kib64),
        format!("{valid}{}", "A".repeat(kib64)),
        format!("{signed}.{}", "A".repeat(kib64)),
        format!(
            "dbt1.k1.{}.{}",
            "A".repeat(kib64),
            URL_SAFE_NO_PAD.encode(&mac)
        ),
        format!("{valid}.{}", "x".repeat(kib64)),
    ] {
        out.push(("64 KiB long", long));
    }
    for re_encoded in [
        format!("{signed}.{}", URL_SAFE.encode(&mac)),
        format!("{signed}.{}", STANDARD.encode(&mac)),
        format!(
            "{signed}.{}",
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        valid.to_ascii_uppercase(),
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&mac[..31])),
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode([&mac[..], &[0]].concat())
        ),
    ] {
        out.push(("MAC re-encoded or resized", re_encoded));
    }
    for extra in [
        format!("{valid}."),
        format!("{valid}.x"),
        format!("x.{valid}"),
        format!("{valid},{valid}"),
        format!("{valid}!"),
        format!("{valid}=="),
        valid.replacen('.', "..", 1),
        valid.replace('.', ""),
    ] {
        out.push(("extra characters", extra));
    }
    out
}

/// The flood: every forged token in the header or the cookie, several requests that each
/// carry more than one forged token, and tokens signed at send time that are expired by 1 s or
/// issued beyond the clock skew.
fn attempts(valid: &str) -> Vec<Attempt> {
    let routes = [("/", false), ("/api/orders", true)];
    let mut out = Vec::new();
    let mut push = |i: usize, kind: &'static str, carry: Carry| {
        let (path, api) = routes[(i / 2) % 2];
        out.push(Attempt {
            kind,
            path: path.to_string(),
            api,
            carry,
        });
    };
    let forged = forged_tokens(valid);
    for (i, (kind, token)) in forged.iter().enumerate() {
        let lines = if i % 2 == 0 {
            token_header(token)
        } else {
            token_cookie(token)
        };
        push(i, kind, Carry::Fixed(lines));
    }

    let mut rng = rand::rng();
    let other = || fresh(&keyring("k1", OTHER_SECRET));
    for i in 0..200 {
        let (a, b) = (&forged[i * 7 % forged.len()].1, other());
        let lines = match i % 5 {
            0 => cookie_lines(&[format!("drawbridge_bypass={a}; drawbridge_bypass={b}")]),
            1 => cookie_lines(&[
                format!("drawbridge_bypass={a}"),
                format!("drawbridge_bypass={b}"),
            ]),
            2 => cookie_lines(&[format!("drawbridge_bypass=; drawbridge_bypass={b}")]),
            3 => cookie_lines(&[format!(
                "drawbridge_bypass={b};drawbridge_bypass={b};drawbridge_bypass={b}"
            )]),
            _ => cookie_lines(&[format!(
                "drawbridge_bypass=\"{b}\"; a=1; drawbridge_bypass={a}"
            )]),
        };
        push(i, "duplicated cookies", Carry::Fixed(lines));
    }
    for i in 0..100 {
        let mut lines = token_header(&other());
        lines.extend(token_header(&forged[i * 13 % forged.len()].1));
        push(i, "two token header lines", Carry::Fixed(lines));
    }
    for i in 0..100 {
        // obs-text: not UTF-8, so it is no token header; the forged cookie beside it is read.
        let mut value = valid.as_bytes().to_vec();
        let at = rng.random_range(0..value.len());
        value[at] = rng.random_range(0x80..=0xff);
        let mut lines = vec![(
            HeaderName::from_static("x-drawbridge-bypass"),
            HeaderValue::from_bytes(&value).expect("obs-text is a valid header value"),
        )];
        lines.extend(token_cookie(&other()));
        push(i, "token header not UTF-8", Carry::Fixed(lines));
    }
    for i in 0..300 {
        let expired = Carry::Timed {
            iat_from_now: -601,
            ttl: 600,
            cookie: i % 2 == 1,
        };
        push(i, "expired by 1 s", expired);
        // One second for a second boundary between signing and the proxy's check, one beyond.
        let ahead = Carry::Timed {
            iat_from_now: CLOCK_SKEW.as_secs() as i64 + 2,
            ttl: 600,
            cookie: i % 2 == 1,
        };
        push(i, "issued 2 s beyond the clock skew", ahead);
    }
    out
}

/// What the maintenance answer of a closed gate must look like; `Err` says what differs.
async fn expect_maintenance(answer: reqwest::Response, api: bool) -> Result<(), String> {
    let status = answer.status().as_u16();
    let bypassed = header(&answer, "x-drawbridge-bypassed");
    let outage = header(&answer, "x-drawbridge-outage");
    let upstream = header(&answer, "x-upstream");
    let ct = header(&answer, "content-type").unwrap_or_default();
    let body = answer
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if status != 503 || bypassed.is_some() || upstream.is_some() {
        return Err(format!(
            "{status}, bypassed {bypassed:?}, upstream {upstream:?}: {}",
            clip(&String::from_utf8_lossy(&body))
        ));
    }
    if outage.as_deref() != Some("planned") {
        return Err(format!("X-Drawbridge-Outage {outage:?}"));
    }
    if api {
        let problem: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not problem+json ({e}): {ct}"))?;
        if !ct.starts_with("application/problem+json") || problem["status"] != 503 {
            return Err(format!("not the problem+json answer: {ct} {problem}"));
        }
    } else if !ct.starts_with("text/html") || !body.starts_with(b"<!doctype html>") {
        return Err(format!("not the page: {ct}"));
    }
    Ok(())
}

/// Sends every attempt from `client` with [`FLOOD_WORKERS`] requests in flight; returns the
/// failures, each naming the attempt.
async fn flood(base: &str, client: &reqwest::Client, attempts: Vec<Attempt>) -> Vec<String> {
    let attempts = Arc::new(attempts);
    let next = Arc::new(AtomicUsize::new(0));
    let ring = keyring("k1", SECRET);
    let workers: Vec<_> = (0..FLOOD_WORKERS)
        .map(|_| {
            let (attempts, next, client, ring) = (
                Arc::clone(&attempts),
                Arc::clone(&next),
                client.clone(),
                ring.clone(),
            );
            let base = base.to_string();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(attempt) = attempts.get(i) else {
                        return failures;
                    };
                    let lines = match &attempt.carry {
                        Carry::Fixed(lines) => lines.clone(),
                        Carry::Timed {
                            iat_from_now,
                            ttl,
                            cookie,
                        } => {
                            let token = ring.sign(
                                ENV,
                                now_unix() + iat_from_now,
                                Duration::from_secs(*ttl),
                                None,
                            );
                            if *cookie {
                                token_cookie(&token)
                            } else {
                                token_header(&token)
                            }
                        }
                    };
                    let mut req = client.get(format!("{base}{}", attempt.path));
                    for (name, value) in &lines {
                        req = req.header(name, value);
                    }
                    let outcome = match req.send().await {
                        Ok(answer) => expect_maintenance(answer, attempt.api).await,
                        Err(e) => Err(format!("request failed: {e}")),
                    };
                    if let Err(why) = outcome {
                        let sent: Vec<String> = lines
                            .iter()
                            .map(|(n, v)| {
                                format!("{n}: {}", clip(&String::from_utf8_lossy(v.as_bytes())))
                            })
                            .collect();
                        failures.push(format!(
                            "#{i} {} on {}: {why}; sent {sent:?}",
                            attempt.kind, attempt.path
                        ));
                    }
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("a flood worker panicked"));
    }
    failures
}

/// Asserts that `upstream` received the last request on `path` without any trace of `token`
/// (in a header or a cookie, whole or its MAC).
fn assert_token_not_forwarded(upstream: &Upstream, path: &str, token: &str) {
    let seen = upstream
        .last_request()
        .unwrap_or_else(|| panic!("{} received nothing", upstream.name()));
    assert_eq!(seen.path_and_query, path);
    let mac = token.rsplit_once('.').expect("a signed token").1;
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(mac),
            "the token reached {} in {name}: {value}",
            upstream.name()
        );
    }
    assert_eq!(seen.header("x-drawbridge-bypass"), None);
}

/// Test 20: with the gate closed, thousands of forged tokens (random, a bit of the MAC or the
/// claims flipped, expired by 1 s, issued beyond the skew, too long-lived, another environment
/// or key, truncated, 64 KiB long, re-encoded, duplicated cookies and header lines) and a valid
/// token in the query string or under other names all get the maintenance answer (503 page or
/// problem+json, never 400 or 500) and none reaches an upstream; then the valid token passes
/// in the header and the cookie, marked `X-Drawbridge-Bypassed: token`, and the upstream sees
/// no trace of it.
#[tokio::test]
async fn forged_tokens_get_the_maintenance_answer_and_reach_no_upstream() {
    let site = Site::start_with("forged_tokens_get_the_maintenance_answer", |mut b| {
        b.bypass_max_ttl = Some(format!("{MAX_TTL_SECS}s"));
        // Room for the 64 KiB tokens: what is tested is the verifier, not the 431 limit.
        b.bypass_key(ENV, "k1", SECRET)
            .limit("max_header_bytes", 256 * 1024_i64)
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let client = test_client(Some(UNTRUSTED));
    let valid = fresh(&keyring("k1", SECRET));

    let attempts = attempts(&valid);
    let total = attempts.len();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for attempt in &attempts {
        *kinds.entry(attempt.kind).or_default() += 1;
    }
    let started = Instant::now();
    let failures = flood(&site.edge.url(""), &client, attempts).await;
    let took = started.elapsed();
    println!(
        "{total} forged-token requests in {took:?} ({:.0}/s), {} not the maintenance answer; \
         by kind: {kinds:#?}",
        total as f64 / took.as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} forged tokens did not get the maintenance answer; the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(
        site.ui.proxied_requests() + site.api.proxied_requests(),
        0,
        "a forged token reached an upstream"
    );

    // The valid token, where the proxy does not read tokens.
    let encoded = valid.replace('.', "%2E");
    let misplaced: Vec<(String, Vec<(&str, String)>)> = vec![
        (format!("/?drawbridge_bypass={valid}"), vec![]),
        (format!("/?x-drawbridge-bypass={valid}"), vec![]),
        (format!("/?token={valid}&bypass={valid}"), vec![]),
        (format!("/api/orders?drawbridge_bypass={valid}"), vec![]),
        (format!("/api/orders?drawbridge_bypass={encoded}"), vec![]),
        (format!("/;drawbridge_bypass={valid}"), vec![]),
        (format!("/{valid}"), vec![]),
        (
            format!("/?cookie=drawbridge_bypass%3D{valid}"),
            vec![("x-drawbridge-bypass", "dbt1.k1.x.y".to_string())],
        ),
        (
            "/".into(),
            vec![("x-drawbridge-bypass-token", valid.clone())],
        ),
        ("/".into(), vec![("x-drawbridge_bypass", valid.clone())]),
        ("/".into(), vec![("drawbridge-bypass", valid.clone())]),
        ("/".into(), vec![("x-bypass", valid.clone())]),
        (
            "/api/orders".into(),
            vec![("authorization", format!("Bearer {valid}"))],
        ),
        (
            "/".into(),
            vec![("cookie", format!("Drawbridge_Bypass={valid}"))],
        ),
        (
            "/".into(),
            vec![("cookie", format!("drawbridge-bypass={valid}"))],
        ),
        (
            "/".into(),
            vec![("cookie", format!("xdrawbridge_bypass={valid}"))],
        ),
        (
            "/".into(),
            vec![("cookie", format!("drawbridge_bypass_={valid}"))],
        ),
        (
            "/".into(),
            vec![("cookie2", format!("drawbridge_bypass={valid}"))],
        ),
    ];
    for (path, lines) in &misplaced {
        let mut req = client.get(site.edge.url(path));
        for (name, value) in lines {
            req = req.header(*name, value);
        }
        let api = path.starts_with("/api/");
        if let Err(why) = expect_maintenance(site.edge.send(req).await, api).await {
            panic!("the valid token in {path} {lines:?} passed or failed: {why}");
        }
    }
    assert_eq!(
        site.ui.proxied_requests() + site.api.proxied_requests(),
        0,
        "a misplaced token reached an upstream"
    );
    println!("{} misplaced valid tokens refused", misplaced.len());

    // The valid token in its places: passes, marked, and stays at the proxy.
    let by_header = site
        .edge
        .send(
            client
                .get(site.edge.url("/api/orders"))
                .header("x-drawbridge-bypass", &valid),
        )
        .await;
    assert_eq!(by_header.status(), 200);
    assert_eq!(
        header(&by_header, "x-drawbridge-bypassed").as_deref(),
        Some("token")
    );
    assert_token_not_forwarded(&site.api, "/api/orders", &valid);
    let by_cookie = site
        .edge
        .send(client.get(site.edge.url("/settings")).header(
            "cookie",
            format!("theme=dark; drawbridge_bypass={valid}; lang=en"),
        ))
        .await;
    assert_eq!(by_cookie.status(), 200);
    assert_eq!(
        header(&by_cookie, "x-drawbridge-bypassed").as_deref(),
        Some("token")
    );
    assert_token_not_forwarded(&site.ui, "/settings", &valid);
    let seen = site.ui.last_request().expect("the cookie request");
    assert_eq!(seen.header_lines("cookie"), ["theme=dark; lang=en"]);
    assert_eq!(
        site.ui.proxied_requests() + site.api.proxied_requests(),
        2,
        "exactly the two valid requests reached an upstream"
    );
}

/// Whether `token` in the header passes the closed gate on the API route (else it must get the
/// maintenance answer).
async fn passes(site: &Site, token: &str, what: &str) -> bool {
    let client = test_client(Some(UNTRUSTED));
    let answer = site
        .edge
        .send(
            client
                .get(site.edge.url("/api/rotation"))
                .header("x-drawbridge-bypass", token),
        )
        .await;
    if answer.status() == 200 {
        let bypassed = header(&answer, "x-drawbridge-bypassed");
        assert_eq!(bypassed.as_deref(), Some("token"), "{what}");
        return true;
    }
    expect_maintenance(answer, true)
        .await
        .unwrap_or_else(|why| panic!("{what}: {why}"));
    false
}

/// Rewrites the proxy's config with `keys` as `[[bypass.keys]]` and restarts it; returns how
/// long the restart took (stop, start, first Consul answer applied).
async fn rotate(site: &mut Site, keys: &[(&str, &str)]) -> Duration {
    let mut config = site.edge.config().clone();
    config.bypass_keys = keys
        .iter()
        .map(|(id, secret)| (id.to_string(), secret.to_string()))
        .collect();
    config.write_config(site.dir.path());
    let started = Instant::now();
    site.edge.restart().await;
    started.elapsed()
}

/// Test 20, rotation: keys come from the config file and are read at start, so a key is
/// rotated by a restart. Listing the new key first keeps the old key's tokens valid (the
/// documented overlap); once the old key is dropped, or its secret replaced under the same id,
/// its tokens get the maintenance answer from the first request after the restart.
#[tokio::test]
async fn a_rotated_out_key_is_refused_after_the_restart() {
    const NEW_SECRET: &str = "the-new-bypass-secret-0123456789abcdef-012345";
    let mut site = Site::start_with("a_rotated_out_key_is_refused", |b| {
        b.bypass_key(ENV, "k1", SECRET)
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let old = fresh(&keyring("k1", SECRET));
    let new = fresh(&keyring("k2", NEW_SECRET));
    let same_id_new_secret = fresh(&keyring("k1", NEW_SECRET));

    assert!(passes(&site, &old, "k1 before the rotation").await);
    assert!(!passes(&site, &new, "k2 before it is listed").await);

    let overlap = rotate(&mut site, &[("k2", NEW_SECRET), ("k1", SECRET)]).await;
    assert!(passes(&site, &new, "k2 listed first").await);
    assert!(passes(&site, &old, "k1 still listed").await);

    let dropped = rotate(&mut site, &[("k2", NEW_SECRET)]).await;
    assert!(passes(&site, &new, "k2 alone").await);
    assert!(!passes(&site, &old, "k1 dropped").await);

    let took = rotate(&mut site, &[("k1", NEW_SECRET)]).await;
    assert!(passes(&site, &same_id_new_secret, "k1 with the new secret").await);
    assert!(!passes(&site, &old, "k1 with the replaced secret").await);
    assert!(!passes(&site, &new, "k2 dropped").await);
    println!(
        "restarts to rotate: overlap {overlap:?}, old key dropped {dropped:?}, \
         secret replaced {took:?}"
    );
    // Each passing request above went upstream; the refused ones did not.
    assert_eq!(site.api.proxied_requests(), 5);
}

/// The trusted client network and trusted proxies of the spoofing table.
const TRUSTED_CIDR: &str = "127.0.0.32/28";
const TRUSTED_PROXIES: &str = "127.0.0.8/29";

/// What a spoofing case must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The maintenance answer.
    Refused,
    /// A cidr bypass, answered by the upstream.
    Bypass,
    /// A cidr bypass that Pingora then refuses to forward (400): the request nominates
    /// `X-Forwarded-For` in `Connection`.
    BypassNotForwarded,
}

/// One row of the spoofing table.
struct Case {
    why: &'static str,
    peer: [u8; 4],
    /// Header lines as sent, each ending in CRLF (bytes: some are not UTF-8).
    headers: Vec<u8>,
    /// The client the proxy must resolve, `-` for unknown.
    client: &'static str,
    outcome: Outcome,
}

fn xff(values: &[&str]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| format!("X-Forwarded-For: {v}\r\n").into_bytes())
        .collect()
}

fn lines(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\r\n").into_bytes())
        .collect()
}

/// The table: the peer is a client (127.0.0.2, .1, boundaries .7/.16/.31/.48), a trusted
/// client (127.0.0.32-47) or a trusted proxy (127.0.0.8-15); the trusted client in the chains
/// is 127.0.0.33.
#[rustfmt::skip]
fn spoofing_cases() -> Vec<Case> {
    use Outcome::{Bypass, BypassNotForwarded, Refused};
    const C: [u8; 4] = [127, 0, 0, 2];
    const P: [u8; 4] = [127, 0, 0, 9];
    let case = |why, peer, headers: Vec<u8>, client, outcome| Case {
        why,
        peer,
        headers,
        client,
        outcome,
    };
    let many = |entry: &str, n: usize| vec![entry; n].join(", ");
    let long_spoofed = format!("{}, 203.0.113.9", many("127.0.0.33", 2000));
    let long_proxies = format!("127.0.0.33, {}", many("127.0.0.10", 2000));
    let long_untrusted = format!("{}, 127.0.0.33", many("203.0.113.9", 2000));
    let mut sixty_lines = xff(&["127.0.0.33"; 60]);
    sixty_lines.extend(xff(&["203.0.113.9"]));
    let not_utf8 = b"X-Forwarded-For: 127.0.0.33\xff\r\n".to_vec();
    let not_utf8_from_client = not_utf8.clone();
    let not_utf8_left = b"X-Forwarded-For: \xff, 203.0.113.9\r\n".to_vec();
    vec![
        // An untrusted peer: nothing it writes is believed.
        case("allowlisted address in XFF", C, xff(&["127.0.0.33"]), "127.0.0.2", Refused),
        case("allowlisted, then a trusted proxy", C, xff(&["127.0.0.33, 127.0.0.9"]), "127.0.0.2", Refused),
        case("a trusted proxy's address", C, xff(&["127.0.0.9"]), "127.0.0.2", Refused),
        case("two XFF lines", C, xff(&["127.0.0.33", "127.0.0.33"]), "127.0.0.2", Refused),
        case("IPv4-mapped allowlisted", C, xff(&["::ffff:127.0.0.33"]), "127.0.0.2", Refused),
        case("with a port", C, xff(&["127.0.0.33:80"]), "127.0.0.2", Refused),
        case("Forwarded for=", C, lines(&["Forwarded: for=127.0.0.33"]), "127.0.0.2", Refused),
        case("Forwarded and XFF agree", C, [lines(&["Forwarded: for=127.0.0.33"]), xff(&["127.0.0.33"])].concat(), "127.0.0.2", Refused),
        case("X-Real-IP", C, lines(&["X-Real-IP: 127.0.0.33"]), "127.0.0.2", Refused),
        case(
            "other client-address headers",
            C,
            lines(&[
                "True-Client-IP: 127.0.0.33",
                "CF-Connecting-IP: 127.0.0.33",
                "X-Client-IP: 127.0.0.33",
                "Client-IP: 127.0.0.33",
                "X-Originating-IP: 127.0.0.33",
                "X-Cluster-Client-IP: 127.0.0.33",
            ]),
            "127.0.0.2",
            Refused,
        ),
        case("Connection: X-Forwarded-For", C, [lines(&["Connection: X-Forwarded-For"]), xff(&["127.0.0.33"])].concat(), "127.0.0.2", Refused),
        case("X_Forwarded_For (underscores)", C, lines(&["X_Forwarded_For: 127.0.0.33"]), "127.0.0.2", Refused),
        case("garbage XFF", C, xff(&["unknown"]), "127.0.0.2", Refused),
        case("XFF not UTF-8", C, not_utf8_from_client, "127.0.0.2", Refused),
        case("very long chain", [127, 0, 0, 200], xff(&[&long_spoofed]), "127.0.0.200", Refused),
        case("a chain through both proxies", [127, 0, 0, 20], xff(&["127.0.0.33, 127.0.0.9, 127.0.0.10"]), "127.0.0.20", Refused),
        case("from 127.0.0.1", [127, 0, 0, 1], xff(&["127.0.0.33"]), "127.0.0.1", Refused),
        case("just below the proxies", [127, 0, 0, 7], xff(&["127.0.0.33"]), "127.0.0.7", Refused),
        case("just above the proxies", [127, 0, 0, 16], xff(&["127.0.0.33"]), "127.0.0.16", Refused),
        case("just below the allowlist", [127, 0, 0, 31], xff(&["127.0.0.33"]), "127.0.0.31", Refused),
        case("just above the allowlist", [127, 0, 0, 48], xff(&["127.0.0.33"]), "127.0.0.48", Refused),
        // A trusted client: its own address counts, XFF cannot move it.
        case("trusted client, untrusted XFF", [127, 0, 0, 33], xff(&["203.0.113.9"]), "127.0.0.33", Bypass),
        case("trusted client, first of the range", [127, 0, 0, 32], xff(&["garbage"]), "127.0.0.32", Bypass),
        case("trusted client, last of the range", [127, 0, 0, 47], vec![], "127.0.0.47", Bypass),
        // A trusted proxy: the rightmost entry that is not a trusted proxy.
        case("proxy, no XFF", P, vec![], "127.0.0.9", Refused),
        case("proxy vouches for an allowlisted client", P, xff(&["127.0.0.33"]), "127.0.0.33", Bypass),
        case("proxy, untrusted client", P, xff(&["203.0.113.9"]), "203.0.113.9", Refused),
        case("spoofed, real", P, xff(&["127.0.0.33, 203.0.113.9"]), "203.0.113.9", Refused),
        case("spoofed, real on loopback", P, xff(&["127.0.0.33, 127.0.0.2"]), "127.0.0.2", Refused),
        case("spoofed left of an allowlisted client", P, xff(&["203.0.113.9, 127.0.0.33"]), "127.0.0.33", Bypass),
        case("spoofed proxy hop", P, xff(&["127.0.0.33, 127.0.0.9, 203.0.113.9"]), "203.0.113.9", Refused),
        case("two proxies, untrusted client", P, xff(&["203.0.113.9, 127.0.0.10"]), "203.0.113.9", Refused),
        case("two proxies, allowlisted client", P, xff(&["127.0.0.33, 127.0.0.10, 127.0.0.15"]), "127.0.0.33", Bypass),
        case("last proxy of the range", [127, 0, 0, 15], xff(&["127.0.0.33"]), "127.0.0.33", Bypass),
        case("only proxies in the chain: the leftmost", [127, 0, 0, 8], xff(&["127.0.0.10, 127.0.0.11"]), "127.0.0.10", Refused),
        case("an address just outside the proxies", P, xff(&["127.0.0.33, 127.0.0.16"]), "127.0.0.16", Refused),
        // Several XFF lines: one chain, in order.
        case("lines: spoofed, real", P, xff(&["127.0.0.33", "203.0.113.9"]), "203.0.113.9", Refused),
        case("lines: other, allowlisted", P, xff(&["203.0.113.9", "127.0.0.33"]), "127.0.0.33", Bypass),
        case("lines: allowlisted, proxy", P, xff(&["127.0.0.33", "127.0.0.10"]), "127.0.0.33", Bypass),
        case("lines: spoofed chain, proxy", P, xff(&["127.0.0.33, 127.0.0.2", "127.0.0.10"]), "127.0.0.2", Refused),
        case("61 lines", P, sixty_lines, "203.0.113.9", Refused),
        // Forwarded, X-Real-IP and the like are never read.
        case("Forwarded allowlisted, XFF not", P, [lines(&["Forwarded: for=127.0.0.33"]), xff(&["203.0.113.9"])].concat(), "203.0.113.9", Refused),
        case("Forwarded not, XFF allowlisted", P, [lines(&["Forwarded: for=203.0.113.9"]), xff(&["127.0.0.33"])].concat(), "127.0.0.33", Bypass),
        case("Forwarded alone", P, lines(&["Forwarded: for=127.0.0.33;proto=https"]), "127.0.0.9", Refused),
        case("X-Real-IP beside XFF", P, [lines(&["X-Real-IP: 127.0.0.33"]), xff(&["203.0.113.9"])].concat(), "203.0.113.9", Refused),
        case("True-Client-IP alone", P, lines(&["True-Client-IP: 127.0.0.33"]), "127.0.0.9", Refused),
        // Ports.
        case("port on the client", P, xff(&["127.0.0.33:4711"]), "127.0.0.33", Bypass),
        case("port on an untrusted client", P, xff(&["203.0.113.9:443"]), "203.0.113.9", Refused),
        case("port on a proxy hop", P, xff(&["127.0.0.33, 127.0.0.10:8080"]), "127.0.0.33", Bypass),
        case("bracketed IPv6 with port", P, xff(&["[2001:db8::1]:443"]), "2001:db8::1", Refused),
        case("bracketed mapped IPv6 with port", P, xff(&["[::ffff:127.0.0.33]:80"]), "127.0.0.33", Bypass),
        case("port out of range", P, xff(&["127.0.0.33:99999"]), "-", Refused),
        case("empty port", P, xff(&["127.0.0.33:"]), "-", Refused),
        case("brackets without a port", P, xff(&["[2001:db8::1]"]), "-", Refused),
        // IPv4-mapped and other IPv6 spellings.
        case("mapped allowlisted", P, xff(&["::ffff:127.0.0.33"]), "127.0.0.33", Bypass),
        case("mapped, hex spelling", P, xff(&["::FFFF:7f00:21"]), "127.0.0.33", Bypass),
        case("mapped proxy hop", P, xff(&["127.0.0.33, ::ffff:127.0.0.10"]), "127.0.0.33", Bypass),
        case("mapped spoofed, real", P, xff(&["::ffff:127.0.0.33, 203.0.113.9"]), "203.0.113.9", Refused),
        case("IPv4-compatible is not IPv4", P, xff(&["::127.0.0.33"]), "::7f00:21", Refused),
        case("NAT64 is not IPv4", P, xff(&["64:ff9b::7f00:21"]), "64:ff9b::7f00:21", Refused),
        case("plain IPv6", P, xff(&["2001:db8::1"]), "2001:db8::1", Refused),
        // Connection nominating X-Forwarded-For: the chain is still read; forwarding is refused.
        case("Connection: X-Forwarded-For, spoofed, real", P, [lines(&["Connection: X-Forwarded-For"]), xff(&["127.0.0.33, 203.0.113.9"])].concat(), "203.0.113.9", Refused),
        case("Connection: X-Forwarded-For, allowlisted", P, [lines(&["Connection: close, X-Forwarded-For"]), xff(&["127.0.0.33"])].concat(), "127.0.0.33", BypassNotForwarded),
        case("Connection: keep-alive, x-forwarded-for", P, [lines(&["Connection: keep-alive, x-forwarded-for"]), xff(&["203.0.113.9"])].concat(), "203.0.113.9", Refused),
        // Garbage from behind a trusted proxy: unknown (no bypass), unless it is left of the client.
        case("unknown", P, xff(&["unknown"]), "-", Refused),
        case("allowlisted, then garbage", P, xff(&["127.0.0.33, unknown"]), "-", Refused),
        case("garbage, then untrusted", P, xff(&["unknown, 203.0.113.9"]), "203.0.113.9", Refused),
        case("garbage, then allowlisted", P, xff(&["garbage, 127.0.0.33"]), "127.0.0.33", Bypass),
        case("two addresses, no comma", P, xff(&["127.0.0.33 203.0.113.9"]), "-", Refused),
        case("semicolon separated", P, xff(&["127.0.0.33;203.0.113.9"]), "-", Refused),
        case("quoted", P, xff(&["\"127.0.0.33\""]), "-", Refused),
        case("Forwarded syntax in XFF", P, xff(&["for=127.0.0.33"]), "-", Refused),
        case("octal", P, xff(&["0177.0.0.33"]), "-", Refused),
        case("leading zeros", P, xff(&["127.0.0.033"]), "-", Refused),
        case("one integer", P, xff(&["2130706465"]), "-", Refused),
        case("hex octet", P, xff(&["0x7f.0.0.33"]), "-", Refused),
        case("short form", P, xff(&["127.33"]), "-", Refused),
        case("zone index", P, xff(&["fe80::1%lo"]), "-", Refused),
        case("obfuscated hop name", P, xff(&["127.0.0.33, _hidden"]), "-", Refused),
        case("not UTF-8", P, not_utf8, "-", Refused),
        case("not UTF-8 left of the client", P, not_utf8_left, "203.0.113.9", Refused),
        // Empty entries and whitespace.
        case("empty value", P, xff(&[""]), "127.0.0.9", Refused),
        case("only commas", P, xff(&[", ,"]), "127.0.0.9", Refused),
        case("empty entries around", P, xff(&[", ,127.0.0.33,,"]), "127.0.0.33", Bypass),
        case("empty entry between", P, xff(&["127.0.0.33, , 203.0.113.9"]), "203.0.113.9", Refused),
        case("an empty line after", P, xff(&["127.0.0.33", ""]), "127.0.0.33", Bypass),
        case("spaces around", P, xff(&["   127.0.0.33   "]), "127.0.0.33", Bypass),
        case("no spaces", P, xff(&["127.0.0.33,203.0.113.9"]), "203.0.113.9", Refused),
        case("tabs", P, xff(&["\t127.0.0.33\t,\t203.0.113.9\t"]), "203.0.113.9", Refused),
        case("spaces before commas", P, xff(&["127.0.0.33 , 127.0.0.10 "]), "127.0.0.33", Bypass),
        // Very long chains (about 24 KiB, under max_header_bytes).
        case("2 000 spoofed, then real", P, xff(&[&long_spoofed]), "203.0.113.9", Refused),
        case("allowlisted behind 2 000 proxy hops", P, xff(&[&long_proxies]), "127.0.0.33", Bypass),
        case("2 000 others, then allowlisted", P, xff(&[&long_untrusted]), "127.0.0.33", Bypass),
    ]
}

/// Whether `client` (as the table writes it) is in [`TRUSTED_CIDR`].
fn in_trusted_cidr(client: &str) -> bool {
    matches!(client.parse::<IpAddr>(), Ok(IpAddr::V4(v4)) if v4.octets()[..3] == [127, 0, 0] && (32..48).contains(&v4.octets()[3]))
}

/// Sends `request` from the loopback address `from` on a connection of its own and returns the
/// answer's header block (the body is read and dropped).
async fn exchange(from: [u8; 4], to: SocketAddr, request: &[u8]) -> String {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    let mut stream = socket
        .connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect from {from:?} to {to}: {e}"));
    stream.write_all(request).await.expect("write the request");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                let chunked = head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked");
                if length.is_some_and(|n| got.len() >= end + 4 + n)
                    || (chunked && got.ends_with(b"0\r\n\r\n"))
                {
                    return head;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no whole answer within 10 s from {from:?}"))
}

fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// Test 21: a table of client-address spoofing attempts, each from its own loopback peer, with
/// `trusted_cidrs = 127.0.0.32/28` and `trusted_proxies = 127.0.0.8/29`. Every case gets the
/// decision it is owed (no untrusted client passes), resolves to the rightmost address that is
/// not a trusted proxy (`-` when a trusted proxy sent garbage there), and that address is what
/// the access log records as the client and what the upstream gets as `X-Real-IP`.
#[tokio::test]
async fn spoofed_client_addresses_gain_no_bypass_and_resolve_as_documented() {
    let site = Site::start_with("spoofed_client_addresses_gain_no_bypass", |b| {
        b.trusted_cidrs(&[TRUSTED_CIDR])
            .trusted_proxies(&[TRUSTED_PROXIES])
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let cases = spoofing_cases();
    for case in &cases {
        let owed = case.outcome != Outcome::Refused;
        assert_eq!(
            owed,
            in_trusted_cidr(case.client),
            "the table is inconsistent at {:?}",
            case.why
        );
    }

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut granted_to_untrusted = 0;
    for (i, case) in cases.iter().enumerate() {
        let path = format!("/spoof/{i:02}");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n").into_bytes();
        request.extend_from_slice(&case.headers);
        request.extend_from_slice(b"\r\n");
        let head = exchange(case.peer, site.edge.listen_addr(), &request).await;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let bypassed = head_header(&head, "x-drawbridge-bypassed");
        let (want_status, want_bypassed) = match case.outcome {
            Outcome::Refused => (503, None),
            Outcome::Bypass => (200, Some("cidr")),
            Outcome::BypassNotForwarded => (400, None),
        };
        if bypassed.is_some() && case.outcome == Outcome::Refused {
            granted_to_untrusted += 1;
        }
        if status != want_status || bypassed.as_deref() != want_bypassed {
            failures.push(format!(
                "{path} {:?}: want {want_status} {want_bypassed:?}, got {status} {bypassed:?}",
                case.why
            ));
        }
        if case.outcome == Outcome::Bypass {
            let seen = site
                .ui
                .last_request()
                .expect("a bypass reached the upstream");
            let real_ip = seen.header("x-real-ip").map(str::to_string);
            if seen.path_and_query != path || real_ip.as_deref() != Some(case.client) {
                failures.push(format!(
                    "{path} {:?}: the upstream got {} with X-Real-IP {real_ip:?}",
                    case.why, seen.path_and_query
                ));
            }
        }
    }
    let took = started.elapsed();

    // The access log: `<client> GET <path> <status> ... decision=<d> peer=<peer> ...`.
    let log = eventually(
        "an access-log line for every case",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let log = site.edge.log();
            let missing = (0..cases.len())
                .filter(|i| !log.contains(&format!(" GET /spoof/{i:02} ")))
                .count();
            if missing == 0 {
                Ok(log)
            } else {
                Err(format!("{missing} lines missing"))
            }
        },
    )
    .await;
    for (i, case) in cases.iter().enumerate() {
        let marker = format!(" GET /spoof/{i:02} ");
        let line = log
            .lines()
            .find(|l| l.contains(&marker))
            .expect("waited for above");
        let before = &line[..line.find(&marker).expect("found above")];
        let logged_client = before.rsplit(' ').next().unwrap_or("");
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let peer = Ipv4Addr::from(case.peer).to_string();
        let decision = if case.outcome == Outcome::Refused {
            "maintenance"
        } else {
            "bypass_cidr"
        };
        if logged_client != case.client || field("peer=") != peer || field("decision=") != decision
        {
            failures.push(format!(
                "/spoof/{i:02} {:?}: want client {} peer={peer} decision={decision}, \
                 logged {line}",
                case.why, case.client
            ));
        }
    }
    let granted = cases
        .iter()
        .filter(|c| c.outcome != Outcome::Refused)
        .count();
    println!(
        "{} spoofing cases in {took:?}: {granted} owed a bypass, {} refused, \
         {granted_to_untrusted} bypasses granted to an untrusted client, {} failures",
        cases.len(),
        cases.len() - granted,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} spoofing cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
