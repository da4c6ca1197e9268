//! Maintenance windows announced by the edge: the proxy follows the windows key and lists the
//! coming windows in `/.well-known/maintenance`, serves every window as an iCalendar feed
//! (parsed back with an iCalendar parser), puts the announcement header on API answers and
//! serves the banner during a window's notice period only, and keeps its windows when a bad
//! document is written. And the dead-man switch: a gate closed past its `until` and the grace
//! is shown overdue, and with `expire` opens by itself.

use std::time::Duration;

use drawbridge_core::status::StatusReport;
use drawbridge_core::windows::{Window, WindowStatus, WindowsDoc};
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{clear_gate, header, set_gate, test_key, Drawbridge, Route};
use drawbridge_tests::upstream::{Kind, Upstream};
use icalendar::{Calendar, CalendarComponent, Component};
use time::OffsetDateTime;

/// How long ahead of its start the proxy announces a window.
const ANNOUNCE_BEFORE_SECS: i64 = 3600;

/// The announcement header of API answers.
const ANNOUNCEMENT: &str = "x-drawbridge-announcement";

struct Scene {
    edge: Drawbridge,
    consul: ConsulServer,
    windows_key: String,
    _ui: Upstream,
    _api: Upstream,
    _dir: TestDir,
}

/// Now plus `secs`, in whole seconds.
fn in_secs(secs: i64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    OffsetDateTime::from_unix_timestamp(now + secs).expect("a time near now")
}

fn window(id: &str, start: OffsetDateTime, end: OffsetDateTime, status: WindowStatus) -> Window {
    Window {
        id: id.to_string(),
        start,
        end,
        reason: format!("{id}: database <upgrade>, part 1; checks"),
        message: Some("The API answers 503 meanwhile.\nPlan your jobs around it.".to_string()),
        status,
        by: "ops@bastion".to_string(),
        changed_at: in_secs(0),
        revision: 0,
        auto: false,
        skip: Vec::new(),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    drawbridge_core::timestamp::full(t)
}

impl Scene {
    async fn start(test: &str) -> Scene {
        Scene::start_with_grace(test, "15m").await
    }

    /// With `maintenance.overdue_grace = grace`.
    async fn start_with_grace(test: &str, grace: &str) -> Scene {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let ui = Upstream::builder("ui").kind(Kind::Page).start();
        // An upstream that forges the announcement header: it never reaches a client.
        let api = Upstream::builder("api")
            .answer_header(ANNOUNCEMENT, "start=forged; end=forged")
            .start();
        let key = test_key(test);
        let edge = Drawbridge::builder(&consul.http_addr(), &key)
            .static_pool("ui", &[&ui], None)
            .static_pool("api", &[&api], None)
            .route(Route::api("api", "/api", "api"))
            .route(Route::page("ui", "/", "ui"))
            .setting("maintenance", "announce_before", "1h")
            .setting("maintenance", "overdue_grace", grace)
            .start(&dir)
            .await;
        Scene {
            edge,
            consul,
            windows_key: format!("{key}/windows"),
            _ui: ui,
            _api: api,
            _dir: dir,
        }
    }

    /// Writes `value` at the windows key and waits until the proxy applied it.
    async fn put_windows(&self, value: &str) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.windows_key, value).await;
        self.edge
            .wait_status("the windows applied", Duration::from_secs(10), |r| {
                r.windows.as_ref().is_some_and(|w| w.applied_index >= index)
            })
            .await
    }

    /// The windows listed by `/.well-known/maintenance`, by id, and the whole document.
    async fn listed(&self) -> (Vec<String>, serde_json::Value) {
        let answer = self.edge.get("/.well-known/maintenance").await;
        assert_eq!(answer.status(), 200);
        assert_eq!(
            header(&answer, "content-type").as_deref(),
            Some("application/json")
        );
        let text = answer.text().await.expect("a body");
        let doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {e}: {text}"));
        let ids = doc["windows"]
            .as_array()
            .unwrap_or_else(|| panic!("no windows list: {doc}"))
            .iter()
            .map(|w| w["id"].as_str().expect("an id").to_string())
            .collect();
        (ids, doc)
    }

    /// The calendar feed, parsed: each event's UID, status, start and end.
    async fn calendar(&self) -> Vec<(String, String, String, String)> {
        let answer = self.edge.get("/.well-known/maintenance.ics").await;
        assert_eq!(answer.status(), 200);
        assert_eq!(
            header(&answer, "content-type").as_deref(),
            Some("text/calendar; charset=utf-8")
        );
        let text = answer.text().await.expect("a body");
        let calendar: Calendar = text
            .parse()
            .unwrap_or_else(|e| panic!("not iCalendar: {e}\n{text}"));
        calendar
            .components
            .iter()
            .filter_map(|c| match c {
                CalendarComponent::Event(e) => Some(e),
                _ => None,
            })
            .map(|e| {
                let property = |name: &str| {
                    e.property_value(name)
                        .unwrap_or_else(|| panic!("event without {name}: {text}"))
                        .to_string()
                };
                (
                    e.get_uid().expect("a UID").to_string(),
                    property("STATUS"),
                    property("DTSTART"),
                    property("DTEND"),
                )
            })
            .collect()
    }

    /// The announcement header of an API answer and of a page answer.
    async fn announcements(&self) -> (Option<String>, Option<String>) {
        let api = self.edge.get("/api/orders").await;
        assert_eq!(api.status(), 200);
        let page = self.edge.get("/account").await;
        assert_eq!(page.status(), 200);
        (header(&api, ANNOUNCEMENT), header(&page, ANNOUNCEMENT))
    }

    /// The banner: its status and body.
    async fn banner(&self) -> (u16, String) {
        let answer = self.edge.get("/.well-known/maintenance/banner").await;
        let status = answer.status().as_u16();
        (status, answer.text().await.unwrap_or_default())
    }
}

