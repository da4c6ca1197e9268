//! The monitoring shipped in `config/`: the Prometheus alert rules pass `promtool check rules`
//! and their unit tests (each alert tested firing and silent), the Grafana dashboard is well
//! formed and its queries parse, and every metric the rules, their tests and the dashboard name
//! is exported by a running proxy, so a renamed metric fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drawbridge_core::bypass::{BypassKey, Keyring};
use drawbridge_tests::consul::workspace_root;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::promtool::{promtool, Finished};
use drawbridge_tests::proxy::{header, now_unix, set_gate, Metrics, Site};
use drawbridge_tests::raw_http::RawConnection;
use drawbridge_tests::upstream::Upstream;
use serde_json::Value;

const RULES: &str = "config/prometheus/drawbridge.rules.yml";
const RULE_TESTS: &str = "config/prometheus/drawbridge.rules.test.yml";
const DASHBOARD: &str = "config/grafana/drawbridge-dashboard.json";

const HOST: &str = "monitoring.test";
const ENV: &str = "e2e";
const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";

/// The text of a file of the workspace.
fn read(path: &str) -> String {
    let file = workspace_root().join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

/// Runs promtool with `args` (paths relative to the workspace root) and asserts it succeeded.
fn assert_promtool(dir: &TestDir, name: &str, args: &[&str]) -> Finished {
    let root = workspace_root();
    let args: Vec<std::ffi::OsString> = args
        .iter()
        .map(|a| {
            if a.starts_with("config/") {
                root.join(a).into_os_string()
            } else {
                a.into()
            }
        })
        .collect();
    let run = promtool(dir.path(), name, &args);
    assert!(
        run.status.success(),
        "promtool {args:?} exited with {}:\n{}",
        run.status,
        run.output
    );
    run
}

/// Every `drawbridge_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "drawbridge_";
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices(PREFIX) {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// The names in `names` that `scrape` does not export: a sample of that name, and for a
/// histogram's `_bucket`, `_sum` or `_count` series, a family of type histogram as well.
fn missing_from(names: &BTreeSet<String>, scrape: &Metrics) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            let histogram_part = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| scrape.text.contains(&format!("# TYPE {base} histogram\n")));
            let typed = match histogram_part {
                Some(_) => true,
                None => scrape.text.contains(&format!("# TYPE {name} ")),
            };
            !(typed && scrape.get(name, &[]).is_some())
        })
        .cloned()
        .collect()
}

/// The alert names of a rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

/// For each alert a rule test file evaluates: whether a case expects it firing, and whether one
/// expects it silent (`exp_alerts: []`).
fn tested_cases(tests: &str) -> BTreeMap<String, (bool, bool)> {
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut lines = tests.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let case = cases.entry(name.trim().to_string()).or_default();
        match lines.next() {
            Some("exp_alerts: []") => case.1 = true,
            Some("exp_alerts:") => case.0 = true,
            other => panic!("alertname {name} not followed by exp_alerts: {other:?}"),
        }
    }
    cases
}

/// `promtool check rules` accepts the alert rules and `promtool test rules` passes their unit
/// tests; every alert of the rules is tested both firing and silent (a near miss).
#[test]
fn alert_rules_pass_promtool_and_each_alert_is_tested_firing_and_silent() {
    let dir = TestDir::new("monitoring_rules");
    let rules = read(RULES);
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 8, "alerts found in {RULES}: {alerts:?}");

    let check = assert_promtool(&dir, "check", &["check", "rules", RULES]);
    assert!(
        check
            .output
            .contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "promtool found another number of rules than the {} alerts: {}",
        alerts.len(),
        check.output
    );
    let test = assert_promtool(&dir, "test", &["test", "rules", RULE_TESTS]);
    assert!(test.output.contains("SUCCESS"), "{}", test.output);

    let cases = tested_cases(&read(RULE_TESTS));
    for alert in &alerts {
        let (firing, silent) = cases.get(alert).copied().unwrap_or_default();
        assert!(firing, "{RULE_TESTS} never expects {alert} to fire");
        assert!(silent, "{RULE_TESTS} never expects {alert} to stay silent");
    }
    for tested in cases.keys() {
        assert!(
            alerts.contains(tested),
            "{RULE_TESTS} tests {tested}, which {RULES} does not define"
        );
    }
}

/// Every panel of the dashboard has a title and the `${datasource}` data source, every panel
/// but a row has a query, and every query parses as PromQL (checked by promtool as a recording
/// rule, with the dashboard's variables filled in).
#[test]
fn dashboard_panels_have_titles_and_queries_that_promtool_parses() {
    let dir = TestDir::new("monitoring_dashboard");
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!(schema >= 36, "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut records = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            !title.trim().is_empty(),
            "a panel without a title: {panel:#}"
        );
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?}"
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for (n, target) in targets.iter().enumerate() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?}: a target without expr"
            );
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {title:?}"
            );
            let filled = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            assert!(
                !filled.contains('$'),
                "panel {title:?}: a variable the dashboard does not define: {expr}"
            );
            // A JSON string is a YAML double-quoted scalar.
            records.push_str(&format!(
                "      - record: dashboard:panel_{id}:{n}\n        expr: {}\n",
                Value::String(filled)
            ));
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    let file = dir.join("dashboard-queries.rules.yml");
    std::fs::write(&file, &records).unwrap();
    let file = file.display().to_string();
    let check = assert_promtool(&dir, "check", &["check", "rules", &file]);
    assert!(
        check
            .output
            .contains(&format!("SUCCESS: {queries} rules found")),
        "{}",
        check.output
    );
}

