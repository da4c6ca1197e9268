//! The 3-server Consul cluster of the harness: data survives each server's restart, a killed
//! leader is replaced within seconds and comes back as a voter, and so does a server that
//! autopilot removed during a long outage.
//!
//! Each test owns its cluster, since each kills servers; timings are printed for `--nocapture`.

use std::future::Future;
use std::time::{Duration, Instant};

use drawbridge_core::consul::{Client, Consistency, KvRead, PutMode, QueryOptions};
use drawbridge_tests::consul::{ConsulCluster, CLUSTER_SIZE};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::process::TestDir;

/// How long the two survivors may take to elect a new leader: raft's 1 s heartbeat and
/// election timeouts (`raft_multiplier = 1`) make it 1–3 s; 10 s leaves room for a slow CI.
const ELECTION_DEADLINE: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

fn consistent() -> QueryOptions {
    QueryOptions::default().with_consistency(Consistency::Consistent)
}

fn text(read: &KvRead) -> Option<String> {
    let value = read.entry.as_ref()?.value.as_deref()?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// A `?consistent` read of `key` through `consul`, as text.
async fn read(consul: &Client, key: &str) -> Option<String> {
    let read = consul
        .kv_get(key, &consistent())
        .await
        .unwrap_or_else(|e| panic!("consistent GET {key} via {}: {e}", consul.address()));
    assert!(read.meta.known_leader, "via {}", consul.address());
    text(&read)
}

async fn write(consul: &Client, key: &str, value: &str) {
    let wrote = consul
        .kv_put(key, value.as_bytes(), PutMode::Always)
        .await
        .unwrap_or_else(|e| panic!("PUT {key} via {}: {e}", consul.address()));
    assert!(wrote, "PUT {key} via {} answered false", consul.address());
}

/// The test's folder, when the test started, and a cluster formed in that folder (how long it
/// took is printed).
async fn start_cluster(test: &str) -> (TestDir, Instant, ConsulCluster) {
    let dir = TestDir::new(test);
    let started = Instant::now();
    let cluster = ConsulCluster::start(&dir).await;
    eprintln!("cluster formed in {:?}", started.elapsed());
    (dir, started, cluster)
}

/// Waits up to `deadline` until `list` (the cluster's `listed`: its healthy voters or its raft
/// members) answers exactly `want`.
async fn wait_for_servers<F, Fut>(
    what: &str,
    deadline: Duration,
    listed: &str,
    want: &[usize],
    list: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Vec<usize>, String>>,
{
    eventually(what, deadline, POLL, || {
        let servers = list();
        async move {
            let servers = servers.await?;
            if servers == want {
                Ok(())
            } else {
                Err(format!("{listed} {servers:?}"))
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_value_survives_restarting_each_server_in_turn() {
    let (_dir, test, mut cluster) = start_cluster("cluster_restarts").await;
    let key = "drawbridge/cluster-restarts/gate";

    write(&cluster.client(0), key, "maintenance").await;
    for i in [1, 2] {
        assert_eq!(
            read(&cluster.client(i), key).await.as_deref(),
            Some("maintenance"),
            "through {}",
            cluster.node_name(i)
        );
    }

    // Each server in turn, the leader among them: down, a write it misses, back.
    for i in 0..CLUSTER_SIZE {
        let node = cluster.node_name(i).to_owned();
        let leader = cluster.leader_index().await;
        cluster.stop(i);
        // The other two keep a quorum (electing a new leader if `i` led) and take writes.
        let other = (i + 1) % CLUSTER_SIZE;
        cluster.wait_for_leader().await;
        let missed = format!("drawbridge/cluster-restarts/missed-{i}");
        write(
            &cluster.client(other),
            &missed,
            &format!("while {node} was down"),
        )
        .await;

        let started = Instant::now();
        cluster.restart(i).await;
        eprintln!(
            "restart of {node} (leader before: {}) + rejoin: {:?}",
            cluster.node_name(leader),
            started.elapsed()
        );
        for j in 0..CLUSTER_SIZE {
            assert_eq!(
                read(&cluster.client(j), key).await.as_deref(),
                Some("maintenance"),
                "through {} after restarting {node}",
                cluster.node_name(j)
            );
        }
        // A stale read is answered from the server's own state: it has the write it missed.
        let restarted = cluster.client(i);
        eventually(
            "the restarted server has the missed write",
            SHORT,
            POLL,
            || {
                let restarted = restarted.clone();
                let missed = missed.clone();
                async move {
                    let q = QueryOptions::default().with_consistency(Consistency::Stale);
                    let read = restarted
                        .kv_get(&missed, &q)
                        .await
                        .map_err(|e| e.to_string())?;
                    match text(&read) {
                        Some(_) => Ok(()),
                        None => Err(format!("{missed} not there yet")),
                    }
                }
            },
        )
        .await;
        let after = format!("drawbridge/cluster-restarts/after-{i}");
        write(&cluster.client(i), &after, &format!("through {node}")).await;
    }

    // Every write of every round is there, through every server.
    for j in 0..CLUSTER_SIZE {
        for i in 0..CLUSTER_SIZE {
            let node = cluster.node_name(i).to_owned();
            let missed = format!("drawbridge/cluster-restarts/missed-{i}");
            let after = format!("drawbridge/cluster-restarts/after-{i}");
            let client = cluster.client(j);
            assert_eq!(
                read(&client, &missed).await,
                Some(format!("while {node} was down"))
            );
            assert_eq!(read(&client, &after).await, Some(format!("through {node}")));
        }
    }
    assert_eq!(cluster.healthy_voters().await, Ok(vec![0, 1, 2]));
    eprintln!("test took {:?}", test.elapsed());
}

#[tokio::test]
async fn a_killed_leader_is_replaced_and_rejoins_as_a_voter() {
    let (_dir, test, mut cluster) = start_cluster("cluster_leader_loss").await;
    let key = "drawbridge/cluster-leader-loss/gate";
    write(&cluster.client(0), key, "normal").await;

    let before = cluster.leader_index().await;
    let started = Instant::now();
    let old = cluster.kill_leader().await;
    let election = started.elapsed();
    eprintln!(
        "leader {} killed, new leader in {election:?}",
        cluster.node_name(old)
    );
    assert_eq!(old, before);
    assert!(
        election < ELECTION_DEADLINE,
        "new leader after {election:?}\n{}",
        cluster.log_tail()
    );
    let new = cluster.leader_index().await;
    assert_ne!(new, old);

    // Both survivors take writes and serve consistent reads.
    let survivors: Vec<usize> = (0..CLUSTER_SIZE).filter(|&i| i != old).collect();
    for &i in &survivors {
        write(&cluster.client(i), key, &format!("via {i}")).await;
        for &j in &survivors {
            assert_eq!(
                read(&cluster.client(j), key).await,
                Some(format!("via {i}"))
            );
        }
    }
    // Autopilot sees the dead server: two healthy voters, the third still a member.
    wait_for_servers(
        "autopilot counts the survivors only",
        SHORT,
        "healthy voters",
        &survivors,
        || cluster.healthy_voters(),
    )
    .await;

    let started = Instant::now();
    cluster.restart(old).await;
    eprintln!(
        "old leader {} restarted + rejoined in {:?}",
        cluster.node_name(old),
        started.elapsed()
    );
    wait_for_servers(
        "3 healthy voters again",
        SHORT,
        "healthy voters",
        &[0, 1, 2],
        || cluster.healthy_voters(),
    )
    .await;
    // The write made while it was down reached it, and it takes writes itself.
    let last = format!("via {}", survivors[1]);
    assert_eq!(read(&cluster.client(old), key).await, Some(last));
    write(&cluster.client(old), key, "back").await;
    for j in 0..CLUSTER_SIZE {
        assert_eq!(read(&cluster.client(j), key).await.as_deref(), Some("back"));
    }
    eprintln!("test took {:?}", test.elapsed());
}

/// The slow path of [`ConsulCluster::restart`]: a server down across an autopilot tick is
/// removed from raft (Consul's default `cleanup_dead_servers`), and comes back as a voter only
/// after autopilot promotes it again.
#[tokio::test]
async fn a_server_removed_by_autopilot_rejoins_as_a_voter() {
    let dir = TestDir::new("cluster_pruned");
    let test = Instant::now();
    let mut cluster = ConsulCluster::start(&dir).await;
    let leader = cluster.leader_index().await;
    let down = (leader + 1) % CLUSTER_SIZE;
    let key = "drawbridge/cluster-pruned/gate";
    write(&cluster.client(leader), key, "normal").await;

    let started = Instant::now();
    cluster.stop(down);
    let rest: Vec<usize> = (0..CLUSTER_SIZE).filter(|&i| i != down).collect();
    // Marked failed within ~1 s, removed at the leader's next autopilot tick (every 10 s).
    wait_for_servers(
        "autopilot removed the stopped server",
        SHORT * 3,
        "raft members",
        &rest,
        || cluster.raft_members(),
    )
    .await;
    eprintln!(
        "{} removed from raft {:?} after its stop",
        cluster.node_name(down),
        started.elapsed()
    );
    write(&cluster.client(leader), key, "maintenance").await;

    let started = Instant::now();
    cluster.restart(down).await;
    eprintln!(
        "removed server {} restarted + promoted to voter in {:?}",
        cluster.node_name(down),
        started.elapsed()
    );
    assert_eq!(cluster.raft_members().await, Ok(vec![0, 1, 2]));
    assert_eq!(
        read(&cluster.client(down), key).await.as_deref(),
        Some("maintenance")
    );
    write(&cluster.client(down), key, "back").await;
    for j in 0..CLUSTER_SIZE {
        assert_eq!(read(&cluster.client(j), key).await.as_deref(), Some("back"));
    }
    eprintln!("test took {:?}", test.elapsed());
}