#[tokio::test]
async fn windows_are_listed_in_the_calendar_and_announced_during_their_notice_period_only() {
    let scene = Scene::start("proxy_windows").await;

    // No window yet: an empty list, an empty calendar, no banner, no announcement, and an
    // upstream's own copy of the header dropped.
    let (ids, doc) = scene.listed().await;
    assert!(ids.is_empty(), "{doc}");
    assert_eq!(doc["mode"], "normal");
    assert!(scene.calendar().await.is_empty());
    assert_eq!(scene.banner().await.0, 204);
    assert_eq!(scene.announcements().await, (None, None));

    // One window in 30 minutes (inside the hour of notice), one in three days, one cancelled.
    let soon = window(
        "w-soon",
        in_secs(1800),
        in_secs(1800 + 3600),
        WindowStatus::Scheduled,
    );
    let later = window(
        "w-later",
        in_secs(3 * 86400),
        in_secs(3 * 86400 + 3600),
        WindowStatus::Scheduled,
    );
    let cancelled = window(
        "w-cancelled",
        in_secs(1200),
        in_secs(2400),
        WindowStatus::Cancelled,
    );
    let doc = WindowsDoc {
        windows: vec![later.clone(), cancelled.clone(), soon.clone()],
        by: Some("ops@bastion".to_string()),
    };
    let report = scene.put_windows(&doc.to_json()).await;
    let status = report.windows.expect("/status shows the windows");
    assert_eq!(status.coming, ["w-soon", "w-later"]);
    assert_eq!(status.announced.as_deref(), Some("w-soon"));

    let (ids, listed) = scene.listed().await;
    assert_eq!(ids, ["w-soon", "w-later"], "{listed}");
    assert_eq!(listed["mode"], "normal", "the gate state is still there");
    assert_eq!(listed["windows"][0]["start"], rfc3339(soon.start));
    assert_eq!(listed["windows"][0]["end"], rfc3339(soon.end));
    assert_eq!(listed["windows"][0]["reason"], soon.reason);

    let mut events = scene.calendar().await;
    events.sort();
    let key = &scene.windows_key;
    let event = |w: &Window, status: &str| {
        (
            format!("{}@{key}", w.id),
            status.to_string(),
            drawbridge_core::timestamp::basic(w.start),
            drawbridge_core::timestamp::basic(w.end),
        )
    };
    let mut expected = vec![
        event(&soon, "CONFIRMED"),
        event(&later, "CONFIRMED"),
        event(&cancelled, "CANCELLED"),
    ];
    expected.sort();
    assert_eq!(events, expected);

    let header_value = format!("start={}; end={}", rfc3339(soon.start), rfc3339(soon.end));
    assert_eq!(
        scene.announcements().await,
        (Some(header_value.clone()), None),
        "API answers carry the announcement, page answers do not"
    );
    let (status, banner) = scene.banner().await;
    assert_eq!(status, 200);
    assert!(
        banner.contains("database &lt;upgrade&gt;") && banner.contains(&rfc3339(soon.start)),
        "{banner}"
    );

    // A document that is not a windows document changes nothing.
    let before = scene.edge.status().await.windows.unwrap().applied_index;
    let index = set_gate(
        &scene.consul.client(),
        &scene.windows_key,
        "{\"windows\": 3}",
    )
    .await;
    let report = scene
        .edge
        .wait_status("the bad windows refused", Duration::from_secs(10), |r| {
            r.windows
                .as_ref()
                .and_then(|w| w.last_rejected.as_ref())
                .is_some_and(|rejected| rejected.modify_index == index)
        })
        .await;
    assert_eq!(report.windows.unwrap().applied_index, before);
    assert_eq!(scene.announcements().await.0, Some(header_value.clone()));
    let metrics = scene.edge.metrics().await;
    assert_eq!(
        metrics.value("drawbridge_windows_rejected_values_total", &[]),
        1.0
    );

    // The gate closed: the documents are still served by the proxy itself.
    set_gate(&scene.consul.client(), scene.edge.key(), "true").await;
    scene
        .edge
        .wait_status("the gate closed", Duration::from_secs(10), |r| {
            r.gate.mode == drawbridge_core::gate::Mode::Maintenance
        })
        .await;
    assert_eq!(scene.listed().await.0, ["w-soon", "w-later"]);
    assert_eq!(scene.calendar().await.len(), 3);
    assert_eq!(scene.banner().await.0, 200);
    set_gate(&scene.consul.client(), scene.edge.key(), "false").await;
    scene
        .edge
        .wait_status("the gate open", Duration::from_secs(10), |r| {
            r.gate.mode == drawbridge_core::gate::Mode::Normal
        })
        .await;

    // Moved to start in two hours: outside the notice period, no announcement, no banner, but
    // still listed.
    let moved = Window {
        start: in_secs(2 * ANNOUNCE_BEFORE_SECS),
        end: in_secs(3 * ANNOUNCE_BEFORE_SECS),
        ..soon.clone()
    };
    let doc = WindowsDoc {
        windows: vec![later.clone(), cancelled, moved],
        by: None,
    };
    let report = scene.put_windows(&doc.to_json()).await;
    assert_eq!(report.windows.unwrap().announced, None);
    assert_eq!(scene.announcements().await, (None, None));
    assert_eq!(scene.banner().await.0, 204);
    assert_eq!(scene.listed().await.0, ["w-soon", "w-later"]);
}

