//! `maintctl roll` on a real fleet of four api_ui boxes: each a Consul client agent on its own
//! loopback address with an upstream registered as service `api` (an HTTP check of its
//! `/healthz`), all upstreams on one port so the inventory's `smoke_url` names a box by
//! `{address}`; two proxies whose `api` pool follows the service; and a recording deploy
//! server the inventory's roll `url` POSTs to, once per box replaced.
//!
//! Every effect is checked from outside maintctl: Consul's health of the nodes, the journal in
//! Consul, which box the deploy server and the smoke requests reached, and a probe through both
//! proxies the whole time.

use std::net::Ipv4Addr;
use std::time::Duration;

use drawbridge_tests::consul::{ConsulClientAgent, ConsulServer};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::maintctl::{
    api_edges, register_api, BackgroundRun, Inventory, InventoryBox, Maintctl, Roll, RunView,
    API1_IP, API2_IP, ENV, GATE_KEY,
};
use drawbridge_tests::ports::free_port_on;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::Drawbridge;
use drawbridge_tests::upstream::Upstream;

/// The boxes and their loopback addresses.
const BOXES: [(&str, Ipv4Addr); 4] = [
    ("api1", API1_IP),
    ("api2", API2_IP),
    ("api3", Ipv4Addr::new(127, 0, 0, 7)),
    ("api4", Ipv4Addr::new(127, 0, 0, 8)),
];

/// The fleet; fields drop in order, the test directory last.
struct Fleet {
    edges: [Drawbridge; 2],
    upstreams: Vec<Upstream>,
    deployer: Upstream,
    _agents: Vec<ConsulClientAgent>,
    consul: ConsulServer,
    maintctl: Maintctl,
    _dir: TestDir,
}

/// One upstream per box, every one on the same port.
fn upstreams_on_one_port() -> Vec<Upstream> {
    for _ in 0..20 {
        let port = free_port_on(BOXES[0].1);
        let started: Result<Vec<Upstream>, _> = BOXES
            .iter()
            .enumerate()
            .map(|(i, (_, ip))| {
                Upstream::builder(&format!("api-box{}", i + 1))
                    .listen((*ip, port).into())
                    .try_start()
            })
            .collect();
        if let Ok(upstreams) = started {
            return upstreams;
        }
    }
    panic!("no port free on every box address after 20 tries");
}

impl Fleet {
    /// The fleet, with a deploy server whose answer to `/upgrade/<box>` takes `upgrade_delay`.
    async fn start(test: &str, upgrade_delay: Option<(&str, Duration)>) -> Fleet {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let mut agents = Vec::new();
        for (name, ip) in BOXES {
            agents.push(ConsulClientAgent::start(&dir, &consul, name, ip).await);
        }
        let upstreams = upstreams_on_one_port();
        for (i, (agent, up)) in agents.iter().zip(&upstreams).enumerate() {
            register_api(agent, &format!("api-{}", i + 1), up).await;
        }
        let mut deployer = Upstream::builder("deployer");
        if let Some((path, delay)) = upgrade_delay {
            deployer = deployer.delay(path, delay);
        }
        let deployer = deployer.start();
        let edges = api_edges(&dir, &consul, &agents[0], &agents[1]).await;
        let boxes = agents.iter().map(InventoryBox::api_ui_of).collect();
        let mut inventory = Inventory::new(consul.http_addr(), GATE_KEY, boxes);
        inventory.roll = Some(Roll {
            url: deployer.url("/upgrade/{box}"),
            healthy_for: "2s".to_string(),
            healthy_timeout: "8s".to_string(),
            smoke_url: Some(format!(
                "http://{{address}}:{}/smoke",
                upstreams[0].addr().port()
            )),
            smoke_expect_body: Some("api-box".to_string()),
        });
        let maintctl = Maintctl::new(&dir, &inventory);
        let fleet = Fleet {
            edges,
            upstreams,
            deployer,
            _agents: agents,
            consul,
            maintctl,
            _dir: dir,
        };
        fleet.wait_every_box_serves().await;
        fleet
    }

    /// Waits until requests through each proxy reach every box.
    async fn wait_every_box_serves(&self) {
        for edge in &self.edges {
            eventually(
                "requests reach every box",
                Duration::from_secs(20),
                Duration::from_millis(100),
                || async {
                    let seen = edge.upstreams_of(16).await;
                    let missing: Vec<_> = self
                        .upstreams
                        .iter()
                        .filter(|up| !seen.iter().any(|s| s == up.name()))
                        .map(Upstream::name)
                        .collect();
                    if missing.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("none reached {missing:?}"))
                    }
                },
            )
            .await;
        }
    }

    /// The boxes Consul shows in node maintenance.
    async fn drained(&self) -> Vec<&'static str> {
        let mut drained = Vec::new();
        for (name, _) in BOXES {
            if self.consul.node_in_maintenance(name).await {
                drained.push(name);
            }
        }
        drained
    }

    /// How many times the deploy server was asked to replace `name`.
    fn upgrades_of(&self, name: &str) -> u64 {
        self.deployer.requests_to(&format!("/upgrade/{name}"))
    }

    /// Waits until the deploy server was asked to replace `name` `times` times, while `roll`
    /// runs.
    async fn wait_upgrades(&self, name: &str, times: u64, roll: &BackgroundRun) {
        eventually(
            &format!("{name} replaced {times} times"),
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async {
                if self.upgrades_of(name) >= times {
                    Ok(())
                } else {
                    Err(roll.log_tail())
                }
            },
        )
        .await;
    }

    /// The probe URLs through both proxies.
    fn probe_urls(&self) -> Vec<String> {
        self.edges.iter().map(|e| e.url("/probe")).collect()
    }

    async fn latest_run(&self) -> RunView {
        drawbridge_tests::maintctl::JournalView::new(self.consul.client(), "maintctl/mock")
            .latest()
            .await
            .expect("a journalled run")
    }
}

