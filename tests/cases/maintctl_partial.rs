//! `maintctl` when part of the fleet fails: a box lost in the middle of `down` (the run stops
//! after that step, `resume` finishes it), a smoke test that fails (the page stays up), and
//! `up` after a partial `down` (it restores exactly what was changed).

use std::time::Duration;

use drawbridge_tests::maintctl::{ExtraStep, MaintScene, RunView, ENV, WORKER_PROCESSES};
use drawbridge_tests::services::{Call, SchedulerState};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn scripts_since(calls: &[Call], before: usize) -> Vec<String> {
    calls[before.min(calls.len())..]
        .iter()
        .map(|c| c.script.clone())
        .collect()
}

fn status_of(run: &RunView, step: &str, target: &str) -> String {
    run.target_status(step, target)
        .unwrap_or_else(|| panic!("no target {target} in step {step}:\n{run}"))
}

fn at(run: &RunView, step: &str, field: &str) -> OffsetDateTime {
    let raw = run
        .step(step)
        .and_then(|s| s[field].as_str().map(str::to_owned));
    let raw = raw.unwrap_or_else(|| panic!("step {step} has no {field}:\n{run}"));
    OffsetDateTime::parse(&raw, &Rfc3339).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

#[tokio::test]
async fn a_box_lost_mid_run_stops_the_run_and_resume_finishes_it() {
    let mut scene = MaintScene::start("maintctl_box_lost").await;
    // A first step that leaves time to pull worker2's plug after pre-flight (which would
    // refuse an unreachable box), and records each time it runs.
    let ran = scene.dir.join("hold.log");
    scene.inventory.steps.push(ExtraStep::command(
        "hold",
        "before_down",
        &format!("echo ran >> '{}'; sleep 2", ran.display()),
    ));
    scene.rewrite_inventory();
    let sched_calls = scene.sched1.calls().len();

    let mut down =
        scene
            .maintctl
            .spawn(&["down", "--env", ENV, "--reason", "network work", "--yes"]);
    let journal = scene.journal();
    journal
        .wait_latest(
            "pre-flight passed, first step running",
            Duration::from_secs(30),
            |r| r.target_status("before_down:hold", "hold").as_deref() == Some("intent"),
        )
        .await;
    scene.ssh_worker2.stop();
    let out = down.wait(Duration::from_secs(60)).await;
    out.assert_code(1);
    out.assert_mentions("worker2");

    let run = journal.latest().await.expect("the run");
    assert_eq!(run.status(), "failed", "{run}");
    run.assert_step("set_key", "done");
    assert_eq!(status_of(&run, "node_maintenance_on", "api1"), "done");
    assert_eq!(status_of(&run, "node_maintenance_on", "api2"), "done");
    run.assert_step("stop_workers", "failed");
    run.assert_target("stop_workers", "worker1", "done");
    run.assert_target("stop_workers", "worker2", "failed");
    // The run stopped before the next step.
    run.assert_step("disable_jobs", "pending");
    run.assert_target("disable_jobs", "sched1", "pending");

    // Outside: the gate is closed, the nodes are out, worker1 stopped, worker2 untouched,
    // the jobs never touched (only pre-flight's check).
    assert!(scene.gate_entry().await.is_some());
    scene.assert_closed().await;
    assert!(scene.node_in_maintenance("api1").await);
    assert!(scene.node_in_maintenance("api2").await);
    assert_eq!(scene.worker1.running_count(), 0);
    assert_eq!(scene.worker2.running_count(), WORKER_PROCESSES);
    assert_eq!(scene.sched1.state(), SchedulerState::Enabled);
    assert_eq!(scripts_since(&scene.sched1.calls(), sched_calls), ["check"]);

    // The box comes back; resume continues the same run.
    scene.ssh_worker2.start().await;
    let resumed = scene.run(&["resume", "--env", ENV, "--yes"]).await;
    resumed.assert_success();
    let after = journal.latest().await.expect("the run");
    assert_eq!(after.id(), run.id(), "resume continues the run:\n{after}");
    assert_eq!(after.status(), "done", "{after}");
    after.assert_target("stop_workers", "worker2", "done");
    after.assert_target("disable_jobs", "sched1", "done");
    assert_eq!(scene.worker2.running_count(), 0);
    assert_eq!(scene.sched1.state(), SchedulerState::Disabled);
    // Steps recorded done were not run again.
    let runs = std::fs::read_to_string(&ran).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "the hold step ran {runs:?}");
}

