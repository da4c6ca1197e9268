//! `maintctl down` and `up` on a whole fleet, with every effect checked from outside maintctl:
//! Consul's catalog and KV, the worker and job processes, the proxies' answers and `/status`;
//! then what `status`, `history`, `bypass` and `probe` report.

use drawbridge_core::gate::Mode;
use drawbridge_tests::maintctl::{MaintScene, RunView, ENV, GATE_KEY, OPERATOR, WORKER_PROCESSES};
use drawbridge_tests::proxy::{header, set_gate};
use drawbridge_tests::services::{merged_calls, SchedulerState};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const DOWN_STEPS: [&str; 5] = [
    "set_key",
    "node_maintenance_on",
    "stop_workers",
    "disable_jobs",
    "verify_down",
];
const UP_STEPS: [&str; 6] = [
    "enable_jobs",
    "start_workers",
    "node_maintenance_off",
    "smoke_tests",
    "clear_key",
    "verify_up",
];

fn down_args(reason: &str) -> Vec<String> {
    [
        "down", "--env", ENV, "--reason", reason, "--until", "1h", "--yes",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn at(run: &RunView, step: &str, field: &str) -> OffsetDateTime {
    let step_record = run
        .step(step)
        .unwrap_or_else(|| panic!("no step {step} in\n{run}"));
    let raw = step_record[field]
        .as_str()
        .unwrap_or_else(|| panic!("step {step} has no {field} in\n{run}"));
    OffsetDateTime::parse(raw, &Rfc3339).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

/// Every target of every step of `run` has `status`.
fn assert_all_targets(run: &RunView, status: &str) {
    for id in run.step_ids() {
        let step = run.step(&id).expect("listed");
        for t in step["targets"].as_array().expect("targets") {
            assert_eq!(t["status"], status, "step {id} in\n{run}");
        }
    }
}

/// The operator string maintctl writes: `user@host`.
fn operator_at_host() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    format!("{OPERATOR}@{}", host.trim())
}

#[tokio::test]
async fn down_then_up_takes_the_fleet_down_and_brings_it_back() {
    let scene = MaintScene::start("maintctl_down_up").await;
    scene.assert_untouched().await;
    scene.assert_open().await;

    // With the dead-man switch armed: the key asks the proxies to open by themselves an
    // overdue grace after `until` (an hour away: not during this test).
    let mut args = down_args("db migration");
    args.push("--expire".to_owned());
    let down = scene.run(&refs(&args)).await;
    down.assert_success();

    // Consul: both API/UI nodes carry the node maintenance check in the catalog.
    for node in ["api1", "api2"] {
        assert!(
            scene.node_in_maintenance(node).await,
            "{node} not in maintenance\n{down}"
        );
    }
    // The boxes: worker processes gone, jobs disabled (flag cleared, runner stopped).
    assert_eq!(scene.worker1.running_count(), 0, "{down}");
    assert_eq!(scene.worker2.running_count(), 0, "{down}");
    assert_eq!(scene.sched1.state(), SchedulerState::Disabled, "{down}");
    // The key, and every proxy applied it.
    let key = scene.gate_entry().await.expect("the gate key is set");
    let doc: Value = serde_json::from_slice(&key.value.clone().unwrap_or_default())
        .expect("the gate key holds JSON");
    assert_eq!(doc["mode"], "maintenance", "{doc}");
    assert_eq!(doc["reason"], "db migration", "{doc}");
    assert!(doc["until"].is_string(), "--until 1h is in the key: {doc}");
    assert_eq!(doc["expire"], true, "{doc}");
    for edge in scene.edges() {
        let status = edge.status().await;
        assert_eq!(status.gate.mode, Mode::Maintenance);
        assert!(status.gate.expire && !status.gate.overdue && !status.gate.expired);
        assert!(
            status.gate.applied_index >= key.modify_index,
            "{} applied {} < key index {}",
            edge.url(""),
            status.gate.applied_index,
            key.modify_index
        );
    }
    scene.assert_closed().await;
    // Workers stopped before jobs were disabled, on every box.
    let order: Vec<String> = merged_calls(&[
        scene.worker1.calls(),
        scene.worker2.calls(),
        scene.sched1.calls(),
    ])
    .into_iter()
    .filter(|c| c.script != "check" && c.script != "start" && c.script != "enable")
    .map(|c| c.script)
    .collect();
    assert_eq!(order, ["stop", "stop", "disable"]);

    let journal = scene.journal();
    let down_run = journal.latest().await.expect("the down run is journalled");
    assert_eq!(down_run.direction(), "down", "{down_run}");
    assert_eq!(down_run.status(), "done", "{down_run}");
    assert_eq!(down_run.step_ids(), DOWN_STEPS, "{down_run}");
    assert_all_targets(&down_run, "done");

    // Nothing reached the smoke paths yet.
    assert_eq!(scene.ui.requests_to("/smoke"), 0);
    assert_eq!(scene.api.requests_to("/api/smoke"), 0);
    let bypassed_before = scene
        .edge1
        .metrics()
        .await
        .value("drawbridge_bypasses_total", &[("via", "token")]);

    let up = scene.run(&["up", "--env", ENV, "--yes"]).await;
    up.assert_success();

    for node in ["api1", "api2"] {
        assert!(
            !scene.node_in_maintenance(node).await,
            "{node} still in maintenance\n{up}"
        );
    }
    assert_eq!(scene.worker1.running_count(), WORKER_PROCESSES, "{up}");
    assert_eq!(scene.worker2.running_count(), WORKER_PROCESSES, "{up}");
    assert_eq!(scene.sched1.state(), SchedulerState::Enabled, "{up}");
    assert!(scene.gate_entry().await.is_none(), "{GATE_KEY} still set");
    scene.assert_open().await;

    // The smoke tests went through the closed gate with a token: each reached its upstream
    // once, the proxy counted two token bypasses, and the smoke step ended before the key
    // was cleared (the public saw the page meanwhile: the page URL is checked first).
    assert_eq!(scene.ui.requests_to("/smoke"), 1, "{up}");
    assert_eq!(scene.api.requests_to("/api/smoke"), 1, "{up}");
    let bypassed = scene
        .edge1
        .metrics()
        .await
        .value("drawbridge_bypasses_total", &[("via", "token")]);
    assert_eq!(bypassed - bypassed_before, 2.0, "token bypasses on edge1");
    let up_run = journal.latest().await.expect("the up run is journalled");
    assert_eq!(up_run.direction(), "up", "{up_run}");
    assert_eq!(up_run.status(), "done", "{up_run}");
    assert_eq!(up_run.step_ids(), UP_STEPS, "{up_run}");
    assert_eq!(
        up_run.0["restores"],
        serde_json::json!([down_run.id()]),
        "{up_run}"
    );
    assert_all_targets(&up_run, "done");
    assert!(
        at(&up_run, "smoke_tests", "ended_at") <= at(&up_run, "clear_key", "started_at"),
        "{up_run}"
    );
}

#[tokio::test]
async fn status_and_history_report_the_fleet_and_the_runs() {
    let scene = MaintScene::start("maintctl_status_history").await;
    scene
        .run(&refs(&down_args("kernel upgrade")))
        .await
        .assert_success();
    let key = scene.gate_entry().await.expect("the gate key is set");

    let status = scene
        .run(&["status", "--env", ENV, "--output", "json"])
        .await;
    status.assert_success();
    let lines = status.json_lines();
    assert_eq!(lines.len(), 1, "{status}");
    let report = &lines[0];
    assert_eq!(report["gate"]["mode"], "maintenance", "{report:#}");
    assert_eq!(report["gate"]["index"], key.modify_index, "{report:#}");
    let proxies = report["proxies"].as_array().expect("proxies");
    assert_eq!(proxies.len(), 2, "{report:#}");
    for p in proxies {
        assert_eq!(p["mode"], "maintenance", "{report:#}");
        let applied = p["applied_index"].as_u64().expect("applied_index");
        assert!(applied >= key.modify_index, "{report:#}");
    }
    let state = |name: &str| {
        report["boxes"]
            .as_array()
            .expect("boxes")
            .iter()
            .find(|b| b["box"] == name)
            .map(|b| b["state"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(state("api1"), "node maintenance", "{report:#}");
    assert_eq!(state("api2"), "node maintenance", "{report:#}");
    assert_eq!(state("worker1"), "stopped", "{report:#}");
    assert_eq!(state("worker2"), "stopped", "{report:#}");
    assert_eq!(state("sched1"), "stopped", "{report:#}");
    assert!(report["lock"].is_null(), "{report:#}");
    assert_eq!(report["last_run"]["direction"], "down", "{report:#}");
    assert_eq!(report["last_run"]["status"], "done", "{report:#}");

    scene
        .run(&["up", "--env", ENV, "--yes"])
        .await
        .assert_success();
    let status = scene
        .run(&["status", "--env", ENV, "--output", "json"])
        .await;
    let report = &status.json_lines()[0];
    assert_eq!(report["gate"]["mode"], "normal", "{report:#}");
    assert_eq!(report["gate"]["present"], false, "{report:#}");

    let history = scene
        .run(&["history", "--env", ENV, "--output", "json"])
        .await;
    history.assert_success();
    let runs = history.json_lines();
    assert_eq!(runs.len(), 2, "{history}");
    for (run, direction, steps) in [
        (&runs[0], "down", &DOWN_STEPS[..]),
        (&runs[1], "up", &UP_STEPS[..]),
    ] {
        assert_eq!(run["direction"], direction, "{run:#}");
        assert_eq!(run["status"], "done", "{run:#}");
        assert_eq!(run["reason"], "kernel upgrade", "{run:#}");
        assert_eq!(run["by"], operator_at_host(), "{run:#}");
        assert!(run["seconds"].as_f64().is_some_and(|s| s > 0.0), "{run:#}");
        let listed: Vec<&str> = run["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| s["step"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(listed, steps, "{run:#}");
        for s in run["steps"].as_array().expect("steps") {
            assert_eq!(s["status"], "done", "{run:#}");
            assert!(
                s["seconds"].as_f64().is_some_and(|t| t >= 0.0),
                "a duration per step: {run:#}"
            );
        }
    }

    // The text form says the same for a person.
    let text = scene.run(&["history", "--env", ENV]).await;
    text.assert_success();
    for needle in DOWN_STEPS.iter().chain(UP_STEPS.iter()) {
        text.assert_mentions(needle);
    }
    text.assert_mentions("kernel upgrade");
    assert!(
        text.stdout.lines().filter(|l| l.contains(" down ")).count() == 1
            && text.stdout.lines().filter(|l| l.contains(" up ")).count() == 1,
        "{text}"
    );
}

#[tokio::test]
async fn a_bypass_token_from_maintctl_passes_the_closed_gate() {
    let scene = MaintScene::start("maintctl_bypass").await;
    let index = set_gate(
        &scene.consul.client(),
        GATE_KEY,
        r#"{"mode":"maintenance","reason":"bypass test"}"#,
    )
    .await;
    for edge in scene.edges() {
        edge.wait_applied(index).await;
    }
    scene.assert_closed().await;

    let out = scene
        .run(&["bypass", "--env", ENV, "--ttl", "10m", "--output", "json"])
        .await;
    out.assert_success();
    let lines = out.json_lines();
    let token = lines[0]["token"].as_str().expect("a token").to_owned();
    let header_name = lines[0]["header"].as_str().expect("a header").to_owned();
    let expires = lines[0]["expires_at"].as_str().expect("expires_at");
    let expires = OffsetDateTime::parse(expires, &Rfc3339).expect("RFC 3339");
    let ttl = expires - OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::minutes(9) && ttl <= time::Duration::minutes(10),
        "--ttl 10m: expires in {ttl}"
    );

    // The text form prints the token first.
    let text = scene.run(&["bypass", "--env", ENV, "--ttl", "10m"]).await;
    text.assert_success();
    let text_token = text
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    text.assert_mentions(&header_name);

    for edge in scene.edges() {
        for token in [&token, &text_token] {
            for (path, upstream) in [("/", "ui"), ("/api/x", "api")] {
                let answer = edge
                    .send(
                        edge.request(reqwest::Method::GET, path)
                            .header(&header_name, token),
                    )
                    .await;
                assert_eq!(
                    answer.status(),
                    200,
                    "{}{path} with the token",
                    edge.url("")
                );
                assert_eq!(
                    header(&answer, "x-drawbridge-bypassed").as_deref(),
                    Some("token"),
                    "{}{path}",
                    edge.url("")
                );
                assert_eq!(header(&answer, "x-upstream").as_deref(), Some(upstream));
            }
        }
        // A token whose signature is altered by one character is refused.
        let mut forged: Vec<char> = token.chars().collect();
        let i = forged.len() - 10;
        forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        let answer = edge
            .send(
                edge.request(reqwest::Method::GET, "/")
                    .header(&header_name, &forged),
            )
            .await;
        assert_eq!(
            answer.status(),
            503,
            "a forged token passed {}",
            edge.url("/")
        );
    }
    // Without a token the public still sees the page.
    scene.assert_closed().await;
}

#[tokio::test]
async fn a_probe_during_down_and_up_sees_only_the_service_or_the_page() {
    let scene = MaintScene::start("maintctl_probe").await;
    let mut urls = Vec::new();
    for edge in scene.edges() {
        urls.push(edge.url("/"));
        urls.push(edge.url("/api/x"));
    }
    let mut args = vec!["probe"];
    args.extend(urls.iter().map(String::as_str));
    args.extend([
        "--interval",
        "20ms",
        "--expect",
        "200,503",
        "--output",
        "json",
    ]);
    let mut probe = scene.maintctl.spawn(&args);
    // The probe runs: both proxies count its requests.
    for edge in scene.edges() {
        drawbridge_tests::assert_eventually!(
            edge.metrics()
                .await
                .value("drawbridge_requests_total", &[("status", "200")])
                >= 3.0,
            std::time::Duration::from_secs(10),
            "the probe's requests reach {}\n{}",
            edge.url(""),
            probe.log_tail()
        );
    }

    scene.run(&refs(&down_args("probe"))).await.assert_success();
    // While the gate is closed, a probe expecting only 200 reports every 503 with its time.
    let strict = scene
        .run(&[
            "probe",
            &scene.edge1.url("/"),
            "--interval",
            "50ms",
            "--expect",
            "200",
            "--duration",
            "1s",
            "--output",
            "json",
        ])
        .await;
    strict.assert_code(1);
    let report = &strict.json_lines()[0];
    assert_eq!(report["clean"], false, "{strict}");
    let unexpected = report["unexpected"].as_array().expect("unexpected");
    assert!(!unexpected.is_empty(), "{strict}");
    assert!(
        unexpected
            .iter()
            .all(|u| u["what"].as_str().unwrap_or_default().contains("503") && u["at"].is_string()),
        "{strict}"
    );
    scene
        .run(&["up", "--env", ENV, "--yes"])
        .await
        .assert_success();

    probe.interrupt();
    let out = probe.wait(std::time::Duration::from_secs(15)).await;
    out.assert_success();
    let report = &out.json_lines()[0];
    assert_eq!(report["clean"], true, "{out}");
    assert_eq!(report["connection_errors"], 0, "{out}");
    assert_eq!(
        report["unexpected"].as_array().map(Vec::len),
        Some(0),
        "{out}"
    );
    let seen = |status: &str| report["by_status"][status].as_u64().unwrap_or(0);
    assert!(seen("200") > 0 && seen("503") > 0, "{out}");
}
