//! Admin and ACL hardening: a public admin listener needs a token; wrong admin tokens are
//! refused without detail, counted and logged at most once a second while the data plane keeps
//! its latency; the admin listener changes nothing; against a Consul that enforces ACLs
//! (`default_policy = "deny"`) a proxy with `key:read` on its one key follows it, one without
//! serves the fail-safe state and says which key was denied, a token revoked at runtime keeps
//! the last state and is reported as denied (not as unreachable); `maintctl` without
//! `node:write` stops at pre-flight; and no token secret shows in any log, journal entry, error
//! message or process command line.
//!
//! The config rule behind the first test is also unit-tested with the proxy's config checks,
//! and `--check` of other broken files is in proxy_config.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use drawbridge_core::consul::{QueryOptions, NODE_MAINTENANCE_CHECK};
use drawbridge_core::gate::Mode;
use drawbridge_core::status::StatusReport;
use drawbridge_tests::consul::SERVER_NODE;
use drawbridge_tests::consul_acl::{
    logs_in, process_texts, run_maintctl, secret_hits, AclConsul, AclToken, TOKEN_TTL,
};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::load::{open_loop, Served};
use drawbridge_tests::ports::free_port;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{
    run_drawbridge, set_gate, Drawbridge, DrawbridgeBuilder, Metrics, Ready, Route, Site,
};
use drawbridge_tests::upstream::{Kind, Upstream};

/// The admin token of the proxies here (16+ characters).
const ADMIN_TOKEN: &str = "acl-e2e-admin-token-7c1f0a9d3e5b";

/// The bypass key secret of the proxies here (32+ characters).
const BYPASS_SECRET: &str = "acl-e2e-bypass-secret-5d8e2b7a0c4f9e1d";

/// Wrong admin tokens sent in the flood.
const WRONG_TOKENS: usize = 2_000;

/// Concurrent senders of the flood.
const FLOOD_SENDERS: usize = 8;

/// Legitimate requests a second beside the flood.
const LEGIT_RATE: u32 = 100;

/// The watchers' blocking wait here: a revoked token is seen at the end of the read open then.
const CONSUL_WAIT: Duration = Duration::from_secs(2);

/// The label of the watcher's ACL failures in `drawbridge_consul_watch_errors_total`.
const DENIED: &[(&str, &str)] = &[("kind", "acl_denied")];

/// The label of its failures to connect.
const UNREACHABLE: &[(&str, &str)] = &[("kind", "unreachable")];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A proxy of these tests for `key` at `consul`: one page route to `ui`, the admin token, a
/// bypass key, short blocking reads, and the Consul token (when given) as a token file.
fn edge_builder(
    consul: &str,
    key: &str,
    ui: &Upstream,
    token: Option<&AclToken>,
) -> DrawbridgeBuilder {
    let mut b = Drawbridge::builder(consul, key)
        .consul_wait(&format!("{}s", CONSUL_WAIT.as_secs()))
        .admin_token(ADMIN_TOKEN)
        .bypass_key("acl", "k1", BYPASS_SECRET)
        .static_pool("ui", &[ui], None)
        .route(Route::page("ui", "/", "ui"));
    if let Some(token) = token {
        b.env.push((
            "CONSUL_HTTP_TOKEN_FILE".to_owned(),
            token.file.display().to_string(),
        ));
    }
    b
}

/// Asserts that none of `secrets` is in the logs of `dir`, in the command line or environment
/// of `edges`, or in their `/status` and `/metrics`; `more` are other texts to search (maintctl's
/// journal, its output). Returns how many texts were searched.
async fn assert_no_secret_leaks(
    dir: &TestDir,
    edges: &[&Drawbridge],
    more: Vec<(String, String)>,
    secrets: &[&str],
) -> usize {
    let mut texts = logs_in(dir.path());
    texts.extend(more);
    for edge in edges {
        let name = &edge.config().name;
        texts.extend(process_texts(name, edge.pid()));
        texts.push((
            format!("{name} /status"),
            edge.status_json().await.to_string(),
        ));
        texts.push((format!("{name} /metrics"), edge.metrics().await.text));
    }
    let hits = secret_hits(&texts, secrets);
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
    texts.len()
}

/// `GET <url>` at `rate` a second for `secs` with `client` ([`open_loop`]).
async fn legitimate_load(client: &reqwest::Client, url: &str, rate: u32, secs: Duration) -> Served {
    open_loop(client, url, u64::from(rate), secs, None).await
}

