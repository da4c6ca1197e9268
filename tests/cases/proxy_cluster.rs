//! The gate on a real three-server Consul cluster (production Raft timing): the served state never
//! steps back while servers restart under writes, a proxy moves on to the next server when its
//! own dies, and idle proxies are never reported stale. A fault relay replays the old answer of a
//! server behind at a chosen moment, which a restart produces only now and then.
//!
//! The counts are CI's; the long runs take them from the environment (README, "Consul"):
//! `DRAWBRIDGE_CLUSTER_RESTARTS` (default 20), `DRAWBRIDGE_IDLE_PROXIES` (default 3) and
//! `DRAWBRIDGE_IDLE_SECS` (default 15); runs longer than the harness's 10-minute process
//! lifetime also set `DRAWBRIDGE_TEST_LIFETIME_SECS`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_core::consul::{Client, Consistency, PutMode, QueryOptions};
use drawbridge_core::gate::Mode;
use drawbridge_tests::assert_eventually;
use drawbridge_tests::consul::{ConsulCluster, ConsulServer};
use drawbridge_tests::fault_relay::FaultRelay;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{set_gate, test_key, Drawbridge, DrawbridgeBuilder, Route};
use drawbridge_tests::upstream::{Kind, Upstream};

/// How long a proxy may take to apply the last write after the restarts (one may be in backoff).
const SETTLE: Duration = Duration::from_secs(20);

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The test's folder, a started cluster with a client per server, the `ui` upstream, and the
/// test key named `key`.
async fn start_cluster(
    test: &str,
    key: &str,
) -> (TestDir, ConsulCluster, Vec<Client>, Upstream, String) {
    let dir = TestDir::new(test);
    let cluster = ConsulCluster::start(&dir).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    (dir, cluster, clients, ui, test_key(key))
}

/// A proxy of the usual shape (one page route) watching `key` through `addresses`.
fn proxy(name: &str, addresses: &[String], key: &str, ui: &Upstream) -> DrawbridgeBuilder {
    Drawbridge::builder(&addresses[0], key)
        .name(name)
        .consul_addresses(addresses)
        .static_pool("ui", &[ui], None)
        .route(Route::page("ui", "/", "ui"))
}

/// A proxy bound to each server (whichever restarts, one reads from it as it comes back) and one
/// with all three addresses.
async fn one_per_server_and_one_for_all(
    dir: &TestDir,
    cluster: &ConsulCluster,
    key: &str,
    ui: &Upstream,
) -> Vec<Drawbridge> {
    let addresses = cluster.http_addrs();
    let mut edges = Vec::new();
    for i in 0..addresses.len() {
        let name = format!("server-{}", i + 1);
        edges.push(proxy(&name, &addresses[i..=i], key, ui).start(dir).await);
    }
    edges.push(proxy("all-servers", &addresses, key, ui).start(dir).await);
    edges
}

/// Writes `value` at `key` through the first server that takes it; the key's new index.
async fn write_anywhere(clients: &[Client], key: &str, value: &[u8]) -> Option<u64> {
    for client in clients {
        if let Ok(true) = client.kv_put(key, value, PutMode::Always).await {
            let confirmed = QueryOptions::default().with_consistency(Consistency::Consistent);
            if let Ok(read) = client.kv_get(key, &confirmed).await {
                return read.entry.map(|e| e.modify_index);
            }
        }
    }
    None
}

/// What the writer writes: a key and its n-th value (each one differs: Consul does not move
/// the index of a write that changes nothing).
#[derive(Clone)]
struct Writes {
    key: String,
    value: fn(usize) -> String,
}

/// Writes to the key every 150 ms until `stop`; returns the indexes that were acknowledged.
fn keep_writing(
    clients: Vec<Client>,
    writes: Writes,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut written = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let value = (writes.value)(written.len() + 1);
            let write = write_anywhere(&clients, &writes.key, value.as_bytes());
            if let Ok(Some(index)) = tokio::time::timeout(Duration::from_secs(3), write).await {
                written.push(index);
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        written
    })
}

/// Checks that `edge` applied strictly growing indexes, and only `mode` after the first
/// `before` states.
fn assert_never_stepped_back(edge: &Drawbridge, mode: Mode, before: usize) {
    let applied = edge.applied_states();
    assert!(!applied.is_empty(), "nothing applied:\n{}", edge.log_tail());
    let flips: Vec<_> = applied
        .iter()
        .skip(before)
        .filter(|(m, _)| m != mode.as_str())
        .collect();
    assert!(
        flips.is_empty(),
        "{} served another mode than {mode}: {flips:?} in {applied:?}",
        edge.config().name
    );
    let back: Vec<_> = applied.windows(2).filter(|w| w[1].1 <= w[0].1).collect();
    assert!(
        back.is_empty(),
        "{} stepped back: {back:?} in {applied:?}",
        edge.config().name
    );
}

