//! Unit tests of the probe's accounting and reports, fed with results directly (no network).

use super::*;

/// 2025-06-01T10:00:00Z plus `ms` milliseconds.
fn t(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_748_772_000).unwrap() + time::Duration::milliseconds(ms)
}

fn status(ms: i64, url: &str, code: u16) -> Outcome {
    Outcome {
        at: t(ms),
        url: url.to_owned(),
        answer: Answer::Status(code),
    }
}

fn failed(ms: i64, url: &str, why: &str) -> Outcome {
    Outcome {
        at: t(ms),
        url: url.to_owned(),
        answer: Answer::Failed(why.to_owned()),
    }
}

fn tally(outcomes: Vec<Outcome>) -> ProbeReport {
    let mut tally = Tally::new(&DEFAULT_EXPECT);
    for (seq, o) in outcomes.into_iter().enumerate() {
        tally.record(seq as u64, o);
    }
    tally.finish(Duration::from_millis(1_500))
}

#[test]
fn expected_statuses_only_is_clean() {
    let r = tally(vec![
        status(0, "a", 200),
        status(100, "b", 503),
        status(200, "a", 200),
    ]);
    assert!(r.is_clean());
    assert_eq!(r.total, 3);
    assert_eq!(r.by_status, BTreeMap::from([(200, 2), (503, 1)]));
    assert_eq!(r.longest_unexpected_run, None);
    assert!(r
        .render_text()
        .ends_with("clean: every answer was one of 200, 503\n"));
}

#[test]
fn nothing_counted_is_not_clean() {
    let r = tally(vec![]);
    assert!(!r.is_clean());
    assert!(r.render_text().contains("not clean: no result came in"));
}

#[test]
fn the_longest_run_is_the_first_longest_and_expected_answers_break_runs() {
    let r = tally(vec![
        status(0, "a", 502),
        status(100, "a", 502),
        status(200, "a", 200),
        failed(300, "a", "connection refused"),
        failed(400, "a", "connection refused"),
        failed(500, "a", "timeout after 5.000s"),
        status(600, "a", 503),
        status(700, "a", 500),
        status(800, "a", 500),
        status(900, "a", 500),
    ]);
    assert!(!r.is_clean());
    assert_eq!(r.total, 10);
    assert_eq!(r.connection_errors, 3);
    assert_eq!(r.unexpected.len(), 8);
    assert_eq!(
        r.longest_unexpected_run,
        Some(UnexpectedRun {
            start: t(300),
            end: t(500),
            count: 3
        })
    );
    assert_eq!(r.unexpected[0].what, "status 502");
    assert_eq!(r.unexpected[2].what, "connection refused");
}

#[test]
fn out_of_order_results_are_counted_in_send_order() {
    // Request 1 (slow, b) fails and reports last; requests 0 and 2 fail too: a run of 3.
    let mut tally = Tally::new(&DEFAULT_EXPECT);
    assert!(tally.record(0, status(0, "a", 502)));
    assert!(!tally.record(2, status(200, "a", 502)));
    assert_eq!(tally.report.total, 1);
    assert!(tally.record(1, failed(100, "b", "timeout after 1.000s")));
    let r = tally.finish(Duration::from_secs(1));
    assert_eq!(r.total, 3);
    assert_eq!(r.longest_unexpected_run.map(|run| run.count), Some(3));
    let urls: Vec<&str> = r.unexpected.iter().map(|u| u.url.as_str()).collect();
    assert_eq!(urls, ["a", "b", "a"]);
}

#[test]
fn a_gap_in_the_sequence_is_stepped_over_at_the_end() {
    let mut tally = Tally::new(&DEFAULT_EXPECT);
    tally.record(1, status(100, "a", 200));
    assert_eq!(tally.report.total, 0);
    let r = tally.finish(Duration::from_secs(1));
    assert_eq!(r.total, 1);
}

#[test]
fn a_broken_body_is_unexpected_but_keeps_its_status() {
    let r = tally(vec![Outcome {
        at: t(0),
        url: "a".to_owned(),
        answer: Answer::BrokenBody(200, "body failed: connection reset".to_owned()),
    }]);
    assert_eq!(r.by_status, BTreeMap::from([(200, 1)]));
    assert_eq!(r.connection_errors, 0);
    assert_eq!(
        r.unexpected[0].what,
        "status 200, then body failed: connection reset"
    );
}

#[test]
fn render_text_lists_counts_each_unexpected_result_and_the_run() {
    let mut r = tally(vec![
        status(0, "http://e/", 200),
        status(250, "http://e/", 502),
        failed(500, "http://e/", "connection refused"),
        status(750, "http://e/", 503),
    ]);
    r.skipped = 2;
    assert_eq!(
        r.render_text(),
        "probe: 4 results in 1.500s\n\
         \x20 status 200: 1\n\
         \x20 status 502: 1 (unexpected)\n\
         \x20 status 503: 1\n\
         \x20 connection errors: 1 (unexpected)\n\
         \x20 skipped: 2 (the previous request to that URL was still in flight)\n\
         unexpected results: 2\n\
         \x20 2025-06-01T10:00:00.250Z  http://e/  status 502\n\
         \x20 2025-06-01T10:00:00.500Z  http://e/  connection refused\n\
         longest unexpected run: 2 in a row, from 2025-06-01T10:00:00.250Z to \
         2025-06-01T10:00:00.500Z (0.250s)\n\
         not clean: 2 of 4 results were not one of 200, 503\n"
    );
}

#[test]
fn to_json_carries_everything() {
    let r = tally(vec![status(0, "u", 200), status(1_000, "u", 404)]);
    assert_eq!(
        r.to_json(),
        json!({
            "clean": false,
            "total": 2,
            "by_status": {"200": 1, "404": 1},
            "connection_errors": 0,
            "skipped": 0,
            "expect": [200, 503],
            "unexpected": [{"at": "2025-06-01T10:00:01.000Z", "url": "u", "what": "status 404"}],
            "longest_unexpected_run": {
                "start": "2025-06-01T10:00:01.000Z",
                "end": "2025-06-01T10:00:01.000Z",
                "count": 1
            },
            "elapsed_ms": 1500,
        })
    );
}

#[test]
fn validate_reports_every_problem() {
    let mut opts = ProbeOptions::new(vec!["ftp://x/".to_owned(), "not a url".to_owned()]);
    opts.interval = Duration::ZERO;
    opts.expect = vec![200, 99];
    opts.headers = vec![("bad name".to_owned(), "v".to_owned())];
    let err = opts.validate().unwrap_err();
    assert_eq!(
        err,
        "probe url \"ftp://x/\": scheme must be http or https, not ftp; \
         probe url \"not a url\": relative URL without a base; \
         probe interval 0ns: must be at least 1ms; \
         probe expect 99: not an HTTP status (100 to 599); \
         probe header \"bad name\": not a valid header name"
    );
    assert!(ProbeOptions::new(vec!["http://127.0.0.1:1/".to_owned()])
        .validate()
        .is_ok());
    assert!(ProbeOptions::new(vec![]).validate().is_err());
}
