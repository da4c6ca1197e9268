//! HTTP/2 abuse from a real client stack (python's `h2`, `hyperframe` and `hpack` over TLS with
//! ALPN `h2`: `tests/h2_abuse.py`) beside HTTP/1.1 and HTTP/2 legitimate loads, at the
//! requirement's sizes: rapid reset (10 × 1 000 HEADERS + RST_STREAM), CONTINUATION without
//! END_HEADERS up to 10 MiB, 10 000 SETTINGS frames, invalid pseudo-headers, `:authority`/`Host`
//! mismatches, DATA that does not add up to `content-length`. A flood goes on over a new
//! connection each time the proxy ends one, until its whole size is sent.
//!
//! Each attack passes when every offending connection or stream gets GOAWAY or RST_STREAM (a
//! malformed request may get a 4xx that ends its stream instead: RFC 9113, 8.1.1) within 1 s of
//! the attacker's last frame on it; the proxy uses at most 1 core (CPU time over any 500 ms of
//! the attack, or over all of it when shorter) and stays within 64 MiB of its RSS before; no
//! malformed request reaches an upstream; every legitimate request is answered 200. Each test
//! prints its figures; `DRAWBRIDGE_H2_ABUSE_RATE` sets the legitimate rate (a second, each, 50).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_tests::load::{open_loop, Served};
use drawbridge_tests::proxy::{test_client, Site};
use drawbridge_tests::tls_ca::TestCa;
use reqwest::Version;
use serde_json::Value;

const HOST: &str = "a.test";
/// The attacker: Debian's `python3-h2` is installed for the system interpreter only.
const PYTHON: &str = "/usr/bin/python3";
const ATTACKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/h2_abuse.py");
/// The paths of the legitimate loads; everything else at the upstreams came from an attack.
const LEGIT_H1: &str = "/legit/h1";
const LEGIT_H2: &str = "/legit/h2";
/// The ordinary request the SETTINGS flood sends after its flood, on the same connection.
const AFTER_SETTINGS: &str = "/h2-abuse/after-settings";
/// The longest an offending connection or stream may wait for the proxy's reaction.
const REACTION_DEADLINE_MS: f64 = 1000.0;
const MAX_CORES: f64 = 1.0;
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;
/// The window the proxy's CPU is measured over.
const CPU_WINDOW: Duration = Duration::from_millis(500);
/// `/proc/<pid>/stat` counts CPU time in ticks of 1/100 s (`USER_HZ`, fixed on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

fn legitimate_rate() -> u64 {
    std::env::var("DRAWBRIDGE_H2_ABUSE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50u64)
        .max(1)
}

/// What `/proc` says of the proxy at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// User and system CPU time, in ticks.
    cpu_ticks: u64,
    rss_kib: u64,
}

fn sample(pid: u32) -> Sample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 12th and 13th of them.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    let rss_kib = drawbridge_tests::process::rss_kib(pid);
    Sample {
        at: Instant::now(),
        cpu_ticks: fields.iter().sum(),
        rss_kib,
    }
}

/// Samples the proxy every 50 ms on a thread of its own until stopped.
struct Sampler {
    on: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let on = Arc::new(AtomicBool::new(true));
        let running = on.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = vec![sample(pid)];
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                samples.push(sample(pid));
            }
            samples
        });
        Sampler { on, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.on.store(false, Ordering::Relaxed);
        self.thread.join().expect("the sampler does not panic")
    }
}

/// The most cores the proxy used over any [`CPU_WINDOW`] of `samples` (over all of them when
/// they span less), and the mean over all of them.
fn cores(samples: &[Sample]) -> (f64, f64) {
    let rate = |a: &Sample, b: &Sample| {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / TICKS_PER_SECOND / secs.max(1e-3)
    };
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let mean = rate(first, last);
    let mut peak: f64 = 0.0;
    for (i, a) in samples.iter().enumerate() {
        if let Some(b) = samples[i..]
            .iter()
            .find(|b| b.at.duration_since(a.at) >= CPU_WINDOW)
        {
            peak = peak.max(rate(a, b));
        }
    }
    if peak == 0.0 {
        peak = mean;
    }
    (peak, mean)
}

