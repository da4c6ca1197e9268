//! maintctl when the answer to a gate write is lost: a fault relay in front of the real Consul
//! applies the write and then answers 500, or no answer at all, as during an election. maintctl
//! re-reads the key from the leader and counts a write that landed as done (issue: "A gate
//! write that fails during an election may still commit"); the journal says what it found.

use std::time::Duration;

use drawbridge_core::consul::{KvEntry, QueryOptions};
use drawbridge_core::gate::Mode;
use drawbridge_tests::fault_relay::{Fault, FaultRelay};
use drawbridge_tests::maintctl::{wait_registered, Inventory, Maintctl, RunView, ENV, PREFIX};
use drawbridge_tests::maintctl::{JournalView, MaintctlOutput};
use drawbridge_tests::proxy::Site;
use http::Method;

/// Consul's answer when the leader loses leadership while committing (raft's
/// `ErrLeadershipLost`): the entry may still be committed by the next leader.
const LEADERSHIP_LOST: &str = "leadership lost while committing log";

/// maintctl's Consul client gives up on a write after this (`DEFAULT_REQUEST_TIMEOUT`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One proxy with its Consul, and maintctl talking to that Consul through a fault relay.
/// Fields drop in order: maintctl's files stay with the site's test directory.
struct Fleet {
    relay: FaultRelay,
    maintctl: Maintctl,
    site: Site,
}

impl Fleet {
    /// A [`Site`] whose proxy registers as service `drawbridge`, a relay in front of its
    /// Consul, and an inventory of environment [`ENV`] with only the key: `down` is the
    /// `set_key` step, `up` the `clear_key` step.
    async fn start(test: &str) -> Fleet {
        let site = Site::start_with(test, |b| b.name("edge1").register_as("drawbridge")).await;
        wait_registered(&site.consul, 1).await;
        let relay = FaultRelay::start(&site.consul.http_addr(), &site.key);
        let inventory = Inventory {
            public_page_urls: vec![site.edge.url("/")],
            public_api_urls: vec![site.edge.url("/api/ping")],
            ..Inventory::new(relay.http_addr(), &site.key, Vec::new())
        };
        let maintctl = Maintctl::new(&site.dir, &inventory);
        Fleet {
            relay,
            maintctl,
            site,
        }
    }

    async fn run(&self, args: &[&str]) -> MaintctlOutput {
        self.maintctl.run(args).await
    }