/// A proxy with a TLS certificate and a split route, after some traffic of every kind and a
/// Consul outage, exports every metric that the alert rules, their tests and the dashboard name.
#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let mut names = metric_names(&read(RULES));
    names.extend(metric_names(&read(RULE_TESTS)));
    names.extend(metric_names(&read(DASHBOARD)));
    assert!(
        names.len() >= 20,
        "metric names found in the monitoring files: {names:?}"
    );

    let green = Upstream::builder("api-green").start();
    let (mut site, certs) = Site::start_tls("monitoring_metrics", HOST, |b| {
        b.bypass_key(ENV, "k1", SECRET)
            .static_pool("api-green", &[&green], None)
    })
    .await;
    let edge = &site.edge;

    // The open gate: a page and an API request, one over HTTPS, and a CONNECT the proxy refuses.
    assert_eq!(edge.get("/").await.status(), 200);
    assert_eq!(edge.get("/api/orders").await.status(), 200);
    let tls = edge.tls_client(&certs.ca.cert, &[HOST]);
    assert_eq!(
        edge.send(tls.get(edge.tls_url(HOST, "/"))).await.status(),
        200
    );
    let mut conn = RawConnection::connect(edge.listen_addr()).await;
    conn.send("CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test:443\r\n\r\n")
        .await;
    assert_eq!(conn.read_answer("the answer to CONNECT").await.status, 405);

    // The API route wholly on api-green by the split document.
    let split_key = format!("{}/split", site.key);
    let index = set_gate(
        &site.consul.client(),
        &split_key,
        r#"{"routes": {"api": {"to": "api-green", "percent": 100}}}"#,
    )
    .await;
    edge.wait_status("the split applied", Duration::from_secs(10), |r| {
        r.split.as_ref().is_some_and(|s| s.applied_index >= index)
    })
    .await;
    let split = edge.get("/api/orders").await;
    assert_eq!(split.status(), 200);
    assert_eq!(
        header(&split, "x-drawbridge-pool").as_deref(),
        Some("api-green")
    );

    // The gate closed: the maintenance page, and a request with a bypass token.
    site.put_gate(r#"{"mode":"maintenance","reason":"monitoring"}"#)
        .await;
    assert_eq!(edge.get("/").await.status(), 503);
    let token = Keyring::new(vec![BypassKey::new("k1", SECRET.as_bytes()).unwrap()])
        .unwrap()
        .sign(
            ENV,
            now_unix(),
            Duration::from_secs(300),
            Some("monitoring"),
        );
    let bypassed = edge
        .send(
            edge.request(reqwest::Method::GET, "/")
                .header("x-drawbridge-bypass", token),
        )
        .await;
    assert_eq!(bypassed.status(), 200);

    // The gate open again and the ui upstream gone: a 502 counted against pool ui.
    site.delete_gate().await;
    site.ui.stop();
    assert_eq!(edge.get("/").await.status(), 502);

    // Consul gone: the watch fails (counted by kind) and the proxy keeps its state.
    site.consul.stop();

    let names = &names;
    let scrape = eventually(
        "every metric of the monitoring files is exported",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async move {
            let scrape = edge.metrics().await;
            let missing = missing_from(names, &scrape);
            if missing.is_empty() {
                Ok(scrape)
            } else {
                Err(format!("missing {missing:?} from:\n{}", scrape.text))
            }
        },
    )
    .await;
    // The scrape saw this test's traffic, not only registered families.
    assert!(scrape.value("drawbridge_upstream_errors_total", &[("pool", "ui")]) >= 1.0);
    assert!(scrape.value("drawbridge_split_answers_total", &[("pool", "api-green")]) >= 1.0);
    assert!(
        scrape.value(
            "drawbridge_refused_requests_total",
            &[("reason", "connect_method")]
        ) >= 1.0
    );
}

#[test]
fn metric_names_are_found_whole_and_histogram_parts_need_a_histogram() {
    let names = metric_names(
        "rate(drawbridge_requests_total{a=\"b\"}[5m]) / x_drawbridge_no \
         drawbridge_split_request_duration_seconds_bucket drawbridge_gate_mode==1",
    );
    let expected: BTreeSet<String> = [
        "drawbridge_requests_total",
        "drawbridge_split_request_duration_seconds_bucket",
        "drawbridge_gate_mode",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
    let scrape = Metrics::parse(
        "# TYPE drawbridge_requests_total counter\ndrawbridge_requests_total{route=\"ui\"} 1\n\
         # TYPE drawbridge_d histogram\ndrawbridge_d_bucket{le=\"1\"} 1\ndrawbridge_d_sum 1\n\
         # TYPE drawbridge_g gauge\ndrawbridge_g_count 1\n",
    );
    let want: BTreeSet<String> = [
        "drawbridge_requests_total",
        "drawbridge_d_bucket",
        "drawbridge_d_sum",
        "drawbridge_d_count",
        "drawbridge_g_count",
        "drawbridge_gone_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        missing_from(&want, &scrape),
        [
            "drawbridge_d_count",
            "drawbridge_g_count",
            "drawbridge_gone_total"
        ]
    );
}
