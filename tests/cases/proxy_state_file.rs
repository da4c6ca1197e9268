//! The state file when Consul does not answer: a file that cannot be used (empty, truncated,
//! random bytes, written for another key, an invalid mode) or no file at all makes the proxy
//! fail closed (`server.unknown_state`, `/status` source `fail_safe`, the file named in the
//! log), a good file still restores its mode, and Consul's answer replaces the fail-safe state.

use std::path::Path;
use std::time::Duration;

use drawbridge_core::gate::Mode;
use drawbridge_core::status::StatusReport;
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::ports::free_port;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{
    header, run_drawbridge, set_gate, test_key, Drawbridge, DrawbridgeBuilder, Ready, Route,
};
use drawbridge_tests::upstream::{Kind, Upstream};
use reqwest::Method;
use serde_json::Value;

/// Consul restarts and the watcher's backoff may take a while to try again.
const RECOVERY: Duration = Duration::from_secs(40);

/// How long `--check` may take.
const CHECK_DEADLINE: Duration = Duration::from_secs(20);

/// The upstreams every proxy of a test sends to, and the test's folder.
struct Scene {
    ui: Upstream,
    api: Upstream,
    key: String,
    dir: TestDir,
}

impl Scene {
    fn new(test: &str) -> Scene {
        Scene {
            ui: Upstream::builder("ui").kind(Kind::Page).start(),
            api: Upstream::builder("api").kind(Kind::Api).start(),
            key: test_key(test),
            dir: TestDir::new(test),
        }
    }

    /// A proxy `name` reading Consul at `consul`, routes `/api/` (api) and `/` (page), started
    /// without waiting for Consul.
    fn proxy(&self, name: &str, consul: &str) -> DrawbridgeBuilder {
        Drawbridge::builder(consul, &self.key)
            .name(name)
            .static_pool("ui", &[&self.ui], None)
            .static_pool("api", &[&self.api], None)
            .route(Route::api("api", "/api/", "api"))
            .route(Route::page("ui", "/", "ui"))
            .ready(Ready::Healthz)
    }

    /// Writes `content` as the state file of `builder`'s proxy.
    fn write_state_file(&self, builder: &DrawbridgeBuilder, content: &[u8]) {
        let path = builder.state_file_in(self.dir.path());
        std::fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Requests that reached either upstream.
    fn upstream_requests(&self) -> u64 {
        self.ui.proxied_requests() + self.api.proxied_requests()
    }
}

/// An address where no Consul answers: a free port nobody listens on.
fn consul_down() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A state file as the proxy writes it.
fn saved_state(key: &str, doc: &str, applied_index: u64) -> Vec<u8> {
    let doc: Value = serde_json::from_str(doc).expect("a JSON document");
    let saved = serde_json::json!({"key": key, "doc": doc, "applied_index": applied_index});
    serde_json::to_vec_pretty(&saved).expect("JSON serialises")
}

/// `n` bytes that are not JSON, the same every run.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn content_type(answer: &reqwest::Response) -> String {
    header(answer, "content-type").unwrap_or_default()
}

/// Asserts the proxy serves the maintenance answers: the page on the page route, problem+json
/// on the API route, whatever the method.
async fn assert_maintenance_answers(edge: &Drawbridge, what: &str) {
    let page = edge.get("/account").await;
    assert_eq!(page.status(), 503, "{what}: page route");
    assert_eq!(
        content_type(&page),
        "text/html; charset=utf-8",
        "{what}: page"
    );
    assert!(
        header(&page, "retry-after").is_some(),
        "{what}: Retry-After"
    );
    let html = page.text().await.unwrap_or_default();
    assert!(
        html.to_ascii_lowercase().contains("maintenance"),
        "{what}: not the maintenance page:\n{html}"
    );

    for method in [Method::GET, Method::POST] {
        let api = edge.send(edge.request(method.clone(), "/api/orders")).await;
        assert_eq!(api.status(), 503, "{what}: {method} on the API route");
        assert!(
            content_type(&api).starts_with("application/problem+json"),
            "{what}: {}",
            content_type(&api)
        );
        let body: Value = serde_json::from_str(&api.text().await.unwrap_or_default())
            .unwrap_or_else(|e| panic!("{what}: the problem body is not JSON: {e}"));
        assert_eq!(body["status"], 503, "{what}: {body:#}");
        assert_eq!(body["mode"], "maintenance", "{what}: {body:#}");
    }
}

/// Asserts `/status` shows the fail-safe state in `mode`, with Consul not reached.
fn assert_fail_safe(report: &StatusReport, mode: Mode, what: &str) {
    assert_eq!(report.gate.source, "fail_safe", "{what}: {report:#?}");
    assert_eq!(report.gate.mode, mode, "{what}");
    assert_eq!(
        report.gate.by.as_deref(),
        Some("server.unknown_state"),
        "{what}"
    );
    assert_eq!(report.gate.applied_index, 0, "{what}");
    assert!(!report.consul.reachable, "{what}: Consul reachable?");
}

