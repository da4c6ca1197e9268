//! [`MaintScene`], the whole fleet maintctl acts on, started for one test, with its names and
//! addresses, the assertions on its state seen from outside, and the wait for the proxies to
//! register in Consul.

use std::net::Ipv4Addr;
use std::time::Duration;

use drawbridge_core::consul::{CheckTarget, KvEntry, QueryOptions, ServiceCheck};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::inventory::{Bypass, BypassKey, Inventory, InventoryBox, SmokeTest, ENV};
use super::journal::{JournalView, RunView, PREFIX};
use super::run::{Maintctl, MaintctlOutput};
use crate::consul::{ConsulClientAgent, ConsulServer};
use crate::eventually::try_eventually;
use crate::process::TestDir;
use crate::proxy::{Drawbridge, Route};
use crate::services::{SchedulerBox, SchedulerState, ScriptedBox, ServiceBox};
use crate::sshd::{SshBox, SshFleet};
use crate::upstream::{Kind, Upstream};

/// The gate key the scene's proxies watch.
pub const GATE_KEY: &str = "drawbridge/mock/gate";

/// The bypass key shared by the proxies and the inventory (id, secret).
pub const BYPASS_KEY_ID: &str = "k1";
/// The bypass secret (32+ characters).
pub const BYPASS_SECRET: &str = "mock-bypass-secret-0123456789abcdef-e2e";

/// Worker processes per worker box.
pub const WORKER_PROCESSES: usize = 2;

/// Scenes alive at once: each has 3 Consul agents, 2 proxies and 3 sshd; more than two at a
/// time only slows a 2-core machine down.
static SCENES: Semaphore = Semaphore::const_new(2);

/// Loopback addresses of the boxes.
pub const API1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// See [`API1_IP`].
pub const API2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// See [`API1_IP`].
pub const WORKER1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// See [`API1_IP`].
pub const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// See [`API1_IP`].
pub const SCHED1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// What maintctl acts on, all real and on loopback: a Consul server; client agents `api1`
/// (127.0.0.2) and `api2` (127.0.0.3); sshd boxes `worker1` (127.0.0.4) and `worker2`
/// (127.0.0.5) each running a worker service of [`WORKER_PROCESSES`] processes, and `sched1`
/// (127.0.0.6) with its jobs enabled; upstreams `ui` (page) and `api` (JSON); two `drawbridge`
/// proxies (`edge1` through api1's agent, `edge2` through api2's) registered as Consul service
/// `drawbridge`, with routes `/api/` (api) and `/` (page) and the bypass key of environment
/// `mock`; and the inventory of environment [`ENV`] describing all of it.
///
/// Smoke tests use their own paths (`/smoke` on ui, `/api/smoke` on api) so a test can count
/// what reached the upstreams through the closed gate. Fields drop in order: proxies and
/// services first, the test directory last.
#[derive(Debug)]
pub struct MaintScene {
    pub edge1: Drawbridge,
    pub edge2: Drawbridge,
    pub ui: Upstream,
    pub api: Upstream,
    pub worker1: ServiceBox,
    pub worker2: ServiceBox,
    pub sched1: SchedulerBox,
    pub ssh_worker1: SshBox,
    pub ssh_worker2: SshBox,
    pub ssh_sched1: SshBox,
    pub fleet: SshFleet,
    pub api1: ConsulClientAgent,
    pub api2: ConsulClientAgent,
    pub consul: ConsulServer,
    /// The inventory as last written.
    pub inventory: Inventory,
    pub maintctl: Maintctl,
    _slot: SemaphorePermit<'static>,
    pub dir: TestDir,
}

