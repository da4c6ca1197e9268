//! `maintctl canary` on a real fleet: two proxies (registered in Consul) whose route `api`
//! may be split between its own pool `api` (upstream `api-blue`) and `api-green`, or
//! `api-broken` (an upstream that answers 500 to every request), under a load of many clients
//! (by `X-Forwarded-For` through a trusted address) on both proxies.
//!
//! Every effect is checked from outside: the proxies' `/status`, the answers of the load, and
//! where requests go after the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_core::status::StatusReport;
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::maintctl::{
    wait_registered, BackgroundRun, Canary, Inventory, JournalView, Maintctl, MaintctlOutput,
    RunView, ENV, PREFIX,
};
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{header, test_key, Drawbridge, Route};
use drawbridge_tests::upstream::{Kind, Upstream};

/// The fleet; fields drop in order, the test directory last.
struct Fleet {
    edges: [Drawbridge; 2],
    _blue: Upstream,
    _green: Upstream,
    _broken: Upstream,
    consul: ConsulServer,
    /// The split key the proxies and maintctl follow.
    split_key: String,
    maintctl: Maintctl,
    _dir: TestDir,
}

/// What a load saw.
struct LoadReport {
    answered: usize,
    unexpected: Vec<String>,
}

impl Fleet {
    async fn start(test: &str) -> Fleet {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let blue = Upstream::builder("api-blue").start();
        let green = Upstream::builder("api-green").start();
        let broken = Upstream::builder("api-broken").kind(Kind::Failing).start();
        let key = test_key(test);
        let edge = |name: &str| {
            let mut edge = Drawbridge::builder(&consul.http_addr(), &key)
                .name(name)
                .register_as("drawbridge")
                .trusted_proxies(&["127.0.0.1/32"])
                .static_pool("api", &[&blue], None)
                .static_pool("api-green", &[&green], None)
                .static_pool("api-broken", &[&broken], None)
                .route(Route::api("api", "/", "api"));
            edge.service_id = Some(name.to_string());
            edge
        };
        let (edge1, edge2) = tokio::join!(edge("edge1").start(&dir), edge("edge2").start(&dir));
        wait_registered(&consul, 2).await;
        let mut inventory = Inventory::new(consul.http_addr(), &key, Vec::new());
        inventory.public_api_urls = vec![edge1.url("/ping")];
        // Latencies on loopback are too close and too noisy to compare: only errors decide.
        inventory.canary = Some(Canary {
            max_error_rate: 0.05,
            max_p99_ratio: 1000.0,
            min_requests: 10,
        });
        let maintctl = Maintctl::new(&dir, &inventory);
        Fleet {
            edges: [edge1, edge2],
            _blue: blue,
            _green: green,
            _broken: broken,
            consul,
            split_key: format!("{key}/split"),
            maintctl,
            _dir: dir,
        }
    }

