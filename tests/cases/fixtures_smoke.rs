//! Smoke test of the box fixtures through the real ssh client: two sshd boxes sharing one
//! `ssh_config`, services and a scheduler driven by their scripts over SSH, and a box that
//! becomes unreachable and comes back.

use std::net::Ipv4Addr;
use std::time::Duration;

use drawbridge_tests::eventually::eventually;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::services::{
    merged_calls, SchedulerBox, SchedulerState, ServiceBox, CHECK_PARTIAL, CHECK_RUNNING,
    CHECK_STOPPED,
};
use drawbridge_tests::sshd::SshFleet;

const WORKER1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const WORKER2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn boxes_run_scripts_over_ssh_and_survive_an_outage() {
    let dir = TestDir::new("fixtures_smoke");
    let mut fleet = SshFleet::new(&dir);
    let mut w1 = fleet.start_box("worker1", WORKER1).await;
    let w2 = fleet.start_box("worker2", WORKER2).await;
    let api = ServiceBox::new(&dir, "api", 2);
    let cron = SchedulerBox::new(&dir, "cron");
    let path = |p: std::path::PathBuf| p.display().to_string();

    // Each alias reaches its own sshd (the server sees the address it was dialled on).
    for (alias, ip) in [("worker1", WORKER1), ("worker2", WORKER2)] {
        let out = fleet.ssh(alias, "echo $SSH_CONNECTION").await;
        assert!(out.status.success(), "{out:?}");
        let conn = text(&out.stdout);
        assert!(conn.contains(&format!(" {ip} ")), "{alias}: {conn}");
    }

    // Services over SSH on worker1: stopped → start → running → stop → stopped.
    let check = fleet.ssh("worker1", &path(api.script("check"))).await;
    assert_eq!(check.status.code(), Some(CHECK_STOPPED), "{check:?}");
    let start = fleet.ssh("worker1", &path(api.script("start"))).await;
    assert!(start.status.success(), "{start:?}");
    assert_eq!(api.running_count(), 2);
    let check = w1.ssh(&path(api.script("check"))).await;
    assert_eq!(check.status.code(), Some(CHECK_RUNNING), "{check:?}");
    api.crash_process(1);
    let check = w1.ssh(&path(api.script("check"))).await;
    assert_eq!(check.status.code(), Some(CHECK_PARTIAL), "{check:?}");
    assert!(
        text(&check.stdout).contains("partially running"),
        "{check:?}"
    );

    // The scheduler over SSH on worker2.
    let enable = w2.ssh(&path(cron.script("enable"))).await;
    assert!(enable.status.success(), "{enable:?}");
    assert_eq!(cron.state(), SchedulerState::Enabled);
    let disable = w2.ssh(&path(cron.script("disable"))).await;
    assert!(disable.status.success(), "{disable:?}");
    assert_eq!(cron.state(), SchedulerState::Disabled);

    // worker1 goes away: ssh fails with its own exit code, the services keep running.
    api.run_ok("start");
    w1.stop();
    let out = fleet.ssh("worker1", "true").await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("Connection refused"), "{out:?}");
    assert_eq!(api.running_count(), 2);
    let other = fleet.ssh("worker2", "true").await;
    assert!(other.status.success(), "{other:?}");

    // …and comes back on the same address, port and host key.
    let port = w1.port();
    w1.start().await;
    assert_eq!(w1.port(), port);
    let stop = fleet.ssh("worker1", &path(api.script("stop"))).await;
    assert!(stop.status.success(), "{stop:?}");
    eventually(
        "api stopped",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            match api.running_count() {
                0 => Ok(()),
                n => Err(format!("{n} still running")),
            }
        },
    )
    .await;

    let order: Vec<String> = merged_calls(&[api.calls(), cron.calls()])
        .into_iter()
        .map(|c| format!("{}:{}", c.box_name, c.script))
        .collect();
    assert_eq!(
        order,
        [
            "api:check",
            "api:start",
            "api:check",
            "api:check",
            "cron:enable",
            "cron:disable",
            "api:start",
            "api:stop"
        ]
    );
}

#[tokio::test]
async fn a_session_in_progress_breaks_when_its_box_stops() {
    let dir = TestDir::new("fixtures_smoke_session");
    let mut fleet = SshFleet::new(&dir);
    let mut w1 = fleet
        .start_box("worker1", Ipv4Addr::new(127, 0, 0, 7))
        .await;
    let api = ServiceBox::new(&dir, "slow", 1);
    api.delay_script("stop", Some(Duration::from_secs(30)));
    let mut session = fleet
        .ssh_command("worker1", &api.script("stop").display().to_string())
        .spawn()
        .expect("ssh starts");
    // Wait until the remote script runs (it logs its call first), then pull the plug.
    eventually(
        "stop.sh running on worker1",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            if api.calls().is_empty() {
                Err("not called yet".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    w1.stop();
    let status = tokio::time::timeout(Duration::from_secs(10), session.wait())
        .await
        .expect("the ssh client notices the dead session")
        .expect("ssh was started");
    assert_eq!(status.code(), Some(255), "{status:?}");
}