    /// The gate key as the leader has it, read directly (not through the relay).
    async fn gate(&self) -> Option<KvEntry> {
        self.site
            .consul
            .client()
            .kv_get(&self.site.key, &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get {}: {e}", self.site.key))
            .entry
    }

    fn journal(&self) -> JournalView {
        JournalView::new(self.site.consul.client(), PREFIX)
    }

    /// The latest run, which must have `status`, and the journal output of its one target.
    async fn latest(&self, direction: &str, status: &str, step: &str) -> (RunView, String) {
        let run = self.journal().latest().await.expect("a run is journalled");
        assert_eq!(run.direction(), direction, "{run}");
        assert_eq!(run.status(), status, "{run}");
        let target = run
            .target(step, &self.site.key)
            .unwrap_or_else(|| panic!("no target {} in step {step}:\n{run}", self.site.key));
        let output = target["output"].as_str().unwrap_or_default().to_owned();
        (run, output)
    }

    /// Runs `up`, asserts that it succeeded and the proxy serves normal, and returns the
    /// journal output of its `clear_key` step (the run must be done).
    async fn up(&self) -> String {
        let up = self.run(&["up", "--env", ENV, "--yes"]).await;
        up.assert_success();
        self.assert_normal(&up).await;
        let (_, output) = self.latest("up", "done", "clear_key").await;
        output
    }

    /// Asserts the key holds maintenance and the proxy serves it from at least its index.
    async fn assert_maintenance(&self, out: &MaintctlOutput) -> KvEntry {
        let key = self.gate().await.unwrap_or_else(|| panic!("no key\n{out}"));
        let doc: serde_json::Value =
            serde_json::from_slice(&key.value.clone().unwrap_or_default()).expect("JSON");
        assert_eq!(doc["mode"], "maintenance", "{doc}\n{out}");
        let status = self.site.edge.status().await;
        assert_eq!(status.gate.mode, Mode::Maintenance, "{out}");
        assert!(status.gate.applied_index >= key.modify_index, "{out}");
        key
    }

    /// Asserts the key is gone and the proxy serves normal.
    async fn assert_normal(&self, out: &MaintctlOutput) {
        assert!(self.gate().await.is_none(), "the key is still set\n{out}");
        assert_eq!(
            self.site.edge.status().await.gate.mode,
            Mode::Normal,
            "{out}"
        );
        let page = self.site.edge.get("/").await;
        assert_eq!(page.status(), 200, "{out}");
    }
}

/// Asserts that `output` contains every one of `needles`.
fn assert_contains_all(output: &str, needles: &[&str]) {
    for needle in needles {
        assert!(output.contains(needle), "{needle:?} not in {output:?}");
    }
}

/// A 500 on a gate write is settled by a re-read from the leader: not applied (the relay kept
/// it from Consul) is a failure with the original error; applied (the relay answered 500 after
/// Consul committed it, on the put of `down` and on the delete of `up`) is done, verified on
/// the proxy, and journalled as found.
#[tokio::test]
async fn a_gate_write_answered_500_is_done_when_a_reread_finds_it_landed() {
    let fleet = Fleet::start("maintctl_ambiguous_500").await;
    let down = ["down", "--env", ENV, "--reason", "db migration", "--yes"];

    // Refused without reaching Consul: the re-read finds the key missing, the run fails.
    fleet.relay.set_fault(Fault::RejectWithoutForwarding {
        status: 500,
        body: "No cluster leader".to_owned(),
    });
    let refused = fleet.run(&down).await;
    refused.assert_code(1).assert_mentions("not applied");
    fleet.assert_normal(&refused).await;
    let (_, output) = fleet.latest("down", "failed", "set_key").await;
    assert!(output.contains("no cluster leader (500)"), "{output}");
    assert!(
        output.ends_with("a re-read from the leader found the write not applied"),
        "{output}"
    );

    // Committed, then answered 500: resume finds it landed and goes on.
    fleet.relay.set_fault(Fault::AnswerAfterForwarding {
        status: 500,
        body: LEADERSHIP_LOST.to_owned(),
    });
    let resumed = fleet.run(&["resume", "--env", ENV, "--yes"]).await;
    resumed.assert_success();
    let key = fleet.assert_maintenance(&resumed).await;
    let (_, output) = fleet.latest("down", "done", "set_key").await;
    let landed = format!("but landed at index {}", key.modify_index);
    assert_contains_all(
        &output,
        &["the write was answered 500 (", LEADERSHIP_LOST, &landed],
    );
    resumed.assert_mentions(&landed);

    // The delete of `up`, committed, then answered 500 "No cluster leader".
    fleet.relay.set_fault(Fault::AnswerAfterForwarding {
        status: 500,
        body: "No cluster leader".to_owned(),
    });
    let output = fleet.up().await;
    assert_contains_all(
        &output,
        &[
            "the delete was answered 500 (",
            "no cluster leader",
            "but landed: the key is gone",
        ],
    );

    // The relay did what the test says: three writes met a fault, and Consul applied the two
    // that reached it.
    let seen = fleet.relay.intercepted();
    let summary: Vec<_> = seen
        .iter()
        .map(|i| (i.method.clone(), i.consul_answer.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (Method::PUT, None),
            (Method::PUT, Some((200, "true".to_owned()))),
            (Method::DELETE, Some((200, "true".to_owned()))),
        ],
        "{seen:#?}"
    );
    assert!(seen[0].path_and_query.ends_with("?cas=0"), "{seen:#?}");
    assert!(seen[1].path_and_query.ends_with("?cas=0"), "{seen:#?}");
    assert!(
        seen[2]
            .path_and_query
            .ends_with(&format!("?cas={}", key.modify_index)),
        "{seen:#?}"
    );

    // History lists the failed down, finished by resume, and the up.
    let history = fleet.run(&["history", "--env", ENV]).await;
    history
        .assert_success()
        .assert_mentions("set_key")
        .assert_mentions("clear_key");
}

/// A gate write whose answer never comes (the relay applies it and holds the answer past the
/// client's timeout) is settled the same way, on `down` and on `up`.
#[tokio::test]
async fn a_gate_write_that_timed_out_is_done_when_a_reread_finds_it_landed() {
    let fleet = Fleet::start("maintctl_ambiguous_timeout").await;
    fleet.relay.set_fault(Fault::SwallowAfterForwarding {
        hold: CLIENT_TIMEOUT + Duration::from_secs(5),
    });

    let down = fleet
        .run(&["down", "--env", ENV, "--reason", "db migration", "--yes"])
        .await;
    down.assert_success();
    assert!(down.took >= CLIENT_TIMEOUT, "{down}");
    let key = fleet.assert_maintenance(&down).await;
    let (_, output) = fleet.latest("down", "done", "set_key").await;
    let landed = format!("but landed at index {}", key.modify_index);
    assert_contains_all(&output, &["the write got no answer within 10s (", &landed]);

    let output = fleet.up().await;
    assert_contains_all(
        &output,
        &[
            "the delete got no answer within 10s (",
            "but landed: the key is gone",
        ],
    );
    let methods: Vec<_> = fleet
        .relay
        .intercepted()
        .into_iter()
        .map(|i| (i.method, i.consul_answer))
        .collect();
    assert_eq!(
        methods,
        [
            (Method::PUT, Some((200, "true".to_owned()))),
            (Method::DELETE, Some((200, "true".to_owned()))),
        ]
    );
}
