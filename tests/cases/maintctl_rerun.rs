//! `maintctl` on normal bad days: `down` run twice, two operators at once, a second `down` while
//! a run holds the lock, an environment taken down by hand, and every subcommand's
//! `--output json`. `up` restores the environment, not a run, and says "verified" only after
//! seeing it from outside.

use std::time::{Duration, Instant};

use drawbridge_tests::maintctl::{ExtraStep, MaintScene, MaintctlOutput, ENV};
use serde_json::Value;

const HOOK: &str = "/hooks/partners";

/// `maintctl down --output json` with `extra` arguments.
async fn down_json(scene: &MaintScene, extra: &[&str]) -> MaintctlOutput {
    let mut args = vec![
        "down",
        "--env",
        ENV,
        "--reason",
        "db upgrade",
        "--yes",
        "--output",
        "json",
    ];
    args.extend(extra);
    scene.run(&args).await
}

/// Asserts every part of the scene is back: key gone, gate open, nodes serving, workers and jobs
/// running.
async fn assert_restored(scene: &MaintScene) {
    scene.assert_untouched().await;
    scene.assert_open().await;
}

/// `down`, `down` again, then `up`: the re-run finds everything already so and journals it
/// `skipped` (history says so), does not send the partners' webhook or run the command again,
/// and `up` restores every box and opens the gate; `up` once more is a no-op that says so.
#[tokio::test]
async fn down_twice_then_up_restores_everything_and_repeats_nothing() {
    let mut scene = MaintScene::start("maintctl_down_twice").await;
    let ran = scene.dir.join("announce.log");
    scene.inventory.steps = vec![
        ExtraStep::webhook("partners", "before_down", &scene.ui.url(HOOK)),
        ExtraStep::command(
            "announce",
            "after_down",
            &format!("echo ran >> '{}'", ran.display()),
        ),
    ];
    scene.rewrite_inventory();
    let runs_of_command = || {
        std::fs::read_to_string(&ran)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };

    down_json(&scene, &[]).await.assert_success();
    let first = scene.journal().latest().await.expect("the first down");
    assert_eq!(scene.ui.requests_to(HOOK), 1);
    assert_eq!(runs_of_command(), 1);

    let again = down_json(&scene, &[]).await;
    again.assert_success();
    let second = scene.journal().latest().await.expect("the second down");
    assert_ne!(second.id(), first.id());
    assert_eq!(scene.ui.requests_to(HOOK), 1, "the webhook was sent again");
    assert_eq!(runs_of_command(), 1, "the command ran again");
    for (step, target) in [
        ("before_down:partners", "partners"),
        ("set_key", "drawbridge/mock/gate"),
        ("node_maintenance_on", "api1"),
        ("node_maintenance_on", "api2"),
        ("stop_workers", "worker1"),
        ("stop_workers", "worker2"),
        ("disable_jobs", "sched1"),
        ("after_down:announce", "announce"),
    ] {
        assert_eq!(
            second.target_status(step, target).as_deref(),
            Some("skipped"),
            "{step}/{target} in {second}"
        );
    }
    let webhook = second
        .target("before_down:partners", "partners")
        .expect("the webhook target");
    assert!(
        webhook["output"]
            .as_str()
            .is_some_and(|o| o.contains(first.id())),
        "the skip names the run that did it: {webhook:#}"
    );
    let history = scene
        .run(&["history", "--env", ENV, "--output", "json"])
        .await;
    history.assert_success();
    let listed = history.json_lines();
    let rerun = listed
        .iter()
        .find(|r| r["run"] == second.id())
        .expect("the second down in history");
    for step in rerun["steps"].as_array().expect("steps") {
        if step["step"] == "verify_down" {
            continue;
        }
        assert_eq!(step["shown"], "skipped", "{step:#}");
        for t in step["targets"].as_array().expect("targets") {
            assert_eq!(t["status"], "skipped", "{step:#}");
        }
    }
    let text = scene.run(&["history", "--env", ENV]).await;
    text.assert_success().assert_mentions("skipped");

    // `--repeat-steps` sends it again when asked.
    down_json(&scene, &["--repeat-steps"])
        .await
        .assert_success();
    assert_eq!(scene.ui.requests_to(HOOK), 2);
    assert_eq!(runs_of_command(), 2);

    let restored = scene.up_ok().await;
    assert_eq!(restored.direction(), "up", "{restored}");
    assert_eq!(restored.status(), "done", "{restored}");
    assert_eq!(
        restored.0["restores"].as_array().map(Vec::len),
        Some(3),
        "{restored}"
    );
    restored.assert_target("node_maintenance_off", "api1", "done");
    restored.assert_target("verify_up", ENV, "done");
    assert_restored(&scene).await;

    // The environment is open: `up` again changes nothing and says so.
    let runs_before = scene.journal().keys().await.len();
    let noop = scene.run(&["up", "--env", ENV, "--yes"]).await;
    noop.assert_success().assert_mentions("nothing to do");
    assert_eq!(
        scene.journal().keys().await.len(),
        runs_before,
        "a run was journalled"
    );
}