/// The `Authorization` header of wrong try `i` (`None`: no header at all): random tokens, near
/// misses of the right one, other schemes.
fn wrong_authorization(i: usize) -> Option<String> {
    let near = |s: String| Some(format!("Bearer {s}"));
    match i % 8 {
        0 => None,
        1 => near(format!("{ADMIN_TOKEN}x")),
        2 => near(ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1].to_owned()),
        3 => near(ADMIN_TOKEN.to_uppercase()),
        4 => Some(format!("Basic {ADMIN_TOKEN}")),
        5 => Some(format!("Bearer  {ADMIN_TOKEN}")),
        _ => near(format!("guess-{i:05}-{:016x}", rand::random::<u64>())),
    }
}

/// Sends [`WRONG_TOKENS`] requests with wrong tokens to `/status` and `/metrics` of `admin`
/// from [`FLOOD_SENDERS`] tasks; returns the answers that were not a bare 401, and how long it
/// took.
async fn flood_wrong_tokens(admin: SocketAddr) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..FLOOD_SENDERS {
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a reqwest client");
            let mut wrong = Vec::new();
            for i in (sender..WRONG_TOKENS).step_by(FLOOD_SENDERS) {
                let path = if i % 2 == 0 { "/status" } else { "/metrics" };
                let mut req = client.get(format!("http://{admin}{path}"));
                let authorization = wrong_authorization(i);
                if let Some(value) = &authorization {
                    req = req.header("authorization", value);
                }
                match req.send().await {
                    Ok(answer) => {
                        let status = answer.status();
                        let challenge = answer.headers().get("www-authenticate").cloned();
                        let body = answer.text().await.unwrap_or_default();
                        let detail = ["gate", "mode", "consul", "drawbridge_", ADMIN_TOKEN]
                            .iter()
                            .any(|word| body.contains(word))
                            || authorization.as_ref().is_some_and(|a| body.contains(a));
                        if status != 401
                            || detail
                            || challenge.as_ref().and_then(|c| c.to_str().ok()) != Some("Bearer")
                        {
                            wrong.push(format!(
                                "{path} with {authorization:?}: {status}, {challenge:?}: {body}"
                            ));
                        }
                    }
                    Err(e) => wrong.push(format!("{path}: {e}")),
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for sender in senders {
        wrong.extend(sender.await.expect("a flood task does not panic"));
    }
    (wrong, started.elapsed())
}

/// (a) An admin listener on a non-loopback address without `admin.token`: a normal start exits 2
/// at once, naming the field and what to set, and nothing listens.
#[tokio::test]
async fn a_public_admin_listener_without_a_token_refuses_to_start() {
    let dir = TestDir::new("acl_public_admin_without_token");
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let mut b = edge_builder(
        "http://127.0.0.1:1",
        "drawbridge/acl/public/gate",
        &ui,
        None,
    );
    b.admin_token = None;
    b.admin_listen = SocketAddr::from(([0, 0, 0, 0], free_port()));
    let config = b.write_config(dir.path());
    let out = run_drawbridge(&config, &[], Duration::from_secs(20)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let listen = b.admin_listen.to_string();
    for needle in [
        "admin.listen",
        listen.as_str(),
        "is not a loopback address",
        "set admin.token",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} not in stderr: {stderr}"
        );
    }
    for addr in [
        b.listen,
        SocketAddr::from(([127, 0, 0, 1], b.admin_listen.port())),
    ] {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} accepts connections"
        );
    }
}