    /// Requests from many clients to both proxies until `stop`; `ok` says which answers are
    /// expected.
    fn load(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
        ok: fn(u16) -> bool,
    ) -> Vec<tokio::task::JoinHandle<LoadReport>> {
        (0..4u32)
            .map(|worker| {
                let (fleet, stop) = (self.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut report = LoadReport {
                        answered: 0,
                        unexpected: Vec::new(),
                    };
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let edge = &fleet.edges[(n % 2) as usize];
                        let client = std::net::Ipv4Addr::from(0x0a00_0000 | (worker << 16) | n);
                        let answer = edge
                            .request(reqwest::Method::GET, &format!("/load/{worker}/{n}"))
                            .header("x-forwarded-for", client.to_string())
                            .send()
                            .await;
                        match answer {
                            Ok(answer) if ok(answer.status().as_u16()) => report.answered += 1,
                            Ok(answer) => report.unexpected.push(format!("{}", answer.status())),
                            Err(e) => report.unexpected.push(format!("error {e}")),
                        }
                    }
                    report
                })
            })
            .collect()
    }

    /// Runs `maintctl [--output json] canary --env mock --route api <args>`.
    async fn canary(&self, json: bool, args: &[&str]) -> MaintctlOutput {
        let mut all = if json {
            vec!["--output", "json"]
        } else {
            Vec::new()
        };
        all.extend(["canary", "--env", ENV, "--route", "api"]);
        all.extend(args);
        self.maintctl.run(&all).await
    }

    /// Starts `maintctl canary --env mock --route api <args>` in the background.
    fn spawn_canary(&self, args: &[&str]) -> BackgroundRun {
        let mut all = vec!["canary", "--env", ENV, "--route", "api"];
        all.extend(args);
        self.maintctl.spawn(&all)
    }

    /// `maintctl resume` has nothing to do after a rollback (exit 1).
    async fn assert_rolled_back_is_not_resumed(&self) {
        self.maintctl
            .run(&["resume", "--env", ENV])
            .await
            .assert_code(1)
            .assert_mentions("ended rolled_back");
    }

    /// Waits until both proxies split route `api` as `want` says.
    async fn wait_split(&self, want: &[Option<(String, u8)>]) {
        drawbridge_tests::eventually::eventually(
            &format!("both proxies split route api as {want:?}"),
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async {
                let split = self.api_split().await;
                if split == want {
                    Ok(())
                } else {
                    Err(format!("{split:?}"))
                }
            },
        )
        .await;
    }

    /// The run the journal names last.
    async fn latest_run(&self) -> RunView {
        JournalView::new(self.consul.client(), PREFIX)
            .latest()
            .await
            .expect("a journalled run")
    }

    /// The split of route `api` at each proxy: `(to, percent)`, or `None` when not split.
    async fn api_split(&self) -> Vec<Option<(String, u8)>> {
        let mut splits = Vec::new();
        for edge in &self.edges {
            let status: StatusReport = edge.status().await;
            let split = status.split.expect("a split in /status");
            splits.push(split.routes.get("api").map(|s| (s.to.clone(), s.percent)));
        }
        splits
    }
}

async fn stop_load(
    stop: &AtomicBool,
    load: Vec<tokio::task::JoinHandle<LoadReport>>,
) -> LoadReport {
    stop.store(true, Ordering::Relaxed);
    let mut all = LoadReport {
        answered: 0,
        unexpected: Vec::new(),
    };
    for worker in load {
        let report = worker.await.expect("a load task");
        all.answered += report.answered;
        all.unexpected.extend(report.unexpected);
    }
    all
}