/// Two operators run `down` at the same moment: exactly one proceeds, the other exits 4 within
/// 2 s naming the holder; and a `down` while that run is still going exits 4 too, whatever the
/// journal says about the unfinished run.
#[tokio::test]
async fn a_held_lock_is_exit_4_naming_the_holder() {
    let mut scene = MaintScene::start("maintctl_two_downs").await;
    scene.inventory.steps = vec![
        ExtraStep::command("hold", "after_down", "sleep 4"),
        ExtraStep::command("hold", "before_up", "sleep 4"),
    ];
    scene.rewrite_inventory();
    let args = ["down", "--env", ENV, "--reason", "race", "--yes"];
    let started = Instant::now();
    let mut a = scene.maintctl.spawn(&args);
    let mut b = scene.maintctl.spawn(&args);
    let deadline = Duration::from_secs(60);
    let (first, second) = tokio::join!(a.wait(deadline), b.wait(deadline));
    let (won, lost) = match (first.code, second.code) {
        (Some(0), Some(4)) => (first, second),
        (Some(4), Some(0)) => (second, first),
        _ => panic!("want one 0 and one 4:\n{first}\n{second}"),
    };
    assert!(
        lost.took < Duration::from_secs(2),
        "the loser took {:?}\n{lost}",
        lost.took
    );
    lost.assert_mentions("(pid ").assert_mentions(" since ");
    won.assert_success();
    eprintln!("both ended after {:?}", started.elapsed());

    // A run in progress (held in its last extra step): another `down` is exit 4, not "an
    // unfinished down, resume it".
    let mut up = scene.maintctl.spawn(&["up", "--env", ENV, "--yes"]);
    scene
        .journal()
        .wait_latest("the up run going", Duration::from_secs(30), |r| {
            r.direction() == "up" && r.status() == "running"
        })
        .await;
    let refused = scene.run(&args).await;
    refused.assert_code(4);
    refused.assert_mentions("up by ");
    assert!(refused.took < Duration::from_secs(2), "{refused}");
    up.wait(Duration::from_secs(60)).await.assert_success();
}

/// An environment taken down by hand (node maintenance typed on a box) with nothing in the
/// journal: `up` says what it sees and how to restore; `up --all` restores it.
#[tokio::test]
async fn up_without_a_down_says_what_it_sees() {
    let scene = MaintScene::start("maintctl_down_by_hand").await;
    scene
        .api1
        .client()
        .agent_node_maintenance(true, "by hand")
        .await
        .expect("node maintenance on api1");
    let refused = scene.run(&["up", "--env", ENV, "--yes"]).await;
    refused.assert_code(1);
    refused
        .assert_mentions("box api1 (api_ui): node maintenance")
        .assert_mentions("--all");
    assert!(scene.node_in_maintenance("api1").await);

    let all = scene.run(&["up", "--env", ENV, "--all", "--yes"]).await;
    all.assert_success();
    assert_restored(&scene).await;
}

/// Every subcommand answers `--output json` with one JSON object per line, errors included.
#[tokio::test]
async fn every_subcommand_answers_json_line_by_line() {
    let scene = MaintScene::start("maintctl_json").await;
    let probe_url = scene.edge1.url("/");
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["check-config"], 0),
        (vec!["plan", "down", "--env", ENV], 0),
        (vec!["plan", "up", "--env", ENV], 0),
        (vec!["status", "--env", ENV], 0),
        (vec!["history", "--env", ENV], 0),
        (vec!["bypass", "--env", ENV], 0),
        (vec!["down", "--env", ENV, "--dry-run"], 0),
        (vec!["up", "--env", ENV, "--dry-run"], 0),
        (vec!["resume", "--env", ENV], 1),
        (vec!["down", "--env", ENV, "--yes"], 2),
        (vec!["status", "--env", "nope"], 2),
        (vec!["status"], 2),
        (
            vec![
                "probe",
                &probe_url,
                "--duration",
                "300ms",
                "--interval",
                "100ms",
            ],
            0,
        ),
    ];
    for (args, code) in cases {
        let mut full = args.clone();
        full.extend(["--output", "json"]);
        let out = scene.run(&full).await;
        out.assert_code(code);
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(!lines.is_empty(), "no output:\n{out}");
        for line in &lines {
            let parsed: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{out}"));
            assert!(parsed.is_object(), "{line}");
        }
        if code != 0 {
            let last: Value = serde_json::from_str(lines[lines.len() - 1]).expect("parsed");
            assert_eq!(last["exit_code"], code, "{out}");
            assert!(
                last["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{out}"
            );
        }
    }

    // The text status is a report: tables, plurals, times to the second.
    let text = scene.run(&["status", "--env", ENV]).await;
    text.assert_success()
        .assert_mentions("2 proxies:")
        .assert_mentions("5 boxes:")
        .assert_mentions("PROXY")
        .assert_mentions("lock: free");
    assert!(
        !text.stdout.contains('{'),
        "raw JSON in the text status:\n{text}"
    );
}

/// A `down` that stops before it changed anything (its own check refused) leaves the service
/// open: `up` finds nothing to restore, sees it open and closes that maintenance with a run that
/// only checks, so the next `down` is a new maintenance and tells the partners again.
#[tokio::test]
async fn up_closes_a_maintenance_whose_down_changed_nothing() {
    let mut scene = MaintScene::start("maintctl_aborted_down").await;
    let gate = scene.dir.join("ready");
    scene.inventory.steps = vec![
        ExtraStep::webhook("partners", "before_down", &scene.ui.url(HOOK)),
        ExtraStep::command(
            "ready",
            "before_down",
            &format!("test -e '{}'", gate.display()),
        ),
    ];
    scene.rewrite_inventory();
    down_json(&scene, &[]).await.assert_code(1);
    assert_eq!(scene.ui.requests_to(HOOK), 1);
    scene.assert_open().await;

    let closed = scene.up_ok().await;
    assert_eq!(closed.direction(), "up", "{closed}");
    assert_eq!(closed.step_ids(), ["verify_up"], "{closed}");

    std::fs::write(&gate, "").expect("the ready file");
    down_json(&scene, &[]).await.assert_success();
    assert_eq!(
        scene.ui.requests_to(HOOK),
        2,
        "a new maintenance tells the partners"
    );
}
