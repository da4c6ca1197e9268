//! Values at the gate key that are not valid gate documents: each is refused, the previous
//! state keeps being served, and `/status` and the metrics say so.

use drawbridge_core::gate::Mode;
use drawbridge_tests::proxy::Site;

/// Bad values with a word the refusal should mention (empty: anything non-empty will do).
fn bad_values() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let long_reason = format!(r#"{{"mode":"maintenance","reason":"{}"}}"#, "x".repeat(201));
    vec![
        ("upper-case TRUE", b"TRUE".to_vec(), ""),
        ("yes", b"yes".to_vec(), ""),
        ("unknown mode", br#"{"mode":"closed"}"#.to_vec(), "closed"),
        (
            "capitalised mode",
            br#"{"mode":"Maintenance"}"#.to_vec(),
            "",
        ),
        (
            "unknown field",
            br#"{"mode":"maintenance","colour":"red"}"#.to_vec(),
            "colour",
        ),
        ("truncated JSON", br#"{"mode":"maintenance""#.to_vec(), ""),
        ("missing mode", b"{}".to_vec(), "mode"),
        (
            "until not RFC 3339",
            br#"{"mode":"maintenance","until":"tomorrow"}"#.to_vec(),
            "",
        ),
        (
            "unknown route in scope",
            br#"{"mode":"maintenance","scope":["nope"]}"#.to_vec(),
            "nope",
        ),
        (
            "empty scope",
            br#"{"mode":"maintenance","scope":[]}"#.to_vec(),
            "scope",
        ),
        ("JSON array", br#"["maintenance"]"#.to_vec(), ""),
        ("JSON string", br#""maintenance""#.to_vec(), ""),
        ("JSON null", b"null".to_vec(), ""),
        (
            "reason is a number",
            br#"{"mode":"maintenance","reason":42}"#.to_vec(),
            "",
        ),
        ("reason too long", long_reason.into_bytes(), "reason"),
        ("not UTF-8", vec![0xff, 0xfe, b'{', b'}'], ""),
        ("empty value", Vec::new(), ""),
    ]
}

/// Starting in maintenance (reason "steady"), each of 17 malformed values written to the key
/// is refused: the mode, reason and applied index stay, clients keep getting 503,
/// `consul.last_rejected` names the value's index and why, and
/// `drawbridge_gate_rejected_values_total` goes up by one per value.
#[tokio::test]
async fn malformed_values_leave_maintenance_as_it_was() {
    let site = Site::start("malformed_values_leave_maintenance_as_it_was").await;
    let applied = site
        .put_gate(r#"{"mode":"maintenance","reason":"steady"}"#)
        .await;
    let applied_index = applied.gate.applied_index;
    let rejected_before = site
        .edge
        .metrics()
        .await
        .value("drawbridge_gate_rejected_values_total", &[]);

    let values = bad_values();
    assert!(values.len() >= 10);
    for (n, (what, value, mention)) in values.iter().enumerate() {
        let report = site.put_rejected(value).await;
        let rejected = report
            .consul
            .last_rejected
            .as_ref()
            .expect("wait_rejected saw it");
        assert!(!rejected.error.is_empty(), "{what}: empty reason");
        if !mention.is_empty() {
            assert!(
                rejected.error.contains(mention),
                "{what}: the refusal {:?} does not mention {mention:?}",
                rejected.error
            );
        }
        assert_eq!(report.gate.mode, Mode::Maintenance, "{what}: mode changed");
        assert_eq!(report.gate.reason.as_deref(), Some("steady"), "{what}");
        assert_eq!(report.gate.applied_index, applied_index, "{what}: applied");
        assert_eq!(site.edge.get("/").await.status(), 503, "{what}: page");
        assert_eq!(site.edge.get("/api/x").await.status(), 503, "{what}: api");
        let rejected_now = site
            .edge
            .metrics()
            .await
            .value("drawbridge_gate_rejected_values_total", &[]);
        assert_eq!(
            rejected_now,
            rejected_before + (n + 1) as f64,
            "{what}: rejected counter"
        );
    }

    // A valid value after all that is applied as usual.
    site.put_gate("false").await;
    assert_eq!(site.edge.get("/").await.status(), 200);
}

/// Starting in normal (key missing), malformed values do not close the gate: requests keep
/// reaching the upstreams.
#[tokio::test]
async fn malformed_values_leave_normal_as_it_was() {
    let site = Site::start("malformed_values_leave_normal_as_it_was").await;
    let start = site.edge.status().await;
    assert_eq!(start.gate.mode, Mode::Normal);

    for (what, value, _) in bad_values().into_iter().take(10) {
        let report = site.put_rejected(&value).await;
        assert_eq!(report.gate.mode, Mode::Normal, "{what}: mode changed");
        assert_eq!(
            report.gate.applied_index, start.gate.applied_index,
            "{what}: applied"
        );
        assert_eq!(site.edge.get("/").await.status(), 200, "{what}: page");
        assert_eq!(site.edge.get("/api/x").await.status(), 200, "{what}: api");
    }
}