#[tokio::test]
async fn a_failing_smoke_test_keeps_the_page_up() {
    let mut scene = MaintScene::start("maintctl_smoke_fails").await;
    scene
        .run(&["down", "--env", ENV, "--reason", "upgrade", "--yes"])
        .await
        .assert_success();
    // The UI does not answer what the smoke test wants.
    scene.inventory.smoke_mut("ui home").expect_status = Some(418);
    scene.rewrite_inventory();

    let up = scene.run(&["up", "--env", ENV, "--yes"]).await;
    up.assert_code(1);
    up.assert_mentions("ui home");

    let run = scene.journal().latest().await.expect("the up run");
    assert_eq!(run.direction(), "up", "{run}");
    assert_eq!(run.status(), "failed", "{run}");
    for step in ["enable_jobs", "start_workers", "node_maintenance_off"] {
        run.assert_step(step, "done");
    }
    run.assert_step("smoke_tests", "failed");
    run.assert_target("smoke_tests", "ui home", "failed");
    run.assert_target("smoke_tests", "api ping", "done");
    run.assert_step("clear_key", "pending");

    // The public still sees the page; what came before the smoke tests is restored.
    assert!(scene.gate_entry().await.is_some(), "the key was cleared");
    scene.assert_closed().await;
    assert_eq!(scene.worker1.running_count(), WORKER_PROCESSES);
    assert_eq!(scene.worker2.running_count(), WORKER_PROCESSES);
    assert_eq!(scene.sched1.state(), SchedulerState::Enabled);
    assert!(!scene.node_in_maintenance("api1").await);
    assert!(!scene.node_in_maintenance("api2").await);

    // Fixed, the same run finishes and opens the gate.
    scene.inventory.smoke_mut("ui home").expect_status = Some(200);
    scene.rewrite_inventory();
    scene
        .run(&["resume", "--env", ENV, "--yes"])
        .await
        .assert_success();
    let after = scene.journal().latest().await.expect("the up run");
    assert_eq!(after.id(), run.id(), "{after}");
    assert_eq!(after.status(), "done", "{after}");
    assert!(scene.gate_entry().await.is_none());
    scene.assert_open().await;
}

#[tokio::test]
async fn up_after_a_partial_down_restores_exactly_what_was_changed() {
    let scene = MaintScene::start("maintctl_partial_undo").await;
    scene.worker2.fail_script("stop", Some("disk full"));
    let worker2_pids = scene.worker2.pids();

    let down = scene
        .run(&["down", "--env", ENV, "--reason", "partial", "--yes"])
        .await;
    down.assert_code(1);
    down.assert_mentions("worker2").assert_mentions("disk full");
    let down_run = scene.journal().latest().await.expect("the down run");
    assert_eq!(down_run.step_status("set_key").as_deref(), Some("done"));
    assert_eq!(status_of(&down_run, "node_maintenance_on", "api1"), "done");
    assert_eq!(status_of(&down_run, "node_maintenance_on", "api2"), "done");
    assert_eq!(status_of(&down_run, "stop_workers", "worker1"), "done");
    assert_eq!(status_of(&down_run, "stop_workers", "worker2"), "failed");
    assert_eq!(status_of(&down_run, "disable_jobs", "sched1"), "pending");
    assert_eq!(scene.worker1.running_count(), 0);
    assert_eq!(scene.worker2.running_count(), WORKER_PROCESSES);

    let calls = |s: &MaintScene| {
        (
            s.worker1.calls().len(),
            s.worker2.calls().len(),
            s.sched1.calls().len(),
        )
    };
    let (w1_before, w2_before, sched_before) = calls(&scene);

    // The plan of `up` is the undo of what the journal says was done.
    let plan = scene.run(&["plan", "up", "--env", ENV]).await;
    plan.assert_success();
    assert!(
        !plan.stdout.contains("enable_jobs") && !plan.stdout.contains("sched1"),
        "the jobs were never disabled, yet the plan enables them:\n{plan}"
    );

    let up_run = scene.up_ok().await;
    assert_eq!(up_run.direction(), "up", "{up_run}");
    assert_eq!(up_run.status(), "done", "{up_run}");
    assert_eq!(
        up_run.0["restores"],
        serde_json::json!([down_run.id()]),
        "{up_run}"
    );
    // In reverse order of the down, and nothing for the scheduler it never reached.
    assert_eq!(
        up_run.step_ids(),
        [
            "start_workers",
            "node_maintenance_off",
            "smoke_tests",
            "clear_key",
            "verify_up"
        ],
        "{up_run}"
    );
    assert!(
        at(&up_run, "start_workers", "ended_at")
            <= at(&up_run, "node_maintenance_off", "started_at")
    );
    assert!(
        at(&up_run, "node_maintenance_off", "ended_at") <= at(&up_run, "clear_key", "started_at")
    );
    up_run.assert_target("start_workers", "worker1", "done");
    // worker2's stop failed: it may or may not have stopped, so up looks, finds it running.
    up_run.assert_target("start_workers", "worker2", "skipped");

    // Outside: everything back, worker2's processes never restarted, sched1 never touched.
    assert_eq!(scene.worker1.running_count(), WORKER_PROCESSES);
    assert_eq!(scene.worker2.pids(), worker2_pids, "worker2 was restarted");
    assert_eq!(scene.sched1.state(), SchedulerState::Enabled);
    assert!(!scene.node_in_maintenance("api1").await);
    assert!(!scene.node_in_maintenance("api2").await);
    assert!(scene.gate_entry().await.is_none());
    scene.assert_open().await;
    let (w1, w2, sched) = (
        scripts_since(&scene.worker1.calls(), w1_before),
        scripts_since(&scene.worker2.calls(), w2_before),
        scripts_since(&scene.sched1.calls(), sched_before),
    );
    assert!(w1.contains(&"start".to_owned()), "worker1: {w1:?}");
    assert!(w2.iter().all(|s| s == "check"), "worker2: {w2:?}");
    assert!(
        sched.iter().all(|s| s == "check"),
        "sched1 was acted on: {sched:?}"
    );
    let all_sched: Vec<String> = scene.sched1.calls().into_iter().map(|c| c.script).collect();
    assert!(
        !all_sched.contains(&"disable".to_owned()),
        "sched1: {all_sched:?}"
    );
    assert_eq!(
        all_sched.iter().filter(|s| *s == "enable").count(),
        1,
        "only the scene's own enable: {all_sched:?}"
    );
}
