//! `maintctl schedule`, `windows`, `reschedule` and `cancel` against a real Consul: every effect
//! is read back from the windows key, and every refusal leaves it as it was.

use drawbridge_core::consul::QueryOptions;
use drawbridge_core::windows::{WindowStatus, WindowsDoc};
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::maintctl::{
    run_to_end, Inventory, Maintctl, MaintctlOutput, ENV, GATE_KEY, RUN_DEADLINE,
};
use drawbridge_tests::process::TestDir;
use time::OffsetDateTime;

/// The windows key of the inventory (the default: the gate key's `/windows`).
fn windows_key() -> String {
    format!("{GATE_KEY}/windows")
}

struct Scene {
    consul: ConsulServer,
    maintctl: Maintctl,
    _dir: TestDir,
}

impl Scene {
    async fn start(test: &str) -> Scene {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let inventory = Inventory::new(consul.http_addr(), GATE_KEY, Vec::new());
        let maintctl = Maintctl::new(&dir, &inventory);
        Scene {
            consul,
            maintctl,
            _dir: dir,
        }
    }

    /// `maintctl <args>` run by an operator in Berlin.
    async fn run(&self, args: &[&str]) -> MaintctlOutput {
        let mut cmd = self.maintctl.command(args);
        cmd.env("TZ", "Europe/Berlin");
        run_to_end(cmd, args, RUN_DEADLINE).await
    }

    /// The windows key's value and index.
    async fn stored(&self) -> (Option<WindowsDoc>, u64) {
        let entry = self
            .consul
            .client()
            .kv_get(&windows_key(), &QueryOptions::default())
            .await
            .expect("consul kv get")
            .entry;
        match entry {
            None => (None, 0),
            Some(e) => (
                Some(
                    WindowsDoc::parse(e.value.as_deref().unwrap_or_default())
                        .expect("a windows document"),
                ),
                e.modify_index,
            ),
        }
    }
}

