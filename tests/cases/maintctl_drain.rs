//! `maintctl drain` and `undrain` on a real fleet: boxes `api1` and `api2`, each a Consul client
//! agent with an upstream on its loopback address registered as service `api` (with an HTTP
//! check of the upstream's `/healthz`), and two proxies whose `api` pool follows that service.
//!
//! Every effect is checked from outside maintctl: where the proxies send requests, their
//! `/status`, Consul's health of the nodes, and the answers of requests in flight.

use std::path::Path;
use std::time::{Duration, Instant};

use drawbridge_core::consul::CheckStatus;
use drawbridge_tests::consul::{ConsulClientAgent, ConsulServer};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::maintctl::{
    api_edges, register_api, Inventory, InventoryBox, Maintctl, MaintctlOutput, API1_IP, API2_IP,
    ENV, GATE_KEY,
};
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{header, Drawbridge};
use drawbridge_tests::upstream::Upstream;

/// How long api1's upstream takes to answer `/slow/…`.
const SLOW: Duration = Duration::from_secs(6);

/// The fleet of these tests; fields drop in order, the test directory last.
struct Fleet {
    edge1: Drawbridge,
    edge2: Drawbridge,
    up1: Upstream,
    _up2: Upstream,
    _api1: ConsulClientAgent,
    _api2: ConsulClientAgent,
    consul: ConsulServer,
    maintctl: Maintctl,
    _dir: TestDir,
}

impl Fleet {
    async fn start(test: &str) -> Fleet {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let (api1, api2) = tokio::join!(
            ConsulClientAgent::start(&dir, &consul, "api1", API1_IP),
            ConsulClientAgent::start(&dir, &consul, "api2", API2_IP),
        );
        let up1 = Upstream::builder("api-box1")
            .listen((API1_IP, 0).into())
            .delay("/slow", SLOW)
            .start();
        let up2 = Upstream::builder("api-box2")
            .listen((API2_IP, 0).into())
            .start();
        for (agent, up, id) in [(&api1, &up1, "api-1"), (&api2, &up2, "api-2")] {
            register_api(agent, id, up).await;
        }
        let [edge1, edge2] = api_edges(&dir, &consul, &api1, &api2).await;
        let mut inventory = Inventory::new(
            consul.http_addr(),
            GATE_KEY,
            vec![
                InventoryBox::api_ui("api1", &api1.http_addr()),
                InventoryBox::api_ui("api2", &api2.http_addr()),
                // Never reached: drain refuses it by its role.
                InventoryBox::over_ssh(
                    "worker1",
                    "worker",
                    "worker1",
                    Path::new("/bin/true"),
                    Path::new("/bin/true"),
                    Path::new("/bin/true"),
                ),
            ],
        );
        inventory.public_api_urls = vec![edge1.url("/ping")];
        let maintctl = Maintctl::new(&dir, &inventory);
        let fleet = Fleet {
            edge1,
            edge2,
            up1,
            _up2: up2,
            _api1: api1,
            _api2: api2,
            consul,
            maintctl,
            _dir: dir,
        };
        for edge in [&fleet.edge1, &fleet.edge2] {
            fleet.wait_both_serve(edge).await;
        }
        fleet
    }

    /// Waits until `edge` has sent requests to both boxes.
    async fn wait_both_serve(&self, edge: &Drawbridge) {
        eventually(
            "requests reach both boxes",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async {
                let seen = edge.upstreams_of(6).await;
                if seen.contains(&"api-box1".to_string()) && seen.contains(&"api-box2".to_string())
                {
                    Ok(())
                } else {
                    Err(format!("seen {seen:?}"))
                }
            },
        )
        .await;
    }

    /// Runs `maintctl <command> --env mock <boxes>` and asserts it succeeded.
    async fn run_ok(&self, command: &str, boxes: &str) -> MaintctlOutput {
        let out = self.maintctl.run(&[command, "--env", ENV, boxes]).await;
        out.assert_success();
        out
    }

