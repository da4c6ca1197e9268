//! Upstream pools: active health checks take a failing or closed server out of the rotation,
//! and a pool that follows a Consul service drops a box put into node maintenance.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use drawbridge_core::status::StatusReport;
use drawbridge_tests::consul::{ConsulClientAgent, ConsulServer};
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{header, test_key, Drawbridge, HealthCheck, Route};
use drawbridge_tests::upstream::{Kind, Upstream};

const BOX1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const BOX2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Health checks run every 500 ms; a change shows in a few intervals.
const HEALTH_DEADLINE: Duration = Duration::from_secs(15);

/// Sends `n` GETs and counts the answers by `X-Upstream`; every answer must be a 200.
async fn spread(edge: &Drawbridge, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let answer = edge.get(path).await;
        assert_eq!(answer.status(), 200, "request {i} of {n} to {path}");
        let name = header(&answer, "x-upstream").unwrap_or_else(|| "<none>".to_string());
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

/// Waits until requests to `path` have reached every upstream in `names` (polling in small
/// batches until [`HEALTH_DEADLINE`]).
async fn wait_all_seen(edge: &Drawbridge, path: &str, names: &[&str]) {
    let start = std::time::Instant::now();
    let mut total: HashMap<String, usize> = HashMap::new();
    loop {
        for (name, n) in spread(edge, path, 4).await {
            *total.entry(name).or_insert(0) += n;
        }
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !total.contains_key(*n))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < HEALTH_DEADLINE,
            "requests never reached {missing:?} within {HEALTH_DEADLINE:?}; seen {total:?}\n{}",
            edge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The health `/status` reports for `address` in pool `pool`; `None` when it is not listed.
fn server_health(report: &StatusReport, pool: &str, address: &str) -> Option<bool> {
    report
        .pools
        .iter()
        .find(|p| p.name == pool)?
        .servers
        .iter()
        .find(|s| s.address == address)
        .map(|s| s.healthy)
}

/// Upstreams `a` and `b` in one pool with a fast HTTP health check behind a proxy, with the
/// test's own folder and Consul; returned once requests have reached both.
async fn two_server_edge(test: &str) -> (TestDir, ConsulServer, Upstream, Upstream, Drawbridge) {
    let dir = TestDir::new(test);
    let consul = ConsulServer::start(&dir).await;
    let a = Upstream::builder("a").kind(Kind::Page).start();
    let b = Upstream::builder("b").kind(Kind::Page).start();
    let edge = Drawbridge::builder(&consul.http_addr(), &test_key("pools"))
        .static_pool("ui", &[&a, &b], Some(HealthCheck::http_fast()))
        .route(Route::page("ui", "/", "ui"))
        .start(&dir)
        .await;
    wait_all_seen(&edge, "/", &["a", "b"]).await;
    (dir, consul, a, b, edge)
}

/// Waits until `/status` reports server `address` of pool `ui` healthy or not (`healthy`).
async fn wait_ui_health(edge: &Drawbridge, what: &str, address: &str, healthy: bool) {
    edge.wait_status(what, HEALTH_DEADLINE, |r| {
        server_health(r, "ui", address) == Some(healthy)
    })
    .await;
}

/// Sends 20 GETs to `path` and asserts that all of them reached upstream `name`.
async fn assert_all_reach(edge: &Drawbridge, path: &str, name: &str) {
    let seen = spread(edge, path, 20).await;
    assert_eq!(
        seen.get(name),
        Some(&20),
        "requests went elsewhere: {seen:?}"
    );
}

/// Two servers with an HTTP health check: when one's `/healthz` answers 500, `/status` and
/// `drawbridge_upstream_server_healthy` mark it unhealthy and every request goes to the other;
/// when it recovers it gets requests again.
#[tokio::test]
async fn failing_health_check_takes_a_server_out_of_rotation() {
    let (_dir, _consul, a, b, edge) =
        two_server_edge("failing_health_check_takes_a_server_out").await;
    let (a_addr, b_addr) = (a.addr().to_string(), b.addr().to_string());
    let healthy = |metrics: &drawbridge_tests::proxy::Metrics, server: &str| {
        metrics.get(
            "drawbridge_upstream_server_healthy",
            &[("pool", "ui"), ("server", server)],
        )
    };

    a.set_healthy(false);
    wait_ui_health(&edge, "server a unhealthy", &a_addr, false).await;
    assert_all_reach(&edge, "/", "b").await;
    let metrics = edge.metrics().await;
    assert_eq!(healthy(&metrics, &a_addr), Some(0.0), "{}", metrics.text);
    assert_eq!(healthy(&metrics, &b_addr), Some(1.0), "{}", metrics.text);

    a.set_healthy(true);
    wait_ui_health(&edge, "server a healthy again", &a_addr, true).await;
    wait_all_seen(&edge, "/", &["a"]).await;
    assert_eq!(healthy(&edge.metrics().await, &a_addr), Some(1.0));
}

/// Two servers with an HTTP health check: when one's port closes, it leaves the rotation and
/// every request still gets a 200 from the other.
#[tokio::test]
async fn closed_port_takes_a_server_out_of_rotation() {
    let (_dir, _consul, mut a, _b, edge) = two_server_edge("closed_port_takes_a_server_out").await;

    let a_addr = a.addr().to_string();
    a.stop();
    wait_ui_health(&edge, "closed server a unhealthy", &a_addr, false).await;
    assert_all_reach(&edge, "/", "b").await;
}

/// How long box 1 of the Consul-service pool takes to answer `/slow/…`.
const SLOW: Duration = Duration::from_secs(6);

/// A pool following Consul service `api` gets both boxes' instances; putting box 1 into node
/// maintenance (on its own agent) removes it, so every new request goes to box 2, while a slow
/// request already at box 1 finishes with its 200 and `/status` lists box 1 as out of the pool
/// with that request in flight until it ends; taking it out of maintenance brings it back.
#[tokio::test]
async fn node_maintenance_removes_a_box_from_a_consul_service_pool() {
    let dir = TestDir::new("node_maintenance_removes_a_box");
    let consul = ConsulServer::start(&dir).await;
    let box1 = ConsulClientAgent::start(&dir, &consul, "box1", BOX1).await;
    let box2 = ConsulClientAgent::start(&dir, &consul, "box2", BOX2).await;
    let up1 = Upstream::builder("api-box1")
        .listen((BOX1, 0).into())
        .delay("/slow", SLOW)
        .start();
    let up2 = Upstream::builder("api-box2")
        .listen((BOX2, 0).into())
        .start();
    box1.register_upstream("api-1", "api", &up1, None).await;
    box2.register_upstream("api-2", "api", &up2, None).await;

    let edge = Drawbridge::builder(&consul.http_addr(), &test_key("consul_pool"))
        .consul_pool("api", "api", Some(HealthCheck::None))
        .route(Route::api("api", "/", "api"))
        .start(&dir)
        .await;
    wait_all_seen(&edge, "/orders", &["api-box1", "api-box2"]).await;
    let slow = edge.slow_request_at(&up1).await;

    box1.client()
        .agent_node_maintenance(true, "e2e: box1 down for work")
        .await
        .expect("node maintenance on box1");
    let box1_addr = up1.addr().to_string();
    let leaving = |r: &StatusReport| {
        r.pools
            .iter()
            .filter(|p| p.name == "api")
            .flat_map(|p| &p.servers)
            .find(|s| s.address == box1_addr)
            .map(|s| (s.in_pool, s.in_flight))
    };
    edge.wait_status(
        "box1 out of the api pool, its request in flight",
        SLOW / 2,
        |r| leaving(r) == Some((false, 1)),
    )
    .await;
    assert_all_reach(&edge, "/orders", "api-box2").await;
    let answer = slow
        .await
        .expect("the slow request's task")
        .expect("the slow request is answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(header(&answer, "x-upstream").as_deref(), Some("api-box1"));
    edge.wait_status("box1 gone from /status", HEALTH_DEADLINE, |r| {
        leaving(r).is_none()
    })
    .await;

    box1.client()
        .agent_node_maintenance(false, "")
        .await
        .expect("node maintenance off on box1");
    wait_all_seen(&edge, "/orders", &["api-box1"]).await;
}

/// The requests in flight to each server, in `/status` and `drawbridge_upstream_requests_in_flight`:
/// two slow requests to the `ui` server count 2 while they run and 0 once they have ended; the
/// `api` server, idle, counts 0.
#[tokio::test]
async fn requests_in_flight_are_counted_per_server_until_they_end() {
    let site = drawbridge_tests::proxy::Site::start("requests_in_flight_per_server").await;
    let client = site.edge.client().clone();
    let ui = site.ui.addr().to_string();
    let in_flight = |report: &StatusReport, pool: &str| -> Vec<u64> {
        report
            .pools
            .iter()
            .filter(|p| p.name == pool)
            .flat_map(|p| p.servers.iter().map(|s| s.in_flight))
            .collect()
    };
    let first = site.start_slow(&client, "/slow/one").await;
    let second = site.start_slow(&client, "/slow/two").await;
    let report = site
        .edge
        .wait_status(
            "two requests in flight to ui",
            Duration::from_secs(5),
            |r| in_flight(r, "ui") == [2],
        )
        .await;
    assert_eq!(in_flight(&report, "api"), [0]);
    site.edge
        .wait_metric(
            "drawbridge_upstream_requests_in_flight",
            &[("pool", "ui"), ("server", ui.as_str())],
            2.0,
        )
        .await;
    for slow in [first, second] {
        assert_eq!(site.slow_answer(slow).await.status(), 200);
    }
    site.edge
        .wait_status("nothing in flight", Duration::from_secs(5), |r| {
            in_flight(r, "ui") == [0]
        })
        .await;
    site.edge
        .wait_metric(
            "drawbridge_upstream_requests_in_flight",
            &[("pool", "ui"), ("server", ui.as_str())],
            0.0,
        )
        .await;
}