/// Restarts the servers in turn `restarts` times while `hold` proxies follow the key, then
/// checks every proxy: only `mode` applied, at growing indexes, the last write applied.
async fn hold_through_restarts(
    mut cluster: ConsulCluster,
    edges: &[Drawbridge],
    mode: Mode,
    writes: Writes,
) {
    let restarts = from_env("DRAWBRIDGE_CLUSTER_RESTARTS", 20) as usize;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_writing(clients.clone(), writes.clone(), stop.clone());
    let started = Instant::now();
    for round in 0..restarts {
        let server = round % 3;
        cluster.stop(server);
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.restart(server).await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("the writer task does not panic");
    eprintln!(
        "{restarts} restarts in {:?}, {} writes acknowledged",
        started.elapsed(),
        written.len()
    );
    assert!(
        written.len() >= restarts,
        "only {} writes went through during {restarts} restarts",
        written.len()
    );
    let last = write_anywhere(&clients, &writes.key, (writes.value)(0).as_bytes())
        .await
        .expect("a write after the restarts");
    for edge in edges {
        let report = edge
            .wait_status("the last write applied", SETTLE, |r| {
                r.gate.applied_index >= last
                    || (r.consul.watch_index >= last && r.gate.mode == mode)
            })
            .await;
        assert_eq!(report.gate.mode, mode);
        let metrics = edge.metrics().await;
        eprintln!(
            "{}: {} states applied, {} step backs refused, {} failovers",
            edge.config().name,
            edge.applied_states().len(),
            metrics.value("drawbridge_gate_step_backs_refused_total", &[]),
            metrics.value("drawbridge_consul_failovers_total", &[])
        );
        assert_never_stepped_back(edge, mode, 0);
    }
}

/// Maintenance is held while every server in turn is restarted and the gate keeps being
/// re-written: proxies bound to one server and one with all three never serve normal and never
/// apply an older index.
#[tokio::test]
async fn maintenance_holds_while_each_server_restarts_under_writes() {
    let (dir, cluster, clients, ui, key) = start_cluster(
        "maintenance_holds_while_each_server_restarts_under_writes",
        "cluster_maintenance",
    )
    .await;
    let writes = Writes {
        key: key.clone(),
        value: |n| format!(r#"{{"mode":"maintenance","reason":"write {n}"}}"#),
    };
    write_anywhere(&clients, &key, (writes.value)(0).as_bytes())
        .await
        .expect("the first write");
    let edges = one_per_server_and_one_for_all(&dir, &cluster, &key, &ui).await;
    assert_eq!(edges[0].get("/").await.status(), 503);
    hold_through_restarts(cluster, &edges, Mode::Maintenance, writes).await;
}

/// The key was deleted after a maintenance: normal is held through the restarts while other
/// keys are written (a server replaying its log still has the old maintenance value).
#[tokio::test]
async fn normal_holds_while_each_server_restarts_after_the_key_was_deleted() {
    let (dir, cluster, clients, ui, key) = start_cluster(
        "normal_holds_while_each_server_restarts_after_the_key_was_deleted",
        "cluster_normal",
    )
    .await;
    write_anywhere(&clients, &key, br#"{"mode":"maintenance","reason":"over"}"#)
        .await
        .expect("the maintenance write");
    clients[0]
        .kv_delete(&key, None)
        .await
        .expect("the key deleted");
    let edges = one_per_server_and_one_for_all(&dir, &cluster, &key, &ui).await;
    assert_eq!(edges[0].get("/").await.status(), 200);
    let writes = Writes {
        key: format!("{key}-neighbour"),
        value: |n| format!("other data {n}"),
    };
    hold_through_restarts(cluster, &edges, Mode::Normal, writes).await;
}

/// A server behind answers a blocking read with an old "key missing" while maintenance is
/// served: the proxy refuses it, counts it and confirms with the leader; maintenance holds.
#[tokio::test]
async fn an_old_answer_from_a_server_behind_is_refused() {
    let dir = TestDir::new("an_old_answer_from_a_server_behind_is_refused");
    let consul = ConsulServer::start(&dir).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let key = test_key("behind");
    let relay = FaultRelay::start(&consul.http_addr(), &key);
    // The proxy's first read, kept by the relay, finds the key missing.
    let edge = proxy("behind", &[relay.http_addr()], &key, &ui)
        .start(&dir)
        .await;
    let first = set_gate(
        &consul.client(),
        &key,
        r#"{"mode":"maintenance","reason":"one"}"#,
    )
    .await;
    edge.wait_applied(first).await;
    relay.give_old_reads(1);
    // Wakes the blocking read already sent; the next one meets the old answer.
    let second = set_gate(
        &consul.client(),
        &key,
        r#"{"mode":"maintenance","reason":"two"}"#,
    )
    .await;
    edge.wait_applied(second).await;
    assert_eventually!(relay.old_reads_given() == 1, Duration::from_secs(5));
    assert_eventually!(
        edge.metrics()
            .await
            .value("drawbridge_gate_step_backs_refused_total", &[])
            == 1.0,
        Duration::from_secs(5),
        "no step back refused:\n{}",
        edge.log_tail()
    );
    let report = edge.status().await;
    assert_eq!(report.gate.mode, Mode::Maintenance);
    assert_eq!(report.gate.applied_index, second);
    assert_eq!(edge.get("/").await.status(), 503);
    // First the missing key (normal), then maintenance only.
    assert_never_stepped_back(&edge, Mode::Maintenance, 1);
}

/// The server a proxy reads from is killed: the proxy moves on to the next address and applies
/// the next write within 2 s of its acknowledgement, and `/status` names the address it reads.
#[tokio::test]
async fn a_proxy_moves_on_when_its_server_dies() {
    let (dir, mut cluster, clients, ui, key) =
        start_cluster("a_proxy_moves_on_when_its_server_dies", "cluster_failover").await;
    let addresses = cluster.http_addrs();
    let edge = proxy("failover", &addresses, &key, &ui).start(&dir).await;
    for round in 0..2 {
        let report = edge.status().await;
        let reading = addresses
            .iter()
            .position(|a| a.trim_end_matches('/') == report.consul.address.trim_end_matches('/'))
            .unwrap_or_else(|| panic!("/status names {} as the address", report.consul.address));
        cluster.stop(reading);
        let value = format!(r#"{{"mode":"maintenance","reason":"round {round}"}}"#);
        let others: Vec<Client> = (0..3)
            .filter(|i| *i != reading)
            .map(|i| clients[i].clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let index = loop {
            if let Some(index) = write_anywhere(&others, &key, value.as_bytes()).await {
                break index;
            }
            assert!(
                Instant::now() < deadline,
                "no write went through:\n{}",
                cluster.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let acknowledged = Instant::now();
        let report = edge
            .wait_status(
                "the write after the failover",
                Duration::from_secs(10),
                |r| r.gate.applied_index >= index,
            )
            .await;
        let took = acknowledged.elapsed();
        eprintln!("round {round}: applied {took:?} after the acknowledgement");
        assert!(
            took <= Duration::from_secs(2),
            "applied {took:?} after the acknowledgement"
        );
        assert_ne!(report.consul.address, addresses[reading]);
        assert_eq!(report.consul.addresses.len(), 3);
        cluster.restart(reading).await;
    }
    let metrics = edge.metrics().await;
    assert!(metrics.value("drawbridge_consul_failovers_total", &[]) >= 2.0);
}

/// Idle proxies whose blocking reads are open are never stale, even with `stale_after` set
/// below one wait (it is raised to wait + wait/16).
#[tokio::test]
async fn idle_proxies_are_never_reported_stale() {
    let proxies = from_env("DRAWBRIDGE_IDLE_PROXIES", 3) as usize;
    let idle = Duration::from_secs(from_env("DRAWBRIDGE_IDLE_SECS", 15));
    let dir = TestDir::new("idle_proxies_are_never_reported_stale");
    let consul = ConsulServer::start(&dir).await;
    let ui = Upstream::builder("ui").kind(Kind::Page).start();
    let key = test_key("idle");
    let mut edges = Vec::new();
    for i in 0..proxies {
        let edge = proxy(&format!("idle-{i}"), &[consul.http_addr()], &key, &ui)
            .consul_wait("2s")
            .stale_after("1s")
            .start(&dir)
            .await;
        edges.push(edge);
    }
    let mut stale_seen = Vec::new();
    let mut samples = 0;
    let until = Instant::now() + idle;
    while Instant::now() < until {
        for edge in &edges {
            let report = edge.status().await;
            samples += 1;
            if report.consul.stale {
                stale_seen.push((
                    edge.config().name.clone(),
                    report.consul.seconds_since_answer,
                ));
            }
        }
        let metrics = edges[samples % edges.len()].metrics().await;
        assert_eq!(metrics.get("drawbridge_consul_stale", &[]), Some(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{samples} samples over {idle:?} of {proxies} idle proxies");
    assert!(stale_seen.is_empty(), "stale while idle: {stale_seen:?}");
}
