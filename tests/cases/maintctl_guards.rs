//! What keeps `maintctl` from acting when it should not: `plan` and `--dry-run` touch nothing,
//! a second operator is refused while another run holds the lock, and pre-flight refuses an
//! unreachable box before anything changes.

use std::collections::HashMap;
use std::time::Duration;

use drawbridge_core::consul::{PutMode, SessionRequest};
use drawbridge_tests::maintctl::{MaintScene, ENV, GATE_KEY, PREFIX};
use drawbridge_tests::services::Call;
use serde_json::json;

const BOXES: [&str; 5] = ["api1", "api2", "worker1", "worker2", "sched1"];

/// How many times each box's scripts have been called so far.
fn script_calls(scene: &MaintScene) -> HashMap<&'static str, usize> {
    HashMap::from([
        ("worker1", scene.worker1.calls().len()),
        ("worker2", scene.worker2.calls().len()),
        ("sched1", scene.sched1.calls().len()),
    ])
}

/// The scripts called after the first `before` calls.
fn scripts_since(calls: &[Call], before: usize) -> Vec<String> {
    calls[before.min(calls.len())..]
        .iter()
        .map(|c| c.script.clone())
        .collect()
}

#[tokio::test]
async fn plan_and_dry_run_touch_nothing() {
    let scene = MaintScene::start("maintctl_plan_dry_run").await;
    let kv_before = scene.kv_index().await;
    let calls_before = script_calls(&scene);

    let plan = scene.run(&["plan", "down", "--env", ENV]).await;
    plan.assert_success();
    let dry = scene
        .run(&["down", "--env", ENV, "--reason", "rehearsal", "--dry-run"])
        .await;
    dry.assert_success();
    for out in [&plan, &dry] {
        for needle in [
            "set_key",
            "node_maintenance_on",
            "stop_workers",
            "disable_jobs",
            GATE_KEY,
        ]
        .iter()
        .chain(BOXES.iter())
        {
            out.assert_mentions(needle);
        }
    }

    // The JSON plan: every step in order, with its targets.
    let json_plan = scene
        .run(&["plan", "down", "--env", ENV, "--output", "json"])
        .await;
    json_plan.assert_success();
    let lines = json_plan.json_lines();
    let steps: Vec<(String, Vec<String>)> = lines[0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let targets = s["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_owned())
                .collect();
            (s["id"].as_str().unwrap_or_default().to_owned(), targets)
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = [
        ("set_key", vec![GATE_KEY]),
        ("node_maintenance_on", vec!["api1", "api2"]),
        ("stop_workers", vec!["worker1", "worker2"]),
        ("disable_jobs", vec!["sched1"]),
        ("verify_down", vec![ENV]),
    ]
    .into_iter()
    .map(|(id, t)| (id.to_owned(), t.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(steps, want, "{json_plan}");

    // The restore, with nothing to undo: every step with --all (plan and dry run alike); the
    // smoke tests only behind a closed gate, and this one is open.
    let plan_up = scene.run(&["plan", "up", "--env", ENV, "--all"]).await;
    plan_up.assert_success();
    let dry_up = scene.run(&["up", "--env", ENV, "--all", "--dry-run"]).await;
    dry_up.assert_success();
    for out in [&plan_up, &dry_up] {
        for needle in [
            "enable_jobs",
            "start_workers",
            "node_maintenance_off",
            "clear_key",
            "verify_up",
        ] {
            out.assert_mentions(needle);
        }
        assert!(!out.stdout.contains("smoke_tests"), "{out}");
    }

    // Nothing changed: no KV write at all (the journal, the lock, the key), no box touched
    // (not even a check over SSH), no node in maintenance, the proxies open.
    assert_eq!(scene.kv_index().await, kv_before, "a KV write happened");
    assert_eq!(scene.journal().keys().await, Vec::<String>::new());
    assert_eq!(script_calls(&scene), calls_before, "a box script ran");
    scene.assert_untouched().await;
    scene.assert_open().await;
}

#[tokio::test]
async fn a_second_operator_is_refused_while_another_holds_the_lock() {
    let scene = MaintScene::start("maintctl_lock_held").await;
    let client = scene.consul.client();
    // Another operator's run, on another machine (so it is never taken over as dead here).
    let session = client
        .session_create(&SessionRequest::with_ttl(
            "maintctl down (another operator)",
            Duration::from_secs(120),
        ))
        .await
        .expect("a session");
    let holder = json!({
        "user": "alice",
        "host": "bastion-7.elsewhere.invalid",
        "pid": 4242,
        "since": "2026-01-02T03:04:05Z",
        "action": "down",
    })
    .to_string();
    let lock_key = format!("{PREFIX}/lock");
    assert!(client
        .kv_put(&lock_key, holder.as_bytes(), PutMode::Acquire(&session))
        .await
        .expect("kv put"));
    let kv_before = scene.kv_index().await;
    let calls_before = script_calls(&scene);

    let refused = scene
        .run(&["down", "--env", ENV, "--reason", "second", "--yes"])
        .await;
    refused.assert_code(4);
    refused
        .assert_mentions("alice@bastion-7.elsewhere.invalid")
        .assert_mentions("4242")
        .assert_mentions("2026-01-02");
    // Refused at once, not after waiting for the lock (a session outlives a dead holder by up
    // to 30 s). Pre-flight checks every box before it reports, so this takes ~2 s alone.
    assert!(
        refused.took < Duration::from_secs(10),
        "refused only after {:?}",
        refused.took
    );
    let up = scene.run(&["up", "--env", ENV, "--all", "--yes"]).await;
    up.assert_code(4);
    up.assert_mentions("alice@bastion-7.elsewhere.invalid");

    // `status` names the holder too.
    let status = scene
        .run(&["status", "--env", ENV, "--output", "json"])
        .await;
    status.assert_success();
    assert_eq!(
        status.json_lines()[0]["lock"]["by"],
        "alice@bastion-7.elsewhere.invalid",
        "{status}"
    );

    // Nothing changed, and the lock is still the other operator's.
    assert_eq!(scene.kv_index().await, kv_before, "a KV write happened");
    assert_eq!(scene.journal().keys().await, vec![lock_key.clone()]);
    let (value, held_by) = scene.journal().lock().await.expect("the lock key");
    assert_eq!(held_by.as_deref(), Some(session.as_str()));
    assert_eq!(value.expect("a holder")["user"], "alice");
    scene.assert_untouched().await;
    scene.assert_open().await;
    // Pre-flight checked the boxes (read-only) but acted on none.
    for (name, calls) in [
        ("worker1", scene.worker1.calls()),
        ("worker2", scene.worker2.calls()),
        ("sched1", scene.sched1.calls()),
    ] {
        let new = scripts_since(&calls, calls_before[name]);
        assert!(new.iter().all(|s| s == "check"), "{name} ran {new:?}");
    }

    // Once the other run is over, the same command goes through.
    client.session_destroy(&session).await.expect("destroy");
    scene
        .run(&["down", "--env", ENV, "--reason", "second", "--yes"])
        .await
        .assert_success();
    assert!(scene.gate_entry().await.is_some());
}

#[tokio::test]
async fn pre_flight_refuses_an_unreachable_box_and_changes_nothing() {
    let mut scene = MaintScene::start("maintctl_preflight").await;
    let calls_before = script_calls(&scene);
    let kv_before = scene.kv_index().await;
    scene.ssh_worker2.stop();

    let out = scene
        .run(&["down", "--env", ENV, "--reason", "migration", "--yes"])
        .await;
    out.assert_code(5);
    out.assert_mentions("worker2");

    // No journal, no key: only the lock was taken (so that a second operator is told at once)
    // and released.
    assert!(scene.kv_index().await > kv_before, "the lock was not taken");
    let lock_key = format!("{PREFIX}/lock");
    assert_eq!(scene.journal().keys().await, vec![lock_key]);
    let (_, held_by) = scene.journal().lock().await.expect("the lock key");
    assert_eq!(held_by, None, "the lock is still held");
    scene.assert_untouched().await;
    scene.assert_open().await;
    // The reachable boxes were only checked; the unreachable one saw nothing.
    assert_eq!(
        scripts_since(&scene.worker1.calls(), calls_before["worker1"]),
        ["check"]
    );
    assert_eq!(
        scripts_since(&scene.sched1.calls(), calls_before["sched1"]),
        ["check"]
    );
    assert_eq!(
        scripts_since(&scene.worker2.calls(), calls_before["worker2"]),
        Vec::<String>::new()
    );
}