/// Four boxes a batch at a time; api3 fails its health check after its upgrade. The roll
/// stops there (exit 3) with api3 drained and the other three serving, api4 untouched; the
/// journal says so step by step. Once api3 is mended, `resume` finishes: api3 is checked and
/// undrained without a second upgrade, api4 is rolled, and no box is left drained. A probe
/// through both proxies sees only 200s the whole time.
#[tokio::test]
async fn a_roll_stops_at_the_box_that_fails_its_health_check_and_resume_finishes_it() {
    let fleet = Fleet::start("maintctl_roll_stops_at_the_unhealthy_box", None).await;
    let mut probe = fleet.maintctl.spawn_probe(&fleet.probe_urls());
    let mut roll = fleet.maintctl.spawn(&[
        "roll", "--env", ENV, "--role", "api_ui", "--batch", "25%", "--reason", "app 2.4",
    ]);
    fleet.wait_upgrades("api3", 1, &roll).await;
    // The new version of api3 is broken.
    fleet.upstreams[2].set_healthy(false);
    let out = roll.wait(Duration::from_secs(60)).await;
    out.assert_code(3)
        .assert_mentions("batch3:healthy")
        .assert_mentions("api3: not healthy for 2s within 8s (it stays drained)")
        .assert_mentions("maintctl resume --env mock");

    let run = fleet.latest_run().await;
    assert_eq!(run.direction(), "roll", "{run}");
    assert_eq!(run.status(), "failed", "{run}");
    for step in ["batch1:undrain", "batch2:smoke", "batch3:replace"] {
        run.assert_step(step, "done");
    }
    run.assert_target("batch3:healthy", "api3", "failed");
    run.assert_step("batch3:undrain", "pending");
    run.assert_step("batch4:drain", "pending");
    assert_eq!(fleet.drained().await, ["api3"]);
    assert_eq!(fleet.upgrades_of("api4"), 0);
    for (i, up) in fleet.upstreams.iter().enumerate() {
        let smoked = if i < 2 { 1 } else { 0 };
        assert_eq!(up.requests_to("/smoke"), smoked, "{}", up.name());
    }
    // The fleet serves without api3.
    for edge in &fleet.edges {
        let seen = edge.upstreams_of(12).await;
        assert!(seen.iter().all(|s| s != "api-box3"), "{seen:?}");
    }
    // A new roll, and a maintenance, are refused while this one is unfinished.
    fleet
        .maintctl
        .run(&["roll", "--env", ENV])
        .await
        .assert_code(1)
        .assert_mentions("unfinished roll");
    fleet
        .maintctl
        .run(&["down", "--env", ENV, "--reason", "db", "--yes"])
        .await
        .assert_code(1)
        .assert_mentions("is an unfinished roll (failed)");
    assert_eq!(fleet.drained().await, ["api3"]);

    fleet.upstreams[2].set_healthy(true);
    let resumed = fleet.maintctl.run(&["resume", "--env", ENV]).await;
    resumed.assert_success();
    let run = fleet.latest_run().await;
    assert_eq!(run.status(), "done", "{run}");
    assert!(fleet.drained().await.is_empty());
    for name in ["api1", "api2", "api3", "api4"] {
        assert_eq!(fleet.upgrades_of(name), 1, "upgrades of {name}");
    }
    for up in &fleet.upstreams {
        assert_eq!(up.requests_to("/smoke"), 1, "{}", up.name());
    }
    fleet.wait_every_box_serves().await;
    probe.assert_clean_probe().await;
    fleet
        .maintctl
        .run(&["history", "--env", ENV])
        .await
        .assert_success()
        .assert_mentions("roll");
}