    /// Waits until Consul's check of api1's service is `want`.
    async fn wait_api1_check(&self, want: CheckStatus) {
        let client = self.consul.client();
        eventually(
            &format!("api1's service check {}", want.as_str()),
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async {
                let checks = client
                    .health_node("api1")
                    .await
                    .map_err(|e| e.to_string())?;
                let status = checks
                    .iter()
                    .find(|c| c.service_id == "api-1" && !c.check_id.starts_with('_'))
                    .map(|c| c.status.clone());
                if status.as_ref() == Some(&want) {
                    Ok(())
                } else {
                    Err(format!("{status:?}"))
                }
            },
        )
        .await;
    }
}

/// A request in flight at api1 when `drain api1` starts: maintctl waits for it, it ends with
/// its 200 from api1, no new request reaches api1 through either proxy meanwhile, and Consul
/// shows api1 in node maintenance. `undrain` then puts it back, and at once both proxies send
/// to it again. The same drain run twice is done at once the second time.
#[tokio::test]
async fn drain_waits_for_the_request_in_flight_and_undrain_brings_the_box_back() {
    let fleet = Fleet::start("maintctl_drain_waits_for_the_request_in_flight").await;
    let probe_urls = [fleet.edge1.url("/probe"), fleet.edge2.url("/probe")];
    let mut probe = fleet.maintctl.spawn_probe(&probe_urls);
    let slow = fleet.edge1.slow_request_at(&fleet.up1).await;
    let slow_ended = tokio::spawn(async move {
        let answer = slow.await.expect("the slow request's task");
        (answer, Instant::now())
    });

    let mut drain = fleet.maintctl.spawn(&[
        "--output",
        "json",
        "drain",
        "--env",
        ENV,
        "api1",
        "--reason",
        "kernel update",
    ]);
    eventually(
        "api1 in node maintenance",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            if fleet.consul.node_in_maintenance("api1").await {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    // Give the proxies' blocking queries a moment; then nothing new goes to api1.
    for edge in [&fleet.edge1, &fleet.edge2] {
        edge.wait_status("api1 out of the pool", Duration::from_secs(5), |r| {
            r.pools
                .iter()
                .flat_map(|p| &p.servers)
                .all(|s| !(s.in_pool && s.address == fleet.up1.addr().to_string()))
        })
        .await;
    }
    let before = fleet.up1.requests_to("/orders/0");
    for edge in [&fleet.edge1, &fleet.edge2] {
        let seen = edge.upstreams_of(10).await;
        assert!(
            seen.iter().all(|s| s == "api-box2"),
            "requests went to api1 while it drains: {seen:?}"
        );
    }
    assert_eq!(fleet.up1.requests_to("/orders/0"), before);
    assert!(
        drain.is_running(),
        "drain ended before the request in flight:\n{}",
        drain.log_tail()
    );
    // A second operator meanwhile is refused at once, and changes nothing.
    fleet
        .maintctl
        .run(&["undrain", "--env", ENV, "api1"])
        .await
        .assert_code(4)
        .assert_mentions("holds the lock");
    assert!(fleet.consul.node_in_maintenance("api1").await);

    let out = drain.wait(SLOW + Duration::from_secs(10)).await;
    let drain_ended = Instant::now();
    out.assert_success();
    let (answer, answered_at) = slow_ended.await.expect("the slow request's task");
    let answer = answer.expect("the request in flight is answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(header(&answer, "x-upstream").as_deref(), Some("api-box1"));
    assert!(
        answered_at <= drain_ended,
        "drain ended before the request in flight did"
    );
    let done = out
        .json_lines()
        .into_iter()
        .find(|l| l["event"] == "done")
        .unwrap_or_else(|| panic!("no done event:\n{out}"));
    assert_eq!(done["boxes"], serde_json::json!(["api1"]));
    let waited_for_it = out.json_lines().into_iter().any(|l| {
        l["event"] == "waiting"
            && l["still"].as_array().is_some_and(|still| {
                still.iter().any(|s| {
                    s.as_str()
                        .is_some_and(|s| s.contains("edge1: 1 request still in flight to api1"))
                })
            })
    });
    assert!(
        waited_for_it,
        "no progress about the request in flight:\n{out}"
    );
    assert_eq!(done["proxies"].as_array().map(Vec::len), Some(2));
    assert!(fleet.consul.node_in_maintenance("api1").await);
    let checks = fleet.consul.client().health_node("api1").await.unwrap();
    let maintenance = checks.iter().find(|c| c.is_node_maintenance()).unwrap();
    assert!(
        maintenance.notes.starts_with("drain by ")
            && maintenance.notes.ends_with(": kernel update"),
        "the reason is in Consul: {maintenance:?}"
    );

    // Again: nothing to do, done at once.
    fleet.run_ok("drain", "api1").await.assert_mentions("skip");

    let undrained = fleet
        .maintctl
        .run(&["--output", "json", "undrain", "--env", ENV, "api1"])
        .await;
    undrained.assert_success();
    let done = undrained
        .json_lines()
        .into_iter()
        .find(|l| l["event"] == "done")
        .unwrap_or_else(|| panic!("no done event:\n{undrained}"));
    // Each proxy's api pool sends to api1's instance.
    assert_eq!(done["sending_pools"], 2);
    assert!(!fleet.consul.node_in_maintenance("api1").await);
    // No waiting here: undrain returned once every proxy sends to api1 again.
    for edge in [&fleet.edge1, &fleet.edge2] {
        let seen = edge.upstreams_of(6).await;
        assert!(
            seen.iter().any(|s| s == "api-box1"),
            "{} sends nothing to api1 after undrain: {seen:?}",
            edge.url("/")
        );
    }
    // A probe through both proxies the whole time saw only 200s.
    probe.assert_clean_probe().await;
}

/// `undrain` of a box whose service check fails is refused (exit 5) naming the check, and
/// changes nothing: the box stays in node maintenance and gets no request. Once the check
/// passes, `undrain` puts it back.
#[tokio::test]
async fn undrain_is_refused_while_the_box_is_unhealthy() {
    let fleet = Fleet::start("maintctl_undrain_is_refused_while_unhealthy").await;
    fleet.run_ok("drain", "api1").await;
    fleet.up1.set_healthy(false);
    fleet.wait_api1_check(CheckStatus::Critical).await;

    let refused = fleet.maintctl.run(&["undrain", "--env", ENV, "api1"]).await;
    refused
        .assert_code(5)
        .assert_mentions("undrain refused")
        .assert_mentions("service:api-1");
    assert!(fleet.consul.node_in_maintenance("api1").await);
    let seen = fleet.edge1.upstreams_of(6).await;
    assert!(seen.iter().all(|s| s == "api-box2"), "{seen:?}");

    fleet.up1.set_healthy(true);
    fleet.wait_api1_check(CheckStatus::Passing).await;
    fleet.run_ok("undrain", "api1").await;
    assert!(!fleet.consul.node_in_maintenance("api1").await);
    fleet.wait_both_serve(&fleet.edge1).await;
}

/// What is refused before anything is done: an unknown box, a worker box, no box; and a drain
/// that cannot finish in time (its request in flight outlasts `--timeout`) exits 3 naming the
/// proxy and the request still in flight, the box left drained.
#[tokio::test]
async fn drain_refuses_what_it_cannot_drain_and_reports_what_is_still_in_flight() {
    let fleet = Fleet::start("maintctl_drain_refuses_and_reports").await;
    fleet
        .maintctl
        .run(&["drain", "--env", ENV, "api9"])
        .await
        .assert_code(2)
        .assert_mentions("no box \"api9\"")
        .assert_mentions("api1, api2");
    fleet
        .maintctl
        .run(&["drain", "--env", ENV])
        .await
        .assert_code(2);
    fleet
        .maintctl
        .run(&["drain", "--env", ENV, "worker1"])
        .await
        .assert_code(2)
        .assert_mentions("box worker1 is a worker box");
    assert!(!fleet.consul.node_in_maintenance("api1").await);

    let slow = fleet.edge2.slow_request_at(&fleet.up1).await;
    let late = fleet
        .maintctl
        .run(&["drain", "--env", ENV, "api1", "--timeout", "1s"])
        .await;
    late.assert_code(3)
        .assert_mentions("edge2")
        .assert_mentions("1 request still in flight to api1");
    assert!(fleet.consul.node_in_maintenance("api1").await);
    let answer = slow.await.expect("task").expect("answered");
    assert_eq!(answer.status(), 200);
}