/// The two legitimate loads, HTTP/1.1 on the plain listener and HTTP/2 over TLS, on a thread
/// and runtime of their own (the attacker's process and the sampling must not delay them).
struct Loads {
    on: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Served, Served)>,
}

impl Loads {
    fn start(site: &Site, ca: &TestCa, rate: u64) -> Loads {
        let on = Arc::new(AtomicBool::new(true));
        let running = on.clone();
        let h1 = (test_client(None), site.edge.url(LEGIT_H1));
        let h2 = (
            site.edge.tls_client(&ca.cert, &[HOST]),
            site.edge.tls_url(HOST, LEGIT_H2),
        );
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime with the default settings builds")
                .block_on(async {
                    let most = Duration::from_secs(60);
                    tokio::join!(
                        open_loop(&h1.0, &h1.1, rate, most, Some(&running)),
                        open_loop(&h2.0, &h2.1, rate, most, Some(&running)),
                    )
                })
        });
        Loads { on, thread }
    }

    /// Stops sending and waits for every answer.
    async fn stop(self) -> (Served, Served) {
        self.on.store(false, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("the loads do not panic"))
            .await
            .expect("the load thread is joined")
    }
}

/// Requests the upstreams received on any path but the legitimate ones (health checks aside).
fn attack_requests(site: &Site) -> u64 {
    let total = site.ui.proxied_requests() + site.api.proxied_requests();
    let legit: u64 = [LEGIT_H1, LEGIT_H2, AFTER_SETTINGS]
        .iter()
        .map(|p| site.ui.requests_to(p))
        .sum();
    total - legit
}