/// A window is scheduled in Berlin time and shown in UTC and CET, listed, moved and cancelled,
/// each change read back from Consul; what cannot be a window is refused and writes nothing.
#[tokio::test]
async fn windows_are_scheduled_listed_moved_and_cancelled_and_bad_ones_refused() {
    let scene = Scene::start("maintctl_windows").await;
    // Next January: in the future, and in winter time (CET, UTC+1) whatever today is.
    let year = OffsetDateTime::now_utc().year() + 1;
    let start = format!("{year}-01-13 20:00 Europe/Berlin");
    let end = format!("{year}-01-13T20:00:00Z");
    let scheduled = scene
        .run(&[
            "schedule",
            "--env",
            ENV,
            "--start",
            &start,
            "--end",
            &end,
            "--reason",
            "database upgrade",
        ])
        .await;
    scheduled.assert_success().assert_mentions(&format!(
        "{year}-01-13 19:00 UTC (20:00 CET) to {year}-01-13 20:00 UTC (21:00 CET) (1h00)"
    ));
    let (doc, _) = scene.stored().await;
    let doc = doc.expect("the windows key is written");
    assert_eq!(doc.windows.len(), 1);
    let window = doc.windows[0].clone();
    assert_eq!(window.status, WindowStatus::Scheduled);
    assert_eq!(window.reason, "database upgrade");
    assert_eq!((window.end - window.start).whole_minutes(), 60);
    assert!(window.by.contains('@'), "{}", window.by);
    let id = window.id.clone();

    let listed = scene
        .run(&["--output", "json", "windows", "--env", ENV])
        .await;
    listed.assert_success();
    let lines = listed.json_lines();
    assert_eq!(lines[0]["windows"][0]["id"], id.as_str());
    assert_eq!(lines[0]["windows"][0]["when"], "coming");

    // Refusals, each leaving the key as it was.
    let (_, index) = scene.stored().await;
    let overlapping = format!("{year}-01-13T19:30:00Z");
    let later = format!("{year}-01-13T21:00:00Z");
    for (args, code, says) in [
        (
            vec!["--start", &overlapping, "--end", &later],
            1,
            format!("overlaps window {id}"),
        ),
        (
            vec![
                "--start",
                "2020-01-01T10:00:00Z",
                "--end",
                "2020-01-01T11:00:00Z",
            ],
            2,
            "is not in the future".to_string(),
        ),
        (
            vec!["--start", &later, "--end", &overlapping],
            2,
            "is not after --start".to_string(),
        ),
        (
            vec!["--start", &format!("{year}-01-20 19:00"), "--end", &later],
            2,
            "neither RFC 3339".to_string(),
        ),
    ] {
        let mut all = vec!["schedule", "--env", ENV, "--reason", "x"];
        all.extend(args);
        scene
            .run(&all)
            .await
            .assert_code(code)
            .assert_mentions(&says);
    }
    let far = format!("{year}-03-01T10:00:00Z");
    let far_end = format!("{year}-03-01T11:00:00Z");
    let long_reason = "r".repeat(201);
    for (reason, says) in [
        ("two\nlines", "--reason must be one line"),
        (
            long_reason.as_str(),
            "--reason must be one line of at most 200 characters",
        ),
    ] {
        scene
            .run(&[
                "schedule", "--env", ENV, "--start", &far, "--end", &far_end, "--reason", reason,
            ])
            .await
            .assert_code(2)
            .assert_mentions(says);
    }
    assert_eq!(scene.stored().await.1, index, "a refusal wrote the key");
    // A dead-man switch whose end has passed would open the gate at once: refused up front.
    scene
        .run(&[
            "down",
            "--env",
            ENV,
            "--reason",
            "late",
            "--until",
            "2020-01-01T00:00:00Z",
            "--expire",
            "--yes",
        ])
        .await
        .assert_code(2)
        .assert_mentions("--expire with --until 2020-01-01T00:00:00Z (passed)");
    let gate = scene
        .consul
        .client()
        .kv_get(GATE_KEY, &QueryOptions::default())
        .await
        .expect("consul kv get");
    assert!(gate.entry.is_none(), "the refused down wrote the gate key");

    let new_start = format!("{year}-01-14T19:00:00Z");
    let new_end = format!("{year}-01-14T21:00:00Z");
    scene
        .run(&[
            "reschedule",
            "--env",
            ENV,
            &id,
            "--start",
            &new_start,
            "--end",
            &new_end,
        ])
        .await
        .assert_success()
        .assert_mentions("(2h00)");
    let moved = scene.stored().await.0.unwrap().windows[0].clone();
    assert_eq!(moved.id, id);
    assert_eq!((moved.end - moved.start).whole_minutes(), 120);
    assert_eq!(moved.start.day(), 14);

    scene
        .run(&["cancel", "--env", ENV, &id])
        .await
        .assert_success()
        .assert_mentions("cancelled");
    let (doc, index) = scene.stored().await;
    assert_eq!(doc.unwrap().windows[0].status, WindowStatus::Cancelled);
    scene
        .run(&["cancel", "--env", ENV, &id])
        .await
        .assert_success()
        .assert_mentions("already cancelled");
    assert_eq!(
        scene.stored().await.1,
        index,
        "a second cancel wrote the key"
    );
    scene
        .run(&[
            "reschedule",
            "--env",
            ENV,
            &id,
            "--start",
            &new_start,
            "--end",
            &new_end,
        ])
        .await
        .assert_code(1)
        .assert_mentions("is cancelled");
    scene
        .run(&["cancel", "--env", ENV, "w-nope"])
        .await
        .assert_code(1)
        .assert_mentions("no window w-nope");
    // A cancelled window no longer blocks its time.
    scene
        .run(&[
            "schedule", "--env", ENV, "--start", &new_start, "--end", &new_end, "--reason", "again",
        ])
        .await
        .assert_success();
    assert_eq!(scene.stored().await.0.unwrap().windows.len(), 2);

    // A damaged value is named and left alone.
    let client = scene.consul.client();
    client
        .kv_put(
            &windows_key(),
            b"{not json",
            drawbridge_core::consul::PutMode::Always,
        )
        .await
        .unwrap();
    scene
        .run(&["windows", "--env", ENV])
        .await
        .assert_code(1)
        .assert_mentions(&format!(
            "the windows key {} holds a value maintctl refuses",
            windows_key()
        ));
    let raw = client
        .kv_get(&windows_key(), &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(raw.entry.unwrap().value.as_deref(), Some(&b"{not json"[..]));
}

/// A window that has begun can have its end moved (the "30 more minutes" of a maintenance),
/// not its start; its message is kept.
#[tokio::test]
async fn a_window_that_has_begun_can_only_have_its_end_moved() {
    let scene = Scene::start("maintctl_windows_begun").await;
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let start = (OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .unwrap();
    let end = start + time::Duration::hours(1);
    scene
        .run(&[
            "schedule",
            "--env",
            ENV,
            "--start",
            &rfc(start),
            "--end",
            &rfc(end),
            "--reason",
            "db",
            "--message",
            "Partners: the API answers 503.",
        ])
        .await
        .assert_success();
    let window = scene.stored().await.0.unwrap().windows[0].clone();
    assert_eq!(
        window.message.as_deref(),
        Some("Partners: the API answers 503.")
    );
    tokio::time::sleep(
        (start - OffsetDateTime::now_utc()).unsigned_abs() + std::time::Duration::from_millis(200),
    )
    .await;
    let later = end + time::Duration::minutes(30);
    scene
        .run(&[
            "reschedule",
            "--env",
            ENV,
            &window.id,
            "--start",
            &rfc(start + time::Duration::minutes(5)),
            "--end",
            &rfc(later),
        ])
        .await
        .assert_code(2)
        .assert_mentions("only its end can move");
    scene
        .run(&[
            "reschedule",
            "--env",
            ENV,
            &window.id,
            "--start",
            &rfc(start),
            "--end",
            &rfc(later),
        ])
        .await
        .assert_success()
        .assert_mentions("(1h30)");
    let moved = scene.stored().await.0.unwrap().windows[0].clone();
    assert_eq!((moved.start, moved.end), (start, later));
    assert_eq!(moved.message, window.message);
}

/// The rehearsal `final` took 40 minutes (its journal says so): a one-hour window on `mock`
/// that touches the database (× 2) is refused, naming the estimate, and nothing is written;
/// `--force` schedules it anyway, saying why it does not fit; without the database it fits.
/// `plan down` shows the estimate too.
#[tokio::test]
async fn the_rehearsals_estimate_refuses_a_window_too_short_unless_forced() {
    let scene = Scene::start("maintctl_windows_estimate").await;
    let mut mock = Inventory::new(scene.consul.http_addr(), GATE_KEY, Vec::new());
    mock.rehearsals = vec!["final".to_string()];
    mock.max_window = Some("3h".to_string());
    let fin = Inventory::new(
        scene.consul.http_addr(),
        "drawbridge/final/gate",
        Vec::new(),
    );
    std::fs::write(
        scene.maintctl.config_path(),
        format!("{}\n{}", mock.to_toml(ENV), fin.to_toml("final")),
    )
    .expect("the inventory is written");
    // The last maintenance of `final`: a down at 10:00, its up done at 10:40.
    let client = scene.consul.client();
    for (id, direction, started, ended) in [
        (
            "1-down",
            "down",
            "2026-11-20T10:00:00Z",
            "2026-11-20T10:05:00Z",
        ),
        ("2-up", "up", "2026-11-20T10:30:00Z", "2026-11-20T10:40:00Z"),
    ] {
        let run = serde_json::json!({
            "id": id, "env": "final", "direction": direction, "reason": "rehearsal",
            "until": null, "by": "ops@bastion", "command": "maintctl", "plan_hash": "0",
            "status": "done", "started_at": started, "ended_at": ended, "steps": []
        });
        client
            .kv_put(
                &format!("maintctl/final/runs/{id}"),
                run.to_string().as_bytes(),
                drawbridge_core::consul::PutMode::Always,
            )
            .await
            .unwrap();
    }
    let year = OffsetDateTime::now_utc().year() + 1;
    let (start, end) = (
        format!("{year}-02-02T19:00:00Z"),
        format!("{year}-02-02T20:00:00Z"),
    );
    let with_db = [
        "schedule", "--env", ENV, "--start", &start, "--end", &end, "--reason", "db", "--db",
    ];
    scene
        .run(&with_db)
        .await
        .assert_code(5)
        .assert_mentions("the rehearsals predict 1h20m, longer than the window (1h00m)")
        .assert_mentions("final took 40m");
    assert_eq!(
        scene.stored().await,
        (None, 0),
        "a refused window was written"
    );
    let mut forced = with_db.to_vec();
    forced.push("--force");
    scene
        .run(&forced)
        .await
        .assert_success()
        .assert_mentions("--force: the rehearsals predict 1h20m");
    let (later, later_end) = (
        format!("{year}-02-03T19:00:00Z"),
        format!("{year}-02-03T20:00:00Z"),
    );
    scene
        .run(&[
            "schedule", "--env", ENV, "--start", &later, "--end", &later_end, "--reason", "no db",
        ])
        .await
        .assert_success()
        .assert_mentions("estimate: needs 40m");
    assert_eq!(scene.stored().await.0.unwrap().windows.len(), 2);
    let (long, long_end) = (
        format!("{year}-02-04T19:00:00Z"),
        format!("{year}-02-04T23:00:00Z"),
    );
    scene
        .run(&[
            "schedule", "--env", ENV, "--start", &long, "--end", &long_end, "--reason", "long",
        ])
        .await
        .assert_code(5)
        .assert_mentions("the window (4h00m) is longer than max_window (3h00m)");
    scene
        .run(&["plan", "down", "--env", ENV])
        .await
        .assert_success()
        .assert_mentions("estimate: needs 40m");
}
