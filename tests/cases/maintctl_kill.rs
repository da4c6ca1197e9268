//! `maintctl` SIGKILLed in the middle of a step (as in a crash of the operator's machine): the
//! journal says `intent` for what was in flight, the lock is left behind, and `resume` on the
//! same host takes the lock over at once and finishes the run; a `down` run again after it
//! finds everything already so, and `up` restores what both changed.

use std::time::Duration;

use drawbridge_tests::eventually::eventually;
use drawbridge_tests::maintctl::{MaintScene, ENV, WORKER_PROCESSES};
use drawbridge_tests::services::SchedulerState;

#[tokio::test]
async fn maintctl_killed_mid_step_is_finished_by_resume() {
    let scene = MaintScene::start("maintctl_killed").await;
    // worker1's stop takes a while, so the kill lands while it is in flight.
    scene
        .worker1
        .delay_script("stop", Some(Duration::from_secs(4)));
    let stops_before = stop_calls(&scene);

    let mut down = scene
        .maintctl
        .spawn(&["down", "--env", ENV, "--reason", "crash test", "--yes"]);
    let journal = scene.journal();
    journal
        .wait_latest("worker1's stop in flight", Duration::from_secs(30), |r| {
            r.target_status("stop_workers", "worker1").as_deref() == Some("intent")
        })
        .await;
    eventually(
        "stop.sh started on worker1",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            if stop_calls(&scene) > stops_before {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        },
    )
    .await;
    let pid = down.pid();
    let killed = down.kill();
    assert_eq!(
        killed.code, None,
        "maintctl exited before the kill:\n{killed}"
    );

    // The journal tells the truth: the run is unfinished and worker1 is in flight, and the
    // outside agrees (its stop is still waiting, its processes run).
    let run = journal.latest().await.expect("the run");
    assert_eq!(run.status(), "running", "{run}");
    run.assert_step("set_key", "done");
    run.assert_step("node_maintenance_on", "done");
    run.assert_target("stop_workers", "worker1", "intent");
    assert_eq!(scene.worker1.running_count(), WORKER_PROCESSES);
    // The dead run's lock is still there, naming it.
    let (holder, session) = journal.lock().await.expect("the lock key");
    assert!(
        session.is_some(),
        "the lock was released by a SIGKILLed run"
    );
    assert_eq!(holder.expect("a holder")["pid"], pid);

    scene.worker1.delay_script("stop", None);
    let resumed = scene.run(&["resume", "--env", ENV, "--yes"]).await;
    resumed.assert_success();

    let after = journal.latest().await.expect("the run");
    assert_eq!(after.id(), run.id(), "{after}");
    assert_eq!(after.status(), "done", "{after}");
    after.assert_target("stop_workers", "worker1", "done");
    after.assert_target("disable_jobs", "sched1", "done");
    // Every effect of `down` is there.
    assert!(scene.gate_entry().await.is_some());
    scene.assert_closed().await;
    assert!(scene.node_in_maintenance("api1").await);
    assert!(scene.node_in_maintenance("api2").await);
    assert_eq!(scene.worker1.running_count(), 0);
    assert_eq!(scene.worker2.running_count(), 0);
    assert_eq!(scene.sched1.state(), SchedulerState::Disabled);
    // And the lock is free again.
    let (_, session) = journal.lock().await.expect("the lock key");
    assert!(session.is_none(), "the lock is still held after resume");

    // The operator, unsure, runs `down` once more: everything is already so.
    let again = scene
        .run(&["down", "--env", ENV, "--reason", "crash test", "--yes"])
        .await;
    again.assert_success();
    let rerun = journal.latest().await.expect("the re-run");
    assert_ne!(rerun.id(), run.id(), "{rerun}");
    for (step, target) in [
        ("node_maintenance_on", "api1"),
        ("stop_workers", "worker1"),
        ("disable_jobs", "sched1"),
    ] {
        rerun.assert_target(step, target, "skipped");
    }

    // `up` restores what the killed-and-resumed run changed, not only the last run (which
    // changed nothing).
    let restored = scene.up_ok().await;
    assert_eq!(restored.direction(), "up", "{restored}");
    assert_eq!(
        restored.0["restores"],
        serde_json::json!([run.id(), rerun.id()]),
        "{restored}"
    );
    assert!(scene.gate_entry().await.is_none());
    scene.assert_open().await;
    assert!(!scene.node_in_maintenance("api1").await);
    assert!(!scene.node_in_maintenance("api2").await);
    assert_eq!(scene.worker1.running_count(), WORKER_PROCESSES);
    assert_eq!(scene.worker2.running_count(), WORKER_PROCESSES);
    assert_eq!(scene.sched1.state(), SchedulerState::Enabled);
}

fn stop_calls(scene: &MaintScene) -> usize {
    scene
        .worker1
        .calls()
        .iter()
        .filter(|c| c.script == "stop")
        .count()
}