/// (b) 2 000 wrong admin tokens (none, random, near misses, another scheme) to `/status` and
/// `/metrics` get 401 each, with the `Bearer` challenge and no detail, are counted in
/// `drawbridge_refused_requests_total{reason="admin_token"}` and logged at most one line a
/// second, while legitimate traffic beside them keeps its p99 (printed, with the loose bound of
/// the siege tests). Requests other than GET and HEAD get 405 and change nothing; a GET with
/// query parameters is only a read.
#[tokio::test]
async fn wrong_admin_tokens_get_401_without_detail_while_the_data_plane_keeps_its_latency() {
    let site = Site::start_with("acl_wrong_admin_tokens", |b| {
        b.admin_token(ADMIN_TOKEN)
            .bypass_key("acl", "k1", BYPASS_SECRET)
            // The legitimate load comes from one address and may open many connections.
            .limit("max_connections_per_client", 10_000)
    })
    .await;
    let edge = &site.edge;
    let before = site
        .put_gate(r#"{"mode":"read_only","reason":"acl"}"#)
        .await;
    let base = edge.metrics().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client");
    let url = edge.url("/legit");

    let baseline = legitimate_load(&client, &url, LEGIT_RATE, Duration::from_secs(2)).await;
    let ((wrong, flood_took), under) = tokio::join!(
        flood_wrong_tokens(edge.config().admin_listen),
        legitimate_load(&client, &url, LEGIT_RATE, Duration::from_secs(3)),
    );
    let bound = (baseline.p99 * 3).max(Duration::from_millis(250));
    println!(
        "wrong admin tokens: {WRONG_TOKENS} in {:.0} ms ({:.0}/s) from {FLOOD_SENDERS} senders, \
         {} not a bare 401; legitimate p99 {:.1} ms before, {:.1} ms beside them (bound {:.0} \
         ms); {}/{} and {}/{} answered 200",
        ms(flood_took),
        WRONG_TOKENS as f64 / flood_took.as_secs_f64(),
        wrong.len(),
        ms(baseline.p99),
        ms(under.p99),
        ms(bound),
        baseline.ok,
        baseline.sent,
        under.ok,
        under.sent
    );
    assert!(
        wrong.is_empty(),
        "{} answers:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    assert_eq!(baseline.ok, baseline.sent, "{:?}", baseline.failures);
    assert_eq!(under.ok, under.sent, "{:?}", under.failures);
    assert!(
        under.p99 <= bound,
        "legitimate p99 {:?} > {bound:?}",
        under.p99
    );

    // Every refusal counted; the log has a line a second at most, never a token.
    let refused = |m: &Metrics| {
        m.value(
            "drawbridge_refused_requests_total",
            &[("reason", "admin_token")],
        )
    };
    let counted = eventually(
        "every wrong token counted",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let delta = refused(&edge.metrics().await) - refused(&base);
            if delta == WRONG_TOKENS as f64 {
                Ok(delta)
            } else {
                Err(format!("{delta} counted"))
            }
        },
    )
    .await;
    let lines = edge
        .log()
        .lines()
        .filter(|l| l.contains("without the right bearer token"))
        .count();
    println!("{counted} refusals counted, {lines} log lines about them");
    assert!(lines >= 1, "no log line about the wrong tokens");
    assert!(
        lines as u64 <= flood_took.as_secs() + 3,
        "{lines} log lines in {flood_took:?}"
    );

    // Nothing on the admin listener changes anything.
    let admin = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client");
    let mut not_refused = Vec::new();
    for path in [
        "/status",
        "/metrics",
        "/healthz",
        "/status?mode=normal",
        "/gate",
    ] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
            let answer = admin
                .request(method.clone(), edge.admin_url(path))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"mode":"normal"}"#)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let allow = drawbridge_tests::proxy::header(&answer, "allow");
            if answer.status() != 405 || allow.as_deref() != Some("GET, HEAD") {
                not_refused.push(format!(
                    "{method} {path}: {} (allow {allow:?})",
                    answer.status()
                ));
            }
        }
    }
    assert!(not_refused.is_empty(), "{}", not_refused.join("\n"));
    let read = admin
        .get(edge.admin_url("/status?mode=normal&applied_index=1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /status");
    assert_eq!(read.status(), 200);
    let head = admin
        .head(edge.admin_url("/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("HEAD /status");
    assert_eq!(head.status(), 200);
    let after = edge.status().await;
    assert_eq!(
        (
            after.gate.mode,
            after.gate.applied_index,
            &after.gate.reason
        ),
        (
            Mode::ReadOnly,
            before.gate.applied_index,
            &before.gate.reason
        )
    );
    let entry = site
        .consul
        .client()
        .kv_get(&site.key, &QueryOptions::default())
        .await
        .expect("read the key")
        .entry
        .expect("the key");
    assert_eq!(
        entry.modify_index, before.gate.applied_index,
        "the key was written"
    );

    let searched = assert_no_secret_leaks(
        &site.dir,
        &[edge],
        Vec::new(),
        &[ADMIN_TOKEN, BYPASS_SECRET],
    )
    .await;
    println!("no secret in {searched} logs, process texts and answers");
}

/// (c) With ACLs enforced, a token with `key:read` on the one key is all the proxy needs: it
/// follows the key. Revoked at runtime, the last state is kept (a later write is not seen) and
/// `/status` and `drawbridge_consul_watch_errors_total{kind="acl_denied"}` report the 403 within
/// the blocking wait + the token TTL + 3 s; stopping Consul afterwards is reported as
/// `unreachable`, apart. (d) No secret in the logs, `/proc/<pid>/cmdline` or `environ`.
#[tokio::test]
async fn a_key_read_token_follows_the_gate_and_a_revoked_one_keeps_the_last_state() {
    let dir = TestDir::new("acl_revoked_token");
    let mut consul = AclConsul::start(&dir).await;
    let key = "drawbridge/acl/follow/gate";
    consul
        .policy(
            "gate-read",
            &format!(r#"key "{key}" {{ policy = "read" }}"#),
        )
        .await;
    let token = consul.token(&dir, "edge", &["gate-read"]).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let edge = edge_builder(&consul.server.http_addr(), key, &ui, Some(&token))
        .start(&dir)
        .await;
    let management = consul.client();
    assert_eq!(edge.get("/").await.status(), 200);
    let index = set_gate(&management, key, r#"{"mode":"maintenance","reason":"acl"}"#).await;
    edge.wait_applied(index).await;
    assert_eq!(edge.get("/").await.status(), 503);
    let m = edge.metrics().await;
    assert_eq!(m.value("drawbridge_consul_watch_errors_total", DENIED), 0.0);

    consul.revoke(&token).await;
    let revoked = Instant::now();
    let deadline = CONSUL_WAIT + TOKEN_TTL + Duration::from_secs(3);
    let report = edge
        .wait_status("the revoked token reported", deadline, |r| {
            r.consul
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("403"))
        })
        .await;
    let seen_after = revoked.elapsed();
    let error = report.consul.last_error.clone().unwrap_or_default();
    println!(
        "revoked token reported after {:.0} ms (bound {:.0} ms): {error}",
        ms(seen_after),
        ms(deadline)
    );
    for needle in ["permission denied", "ACL not found", key] {
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
    assert!(!error.contains("cannot connect"), "{error}");
    let kept = |r: &StatusReport| {
        r.gate.mode == Mode::Maintenance
            && r.gate.applied_index == index
            && r.gate.source == "consul"
    };
    assert!(kept(&report), "{report:#?}");
    let m = edge.metrics().await;
    assert!(
        m.value("drawbridge_consul_watch_errors_total", DENIED) >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value("drawbridge_consul_watch_errors_total", UNREACHABLE),
        0.0
    );

    // A write after the revocation is not seen: the proxy cannot read it, and keeps its state.
    let later = set_gate(&management, key, r#"{"mode":"normal"}"#).await;
    let watched = Instant::now();
    while watched.elapsed() < CONSUL_WAIT {
        let r = edge.status().await;
        assert!(kept(&r) && r.gate.applied_index < later, "{r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(edge.get("/").await.status(), 503);

    // Consul gone: reported as unreachable, apart from the denials; the state is still kept.
    consul.server.stop();
    let report = edge
        .wait_status(
            "Consul reported unreachable",
            Duration::from_secs(10),
            |r| {
                r.consul
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("cannot connect"))
            },
        )
        .await;
    assert!(kept(&report), "{report:#?}");
    let m = edge.metrics().await;
    assert!(
        m.value("drawbridge_consul_watch_errors_total", UNREACHABLE) >= 1.0,
        "{}",
        m.text
    );

    let searched = assert_no_secret_leaks(
        &dir,
        &[&edge],
        Vec::new(),
        &[
            &token.secret,
            consul.management_secret(),
            ADMIN_TOKEN,
            BYPASS_SECRET,
        ],
    )
    .await;
    println!("no secret in {searched} logs, process texts and answers");
}

/// (c) A proxy whose token may not read its key (a policy for another key; or a token Consul
/// never issued) still starts, as it must when Consul is down: it serves the fail-safe state
/// (maintenance), and its log and `/status` name the key and the 403 with Consul's reason. It
/// never reports Consul unreachable. (d) No secret in its logs or process texts.
#[tokio::test]
async fn a_token_without_key_read_serves_the_fail_safe_state_naming_the_key_and_the_denial() {
    let dir = TestDir::new("acl_token_without_key_read");
    let consul = AclConsul::start(&dir).await;
    let key = "drawbridge/acl/denied/gate";
    consul
        .policy(
            "other-key",
            r#"key "drawbridge/acl/other/gate" { policy = "read" }"#,
        )
        .await;
    let other = consul.token(&dir, "edge-other", &["other-key"]).await;
    let unknown = AclConsul::unknown_token(&dir, "edge-unknown");
    // The key says normal: a proxy that could read it would serve.
    set_gate(&consul.client(), key, r#"{"mode":"normal"}"#).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let start = |name: &str, token: &AclToken| {
        edge_builder(&consul.server.http_addr(), key, &ui, Some(token))
            .name(name)
            .ready(Ready::Healthz)
            .start(&dir)
    };
    let (edge_other, edge_unknown) =
        tokio::join!(start("edge-other", &other), start("edge-unknown", &unknown));

    for (edge, reason) in [
        (&edge_other, "Permission denied"),
        (&edge_unknown, "ACL not found"),
    ] {
        let name = &edge.config().name;
        let report = edge
            .wait_status(
                &format!("{name}: the denial reported"),
                Duration::from_secs(10),
                |r| {
                    r.gate.source == "fail_safe"
                        && r.consul
                            .last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("403"))
                },
            )
            .await;
        let error = report.consul.last_error.clone().unwrap_or_default();
        println!("{name}: /status last_error: {error}");
        for needle in [key, "permission denied (403", reason] {
            assert!(
                error.contains(needle),
                "{name}: {needle:?} not in {error:?}"
            );
        }
        assert_eq!(report.gate.mode, Mode::Maintenance, "{name}");
        assert_eq!(edge.get("/").await.status(), 503, "{name}");
        let log = edge.log();
        let line = log
            .lines()
            .find(|l| l.contains("the gate state is unknown"))
            .unwrap_or_else(|| panic!("{name}: no fail-safe line in\n{log}"));
        println!("{name}: {line}");
        for needle in [key, "permission denied (403", reason] {
            assert!(line.contains(needle), "{name}: {needle:?} not in {line:?}");
        }
        let m = edge.metrics().await;
        assert!(
            m.value("drawbridge_consul_watch_errors_total", DENIED) >= 1.0,
            "{name}"
        );
        assert_eq!(
            m.value("drawbridge_consul_watch_errors_total", UNREACHABLE),
            0.0,
            "{name}"
        );
        assert!(!error.contains("cannot connect"), "{name}: {error}");
    }

    let searched = assert_no_secret_leaks(
        &dir,
        &[&edge_other, &edge_unknown],
        Vec::new(),
        &[
            &other.secret,
            &unknown.secret,
            consul.management_secret(),
            ADMIN_TOKEN,
            BYPASS_SECRET,
        ],
    )
    .await;
    println!("no secret in {searched} logs, process texts and answers");
}

/// The inventory of environment `acl`: the ACL Consul with the token in `token_file`, one
/// api_ui box switched through the server's own agent, the proxy found at its admin URL.
fn inventory(
    consul: &AclConsul,
    key: &str,
    token_file: &Path,
    admin_token_file: &Path,
    edge: &Drawbridge,
) -> String {
    let consul = consul.server.http_addr();
    format!(
        r#"[environments.acl]
consul = "{consul}"
consul_token_file = "{token}"
key = "{key}"
prefix = "maintctl/acl"
verify_timeout = "10s"
step_timeout = "10s"
proxy_admin_urls = ["{admin}"]
proxy_admin_token_file = "{admin_token}"

[[environments.acl.boxes]]
name = "api1"
role = "api_ui"
node = "{SERVER_NODE}"
consul_agent = "{consul}"
"#,
        token = token_file.display(),
        admin = edge.admin_url(""),
        admin_token = admin_token_file.display(),
    )
}

/// (c) `maintctl down` with a token that may do everything but `node:write` fails pre-flight
/// (exit 5) naming the box, the node and the missing right, before it changes anything: no
/// journal, no gate key, no node maintenance (only the lock was taken and released). With
/// `node:write` added, the same run goes through. (d) No secret in its output, the journal, the
/// logs or the proxy's process texts.
#[tokio::test]
async fn maintctl_without_node_write_fails_pre_flight_and_changes_nothing() {
    let dir = TestDir::new("acl_maintctl_node_write");
    let consul = AclConsul::start(&dir).await;
    let key = "drawbridge/acl/maint/gate";
    let prefix = "maintctl/acl/";
    consul
        .policy("edge", &format!(r#"key "{key}" {{ policy = "read" }}"#))
        .await;
    consul
        .policy(
            "maintctl",
            &format!(
                r#"key_prefix "{prefix}" {{ policy = "write" }}
key "{key}" {{ policy = "write" }}
session_prefix "" {{ policy = "write" }}
agent_prefix "" {{ policy = "read" }}
node_prefix "" {{ policy = "read" }}
service_prefix "" {{ policy = "read" }}"#
            ),
        )
        .await;
    consul
        .policy("node-write", r#"node_prefix "" { policy = "write" }"#)
        .await;
    let edge_token = consul.token(&dir, "edge", &["edge"]).await;
    let denied = consul.token(&dir, "ops-no-node-write", &["maintctl"]).await;
    let allowed = consul.token(&dir, "ops", &["maintctl", "node-write"]).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let edge = edge_builder(&consul.server.http_addr(), key, &ui, Some(&edge_token))
        .start(&dir)
        .await;
    let admin_token_file = dir.join("admin.token");
    std::fs::write(&admin_token_file, ADMIN_TOKEN).expect("write the admin token file");
    let write_inventory = |name: &str, token: &AclToken| {
        let file = dir.join(name);
        let text = inventory(&consul, key, &token.file, &admin_token_file, &edge);
        std::fs::write(&file, text).expect("write the inventory");
        file
    };
    let denied_config = write_inventory("maintctl-denied.toml", &denied);
    let config = write_inventory("maintctl.toml", &allowed);
    let management = consul.client();
    let in_maintenance = || async {
        management
            .health_node(SERVER_NODE)
            .await
            .expect("health of the node")
            .iter()
            .any(|c| c.check_id == NODE_MAINTENANCE_CHECK)
    };
    let down = ["down", "--env", "acl", "--reason", "acl test", "--yes"];

    let out = run_maintctl(&dir, &denied_config, &down).await;
    out.assert_code(5);
    for needle in ["api1", SERVER_NODE, "node:write", "permission denied (403"] {
        out.assert_mentions(needle);
    }
    println!("maintctl without node:write:\n{}", out.stderr.trim_end());
    let journal = management.kv_list(prefix).await.expect("list the journal");
    let keys: Vec<&str> = journal.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, [format!("{prefix}lock")], "only the lock was written");
    assert_eq!(journal[0].session, None, "the lock is still held");
    let gate = management
        .kv_get(key, &QueryOptions::default())
        .await
        .expect("read the key");
    assert!(
        gate.entry.is_none(),
        "the gate key was written: {:?}",
        gate.entry
    );
    assert!(!in_maintenance().await, "the node went into maintenance");
    assert_eq!(edge.status().await.gate.mode, Mode::Normal);

    // With node:write, the right is there and the run goes through.
    let out = run_maintctl(&dir, &config, &down).await;
    out.assert_success();
    assert!(in_maintenance().await, "the node is not in maintenance");
    edge.wait_mode(Mode::Maintenance).await;

    let journal: Vec<(String, String)> = management
        .kv_list(prefix)
        .await
        .expect("list the journal")
        .into_iter()
        .map(|e| {
            let value = String::from_utf8_lossy(&e.value.unwrap_or_default()).into_owned();
            (format!("journal {}", e.key), value)
        })
        .collect();
    assert!(journal.len() >= 3, "{journal:?}");
    let mut more = journal;
    // maintctl's command lines, as its /proc/<pid>/cmdline had them: files, never secrets.
    for file in [&denied_config, &config] {
        more.push((
            "maintctl command line".to_owned(),
            format!("maintctl --config {} {}", file.display(), down.join(" ")),
        ));
    }
    let searched = assert_no_secret_leaks(
        &dir,
        &[&edge],
        more,
        &[
            &edge_token.secret,
            &denied.secret,
            &allowed.secret,
            consul.management_secret(),
            ADMIN_TOKEN,
            BYPASS_SECRET,
        ],
    )
    .await;
    println!("no secret in {searched} logs, journal entries, process texts and answers");
}
