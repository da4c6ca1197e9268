//! Notices of the maintenance windows, sent by `maintctl` to a real SMTP server (aiosmtpd:
//! STARTTLS required, a password read from a file) and to a recording webhook server: the
//! preview goes to the operator only, "scheduled" to every recipient that wants it but the one
//! on the skip list, a refused webhook is retried, every delivery is journalled in Consul, and a
//! notice that could not be delivered is journalled failed and makes `down` warn, never stop.

use drawbridge_core::consul::QueryOptions;
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::maintctl::{
    Inventory, MaintScene, Maintctl, MaintctlOutput, ENV, GATE_KEY, PREFIX,
};
use drawbridge_tests::notice_sinks::{SmtpServer, WebhookServer, SMTP_PASSWORD, SMTP_USER};
use drawbridge_tests::process::TestDir;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// `[environments.mock.notices]`: three mail recipients (globex wants only "scheduled" and
/// "cancelled"), a chat webhook with the shipped Slack template and a token, and a webhook with
/// the default body; three quick attempts each.
fn notices(dir: &Path, smtp: &SmtpServer, hooks: &WebhookServer) -> toml::Table {
    let password = dir.join("smtp.password");
    std::fs::write(&password, format!("{SMTP_PASSWORD}\n")).expect("the password file");
    let token = dir.join("chat.token");
    std::fs::write(&token, "Bearer chat-secret\n").expect("the token file");
    let slack = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/notices/slack.json");
    let text = format!(
        r#"
reminders = ["1h"]
attempts = 3
retry_backoff = "100ms"
timeout = "10s"

[smtp]
server = "127.0.0.1"
port = {port}
security = "starttls"
from = "Maintenance <maintenance@drawbridge.test>"
username = "{SMTP_USER}"
password_file = "{password}"
ca_file = "{ca}"

[[recipients]]
name = "acme"
email = "integration@acme.test"

[[recipients]]
name = "globex"
email = "ops@globex.test"
events = ["scheduled", "cancelled"]

[[recipients]]
name = "initech"
email = "it@initech.test"

[[recipients]]
name = "chat"
webhook = "{chat}"
template = "{slack}"
authorization_file = "{token}"

[[recipients]]
name = "status"
webhook = "{status}"
"#,
        port = smtp.port,
        password = password.display(),
        ca = smtp.ca.display(),
        chat = hooks.url("/chat"),
        status = hooks.url("/status"),
        token = token.display(),
    );
    toml::from_str(&text).expect("the notices table")
}

/// RFC 3339 for now plus `secs`.
fn in_secs(secs: i64) -> String {
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let at = at.replace_nanosecond(0).expect("0 ns");
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

/// `maintctl schedule` of a window from `start` to `end` for `reason` (with `extra` flags) in
/// the scene's environment; returns the window's id.
async fn schedule_in(
    scene: &MaintScene,
    start: &str,
    end: &str,
    reason: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "--output", "json", "schedule", "--env", ENV, "--start", start, "--end", end, "--reason",
        reason,
    ];
    args.extend_from_slice(extra);
    let scheduled = scene.run(&args).await;
    scheduled.assert_success();
    scheduled_id(&scheduled)
}

/// The window id of a `schedule` run's JSON output.
fn scheduled_id(out: &MaintctlOutput) -> String {
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "scheduled")
        .and_then(|v| v["window"]["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no scheduled window in\n{out}"))
}

/// The notice journal of window `id`.
async fn journal(consul: &ConsulServer, id: &str) -> Vec<Value> {
    let key = format!("{PREFIX}/notices/{id}");
    let entry = consul
        .client()
        .kv_get(&key, &QueryOptions::default())
        .await
        .expect("consul kv get")
        .entry
        .unwrap_or_else(|| panic!("no notice journal at {key}"));
    let log: Value = serde_json::from_slice(&entry.value.unwrap_or_default()).expect("JSON");
    log["records"].as_array().expect("records").clone()
}