/// A healthy new pool goes to 20 %, then (run again) has that share judged once more before it
/// goes through 50 and 100 % on both proxies, each step confirmed and judged, under a load that
/// sees only 200s; run again, there is nothing to do; `--abort` takes the route out of the
/// split, and every request goes to the old pool again. A pool a proxy does not have is refused
/// before anything is written.
#[tokio::test]
async fn a_canary_of_a_healthy_pool_is_promoted_step_by_step_under_load() {
    let fleet = Arc::new(Fleet::start("maintctl_canary_promoted").await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = fleet.load(stop.clone(), |status| status == 200);
    let urls: Vec<String> = fleet.edges.iter().map(|e| e.url("/probe")).collect();
    let mut probe = fleet.maintctl.spawn_probe(&urls);
    fleet
        .canary(
            false,
            &["--to", "api-green", "--steps", "20", "--hold", "1s"],
        )
        .await
        .assert_success();
    assert_eq!(
        fleet.api_split().await,
        vec![Some(("api-green".to_string(), 20)); 2]
    );
    let to_green = ["--to", "api-green", "--steps", "20,50,100", "--hold", "1s"];
    let out = fleet.canary(true, &to_green).await;
    let report = stop_load(&stop, load).await;
    out.assert_success();
    probe.assert_clean_probe().await;
    let steps: Vec<String> = out
        .json_lines()
        .iter()
        .filter(|l| l["event"] == "step_ended" && l["ok"] == true)
        .map(|l| l["step"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(steps, ["judge_20", "split_50", "split_100"], "{out}");
    let judged = out
        .json_lines()
        .into_iter()
        .filter(|l| l["event"] == "target" && l["result"] == "done")
        .count();
    assert_eq!(judged, 3, "{out}");
    assert_eq!(
        fleet.api_split().await,
        vec![Some(("api-green".to_string(), 100)); 2]
    );
    let run = fleet.latest_run().await;
    assert_eq!(run.direction(), "canary", "{run}");
    assert_eq!(run.status(), "done", "{run}");
    assert_eq!(
        run.step_ids(),
        ["judge_20", "split_50", "split_100"],
        "{run}"
    );
    run.assert_target("split_50", "api-green", "done");
    println!(
        "canary 20/50/100 % under load: {} requests, unexpected {:?}",
        report.answered, report.unexpected
    );
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert!(report.answered > 100, "the load ran: {}", report.answered);

    fleet
        .canary(false, &to_green)
        .await
        .assert_success()
        .assert_mentions("nothing to do");

    fleet
        .canary(false, &["--abort"])
        .await
        .assert_success()
        .assert_mentions("aborted");
    assert_eq!(fleet.api_split().await, vec![None, None]);
    for edge in &fleet.edges {
        let answer = edge.get("/after-abort").await;
        assert_eq!(answer.status(), 200);
        assert_eq!(header(&answer, "x-upstream").as_deref(), Some("api-blue"));
        assert_eq!(header(&answer, "x-drawbridge-pool"), None);
    }
}

/// A new pool that fails (every request to it a 500) is rolled back by the canary itself at
/// its first step, during the hold: exit 1 naming the error rate, the route out of the split on
/// both proxies, and every request served by the old pool again. Steps that do not rise are
/// refused before anything is done.
#[tokio::test]
async fn a_canary_of_a_failing_pool_rolls_back_by_itself() {
    let fleet = Arc::new(Fleet::start("maintctl_canary_rolled_back").await);
    fleet
        .canary(
            false,
            &["--to", "api-purple", "--steps", "20", "--hold", "1s"],
        )
        .await
        .assert_code(5)
        .assert_mentions("edge1: has no pool api-purple")
        .assert_mentions("edge2: has no pool api-purple");
    fleet
        .canary(false, &["--to", "api-broken", "--steps", "50,20"])
        .await
        .assert_code(2)
        .assert_mentions("must rise");
    assert_eq!(fleet.api_split().await, vec![None, None]);

    let stop = Arc::new(AtomicBool::new(false));
    let load = fleet.load(stop.clone(), |status| status == 200 || status == 500);
    let started = Instant::now();
    let out = fleet
        .canary(
            false,
            &["--to", "api-broken", "--steps", "20,100", "--hold", "30s"],
        )
        .await;
    let took = started.elapsed();
    let report = stop_load(&stop, load).await;
    out.assert_code(1)
        .assert_mentions("rolled back at 20 %")
        .assert_mentions("api-broken erred on");
    assert!(
        took < Duration::from_secs(15),
        "the rollback waited for the end of the hold: {took:?}"
    );
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(fleet.api_split().await, vec![None, None]);
    // Decided, in the journal: nothing to resume.
    let run = fleet.latest_run().await;
    assert_eq!(run.status(), "rolled_back", "{run}");
    run.assert_step("split_20", "failed");
    run.assert_step("roll_back", "done");
    run.assert_step("split_100", "pending");
    fleet.assert_rolled_back_is_not_resumed().await;
    fleet
        .maintctl
        .run(&["history", "--env", ENV])
        .await
        .assert_success()
        .assert_mentions("canary");
    for edge in &fleet.edges {
        for i in 0..10 {
            let answer = edge
                .request(reqwest::Method::GET, "/after-rollback")
                .header("x-forwarded-for", format!("10.9.0.{i}"))
                .send()
                .await
                .expect("an answer");
            assert_eq!(answer.status(), 200);
            assert_eq!(header(&answer, "x-upstream").as_deref(), Some("api-blue"));
        }
    }
}

/// A canary killed while its first share is held stays where it was; `maintctl resume` goes on
/// with it in the same journal run: the share in place judged first, then the next one, the
/// killed step recorded as stopped. A new canary killed while it judges that share and then
/// aborted is ended rolled back, so `resume` does not start it again; so is a live one aborted
/// during its hold, which stops at the end of the hold without writing; and one whose split was
/// removed by hand is not raised again by `resume`.
#[tokio::test]
async fn a_killed_canary_is_resumed_from_its_journal_and_an_abort_ends_it() {
    let fleet = Arc::new(Fleet::start("maintctl_canary_resumed").await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = fleet.load(stop.clone(), |status| status == 200);
    let mut canary = fleet.spawn_canary(&["--to", "api-green", "--steps", "20,50", "--hold", "2s"]);
    let twenty = vec![Some(("api-green".to_string(), 20)); 2];
    fleet.wait_split(&twenty).await;
    canary.kill();
    let killed = fleet.latest_run().await;
    assert_eq!(killed.status(), "running", "{killed}");
    killed.assert_step("split_20", "running");
    assert_eq!(fleet.api_split().await, twenty);

    let resumed = fleet.maintctl.run(&["resume", "--env", ENV]).await;
    resumed
        .assert_success()
        .assert_mentions(&format!("(run {})", killed.id()))
        .assert_mentions("judge the 20 % route api already sends");
    let run = fleet.latest_run().await;
    assert_eq!(run.id(), killed.id());
    assert_eq!(run.status(), "done", "{run}");
    assert_eq!(
        run.step_ids(),
        ["split_20", "judge_20", "split_50"],
        "{run}"
    );
    run.assert_step("split_20", "failed");
    run.assert_step("judge_20", "done");
    run.assert_step("split_50", "done");
    assert_eq!(
        fleet.api_split().await,
        vec![Some(("api-green".to_string(), 50)); 2]
    );

    let mut canary = fleet.spawn_canary(&["--to", "api-green", "--steps", "100", "--hold", "30s"]);
    drawbridge_tests::eventually::eventually(
        "the 50 % in place being judged by a new run",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let run = fleet.latest_run().await;
            if run.id() != killed.id() && run.step_status("judge_50").as_deref() == Some("running")
            {
                Ok(())
            } else {
                Err(format!("{run}"))
            }
        },
    )
    .await;
    canary.kill();
    fleet
        .canary(false, &["--abort"])
        .await
        .assert_success()
        .assert_mentions("aborted");
    assert_eq!(fleet.api_split().await, vec![None, None]);
    assert_eq!(fleet.latest_run().await.status(), "rolled_back");
    fleet.assert_rolled_back_is_not_resumed().await;
    assert_eq!(fleet.api_split().await, vec![None, None]);

    // Aborted while a live canary holds its share: the canary sees the change at the end of
    // the hold, stops without writing, and its run ends rolled back.
    let mut canary = fleet.spawn_canary(&["--to", "api-green", "--steps", "50", "--hold", "4s"]);
    let fifty = vec![Some(("api-green".to_string(), 50)); 2];
    fleet.wait_split(&fifty).await;
    // maintctl sees both proxies apply it within a poll or two (every 200 ms): its hold has
    // begun well before the abort.
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.canary(false, &["--abort"]).await.assert_success();
    let out = canary.wait(Duration::from_secs(30)).await;
    out.assert_code(1)
        .assert_mentions("changed during the hold")
        .assert_mentions("not split any more");
    assert_eq!(fleet.latest_run().await.status(), "rolled_back");
    assert_eq!(fleet.api_split().await, vec![None, None]);

    // Killed, then its split removed by hand: `resume` raises nothing and ends it rolled back.
    let mut canary = fleet.spawn_canary(&["--to", "api-green", "--steps", "20", "--hold", "30s"]);
    fleet.wait_split(&twenty).await;
    canary.kill();
    let client = fleet.consul.client();
    assert!(client.kv_delete(&fleet.split_key, None).await.unwrap());
    fleet.wait_split(&[None, None]).await;
    fleet
        .maintctl
        .run(&["resume", "--env", ENV])
        .await
        .assert_code(1)
        .assert_mentions("not split any more")
        .assert_mentions("nothing more is raised");
    assert_eq!(fleet.latest_run().await.status(), "rolled_back");
    assert_eq!(fleet.api_split().await, vec![None, None]);
    let report = stop_load(&stop, load).await;
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
}