/// Runs `h2_abuse.py attack` against the TLS listener at `addr`; returns its report.
async fn run_attacker(addr: SocketAddr, ca: &Path, attack: &str, args: &[&str]) -> Value {
    let run = tokio::process::Command::new(PYTHON)
        // No bytecode cache in the source tree.
        .arg("-B")
        .arg(ATTACKER)
        .arg(attack)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(ca)
        .args(["--sni", HOST])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("{attack}: the attacker ran over 30 s"))
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} {ATTACKER}: {e}"));
    assert!(
        out.status.success(),
        "{attack}: the attacker failed ({}): {}\n(Debian's python3-h2 is installed by \
         scripts/setup.sh)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{attack}: the attacker's report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What one attack did, and what happened beside it.
struct Outcome {
    attack: &'static str,
    /// The attacker's report: `connections` or `cases`, each with the proxy's reaction.
    report: Value,
    /// The most cores over any [`CPU_WINDOW`] of the attack, and the mean over it.
    cpu_peak: f64,
    cpu_mean: f64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    /// Requests that reached an upstream from the attack.
    reached: u64,
    h1: Served,
    h2: Served,
    took: Duration,
}

impl Outcome {
    /// The attacker's connections or cases.
    fn entries(&self) -> &[Value] {
        self.report
            .get("connections")
            .or_else(|| self.report.get("cases"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Prints every figure (for the README).
    fn print(&self, what: &str) {
        let rate = |s: &Served| {
            format!(
                "{}/{} ok, p50 {:.1} ms, p99 {:.1} ms",
                s.ok,
                s.sent,
                ms(s.p50),
                ms(s.p99)
            )
        };
        eprintln!(
            "h2 abuse, {what}: {}; proxy CPU peak {:.2} core over {} ms (mean {:.2}), RSS \
             {} KiB before, peak {} KiB ({:+} KiB); {} attack requests reached the upstreams; \
             legitimate HTTP/1.1 {}, HTTP/2 {}; the attack took {:.0} ms",
            summary(&self.report),
            self.cpu_peak,
            CPU_WINDOW.as_millis(),
            self.cpu_mean,
            self.rss_before_kib,
            self.rss_peak_kib,
            self.rss_peak_kib as i64 - self.rss_before_kib as i64,
            self.reached,
            rate(&self.h1),
            rate(&self.h2),
            ms(self.took),
        );
    }

    /// Every offending connection or stream got one of `allowed` (`goaway`, `rst_stream`, or
    /// `response` for a 4xx that ends the stream) within [`REACTION_DEADLINE_MS`].
    fn assert_reactions(&self, allowed: &[&str]) {
        let entries = self.entries();
        assert!(
            !entries.is_empty(),
            "{}: no report: {}",
            self.attack,
            self.report
        );
        let late: Vec<String> = entries
            .iter()
            .filter(|e| !reacted_in_time(e, allowed))
            .map(describe)
            .collect();
        assert!(
            late.is_empty(),
            "{}: offending connections or streams without {allowed:?} within \
             {REACTION_DEADLINE_MS} ms: {}",
            self.attack,
            late.join("; ")
        );
    }

    /// The proxy's CPU and memory stayed within bounds, and every legitimate request was served.
    fn assert_resources_and_service(&self) {
        assert!(
            self.cpu_peak <= MAX_CORES,
            "{}: the proxy used {:.2} cores over {} ms of the attack",
            self.attack,
            self.cpu_peak,
            CPU_WINDOW.as_millis()
        );
        assert!(
            self.rss_peak_kib <= self.rss_before_kib + MAX_RSS_GROWTH_KIB,
            "{}: the proxy's RSS went from {} KiB to {} KiB",
            self.attack,
            self.rss_before_kib,
            self.rss_peak_kib
        );
        for (name, served) in [("HTTP/1.1", &self.h1), ("HTTP/2", &self.h2)] {
            assert!(
                served.sent > 0,
                "{}: no legitimate {name} load",
                self.attack
            );
            assert_eq!(
                served.ok, served.sent,
                "{}: legitimate {name} requests failed: {:?}",
                self.attack, served.failures
            );
        }
    }

    fn assert_nothing_reached_the_upstreams(&self) {
        assert_eq!(
            self.reached, 0,
            "{}: {} malformed requests reached the upstreams",
            self.attack, self.reached
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The kind of one connection's or case's reaction: `goaway ENHANCE_YOUR_CALM
/// (too_many_resets)`, `rst_stream PROTOCOL_ERROR`, `response 400`, `none`…
fn reaction_kind(entry: &Value) -> String {
    let reaction = entry["reaction"].as_str().unwrap_or("?");
    let detail = match &entry["detail"] {
        Value::String(d) => format!(" {d}"),
        _ => String::new(),
    };
    let debug = entry["goaway"]["debug"]
        .as_str()
        .filter(|d| !d.is_empty())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!("{reaction}{detail}{debug}")
}

/// One case's or connection's reaction, in a few words.
fn describe(entry: &Value) -> String {
    let case = entry["case"]
        .as_str()
        .map(|c| format!("{c}: "))
        .unwrap_or_default();
    let after = entry["ms"]
        .as_f64()
        .map(|ms| format!(" after {ms:.1} ms"))
        .unwrap_or_default();
    let reached = match entry["reached_upstream"].as_u64() {
        Some(n) if n > 0 => format!(" (reached the upstream {n}×)"),
        _ => String::new(),
    };
    format!("{case}{}{after}{reached}", reaction_kind(entry))
}

/// The attacker's report in a line: each case, or the connections grouped by reaction with
/// the spread of their reaction times and of what they sent.
fn summary(report: &Value) -> String {
    if let Some(cases) = report["cases"].as_array() {
        return cases.iter().map(describe).collect::<Vec<_>>().join("; ");
    }
    let connections = report["connections"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let mut kinds: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for c in connections {
        kinds
            .entry(reaction_kind(c))
            .or_default()
            .push(c["ms"].as_f64().unwrap_or(f64::NAN));
    }
    let spread = |values: &mut Vec<f64>| {
        values.retain(|v| !v.is_nan());
        values.sort_by(f64::total_cmp);
        match values.len() {
            0 => String::new(),
            n => format!(
                " after {:.1}..{:.1} ms (median {:.1})",
                values[0],
                values[n - 1],
                values[n / 2]
            ),
        }
    };
    let mut parts = vec![format!(
        "{} attackers, {} connections, {} of {} sent",
        report["attackers"],
        connections.len(),
        report["used"],
        report["budget"]
    )];
    for (kind, mut times) in kinds {
        parts.push(format!("{}× {kind}{}", times.len(), spread(&mut times)));
    }
    for key in [
        "streams_sent",
        "continuation_frames",
        "settings_sent",
        "settings_acked",
    ] {
        let mut values: Vec<f64> = connections.iter().filter_map(|c| c[key].as_f64()).collect();
        if !values.is_empty() {
            values.sort_by(f64::total_cmp);
            parts.push(format!(
                "{key} per connection {}..{}",
                values[0],
                values[values.len() - 1]
            ));
        }
    }
    let mut last: Vec<u64> = connections
        .iter()
        .filter_map(|c| c["goaway"]["last_stream_id"].as_u64())
        .collect();
    last.sort_unstable();
    last.dedup();
    if !last.is_empty() {
        parts.push(format!("GOAWAY last stream {last:?}"));
    }
    let after: Vec<&str> = connections
        .iter()
        .filter_map(|c| c["request_after_flood"].as_str())
        .collect();
    if !after.is_empty() {
        parts.push(format!("a request after the flood answered {after:?}"));
    }
    parts.join(", ")
}

fn reacted_in_time(entry: &Value, allowed: &[&str]) -> bool {
    let reaction = entry["reaction"].as_str().unwrap_or("none");
    let in_time = entry["ms"]
        .as_f64()
        .is_some_and(|ms| ms <= REACTION_DEADLINE_MS);
    let kind_ok = match reaction {
        "response" => {
            let status = entry["detail"].as_str().unwrap_or("");
            status.starts_with('4') && entry["stream_ended"] == Value::Bool(true)
        }
        other => allowed.contains(&other),
    };
    allowed.contains(&reaction) && kind_ok && in_time
}

/// Starts a site, runs the legitimate loads, runs `attack` beside them with the proxy sampled,
/// and gathers what happened.
async fn attack_beside_loads(test: &str, attack: &'static str, args: &[&str]) -> Outcome {
    let (site, certs) = Site::start_tls(test, HOST, |b| b).await;
    let ca = &certs.ca;
    let client = site.edge.tls_client(&ca.cert, &[HOST]);
    let check = client
        .get(site.edge.tls_url(HOST, LEGIT_H2))
        .send()
        .await
        .expect("the TLS listener answers");
    assert_eq!(
        (check.status().as_u16(), check.version()),
        (200, Version::HTTP_2),
        "the TLS listener speaks HTTP/2"
    );
    let pid = site.edge.pid();
    let reached_before = attack_requests(&site);
    let loads = Loads::start(&site, ca, legitimate_rate());
    // The loads warm up: connections open, the proxy's buffers reach their working size.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = sample(pid).rss_kib;

    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let report = run_attacker(site.edge.tls_addr(), &ca.cert, attack, args).await;
    let took = started.elapsed();
    let samples = sampler.stop();
    // The loads go on a little after the attack: what it left behind must not hurt them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (h1, h2) = loads.stop().await;
    let reached = attack_requests(&site) - reached_before;
    let mut report = report;
    if let Some(cases) = report["cases"].as_array_mut() {
        for case in cases {
            if let Some(path) = case["path"].as_str() {
                let n = site.ui.requests_to(path) + site.api.requests_to(path);
                case["reached_upstream"] = n.into();
            }
        }
    }
    let (cpu_peak, cpu_mean) = cores(&samples);
    let rss_peak_kib = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Outcome {
        attack,
        report,
        cpu_peak,
        cpu_mean,
        rss_before_kib,
        rss_peak_kib,
        reached,
        h1,
        h2,
        took,
    }
}

/// 10 connections each open and cancel 1 000 streams as fast as they can (CVE-2023-44487):
/// each is sent GOAWAY `ENHANCE_YOUR_CALM` once more streams were cancelled before the proxy
/// took them than `max_pending_accept_reset_streams` allows.
#[tokio::test]
async fn rapid_reset_connections_are_sent_goaway() {
    let outcome = attack_beside_loads(
        "h2_abuse_rapid_reset",
        "rapid_reset",
        &["--connections", "10", "--streams", "1000"],
    )
    .await;
    outcome.print("rapid reset (10 connections × 1 000 HEADERS + RST_STREAM)");
    outcome.assert_reactions(&["goaway"]);
    outcome.assert_resources_and_service();
}

/// One header block continued without END_HEADERS, 16 KiB a frame, up to 10 MiB
/// (CVE-2024-27316 and kin): GOAWAY long before the end, memory flat.
#[tokio::test]
async fn a_continuation_flood_is_sent_goaway() {
    let outcome = attack_beside_loads(
        "h2_abuse_continuation",
        "continuation",
        &["--connections", "1", "--megabytes", "10"],
    )
    .await;
    outcome.print("CONTINUATION without END_HEADERS up to 10 MiB");
    outcome.assert_reactions(&["goaway"]);
    outcome.assert_resources_and_service();
    outcome.assert_nothing_reached_the_upstreams();
}

/// 10 000 SETTINGS frames (CVE-2019-9515 and kin), the attacker reading the acknowledgements:
/// the h2 library acknowledges each one, so the proxy's frame watch cuts a connection once its
/// SETTINGS and PINGs outrun their budget (100 at once, then 10 a second): the attacker sees
/// the connection closed, and a new one is cut the same way.
#[tokio::test]
async fn a_settings_flood_is_cut() {
    let outcome = attack_beside_loads(
        "h2_abuse_settings_flood",
        "settings_flood",
        &["--connections", "1", "--settings", "10000"],
    )
    .await;
    outcome.print("10 000 SETTINGS frames");
    outcome.assert_resources_and_service();
    outcome.assert_reactions(&["close", "goaway"]);
}

/// Requests with unknown, repeated, missing, misplaced, empty or response pseudo-headers, or a
/// connection-specific field: each is reset (or its connection sent GOAWAY) and none reaches an
/// upstream.
#[tokio::test]
async fn invalid_pseudo_headers_are_reset_and_reach_no_upstream() {
    let outcome = attack_beside_loads("h2_abuse_pseudo_headers", "pseudo_headers", &[]).await;
    outcome.print("invalid pseudo-headers");
    outcome.assert_reactions(&["rst_stream", "goaway", "response"]);
    outcome.assert_nothing_reached_the_upstreams();
    outcome.assert_resources_and_service();
}

/// Requests whose `Host` differs from `:authority` (another name, an added port, two `Host`
/// lines) or whose `:authority` carries userinfo: refused, and none reaches an upstream.
#[tokio::test]
async fn an_authority_host_mismatch_is_refused_and_reaches_no_upstream() {
    let outcome =
        attack_beside_loads("h2_abuse_authority_mismatch", "authority_mismatch", &[]).await;
    outcome.print(":authority / Host mismatch");
    outcome.assert_reactions(&["rst_stream", "goaway", "response"]);
    outcome.assert_nothing_reached_the_upstreams();
    outcome.assert_resources_and_service();
}

/// Bodies shorter or longer than their `content-length`, sent with their header or a moment
/// after it, and DATA after `content-length: 0`: each stream is reset, and none reaches an
/// upstream (the proxy reads a small HTTP/2 body whole, an announced empty one included, before
/// it chooses an upstream).
#[tokio::test]
async fn a_content_length_mismatch_is_reset_and_reaches_no_upstream() {
    let outcome = attack_beside_loads("h2_abuse_content_length", "content_length", &[]).await;
    outcome.print("content-length ≠ DATA length");
    outcome.assert_reactions(&["rst_stream", "goaway", "response"]);
    outcome.assert_nothing_reached_the_upstreams();
    outcome.assert_resources_and_service();
}