/// A gate closed past `until` plus the grace is overdue (gauge and `/status`) and stays closed;
/// with `expire` it opens by itself, the key left as it is; a new document clears both.
#[tokio::test]
async fn an_overdue_gate_is_shown_and_with_expire_opens_by_itself() {
    let scene = Scene::start_with_grace("proxy_deadman", "2s").await;
    let consul = scene.consul.client();
    let key = scene.edge.key().to_owned();
    let closed = |until: &str, expire: bool| {
        let expire = if expire { r#","expire":true"# } else { "" };
        format!(r#"{{"mode":"maintenance","reason":"db upgrade","until":"{until}"{expire}}}"#)
    };
    let api_status = || async { scene.edge.get("/api/orders").await.status().as_u16() };

    // Closed, `until` a second away: not overdue yet, then overdue 2 s after it, still closed.
    let until = rfc3339(in_secs(1));
    let index = set_gate(&consul, &key, closed(&until, false)).await;
    let report = scene.edge.wait_applied(index).await;
    assert!(!report.gate.overdue && !report.gate.expire, "{report:?}");
    assert_eq!(
        scene
            .edge
            .metrics()
            .await
            .value("drawbridge_gate_overdue", &[]),
        0.0
    );
    let report = scene
        .edge
        .wait_status("overdue", Duration::from_secs(10), |r| r.gate.overdue)
        .await;
    assert!(!report.gate.expired, "{report:?}");
    scene
        .edge
        .wait_metric("drawbridge_gate_overdue", &[], 1.0)
        .await;
    assert_eq!(api_status().await, 503, "without expire it stays closed");
    assert!(
        scene.edge.log().contains("overdue"),
        "{}",
        scene.edge.log_tail()
    );

    // With expire: closed until `until` plus the grace, then open by itself.
    let until = rfc3339(in_secs(2));
    let index = set_gate(&consul, &key, closed(&until, true)).await;
    let report = scene.edge.wait_applied(index).await;
    assert!(report.gate.expire && !report.gate.overdue, "{report:?}");
    scene
        .edge
        .wait_metric("drawbridge_gate_overdue", &[], 0.0)
        .await;
    assert_eq!(api_status().await, 503);
    let report = scene
        .edge
        .wait_status("expired", Duration::from_secs(10), |r| r.gate.expired)
        .await;
    assert_eq!(
        report.gate.mode,
        drawbridge_core::gate::Mode::Maintenance,
        "the key still says maintenance"
    );
    assert_eq!(api_status().await, 200, "open by itself");
    assert_eq!(scene.edge.get("/account").await.status(), 200);
    let (_, listed) = scene.listed().await;
    assert_eq!(listed["mode"], "normal", "{listed}");
    scene
        .edge
        .wait_metric("drawbridge_gate_expired", &[], 1.0)
        .await;
    scene
        .edge
        .wait_metric("drawbridge_gate_overdue", &[], 1.0)
        .await;
    assert!(
        scene.edge.log().contains("open by itself"),
        "{}",
        scene.edge.log_tail()
    );

    // The gate opened by maintctl up (the key deleted): neither overdue nor expired.
    let index = clear_gate(&consul, &key).await;
    let report = scene.edge.wait_applied(index).await;
    assert!(!report.gate.overdue && !report.gate.expired, "{report:?}");
    scene
        .edge
        .wait_metric("drawbridge_gate_expired", &[], 0.0)
        .await;
    scene
        .edge
        .wait_metric("drawbridge_gate_overdue", &[], 0.0)
        .await;

    // `expire` without `until` is refused: the gate stays open.
    let index = set_gate(&consul, &key, r#"{"mode":"maintenance","expire":true}"#).await;
    let report = scene
        .edge
        .wait_status("refused", Duration::from_secs(10), |r| {
            r.consul
                .last_rejected
                .as_ref()
                .is_some_and(|rejected| rejected.modify_index == index)
        })
        .await;
    assert_eq!(report.gate.mode, drawbridge_core::gate::Mode::Normal);
    assert!(
        report
            .consul
            .last_rejected
            .unwrap()
            .error
            .contains("`expire` needs `until`"),
        "the refusal names the field"
    );
    assert_eq!(api_status().await, 200);
}