impl MaintScene {
    /// Starts the whole scene for test `test` and writes the inventory.
    ///
    /// # Panics
    /// When a part does not start (with its log).
    pub async fn start(test: &str) -> MaintScene {
        let slot = SCENES
            .acquire()
            .await
            .expect("the scene semaphore is never closed");
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let (api1, api2) = tokio::join!(
            ConsulClientAgent::start(&dir, &consul, "api1", API1_IP),
            ConsulClientAgent::start(&dir, &consul, "api2", API2_IP),
        );
        let mut fleet = SshFleet::new(&dir);
        let ssh_worker1 = fleet.start_box("worker1", WORKER1_IP).await;
        let ssh_worker2 = fleet.start_box("worker2", WORKER2_IP).await;
        let ssh_sched1 = fleet.start_box("sched1", SCHED1_IP).await;
        let worker1 = ServiceBox::new(&dir, "worker1", WORKER_PROCESSES);
        let worker2 = ServiceBox::new(&dir, "worker2", WORKER_PROCESSES);
        let sched1 = SchedulerBox::new(&dir, "sched1");
        worker1.run_ok("start");
        worker2.run_ok("start");
        sched1.run_ok("enable");

        let ui = Upstream::builder("ui").kind(Kind::Page).start();
        let api = Upstream::builder("api").kind(Kind::Api).start();
        let edge = |name: &str, agent: &ConsulClientAgent| {
            Drawbridge::builder(&agent.http_addr(), GATE_KEY)
                .name(name)
                .register_as("drawbridge")
                .bypass_key(ENV, BYPASS_KEY_ID, BYPASS_SECRET)
                .static_pool("ui", &[&ui], None)
                .static_pool("api", &[&api], None)
                .route(Route::api("api", "/api/", "api"))
                .route(Route::page("ui", "/", "ui"))
        };
        let (edge1, edge2) = tokio::join!(
            edge("edge1", &api1).start(&dir),
            edge("edge2", &api2).start(&dir)
        );
        wait_registered(&consul, 2).await;

        let boxes = vec![
            InventoryBox::api_ui("api1", &api1.http_addr()),
            InventoryBox::api_ui("api2", &api2.http_addr()),
            over_ssh("worker1", "worker", &worker1, ["stop", "start", "check"]),
            over_ssh("worker2", "worker", &worker2, ["stop", "start", "check"]),
            over_ssh(
                "sched1",
                "scheduler",
                &sched1,
                ["disable", "enable", "check"],
            ),
        ];
        let inventory = Inventory {
            ssh_config: Some(fleet.config_path().to_path_buf()),
            public_page_urls: vec![edge1.url("/")],
            public_api_urls: vec![edge1.url("/api/ping")],
            bypass: Some(Bypass {
                environment: ENV.to_owned(),
                keys: vec![BypassKey {
                    id: BYPASS_KEY_ID.to_owned(),
                    secret: BYPASS_SECRET.to_owned(),
                }],
            }),
            smoke: vec![
                SmokeTest {
                    name: "ui home".to_owned(),
                    url: edge1.url("/smoke"),
                    method: None,
                    expect_status: Some(200),
                    expect_body: Some("upstream <b>ui</b>".to_owned()),
                },
                SmokeTest {
                    name: "api ping".to_owned(),
                    url: edge1.url("/api/smoke"),
                    method: Some("GET".to_owned()),
                    expect_status: Some(200),
                    expect_body: Some(r#""upstream":"api""#.to_owned()),
                },
            ],
            ..Inventory::new(consul.http_addr(), GATE_KEY, boxes)
        };
        let maintctl = Maintctl::new(&dir, &inventory);
        MaintScene {
            edge1,
            edge2,
            ui,
            api,
            worker1,
            worker2,
            sched1,
            ssh_worker1,
            ssh_worker2,
            ssh_sched1,
            fleet,
            api1,
            api2,
            consul,
            inventory,
            maintctl,
            _slot: slot,
            dir,
        }
    }

    /// Writes `self.inventory` again (after a test changed it).
    pub fn rewrite_inventory(&self) {
        self.maintctl.write_inventory(&self.inventory);
    }

    /// Runs `maintctl <args>` against the scene's inventory.
    pub async fn run(&self, args: &[&str]) -> MaintctlOutput {
        self.maintctl.run(args).await
    }

    /// Runs `maintctl up --env mock --yes`, asserts that it succeeded, and returns the latest
    /// run of the journal: the one it wrote.
    ///
    /// # Panics
    /// When `up` fails, or the journal has no run.
    pub async fn up_ok(&self) -> RunView {
        self.run(&["up", "--env", ENV, "--yes"])
            .await
            .assert_success();
        self.journal().latest().await.expect("the up run")
    }

    /// maintctl's journal and lock in the scene's Consul.
    pub fn journal(&self) -> JournalView {
        JournalView::new(self.consul.client(), PREFIX)
    }

    /// Both proxies.
    pub fn edges(&self) -> [&Drawbridge; 2] {
        [&self.edge1, &self.edge2]
    }

    /// The gate key's entry, if it exists.
    pub async fn gate_entry(&self) -> Option<KvEntry> {
        self.consul
            .client()
            .kv_get(GATE_KEY, &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get {GATE_KEY}: {e}"))
            .entry
    }

    /// Whether Consul's health of `node` (as the server's catalog has it) shows the node
    /// maintenance check.
    pub async fn node_in_maintenance(&self, node: &str) -> bool {
        self.consul.node_in_maintenance(node).await
    }

    /// The X-Consul-Index of the KV store (raised by any KV write), read at a key that never
    /// exists.
    pub async fn kv_index(&self) -> u64 {
        self.consul
            .client()
            .kv_get("drawbridge-tests/never-written", &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get: {e}"))
            .meta
            .index
    }

    /// Asserts both proxies answer the public as a closed gate: 503 HTML on `/`, 503
    /// problem+json on `/api/x`.
    ///
    /// # Panics
    /// When a proxy answers otherwise.
    pub async fn assert_closed(&self) {
        for edge in self.edges() {
            let page = edge.get("/").await;
            let ct = content_type(&page);
            assert_eq!(page.status(), 503, "{} /: {ct}", edge.url("/"));
            assert!(ct.starts_with("text/html"), "{} /: {ct}", edge.url("/"));
            let api = edge.get("/api/x").await;
            let ct = content_type(&api);
            assert_eq!(api.status(), 503, "{} /api/x: {ct}", edge.url("/"));
            assert!(
                ct.starts_with("application/problem+json"),
                "{} /api/x: {ct}",
                edge.url("/")
            );
        }
    }

    /// Asserts both proxies pass the public to the upstreams: 200 from `ui` on `/`, from `api`
    /// on `/api/x`.
    ///
    /// # Panics
    /// When a proxy answers otherwise.
    pub async fn assert_open(&self) {
        for edge in self.edges() {
            for (path, upstream) in [("/", "ui"), ("/api/x", "api")] {
                let answer = edge.get(path).await;
                let status = answer.status();
                let from = crate::proxy::header(&answer, "x-upstream");
                assert_eq!(status, 200, "{}{path}", edge.url(""));
                assert_eq!(from.as_deref(), Some(upstream), "{}{path}", edge.url(""));
            }
        }
    }

    /// Asserts the state before any maintenance, from outside: no gate key, no node in
    /// maintenance, every worker process running, the jobs enabled.
    ///
    /// # Panics
    /// When anything differs.
    pub async fn assert_untouched(&self) {
        assert!(
            self.gate_entry().await.is_none(),
            "the gate key {GATE_KEY} exists: {:?}",
            self.gate_entry().await
        );
        for node in ["api1", "api2"] {
            assert!(
                !self.node_in_maintenance(node).await,
                "node {node} is in maintenance"
            );
        }
        assert_eq!(self.worker1.running_count(), WORKER_PROCESSES, "worker1");
        assert_eq!(self.worker2.running_count(), WORKER_PROCESSES, "worker2");
        assert_eq!(self.sched1.state(), SchedulerState::Enabled, "sched1");
    }
}

/// The `content-type` of an answer, empty when absent.
pub fn content_type(answer: &reqwest::Response) -> String {
    crate::proxy::header(answer, "content-type").unwrap_or_default()
}

/// The inventory entry of box `name` of `role`, reached as `ssh <name>`, whose stop, start
/// and check commands are the `scripts` of `scripted`, in that order.
fn over_ssh<K>(
    name: &str,
    role: &str,
    scripted: &ScriptedBox<K>,
    scripts: [&str; 3],
) -> InventoryBox {
    let [stop, start, check] = scripts.map(|script| scripted.script(script));
    InventoryBox::over_ssh(name, role, name, &stop, &start, &check)
}

/// Waits until `count` instances of service `drawbridge` are in the server's catalog: maintctl
/// finds the proxies there.
///
/// # Panics
/// When they are not there within 20 s.
pub async fn wait_registered(consul: &ConsulServer, count: usize) {
    let client = consul.client();
    let result = try_eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let (entries, _) = client
                .health_service("drawbridge", false, &QueryOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            if entries.len() >= count {
                Ok(())
            } else {
                Err(format!("{} of {count} proxies registered", entries.len()))
            }
        },
    )
    .await;
    if let Err(last) = result {
        panic!("the proxies did not register in Consul: {last}");
    }
}

/// Registers `up` on `agent` as instance `id` of service `api`, with an HTTP check of its
/// `/healthz` every 500 ms, passing from the start.
pub async fn register_api(agent: &ConsulClientAgent, id: &str, up: &Upstream) {
    let check = ServiceCheck {
        target: CheckTarget::Http(format!("http://{}/healthz", up.addr())),
        interval: Duration::from_millis(500),
        timeout: Some(Duration::from_secs(1)),
        deregister_critical_after: None,
        initial_status: Some("passing".to_string()),
    };
    agent.register_upstream(id, "api", up, Some(check)).await;
}

/// Two proxies, `edge1` on agent `a` and `edge2` on agent `b` (their service ids, as maintctl
/// names them), whose pool `api` follows Consul service `api` for every path; returned once
/// both are in the catalog.
pub async fn api_edges(
    dir: &TestDir,
    consul: &ConsulServer,
    a: &ConsulClientAgent,
    b: &ConsulClientAgent,
) -> [Drawbridge; 2] {
    let edge = |name: &str, agent: &ConsulClientAgent| {
        let mut edge = Drawbridge::builder(&agent.http_addr(), GATE_KEY)
            .name(name)
            .register_as("drawbridge")
            .consul_pool("api", "api", None)
            .route(Route::api("api", "/", "api"));
        edge.service_id = Some(name.to_string());
        edge
    };
    let (edge1, edge2) = tokio::join!(edge("edge1", a).start(dir), edge("edge2", b).start(dir));
    wait_registered(consul, 2).await;
    [edge1, edge2]
}