/// Asserts the log has a line with `words` (the file, what is wrong) at level ERROR.
fn assert_logged(edge: &Drawbridge, words: &[&str], what: &str) {
    let log = edge.log();
    let found = log
        .lines()
        .any(|line| line.contains("ERROR") && words.iter().all(|w| line.contains(w)));
    assert!(
        found,
        "{what}: no error line with {words:?} in the log:\n{log}"
    );
}

/// With Consul down, each state file that cannot be used, and none at all, makes the proxy
/// start in maintenance: the page and problem+json answers, nothing reaches the upstreams,
/// `/status` says `fail_safe`, `/healthz` is 200, the log names the file and what is wrong,
/// and the metrics count it.
#[tokio::test]
async fn unusable_state_files_fail_closed_while_consul_is_down() {
    let scene = Scene::new("unusable_state_files_fail_closed_while_consul_is_down");
    let consul = consul_down();
    let normal_here = saved_state(&scene.key, r#"{"mode":"normal"}"#, 42);
    let truncated = normal_here[..normal_here.len() / 2].to_vec();
    // (what, the file's content or none, the refusal's metric label, what the log says).
    let damaged = |what, content, mention| (what, Some(content), Some("damaged"), mention);
    let cases = [
        damaged("empty", Vec::new(), "is empty"),
        damaged("truncated", truncated, "EOF"),
        damaged("random", random_bytes(700), "damaged"),
        (
            "other-key",
            Some(saved_state(
                "drawbridge/test/elsewhere/gate",
                r#"{"mode":"normal"}"#,
                42,
            )),
            Some("other_key"),
            "drawbridge/test/elsewhere/gate",
        ),
        (
            "invalid-mode",
            Some(saved_state(&scene.key, r#"{"mode":"closed"}"#, 42)),
            Some("invalid_document"),
            "closed",
        ),
        ("missing", None, None, "no state file"),
    ];
    for (what, content, reason, mention) in cases {
        let builder = scene.proxy(&format!("edge-{what}"), &consul);
        let state_file = builder.state_file_in(scene.dir.path());
        if let Some(content) = &content {
            scene.write_state_file(&builder, content);
        }
        let edge = builder.start(&scene.dir).await;

        let report = edge.status().await;
        assert_fail_safe(&report, Mode::Maintenance, what);
        assert_maintenance_answers(&edge, what).await;
        let healthz = edge
            .send(edge.client().get(edge.admin_url("/healthz")))
            .await;
        assert_eq!(healthz.status(), 200, "{what}: /healthz");
        assert_logged(
            &edge,
            &[&state_file.display().to_string(), mention, "maintenance"],
            what,
        );

        let metrics = edge.metrics().await;
        assert_eq!(
            metrics.get("drawbridge_gate_fail_safe", &[]),
            Some(1.0),
            "{what}"
        );
        let refused = metrics.value("drawbridge_state_file_refused_total", &[]);
        match reason {
            Some(reason) => assert_eq!(
                metrics.get("drawbridge_state_file_refused_total", &[("reason", reason)]),
                Some(1.0),
                "{what}:\n{}",
                metrics.text
            ),
            None => assert_eq!(refused, 0.0, "{what}: a missing file is not refused"),
        }
        // Nothing rewrote the file while Consul was down.
        if let Some(content) = &content {
            assert_eq!(
                std::fs::read(&state_file).unwrap_or_default(),
                *content,
                "{what}"
            );
        }
    }
    assert_eq!(
        scene.upstream_requests(),
        0,
        "an upstream got a request while the state was unknown"
    );
}

/// `server.unknown_state` chooses what an unknown state serves: "normal" proxies (the old
/// behaviour, for those who want it), "read_only" lets GET through and refuses POST.
#[tokio::test]
async fn unknown_state_chooses_what_is_served() {
    let scene = Scene::new("unknown_state_chooses_what_is_served");
    let consul = consul_down();

    let builder = scene.proxy("edge-normal", &consul).unknown_state("normal");
    scene.write_state_file(&builder, b"{\"key\":");
    let edge = builder.start(&scene.dir).await;
    assert_fail_safe(&edge.status().await, Mode::Normal, "normal");
    let page = edge.get("/account").await;
    assert_eq!(page.status(), 200, "normal: page route");
    assert_eq!(header(&page, "x-upstream").as_deref(), Some("ui"));
    let api = edge.send(edge.request(Method::POST, "/api/orders")).await;
    assert_eq!(api.status(), 200, "normal: POST on the API route");
    assert_eq!(scene.ui.proxied_requests(), 1);
    assert_eq!(scene.api.proxied_requests(), 1);
    drop(edge);

    let builder = scene
        .proxy("edge-read-only", &consul)
        .unknown_state("read_only");
    let edge = builder.start(&scene.dir).await;
    assert_fail_safe(&edge.status().await, Mode::ReadOnly, "read_only");
    assert_eq!(edge.get("/api/orders").await.status(), 200);
    let post = edge.send(edge.request(Method::POST, "/api/orders")).await;
    assert_eq!(post.status(), 503, "read_only: POST");
    assert_eq!(scene.api.proxied_requests(), 2, "only the GET passed");
}

/// A good state file is restored as before: its mode (read-only here), `source: state_file`,
/// no refusal and no fail-safe state.
#[tokio::test]
async fn a_good_state_file_still_restores_its_mode() {
    let scene = Scene::new("a_good_state_file_still_restores_its_mode");
    let builder = scene.proxy("edge", &consul_down());
    scene.write_state_file(
        &builder,
        &saved_state(&scene.key, r#"{"mode":"read_only","reason":"saved"}"#, 42),
    );
    let edge = builder.start(&scene.dir).await;

    let report = edge.status().await;
    assert_eq!(report.gate.source, "state_file", "{report:#?}");
    assert_eq!(report.gate.mode, Mode::ReadOnly);
    assert_eq!(report.gate.reason.as_deref(), Some("saved"));
    assert_eq!(report.gate.applied_index, 42);
    assert_eq!(edge.get("/").await.status(), 200);
    let post = edge.send(edge.request(Method::POST, "/api/orders")).await;
    assert_eq!(post.status(), 503);
    assert_eq!(scene.ui.proxied_requests(), 1);
    assert_eq!(scene.api.proxied_requests(), 0);
    let metrics = edge.metrics().await;
    assert_eq!(metrics.get("drawbridge_gate_fail_safe", &[]), Some(0.0));
    assert_eq!(
        metrics.value("drawbridge_state_file_refused_total", &[]),
        0.0
    );
}

/// With Consul up, a first start without a state file is not changed: the very first request
/// passes and nothing is logged about an unknown state. With Consul down and a damaged file,
/// the fail-safe state holds until Consul returns with the key in normal; then the proxy
/// serves normal from Consul and the file is good again.
#[tokio::test]
async fn consul_back_with_the_key_normal_replaces_the_fail_safe_state() {
    let scene = Scene::new("consul_back_with_the_key_normal_replaces_the_fail_safe_state");
    let mut consul = ConsulServer::start(&scene.dir).await;
    let index = set_gate(&consul.client(), &scene.key, r#"{"mode":"normal"}"#).await;

    let first = scene
        .proxy("first-start", &consul.http_addr())
        .start(&scene.dir)
        .await;
    assert_eq!(first.get("/").await.status(), 200, "the very first request");
    assert_eq!(scene.ui.proxied_requests(), 1);
    let report = first.status().await;
    assert_eq!(report.gate.source, "consul");
    assert_eq!(report.gate.applied_index, index);
    assert!(
        !first.log().contains("gate state is unknown"),
        "a start with Consul up logged an unknown state:\n{}",
        first.log()
    );
    drop(first);

    consul.stop();
    let builder = scene.proxy("edge", &consul.http_addr());
    let state_file = builder.state_file_in(scene.dir.path());
    scene.write_state_file(&builder, &random_bytes(64));
    let edge = builder.start(&scene.dir).await;
    assert_fail_safe(&edge.status().await, Mode::Maintenance, "Consul down");
    assert_maintenance_answers(&edge, "Consul down").await;
    assert_eq!(scene.upstream_requests(), 1, "nothing passed while unknown");

    consul.restart().await;
    let report = edge
        .wait_status("Consul's state applied", RECOVERY, |r| {
            r.gate.source == "consul"
        })
        .await;
    assert_eq!(report.gate.mode, Mode::Normal);
    assert_eq!(report.gate.applied_index, index);
    assert_eq!(edge.get("/").await.status(), 200);
    assert_eq!(edge.get("/api/orders").await.status(), 200);
    let metrics = edge.metrics().await;
    assert_eq!(metrics.get("drawbridge_gate_fail_safe", &[]), Some(0.0));
    assert_saved(&state_file, &scene.key, "normal").await;
}

/// Waits until the state file holds a saved state for `key` in `mode` (the file is written just
/// after the state is applied, so `/status` may show it first).
async fn assert_saved(path: &Path, key: &str, mode: &str) {
    eventually(
        &format!("{} saved for {key} in {mode}", path.display()),
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move {
            let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
            let saved: Value = serde_json::from_slice(&text)
                .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&text)))?;
            if saved["key"] == key && saved["doc"]["mode"] == mode {
                Ok(())
            } else {
                Err(format!("{saved}"))
            }
        },
    )
    .await;
}

/// `--check` accepts the modes for `server.unknown_state` and refuses anything else with the
/// key named and exit 2.
#[tokio::test]
async fn check_names_a_bad_unknown_state() {
    let scene = Scene::new("check_names_a_bad_unknown_state");
    for mode in ["maintenance", "read_only", "normal"] {
        let config = scene
            .proxy(&format!("check-{mode}"), "http://127.0.0.1:8500")
            .unknown_state(mode)
            .write_config(scene.dir.path());
        let out = run_drawbridge(&config, &["--check"], CHECK_DEADLINE).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = scene
        .proxy("check-closed", "http://127.0.0.1:8500")
        .unknown_state("closed")
        .write_config(scene.dir.path());
    let out = run_drawbridge(&config, &["--check"], CHECK_DEADLINE).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.unknown_state: \"closed\" is not one of"),
        "{stderr}"
    );
}
