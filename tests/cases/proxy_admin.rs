//! The admin listener: `/healthz` for load balancers, `/status` for `maintctl`, `/metrics` for
//! Prometheus, and the bearer token that guards the last two.

use std::time::Duration;

use drawbridge_core::gate::Mode;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::proxy::{now_unix, set_gate, Drawbridge, Metrics, Site};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";

/// One expected change: a metric name, a label subset, and by how much it went up.
type Expect<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Waits until every `(name, labels, expected)` holds in `/metrics` (counters are updated when
/// a request is logged, just after its answer is sent); returns the last scrape.
async fn wait_metrics(edge: &Drawbridge, base: &Metrics, want: &[Expect<'_>]) -> Metrics {
    wait_scrape(edge, "metrics reach the expected values", |now| {
        let wrong: Vec<String> = want
            .iter()
            .filter_map(|(name, labels, expected)| {
                let delta = now.value(name, labels) - base.value(name, labels);
                ((delta - expected).abs() > f64::EPSILON)
                    .then(|| format!("{name}{labels:?}: +{delta}, expected +{expected}"))
            })
            .collect();
        if wrong.is_empty() {
            Ok(now)
        } else {
            Err(format!("{}\n{}", wrong.join("\n"), now.text))
        }
    })
    .await
}

/// Scrapes `/metrics` every 100 ms, for up to 5 s, until `check` accepts a scrape; what it
/// returns.
async fn wait_scrape<T>(
    edge: &Drawbridge,
    what: &str,
    check: impl Fn(Metrics) -> Result<T, String>,
) -> T {
    let check = &check;
    eventually(
        what,
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async move { check(edge.metrics().await) },
    )
    .await
}

/// `/healthz` answers 200 in normal and in maintenance: the load balancer in front must not
/// take a proxy out because the gate is closed.
#[tokio::test]
async fn healthz_answers_200_in_maintenance() {
    let site = Site::start("healthz_answers_200_in_maintenance").await;
    let healthz = site.edge.admin_url("/healthz");
    let answer = site.edge.send(site.edge.client().get(&healthz)).await;
    assert_eq!(answer.status(), 200);

    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    assert_eq!(site.edge.get("/").await.status(), 503);
    let answer = site.edge.send(site.edge.client().get(&healthz)).await;
    assert_eq!(answer.status(), 200, "healthz in maintenance");
}

/// `/status` tells the served gate (mode, reason, source `consul`, applied index equal to the
/// key's ModifyIndex, or Consul's index while the key is missing), the watch (address, key,
/// reachable, not stale, last answer time) and the pools with their servers' health.
#[tokio::test]
async fn status_reports_the_gate_the_watch_and_the_pools() {
    let site = Site::start("status_reports_the_gate_the_watch_and_the_pools").await;

    let report = site.edge.status().await;
    assert_eq!(report.gate.mode, Mode::Normal);
    assert_eq!(report.gate.source, "consul");
    assert!(report.gate.applied_index > 0, "missing key: Consul's index");
    assert_eq!(report.consul.key, site.key);
    assert_eq!(
        report.consul.address.trim_end_matches('/'),
        site.consul.http_addr()
    );
    assert!(report.consul.reachable);
    assert!(!report.consul.stale);
    let last_answer = report.consul.last_answer_at.expect("Consul answered");
    OffsetDateTime::parse(&last_answer, &Rfc3339).expect("last_answer_at is RFC 3339");
    for (pool, upstream) in [("ui", &site.ui), ("api", &site.api)] {
        let pool = report
            .pools
            .iter()
            .find(|p| p.name == pool)
            .unwrap_or_else(|| panic!("pool {pool} missing: {:#?}", report.pools));
        assert_eq!(pool.servers.len(), 1, "{pool:#?}");
        assert_eq!(pool.servers[0].address, upstream.addr().to_string());
        assert!(pool.servers[0].healthy, "{pool:#?}");
    }

    let index = set_gate(
        &site.consul.client(),
        &site.key,
        r#"{"mode":"maintenance","reason":"r","by":"ops","scope":["ui"]}"#,
    )
    .await;
    let report = site.edge.wait_applied(index).await;
    assert_eq!(report.gate.applied_index, index, "the key's ModifyIndex");
    assert_eq!(report.gate.mode, Mode::Maintenance);
    assert_eq!(report.gate.by.as_deref(), Some("ops"));
    assert_eq!(report.gate.scope, Some(vec!["ui".to_string()]));
    OffsetDateTime::parse(&report.gate.applied_at, &Rfc3339).expect("applied_at is RFC 3339");
}

/// With `admin.token`, `/status` and `/metrics` answer 401 without `Authorization: Bearer
/// <token>` or with a wrong one, and 200 with it; `/healthz` stays open.
#[tokio::test]
async fn admin_token_guards_status_and_metrics() {
    let site = Site::start_with("admin_token_guards_status_and_metrics", |b| {
        b.admin_token("e2e-admin-token-0123")
    })
    .await;
    let client = site.edge.client();
    for path in ["/status", "/metrics"] {
        let url = site.edge.admin_url(path);
        let none = site.edge.send(client.get(&url)).await;
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = site.edge.send(client.get(&url).bearer_auth("nope")).await;
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = site
            .edge
            .send(client.get(&url).bearer_auth("e2e-admin-token-0123"))
            .await;
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    let healthz = site
        .edge
        .send(client.get(site.edge.admin_url("/healthz")))
        .await;
    assert_eq!(healthz.status(), 200, "/healthz needs no token");
}

/// `/metrics` counts what happened: proxied and maintenance requests by route, kind, status
/// and mode, maintenance answers, token bypasses, refused values, upstream errors, and the
/// gate gauges (mode, applied index and time, staleness).
#[tokio::test]
async fn metrics_count_what_happened() {
    let mut site = Site::start_with("metrics_count_what_happened", |b| {
        b.bypass_key("e2e", "k1", SECRET)
    })
    .await;
    let base = site.edge.metrics().await;

    for _ in 0..3 {
        assert_eq!(site.edge.get("/").await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(site.edge.get("/api/orders").await.status(), 200);
    }
    let report = site.put_gate(r#"{"mode":"maintenance"}"#).await;
    for _ in 0..4 {
        assert_eq!(site.edge.get("/").await.status(), 503);
    }
    assert_eq!(site.edge.get("/api/orders").await.status(), 503);
    let token =
        drawbridge_core::bypass::Keyring::new(vec![drawbridge_core::bypass::BypassKey::new(
            "k1",
            SECRET.as_bytes(),
        )
        .unwrap()])
        .unwrap()
        .sign("e2e", now_unix(), Duration::from_secs(300), Some("metrics"));
    let bypassed = site
        .edge
        .send(
            site.edge
                .request(reqwest::Method::GET, "/")
                .header("x-drawbridge-bypass", token),
        )
        .await;
    assert_eq!(bypassed.status(), 200);
    site.put_rejected("TRUE").await;

    let ui_ok: &[(&str, &str)] = &[
        ("route", "ui"),
        ("kind", "page"),
        ("status", "200"),
        ("mode", "normal"),
    ];
    let api_ok: &[(&str, &str)] = &[
        ("route", "api"),
        ("kind", "api"),
        ("status", "200"),
        ("mode", "normal"),
    ];
    let ui_closed: &[(&str, &str)] = &[
        ("route", "ui"),
        ("kind", "page"),
        ("status", "503"),
        ("mode", "maintenance"),
    ];
    let metrics = wait_metrics(
        &site.edge,
        &base,
        &[
            ("drawbridge_requests_total", ui_ok, 3.0),
            ("drawbridge_requests_total", api_ok, 2.0),
            ("drawbridge_requests_total", ui_closed, 4.0),
            (
                "drawbridge_maintenance_responses_total",
                &[("route", "ui"), ("kind", "page")],
                4.0,
            ),
            (
                "drawbridge_maintenance_responses_total",
                &[("route", "api"), ("kind", "api")],
                1.0,
            ),
            (
                "drawbridge_bypasses_total",
                &[("route", "ui"), ("via", "token")],
                1.0,
            ),
            ("drawbridge_gate_rejected_values_total", &[], 1.0),
        ],
    )
    .await;
    assert_eq!(
        metrics.get("drawbridge_gate_applied_index", &[]),
        Some(report.gate.applied_index as f64)
    );
    assert_eq!(
        metrics.get("drawbridge_gate_mode", &[("mode", "maintenance")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("drawbridge_gate_mode", &[("mode", "normal")]),
        0.0
    );
    assert_eq!(
        metrics.value("drawbridge_gate_mode", &[("mode", "read_only")]),
        0.0
    );
    let applied_at = metrics
        .get("drawbridge_gate_applied_timestamp_seconds", &[])
        .expect("drawbridge_gate_applied_timestamp_seconds");
    assert!(
        (applied_at - now_unix() as f64).abs() < 120.0,
        "applied timestamp {applied_at} is not near now"
    );
    assert_eq!(metrics.get("drawbridge_consul_stale", &[]), Some(0.0));

    // An upstream that is gone counts as an upstream error of its pool.
    site.delete_gate().await;
    site.api.stop();
    let answer = site.edge.get("/api/orders").await;
    assert!(
        answer.status().is_server_error(),
        "a request to a stopped upstream got {}",
        answer.status()
    );
    let before = metrics.value("drawbridge_upstream_errors_total", &[("pool", "api")]);
    wait_scrape(
        &site.edge,
        "drawbridge_upstream_errors_total{pool=\"api\"} counts the failed request",
        |now| {
            let errors = now.value("drawbridge_upstream_errors_total", &[("pool", "api")]);
            if errors > before {
                Ok(())
            } else {
                Err(format!("still {errors}\n{}", now.text))
            }
        },
    )
    .await;
}

/// With `access_log = "json"` every request, proxied or answered by the proxy itself, writes
/// one JSON line with its route, status and decision.
#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let site = Site::start_with("access_log_writes_one_json_line_per_request", |mut b| {
        b.access_log = "json".to_string();
        b
    })
    .await;
    assert_eq!(site.edge.get("/api/logged-open").await.status(), 200);
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    assert_eq!(site.edge.get("/logged-closed").await.status(), 503);
    let lines = eventually(
        "two access-log lines",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let log = std::fs::read_to_string(site.dir.join("drawbridge.stderr.log"))
                .map_err(|e| e.to_string())?;
            let lines: Vec<Value> = log
                .lines()
                .filter(|l| l.contains("/logged-"))
                .map(|l| {
                    let json = &l[l.find('{').ok_or("no JSON in the line")?..];
                    serde_json::from_str(json).map_err(|e| format!("{e}: {l}"))
                })
                .collect::<Result<_, String>>()?;
            if lines.len() == 2 {
                Ok(lines)
            } else {
                Err(format!("{} lines so far", lines.len()))
            }
        },
    )
    .await;
    assert_eq!(lines[0]["path"], "/api/logged-open");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["route"], "api");
    assert_eq!(lines[0]["decision"], "pass");
    assert_eq!(lines[1]["path"], "/logged-closed");
    assert_eq!(lines[1]["status"], 503);
    assert_eq!(lines[1]["mode"], "maintenance");
    assert_eq!(lines[1]["decision"], "maintenance");
}