/// The journal's records of `event` by recipient: (recipient, delivery, attempts).
fn of_event(records: &[Value], event: &str) -> Vec<(String, String, u64)> {
    let mut found: Vec<(String, String, u64)> = records
        .iter()
        .filter(|r| r["event"] == event)
        .map(|r| {
            (
                r["recipient"].as_str().unwrap_or_default().to_string(),
                r["delivery"].as_str().unwrap_or_default().to_string(),
                r["attempts"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    found
}

fn triple(recipient: &str, delivery: &str, attempts: u64) -> (String, String, u64) {
    (recipient.to_string(), delivery.to_string(), attempts)
}

#[tokio::test]
async fn notices_reach_every_recipient_but_the_skipped_one_after_a_preview_to_the_operator() {
    let dir = TestDir::new("maintctl_notices");
    let consul = ConsulServer::start(&dir).await;
    let smtp = SmtpServer::start(&dir, "smtp", false);
    // The first webhook request is refused: it is tried again.
    let hooks = WebhookServer::start(1);
    let inventory = Inventory {
        notices: Some(notices(dir.path(), &smtp, &hooks)),
        ..Inventory::new(consul.http_addr(), GATE_KEY, Vec::new())
    };
    let maintctl = Maintctl::new(&dir, &inventory);
    let (start, end) = (in_secs(7200), in_secs(10800));
    let schedule = |extra: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "schedule",
            "--env",
            ENV,
            "--start",
            &start,
            "--end",
            &end,
            "--reason",
            "database upgrade",
            "--message",
            "The API answers 503 \"planned\" meanwhile.",
            "--skip",
            "initech=delay: quarter-end closing",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };

    // The preview: one message to the operator, nothing written, nobody else told.
    let args = schedule(&["--preview", "operator@drawbridge.test"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    maintctl.run(&refs).await.assert_success();
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].rcpt_tos, ["operator@drawbridge.test"]);
    let subject = mails[0].header("subject").expect("a subject");
    assert!(
        subject.starts_with("[PREVIEW] [mock] Planned maintenance scheduled"),
        "{subject}"
    );
    assert!(mails[0].tls, "the password went over STARTTLS only");
    assert_eq!(mails[0].user.as_deref(), Some(SMTP_USER));
    assert!(hooks.hooks().is_empty());
    let windows_key = format!("{GATE_KEY}/windows");
    let stored = consul
        .client()
        .kv_get(&windows_key, &QueryOptions::default())
        .await
        .expect("consul kv get");
    assert!(stored.entry.is_none(), "a preview writes nothing");

    // For real: every recipient but initech, which asked to skip it.
    let args = schedule(&[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let scheduled = maintctl.run(&refs).await;
    scheduled.assert_success();
    let id = scheduled_id(&scheduled);
    let mut told: Vec<String> = smtp.mails()[1..]
        .iter()
        .flat_map(|m| m.rcpt_tos.clone())
        .collect();
    told.sort();
    assert_eq!(told, ["integration@acme.test", "ops@globex.test"]);
    for mail in &smtp.mails()[1..] {
        assert!(mail.tls && mail.user.as_deref() == Some(SMTP_USER));
        assert!(mail.data.contains("database upgrade"), "{}", mail.data);
        assert!(
            mail.data.contains(&format!("Window: {id}")),
            "{}",
            mail.data
        );
    }
    let got = hooks.hooks();
    let chat: Vec<_> = got.iter().filter(|h| h.path == "/chat").collect();
    let status: Vec<_> = got.iter().filter(|h| h.path == "/status").collect();
    assert_eq!(
        chat.len() + status.len(),
        3,
        "one refused, then tried again: {got:?}"
    );
    let slack: Value = serde_json::from_str(&chat.last().expect("a chat hook").body).expect("JSON");
    assert!(
        slack["text"]
            .as_str()
            .unwrap_or_default()
            .contains("database upgrade"),
        "{slack}"
    );
    assert_eq!(
        chat.last().and_then(|h| h.authorization.as_deref()),
        Some("Bearer chat-secret")
    );
    let body: Value =
        serde_json::from_str(&status.last().expect("a status hook").body).expect("JSON");
    assert_eq!(body["event"], "scheduled");
    assert_eq!(body["window"]["id"], id);
    assert_eq!(
        body["window"]["message"],
        "The API answers 503 \"planned\" meanwhile."
    );

    // Journalled: four deliveries, one of them on its second attempt; none to initech.
    let records = journal(&consul, &id).await;
    let mut scheduled_records = of_event(&records, "scheduled");
    let retried = scheduled_records
        .iter()
        .filter(|(_, _, attempts)| *attempts == 2)
        .count();
    assert_eq!(retried, 1, "{records:?}");
    for record in &mut scheduled_records {
        record.2 = 1;
    }
    assert_eq!(
        scheduled_records,
        [
            triple("acme", "delivered", 1),
            triple("chat", "delivered", 1),
            triple("globex", "delivered", 1),
            triple("status", "delivered", 1),
        ]
    );
    let listed = maintctl.run(&["windows", "--env", ENV]).await;
    listed.assert_success();
    assert!(
        listed
            .stdout
            .contains("skipped by initech: delay: quarter-end closing"),
        "{listed}"
    );

    // Moved: "changed" to those that want it; globex does not.
    let (start, end) = (in_secs(9000), in_secs(12600));
    maintctl
        .run(&[
            "reschedule",
            "--env",
            ENV,
            &id,
            "--start",
            &start,
            "--end",
            &end,
        ])
        .await
        .assert_success();
    assert_eq!(
        of_event(&journal(&consul, &id).await, "changed"),
        [
            triple("acme", "delivered", 1),
            triple("chat", "delivered", 1),
            triple("status", "delivered", 1),
        ]
    );
    let last = smtp.mails().last().cloned().expect("a mail");
    assert_eq!(last.rcpt_tos, ["integration@acme.test"]);
    assert!(last
        .header("subject")
        .unwrap_or_default()
        .contains("changed"));

    // Cancelled: globex wants that one again.
    maintctl
        .run(&["cancel", "--env", ENV, &id])
        .await
        .assert_success();
    let cancelled = of_event(&journal(&consul, &id).await, "cancelled");
    assert_eq!(cancelled.len(), 4, "{cancelled:?}");
    assert!(smtp
        .mails()
        .iter()
        .any(|m| m.rcpt_tos == ["ops@globex.test"]
            && m.header("subject")
                .unwrap_or_default()
                .contains("cancelled")));
    assert!(smtp
        .mails()
        .iter()
        .all(|m| m.rcpt_tos != ["it@initech.test"]));
}

/// A mail server that refuses every recipient: each mail notice is tried three times and
/// journalled failed with the server's answer; the window is scheduled all the same, and
/// `down` warns about the notices and takes the environment down. `down` and `up` tell the
/// recipients that the maintenance started and finished, once per window.
#[tokio::test]
async fn undelivered_notices_are_journalled_failed_and_down_warns_but_goes_on() {
    let mut scene = MaintScene::start("maintctl_notices_refused").await;
    let smtp = SmtpServer::start(&scene.dir, "smtp-refusing", true);
    let hooks = WebhookServer::start(0);
    scene.inventory.notices = Some(notices(scene.dir.path(), &smtp, &hooks));
    scene.rewrite_inventory();
    let (start, end) = (in_secs(1800), in_secs(5400));
    let id = schedule_in(&scene, &start, &end, "database upgrade", &[]).await;
    let records = journal(&scene.consul, &id).await;
    assert_eq!(
        of_event(&records, "scheduled"),
        [
            triple("acme", "failed", 3),
            triple("chat", "delivered", 1),
            triple("globex", "failed", 3),
            triple("initech", "failed", 3),
            triple("status", "delivered", 1),
        ]
    );
    let acme = records
        .iter()
        .find(|r| r["recipient"] == "acme")
        .expect("acme's record");
    assert!(
        acme["error"].as_str().unwrap_or_default().contains("550"),
        "the server's refusal is kept: {acme}"
    );
    assert!(smtp.mails().is_empty());

    let down = scene
        .run(&[
            "down",
            "--env",
            ENV,
            "--reason",
            "database upgrade",
            "--yes",
        ])
        .await;
    down.assert_success();
    let warned = format!("notice scheduled of window {id} to acme (email) was not delivered");
    assert!(
        down.stderr.contains(&warned) || down.stdout.contains(&warned),
        "{down}"
    );
    scene.assert_closed().await;
    scene.up_ok().await;

    // The webhooks were told the maintenance started and finished, once each: taking the
    // environment down and up again in the same window tells nobody twice.
    let events = |path: &str| -> Vec<String> {
        hooks
            .hooks()
            .iter()
            .filter(|h| h.path == path)
            .map(|h| {
                let body: Value = serde_json::from_str(&h.body).expect("JSON");
                body["event"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    assert_eq!(events("/status"), ["scheduled", "started", "finished"]);
    scene
        .run(&["down", "--env", ENV, "--reason", "again", "--yes"])
        .await
        .assert_success();
    scene.up_ok().await;
    assert_eq!(events("/status"), ["scheduled", "started", "finished"]);
    // The mails that could not be delivered were tried again; the delivered ones were not.
    let started = of_event(&journal(&scene.consul, &id).await, "started");
    let count = |who: &str| started.iter().filter(|r| r.0 == who).count();
    assert_eq!(
        (count("chat"), count("status"), count("acme")),
        (1, 1, 2),
        "{started:?}"
    );
}

/// The (event, window id) of every notice the webhook server got.
fn told(hooks: &WebhookServer) -> Vec<(String, String)> {
    hooks
        .hooks()
        .iter()
        .map(|h| {
            let body: Value = serde_json::from_str(&h.body).expect("JSON");
            (
                body["event"].as_str().unwrap_or_default().to_string(),
                body["window"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Waits until the webhook server got notice `event` of window `id`.
async fn wait_told(hooks: &WebhookServer, event: &str, id: &str, within: Duration) {
    eventually(
        &format!("the {event} notice of {id}"),
        within,
        Duration::from_millis(100),
        || async {
            let got = told(hooks);
            if got.iter().any(|(e, w)| e == event && w == id) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

/// `maintctl daemon` keeps the windows on time: the reminder before an `auto` window, its
/// `down` at the start and `up` at the end (the daemon's own runs, in the journal), a `missed`
/// alert when another window starts and nobody took the environment down, `overdue` once the
/// gate is closed past its `until` and the grace, `expired` when the proxies opened it by
/// themselves; each notice once, though a second daemon (standing by) runs beside it.
#[tokio::test]
async fn the_daemon_reminds_runs_auto_windows_and_alerts_on_missed_and_overdue_windows() {
    let mut scene = MaintScene::start("maintctl_daemon").await;
    let hooks = WebhookServer::start(0);
    let notices = format!(
        r#"
reminders = ["4s"]
overdue_grace = "1s"
missed_after = "3s"
[[recipients]]
name = "ops"
webhook = "{}"
events = ["reminder", "started", "finished", "extended", "missed", "overdue", "expired"]
"#,
        hooks.url("/ops")
    );
    scene.inventory.notices = Some(toml::from_str(&notices).expect("the notices table"));
    scene.rewrite_inventory();
    let (start, end) = (in_secs(8), in_secs(24));
    let auto = schedule_in(&scene, &start, &end, "auto upgrade", &["--auto"]).await;
    let mut daemon = scene
        .maintctl
        .spawn(&["daemon", "--env", ENV, "--tick", "500ms"]);
    // A second daemon of the same environment stands by: nobody is told anything twice.
    let mut standby = scene
        .maintctl
        .spawn(&["daemon", "--env", ENV, "--tick", "500ms"]);

    wait_told(&hooks, "reminder", &auto, Duration::from_secs(10)).await;
    let reminded = scene.gate_entry().await;
    assert!(reminded.is_none(), "the reminder comes before the start");
    wait_told(&hooks, "started", &auto, Duration::from_secs(30)).await;
    scene.assert_closed().await;
    wait_told(&hooks, "finished", &auto, Duration::from_secs(45)).await;
    scene.assert_open().await;
    let runs = scene.journal().runs().await;
    let by_daemon: Vec<&str> = runs
        .iter()
        .filter(|r| r.command().contains(" daemon "))
        .map(|r| r.direction())
        .collect();
    assert_eq!(by_daemon, ["down", "up"], "the daemon's own runs");

    // A window nobody takes down: "missed" once `missed_after` has passed.
    let (start, end) = (in_secs(3), in_secs(10));
    let by_hand = schedule_in(&scene, &start, &end, "by hand", &[]).await;
    wait_told(&hooks, "missed", &by_hand, Duration::from_secs(15)).await;
    // It has begun: a later end is told as "extended".
    let later = in_secs(6);
    scene
        .run(&[
            "reschedule",
            "--env",
            ENV,
            &by_hand,
            "--start",
            &start,
            "--end",
            &later,
        ])
        .await
        .assert_success();
    wait_told(&hooks, "extended", &by_hand, Duration::from_secs(5)).await;

    // Taken down by hand with an end two seconds away: "overdue" a second after the later of
    // that end and the window's.
    scene
        .run(&[
            "down", "--env", ENV, "--reason", "late", "--until", "2s", "--yes",
        ])
        .await
        .assert_success();
    wait_told(&hooks, "overdue", &by_hand, Duration::from_secs(20)).await;
    scene.up_ok().await;

    // With the dead-man switch armed, the proxies open by themselves: "expired".
    scene
        .run(&[
            "down",
            "--env",
            ENV,
            "--reason",
            "late again",
            "--until",
            "2s",
            "--expire",
            "--yes",
        ])
        .await
        .assert_success();
    wait_told(&hooks, "expired", &by_hand, Duration::from_secs(15)).await;
    scene.up_ok().await;

    for run in [&mut daemon, &mut standby] {
        run.interrupt();
    }
    // Whichever took the lock first acted; the other stood by all along.
    let first = daemon.wait(Duration::from_secs(10)).await;
    let second = standby.wait(Duration::from_secs(10)).await;
    let mut acted = 0;
    for stopped in [&first, &second] {
        assert_eq!(stopped.code, Some(0), "{stopped}");
        let output = stopped.all_output();
        if output.contains("acts now") {
            acted += 1;
        } else {
            assert!(output.contains("standing by"), "{stopped}");
        }
    }
    assert_eq!(acted, 1, "exactly one daemon acted:\n{first}\n{second}");
    let got = told(&hooks);
    for event in ["reminder", "started", "finished"] {
        let n = got.iter().filter(|(e, w)| e == event && *w == auto).count();
        assert_eq!(n, 1, "{event} told {n} times: {got:?}");
    }
    for event in ["extended", "missed", "overdue", "expired"] {
        let n = got
            .iter()
            .filter(|(e, w)| e == event && *w == by_hand)
            .count();
        assert_eq!(n, 1, "{event} told {n} times: {got:?}");
    }
}