/// What a roll refuses before it touches anything (a batch that leaves no box serving, a
/// worker role), and its plan. Then a roll SIGKILLed while api2's upgrade runs: the only box
/// drained is api2, which the journal shows drained and being replaced; `resume` replaces it
/// again (whether the first call took is not known), finishes the roll and leaves no box
/// drained. Killed there once more and abandoned, it is no longer resumed and says which box
/// stays drained.
#[tokio::test]
async fn a_roll_killed_mid_batch_leaves_only_journalled_boxes_drained_and_resume_completes() {
    let fleet = Fleet::start(
        "maintctl_roll_killed_mid_batch",
        Some(("/upgrade/api2", Duration::from_secs(4))),
    )
    .await;
    fleet
        .maintctl
        .run(&["roll", "--env", ENV, "--batch", "4"])
        .await
        .assert_code(2)
        .assert_mentions("leaves none serving");
    fleet
        .maintctl
        .run(&["roll", "--env", ENV, "--role", "worker"])
        .await
        .assert_code(2)
        .assert_mentions("only api_ui boxes are rolled");
    let planned = fleet
        .maintctl
        .run(&[
            "--output", "json", "plan", "roll", "--env", ENV, "--batch", "2",
        ])
        .await;
    planned.assert_success();
    let plan = &planned.json_lines()[0];
    let ids: Vec<&str> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
    assert_eq!(
        plan["steps"][0]["targets"],
        serde_json::json!(["api1", "api2"])
    );
    assert!(fleet.drained().await.is_empty());
    assert_eq!(fleet.deployer.total_requests(), 0);

    let mut probe = fleet.maintctl.spawn_probe(&fleet.probe_urls());
    let mut roll = fleet.maintctl.spawn(&["roll", "--env", ENV]);
    fleet.wait_upgrades("api2", 1, &roll).await;
    roll.kill();

    let run = fleet.latest_run().await;
    assert_eq!(run.status(), "running", "{run}");
    run.assert_target("batch2:drain", "api2", "done");
    run.assert_target("batch2:replace", "api2", "intent");
    let drained = fleet.drained().await;
    assert_eq!(drained, ["api2"]);
    for name in drained {
        let undrained = run
            .target_status(&format!("batch{}:undrain", &name[3..]), name)
            .unwrap_or_default();
        assert_ne!(undrained, "done", "{name} drained but journalled undrained");
    }

    fleet
        .maintctl
        .run(&["resume", "--env", ENV])
        .await
        .assert_success();
    assert_eq!(fleet.latest_run().await.status(), "done");
    assert!(fleet.drained().await.is_empty());
    assert_eq!(fleet.upgrades_of("api2"), 2);
    for name in ["api1", "api3", "api4"] {
        assert_eq!(fleet.upgrades_of(name), 1, "upgrades of {name}");
    }
    fleet.wait_every_box_serves().await;
    probe.assert_clean_probe().await;
    fleet
        .maintctl
        .run(&["resume", "--env", ENV])
        .await
        .assert_code(1)
        .assert_mentions("nothing to resume");

    // Killed again at the same place, and this time given up: the journal says abandoned,
    // `resume` has nothing to continue, api2 stays drained until undrained.
    let mut roll = fleet.maintctl.spawn(&["roll", "--env", ENV]);
    fleet.wait_upgrades("api2", 3, &roll).await;
    roll.kill();
    fleet
        .maintctl
        .run(&["roll", "--env", ENV])
        .await
        .assert_code(1)
        .assert_mentions("--abandon");
    fleet
        .maintctl
        .run(&["roll", "--env", ENV, "--abandon"])
        .await
        .assert_success()
        .assert_mentions("still drained (node maintenance on): api2");
    assert_eq!(fleet.latest_run().await.status(), "abandoned");
    fleet
        .maintctl
        .run(&["resume", "--env", ENV])
        .await
        .assert_code(1)
        .assert_mentions("ended abandoned");
    assert_eq!(fleet.drained().await, ["api2"]);
    fleet
        .maintctl
        .run(&["undrain", "--env", ENV, "api2"])
        .await
        .assert_success();
    assert!(fleet.drained().await.is_empty());
}

/// With `--max-fail 1` a failed batch does not stop the roll: api2 fails its health check and
/// stays drained, api3 and api4 are rolled after it, and the run ends failed (exit 1) naming
/// batch 2, so `resume` retries it.
#[tokio::test]
async fn with_max_fail_a_failed_batch_stays_drained_and_the_roll_goes_on() {
    let fleet = Fleet::start("maintctl_roll_with_max_fail", None).await;
    let mut roll = fleet
        .maintctl
        .spawn(&["roll", "--env", ENV, "--max-fail", "1"]);
    fleet.wait_upgrades("api2", 1, &roll).await;
    fleet.upstreams[1].set_healthy(false);
    let out = roll.wait(Duration::from_secs(90)).await;
    out.assert_code(1)
        .assert_mentions("1 batch failed within --max-fail 1")
        .assert_mentions("batch 2: step batch2:healthy failed");
    let run = fleet.latest_run().await;
    assert_eq!(run.status(), "failed", "{run}");
    run.assert_target("batch2:healthy", "api2", "failed");
    run.assert_step("batch2:undrain", "pending");
    run.assert_step("batch4:undrain", "done");
    assert_eq!(fleet.drained().await, ["api2"]);
    for name in ["api1", "api2", "api3", "api4"] {
        assert_eq!(fleet.upgrades_of(name), 1, "upgrades of {name}");
    }
}
