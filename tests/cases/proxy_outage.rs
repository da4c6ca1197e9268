//! Consul goes away: the proxy keeps serving the last state (fail-static), reports the watch
//! as unreachable and then stale, comes back from its state file after a restart, and applies
//! new values once Consul returns.

use std::time::Duration;

use drawbridge_core::gate::Mode;
use drawbridge_core::status::StatusReport;
use drawbridge_tests::assert_eventually;
use drawbridge_tests::proxy::{clear_gate, Ready, Site};

/// Consul restarts and the watcher's backoff may take a while to try again.
const RECOVERY: Duration = Duration::from_secs(40);

/// Kills Consul and waits until the proxy reports it unreachable and stale (`what`); the
/// report that says so.
async fn stop_consul_until_stale(site: &mut Site, what: &str) -> StatusReport {
    site.consul.stop();
    site.edge
        .wait_status(what, RECOVERY, |r| !r.consul.reachable && r.consul.stale)
        .await
}

/// Consul SIGKILLed while the gate is closed: requests keep getting 503; `/status` says
/// unreachable, then stale after `stale_after` (raised to one wait, 2 s + 1/16), and the metrics
/// agree. After Consul returns the
/// gate is opened, Consul is killed again, and requests keep passing.
#[tokio::test]
async fn consul_stopped_keeps_the_last_state() {
    let mut site = Site::start_with("consul_stopped_keeps_the_last_state", |b| {
        b.consul_wait("2s").stale_after("1s")
    })
    .await;
    site.put_gate(r#"{"mode":"maintenance","reason":"kept"}"#)
        .await;
    assert_eq!(site.edge.get("/").await.status(), 503);

    let report = stop_consul_until_stale(&mut site, "consul unreachable and stale").await;
    assert_eq!(report.gate.mode, Mode::Maintenance);
    assert_eq!(report.gate.reason.as_deref(), Some("kept"));
    assert!(report.consul.last_answer_at.is_some());
    for _ in 0..5 {
        assert_eq!(site.edge.get("/").await.status(), 503, "closed gate kept");
        assert_eq!(
            site.edge.get("/api/x").await.status(),
            503,
            "closed gate kept"
        );
    }
    let metrics = site.edge.metrics().await;
    assert_eq!(metrics.get("drawbridge_consul_stale", &[]), Some(1.0));
    assert!(
        metrics.value("drawbridge_consul_watch_errors_total", &[]) >= 1.0,
        "no watch error counted:\n{}",
        metrics.text
    );

    site.consul.restart().await;
    site.edge
        .wait_status("consul reachable again", RECOVERY, |r| {
            r.consul.reachable && !r.consul.stale
        })
        .await;
    let index = clear_gate(&site.consul.client(), &site.key).await;
    site.edge
        .wait_status("delete applied after the outage", RECOVERY, |r| {
            r.gate.applied_index >= index
        })
        .await;
    assert_eq!(site.edge.get("/").await.status(), 200);

    let report = stop_consul_until_stale(&mut site, "consul unreachable and stale again").await;
    assert_eq!(report.gate.mode, Mode::Normal);
    for _ in 0..5 {
        assert_eq!(site.edge.get("/").await.status(), 200, "open gate kept");
    }
}

/// A proxy restarted while Consul is down comes back in the maintenance it had, from
/// `server.state_file` (`gate.source` is `state_file`); when Consul returns, the value there
/// (the key deleted meanwhile) is applied.
#[tokio::test]
async fn proxy_restarted_while_consul_down_comes_back_in_maintenance() {
    let mut site = Site::start("proxy_restarted_while_consul_down_comes_back").await;
    site.put_gate(r#"{"mode":"maintenance","reason":"saved"}"#)
        .await;
    let state_file = site.edge.state_file();
    assert_eventually!(
        state_file.is_file(),
        Duration::from_secs(5),
        "state file written at {}",
        state_file.display()
    );

    site.consul.stop();
    site.edge.restart_with(Ready::Healthz).await;
    // The very first request after the restart is already refused.
    assert_eq!(site.edge.get("/").await.status(), 503);
    let report = site.edge.status().await;
    assert_eq!(report.gate.mode, Mode::Maintenance);
    assert_eq!(report.gate.source, "state_file");
    assert_eq!(report.gate.reason.as_deref(), Some("saved"));
    assert!(!report.consul.reachable);

    site.consul.restart().await;
    let index = clear_gate(&site.consul.client(), &site.key).await;
    let report = site
        .edge
        .wait_status("delete applied after Consul returned", RECOVERY, |r| {
            r.gate.applied_index >= index
        })
        .await;
    assert_eq!(report.gate.mode, Mode::Normal);
    assert_eq!(report.gate.source, "consul");
    assert_eq!(site.edge.get("/").await.status(), 200);
}
