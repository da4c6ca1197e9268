//! The Consul client of `drawbridge-core` against real Consul 1.8.7 agents on loopback (and,
//! for error mapping and headers, a fake agent that answers canned HTTP).
//!
//! Each test owns its agents, so tests stay independent and can run in parallel.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use drawbridge_core::consul::{
    CheckStatus, CheckTarget, Client, Consistency, Error, HealthCheck, KvEntry, KvRead, PutMode,
    QueryOptions, ServiceCheck, ServiceRegistration, SessionRequest, NODE_MAINTENANCE_CHECK,
    SERVICE_MAINTENANCE_CHECK_PREFIX,
};
use drawbridge_tests::consul::{ConsulClientAgent, ConsulServer, SERVER_NODE};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::ports::free_port;
use drawbridge_tests::process::TestDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const API2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const SHORT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The test's folder, a single-node server in it, and a client of the server.
async fn start_server(test: &str) -> (TestDir, ConsulServer, Client) {
    let dir = TestDir::new(test);
    let server = ConsulServer::start(&dir).await;
    let consul = server.client();
    (dir, server, consul)
}

/// A new session `name` with a TTL of `ttl`.
async fn ttl_session(consul: &Client, name: &str, ttl: Duration) -> String {
    consul
        .session_create(&SessionRequest::with_ttl(name, ttl))
        .await
        .unwrap()
}

/// The entry at `key`, read without blocking.
///
/// # Panics
/// When the read fails or the key does not exist.
async fn entry(consul: &Client, key: &str) -> KvEntry {
    consul
        .kv_get(key, &QueryOptions::default())
        .await
        .unwrap()
        .entry
        .unwrap()
}

/// Waits until `accept` takes the checks of `node` in the catalog.
async fn wait_node_checks(
    catalog: &Client,
    what: &str,
    node: &str,
    accept: impl Fn(&[HealthCheck]) -> Result<(), String>,
) {
    let accept = &accept;
    eventually(what, SHORT, POLL, || async move {
        let checks = catalog.health_node(node).await.map_err(|e| e.to_string())?;
        accept(&checks)
    })
    .await;
}

/// Writes `value` at `drawbridge/gate` and reads the key back.
async fn put_gate(consul: &Client, value: &[u8]) -> KvRead {
    consul
        .kv_put("drawbridge/gate", value, PutMode::Always)
        .await
        .unwrap();
    consul
        .kv_get("drawbridge/gate", &QueryOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn kv_put_get_list_delete_round_trip() {
    let (_dir, _server, consul) = start_server("kv_round_trip").await;
    // A key that needs escaping and a value that is not UTF-8.
    let key = "drawbridge/t1/a key?with#odd&chars";
    let value = [0u8, 159, 146, 150, b'\n'];

    assert!(consul.kv_put(key, &value, PutMode::Always).await.unwrap());
    assert!(consul
        .kv_put("drawbridge/t1/other", b"x", PutMode::Always)
        .await
        .unwrap());
    let read = consul.kv_get(key, &QueryOptions::default()).await.unwrap();
    let entry = read.entry.expect("the key was just written");
    assert_eq!(entry.key, key);
    assert_eq!(entry.value.as_deref(), Some(&value[..]));
    assert_eq!(entry.session, None);
    assert!(entry.modify_index >= entry.create_index && entry.create_index > 0);
    assert!(read.meta.index >= entry.modify_index);
    assert!(read.meta.known_leader);

    let listed = consul.kv_list("drawbridge/t1/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec![key, "drawbridge/t1/other"]);
    assert!(consul.kv_list("drawbridge/none/").await.unwrap().is_empty());

    // Consul 1.8.7 answers `"Value": null` for an empty value: it reads back as None.
    assert!(consul
        .kv_put("drawbridge/t1/empty", b"", PutMode::Always)
        .await
        .unwrap());
    let empty = consul
        .kv_get("drawbridge/t1/empty", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(empty.entry.unwrap().value, None);

    assert!(consul.kv_delete(key, None).await.unwrap());
    let gone = consul.kv_get(key, &QueryOptions::default()).await.unwrap();
    assert_eq!(gone.entry, None);
    // Deleting a missing key is idempotent.
    assert!(consul.kv_delete(key, None).await.unwrap());
}

#[tokio::test]
async fn missing_key_reports_the_index_from_the_404() {
    let (_dir, _server, consul) = start_server("missing_key_index").await;

    let read = consul
        .kv_get("drawbridge/never-written", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(read.entry, None);
    assert!(
        read.meta.index >= 1,
        "index {} from the 404",
        read.meta.index
    );
    assert!(read.meta.known_leader);

    // That index is good for blocking until the key appears.
    let writer = consul.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .kv_put("drawbridge/never-written", b"now", PutMode::Always)
            .await
    });
    let q = QueryOptions::blocking(read.meta.index, Duration::from_secs(30));
    let woke = consul.kv_get("drawbridge/never-written", &q).await.unwrap();
    assert!(write.await.unwrap().unwrap());
    assert_eq!(woke.entry.unwrap().value.as_deref(), Some(&b"now"[..]));
    assert!(woke.meta.index > read.meta.index);
}

#[tokio::test]
async fn blocking_get_wakes_on_change() {
    let (_dir, _server, consul) = start_server("blocking_wakes").await;
    let first = put_gate(&consul, b"normal").await;

    let writer = consul.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        writer
            .kv_put("drawbridge/gate", b"maintenance", PutMode::Always)
            .await
    });
    let started = Instant::now();
    let q = QueryOptions::blocking(first.meta.index, Duration::from_secs(60))
        .with_consistency(Consistency::Stale);
    let woke = consul.kv_get("drawbridge/gate", &q).await.unwrap();
    let took = started.elapsed();
    assert!(write.await.unwrap().unwrap());
    assert!(
        took >= Duration::from_millis(400),
        "returned early: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "did not wake: {took:?}");
    let entry = woke.entry.unwrap();
    assert_eq!(entry.value.as_deref(), Some(&b"maintenance"[..]));
    assert!(entry.modify_index > first.entry.unwrap().modify_index);
}

#[tokio::test]
async fn blocking_get_returns_after_wait_without_change() {
    let (_dir, _server, consul) = start_server("blocking_times_out").await;
    let first = put_gate(&consul, b"normal").await;

    let wait = Duration::from_secs(1);
    let started = Instant::now();
    let q = QueryOptions::blocking(first.meta.index, wait);
    let again = consul.kv_get("drawbridge/gate", &q).await.unwrap();
    let took = started.elapsed();
    // Consul adds up to wait/16 of jitter; allow scheduling slack on top.
    assert!(took >= wait, "returned before the wait: {took:?}");
    assert!(
        took < wait + wait / 16 + Duration::from_secs(2),
        "took {took:?}"
    );
    // A return is no guarantee of a change: same index, same entry.
    assert_eq!(again.meta.index, first.meta.index);
    assert_eq!(again.entry, first.entry);
}

#[tokio::test]
async fn cas_put_succeeds_only_with_the_current_modify_index() {
    let (_dir, _server, consul) = start_server("cas").await;
    let key = "drawbridge/journal";

    // cas=0: create only if absent.
    assert!(consul.kv_put(key, b"v1", PutMode::Cas(0)).await.unwrap());
    assert!(!consul.kv_put(key, b"v1bis", PutMode::Cas(0)).await.unwrap());
    let v1 = entry(&consul, key).await;
    assert_eq!(v1.value.as_deref(), Some(&b"v1"[..]));

    assert!(consul
        .kv_put(key, b"v2", PutMode::Cas(v1.modify_index))
        .await
        .unwrap());
    // The old index no longer matches.
    assert!(!consul
        .kv_put(key, b"v3", PutMode::Cas(v1.modify_index))
        .await
        .unwrap());
    let v2 = entry(&consul, key).await;
    assert_eq!(v2.value.as_deref(), Some(&b"v2"[..]));

    assert!(!consul.kv_delete(key, Some(v1.modify_index)).await.unwrap());
    assert!(consul.kv_delete(key, Some(v2.modify_index)).await.unwrap());
    let gone = consul.kv_get(key, &QueryOptions::default()).await.unwrap();
    assert_eq!(gone.entry, None);
}

#[tokio::test]
async fn a_held_lock_excludes_other_sessions_but_not_plain_puts() {
    let (_dir, _server, consul) = start_server("acquire_release").await;
    let key = "drawbridge/lock";
    let ttl = Duration::from_secs(30);
    let s1 = ttl_session(&consul, "maintctl-1", ttl).await;
    let s2 = ttl_session(&consul, "maintctl-2", ttl).await;

    assert!(consul
        .kv_put(key, b"s1", PutMode::Acquire(&s1))
        .await
        .unwrap());
    assert!(!consul
        .kv_put(key, b"s2", PutMode::Acquire(&s2))
        .await
        .unwrap());
    let held = entry(&consul, key).await;
    assert_eq!(held.session.as_deref(), Some(s1.as_str()));
    assert_eq!(held.lock_index, 1);
    assert_eq!(held.value.as_deref(), Some(&b"s1"[..]));

    // NOTE: Consul locks are advisory. A write without `acquire` goes through even though s1
    // holds the lock; the lock stays with s1, but Consul 1.8.7 resets LockIndex to 0. This is
    // why every journal write of maintctl uses acquire or cas, and why LockIndex is no fence.
    assert!(consul.kv_put(key, b"plain", PutMode::Always).await.unwrap());
    let after = entry(&consul, key).await;
    assert_eq!(after.value.as_deref(), Some(&b"plain"[..]));
    assert_eq!(after.session.as_deref(), Some(s1.as_str()));
    assert_eq!(after.lock_index, 0);

    // Only the holder releases; then the other session can take it.
    assert!(!consul
        .kv_put(key, b"x", PutMode::Release(&s2))
        .await
        .unwrap());
    assert!(consul
        .kv_put(key, b"free", PutMode::Release(&s1))
        .await
        .unwrap());
    assert_eq!(entry(&consul, key).await.session, None);
    assert!(consul
        .kv_put(key, b"s2", PutMode::Acquire(&s2))
        .await
        .unwrap());
    let taken = entry(&consul, key).await;
    assert_eq!(taken.session.as_deref(), Some(s2.as_str()));
    assert_eq!(taken.lock_index, 1);
}

#[tokio::test]
async fn zero_lock_delay_lets_another_session_acquire_right_after_invalidation() {
    let (_dir, _server, consul) = start_server("lock_delay").await;
    let ttl = Duration::from_secs(30);

    // LockDelay "0s", sent explicitly, is accepted by 1.8.7 and disables the delay.
    let crashed = ttl_session(&consul, "crashed", ttl).await;
    let info = consul.session_info(&crashed).await.unwrap().unwrap();
    assert_eq!(info.lock_delay, Duration::ZERO);
    assert!(consul
        .kv_put("drawbridge/lock-a", b"", PutMode::Acquire(&crashed))
        .await
        .unwrap());
    consul.session_destroy(&crashed).await.unwrap();
    let next = ttl_session(&consul, "next", ttl).await;
    assert!(consul
        .kv_put("drawbridge/lock-a", b"", PutMode::Acquire(&next))
        .await
        .unwrap());

    // With Consul's default delay (15 s), the lock of a destroyed session stays blocked.
    let mut slow = SessionRequest::with_ttl("slow", ttl);
    slow.lock_delay = Duration::from_secs(15);
    let slow = consul.session_create(&slow).await.unwrap();
    assert!(consul
        .kv_put("drawbridge/lock-b", b"", PutMode::Acquire(&slow))
        .await
        .unwrap());
    consul.session_destroy(&slow).await.unwrap();
    assert!(!consul
        .kv_put("drawbridge/lock-b", b"", PutMode::Acquire(&next))
        .await
        .unwrap());
}

#[tokio::test]
async fn renew_of_a_destroyed_session_is_session_not_found() {
    let (_dir, _server, consul) = start_server("session_renew").await;
    let ttl = Duration::from_secs(10);
    let id = ttl_session(&consul, "maintctl", ttl).await;

    assert_eq!(consul.session_renew(&id).await.unwrap(), ttl);
    let info = consul.session_info(&id).await.unwrap().unwrap();
    assert_eq!(
        (info.id.as_str(), info.name.as_str()),
        (id.as_str(), "maintctl")
    );
    assert_eq!(info.node, SERVER_NODE);
    assert_eq!(info.ttl, ttl);
    assert_eq!(info.node_checks, vec!["serfHealth".to_owned()]);

    consul.session_destroy(&id).await.unwrap();
    let err = consul.session_renew(&id).await.unwrap_err();
    assert!(
        matches!(&err, Error::SessionNotFound { id: gone, .. } if *gone == id),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("the lock it held is lost"),
        "{err}"
    );
    assert_eq!(consul.session_info(&id).await.unwrap(), None);
    // Destroy is idempotent.
    consul.session_destroy(&id).await.unwrap();
}

#[tokio::test]
async fn node_maintenance_on_a_client_agent_shows_on_the_server_and_clears() {
    let (dir, server, catalog) = start_server("node_maintenance").await;
    let api1 = ConsulClientAgent::start(&dir, &server, "api1", API1).await;
    let agent = api1.client();

    let me = agent.agent_self().await.unwrap();
    assert_eq!(me.node_name, "api1");
    assert_eq!(me.address, "127.0.0.2");
    assert_eq!(me.datacenter, "dc1");
    assert!(!me.server);
    assert_eq!(me.version, "1.8.7");

    let reason = "db migration: step 2/3 & more";
    agent.agent_node_maintenance(true, reason).await.unwrap();
    // The agent has the check at once; the catalog after the agent's sync.
    let local = agent.agent_checks().await.unwrap();
    let check = &local[NODE_MAINTENANCE_CHECK];
    assert_eq!(check.status, CheckStatus::Critical);
    assert_eq!(check.notes, reason);
    wait_node_checks(
        &catalog,
        "maintenance check in the catalog",
        "api1",
        |checks| match checks.iter().find(|c| c.is_node_maintenance()) {
            Some(c) if c.status == CheckStatus::Critical && c.notes == reason => Ok(()),
            other => Err(format!("maintenance check: {other:?}")),
        },
    )
    .await;
    // Idempotent.
    agent.agent_node_maintenance(true, reason).await.unwrap();

    agent.agent_node_maintenance(false, "").await.unwrap();
    wait_node_checks(
        &catalog,
        "maintenance check gone from the catalog",
        "api1",
        |checks| {
            if checks.iter().any(|c| c.is_node_maintenance()) {
                Err("still in maintenance".to_owned())
            } else if checks.iter().any(|c| c.check_id == "serfHealth") {
                Ok(())
            } else {
                Err(format!("node checks missing: {checks:?}"))
            }
        },
    )
    .await;
    assert!(!agent
        .agent_checks()
        .await
        .unwrap()
        .contains_key(NODE_MAINTENANCE_CHECK));
}

#[tokio::test]
async fn service_register_maintenance_and_deregister() {
    let (dir, server, catalog) = start_server("service_register").await;
    let api1 = ConsulClientAgent::start(&dir, &server, "api1", API1).await;
    let agent = api1.client();
    // Something for the TCP check to reach, on the box's own address.
    let listener = std::net::TcpListener::bind((API1, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();

    let reg = ServiceRegistration {
        id: "web-1".into(),
        name: "web".into(),
        address: API1.to_string(),
        port,
        tags: vec!["edge".into()],
        meta: HashMap::from([("box".to_owned(), "api1".to_owned())]),
        check: Some(ServiceCheck {
            target: CheckTarget::Tcp(format!("{API1}:{port}")),
            interval: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(1)),
            deregister_critical_after: Some(Duration::from_secs(60)),
            initial_status: Some("passing".into()),
        }),
    };
    agent.agent_service_register(&reg).await.unwrap();
    assert!(agent
        .agent_checks()
        .await
        .unwrap()
        .contains_key("service:web-1"));
    let passing = |expect: usize| {
        let catalog = catalog.clone();
        move || {
            let catalog = catalog.clone();
            async move {
                let (entries, _) = catalog
                    .health_service("web", true, &QueryOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                if entries.len() == expect {
                    Ok(entries)
                } else {
                    Err(format!(
                        "{} passing instances, want {expect}",
                        entries.len()
                    ))
                }
            }
        }
    };
    let entries = eventually("web-1 passing", SHORT, POLL, passing(1)).await;
    let web1 = &entries[0];
    assert_eq!(
        (web1.service.id.as_str(), web1.node.node.as_str()),
        ("web-1", "api1")
    );
    assert_eq!((web1.address(), web1.service.port), ("127.0.0.2", port));
    assert_eq!(web1.service.tags, vec!["edge".to_owned()]);
    assert_eq!(web1.service.meta["box"], "api1");

    agent
        .agent_service_maintenance("web-1", true, "drain")
        .await
        .unwrap();
    let maint_id = format!("{SERVICE_MAINTENANCE_CHECK_PREFIX}web-1");
    let local = agent.agent_checks().await.unwrap();
    assert_eq!(local[&maint_id].service_maintenance_of(), Some("web-1"));
    assert_eq!(local[&maint_id].notes, "drain");
    eventually("web-1 out of the passing list", SHORT, POLL, passing(0)).await;
    agent
        .agent_service_maintenance("web-1", false, "")
        .await
        .unwrap();
    eventually("web-1 back in the passing list", SHORT, POLL, passing(1)).await;

    // Maintenance of a service the agent does not have is a 404 naming the service.
    let err = agent
        .agent_service_maintenance("nope", true, "")
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(404), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");

    agent.agent_service_deregister("web-1").await.unwrap();
    eventually("web-1 deregistered", SHORT, POLL, || {
        let catalog = catalog.clone();
        async move {
            let (all, _) = catalog
                .health_service("web", false, &QueryOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            if all.is_empty() {
                Ok(())
            } else {
                Err(format!("{} instances left", all.len()))
            }
        }
    })
    .await;
    // Consul 1.8.7 answers 200 for an unknown service id too.
    agent.agent_service_deregister("web-1").await.unwrap();
    drop(listener);
}

#[tokio::test]
async fn passing_only_health_service_drops_a_node_in_maintenance_and_a_blocking_query_wakes() {
    let (dir, server, catalog) = start_server("health_service_maintenance").await;
    let api1 = ConsulClientAgent::start(&dir, &server, "api1", API1).await;
    let api2 = ConsulClientAgent::start(&dir, &server, "api2", API2).await;
    for (agent, id) in [(&api1, "web-api1"), (&api2, "web-api2")] {
        let reg = ServiceRegistration {
            id: id.into(),
            name: "web".into(),
            port: 8080,
            ..ServiceRegistration::default()
        };
        agent.client().agent_service_register(&reg).await.unwrap();
    }
    let meta = eventually("both instances passing", SHORT, POLL, || {
        let catalog = catalog.clone();
        async move {
            let (entries, meta) = catalog
                .health_service("web", true, &QueryOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut nodes: Vec<String> = entries.into_iter().map(|e| e.node.node).collect();
            nodes.sort();
            if nodes == ["api1", "api2"] {
                Ok(meta)
            } else {
                Err(format!("passing nodes {nodes:?}"))
            }
        }
    })
    .await;

    let watcher = catalog.clone();
    let watch = tokio::spawn(async move {
        let started = Instant::now();
        let q = QueryOptions::blocking(meta.index, Duration::from_secs(60));
        let answer = watcher.health_service("web", true, &q).await;
        (answer, started.elapsed())
    });
    // Let the blocking query reach the server before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api1.client()
        .agent_node_maintenance(true, "drain api1")
        .await
        .unwrap();

    let (answer, took) = tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .expect("the blocking query did not wake")
        .unwrap();
    let (entries, woke_meta) = answer.unwrap();
    assert!(took < Duration::from_secs(10), "woke after {took:?}");
    assert!(woke_meta.index > meta.index);
    let nodes: Vec<&str> = entries.iter().map(|e| e.node.node.as_str()).collect();
    assert_eq!(nodes, vec!["api2"]);

    // Without passing-only, the instance is still listed, with the maintenance check.
    let (all, _) = catalog
        .health_service("web", false, &QueryOptions::default())
        .await
        .unwrap();
    let on_api1 = all.iter().find(|e| e.node.node == "api1").unwrap();
    assert!(on_api1.checks.iter().any(|c| c.is_node_maintenance()));
}

#[tokio::test]
async fn status_leader_and_agent_self_describe_the_server() {
    let (_dir, server, consul) = start_server("leader_self").await;
    let leader = consul.status_leader().await.unwrap();
    assert_eq!(leader, format!("127.0.0.1:{}", server.ports().server));
    let me = consul.agent_self().await.unwrap();
    assert_eq!((me.node_name.as_str(), me.server), (SERVER_NODE, true));
    assert_eq!(me.address, "127.0.0.1");
    assert!(!me.node_id.is_empty());
}

#[tokio::test]
async fn stopped_server_is_unreachable_and_restart_keeps_the_data() {
    let (_dir, mut server, consul) = start_server("server_restart").await;
    let before = put_gate(&consul, b"maintenance").await;

    server.stop();
    let err = consul
        .kv_get("drawbridge/gate", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());

    server.restart().await;
    let after = consul
        .kv_get("drawbridge/gate", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(after.entry, before.entry);
    assert!(after.meta.index >= before.meta.index);
}

#[tokio::test]
async fn client_agent_without_a_server_answers_transient_errors_then_no_servers() {
    let dir = TestDir::new("agent_without_server");
    let mut server = ConsulServer::start(&dir).await;
    let api1 = ConsulClientAgent::start(&dir, &server, "api1", API1).await;
    let agent = api1.client();
    agent
        .kv_put("drawbridge/gate", b"normal", PutMode::Always)
        .await
        .unwrap();

    server.stop();
    // At first the agent answers 500s naming the RPC failure ("rpc error making call: stream
    // closed", then "... connection refused"); all transient.
    let err = agent
        .kv_get("drawbridge/gate", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "consul kv get drawbridge/gate at {}",
            api1.http_addr()
        )),
        "{err}"
    );
    // Once gossip marks the server failed (about a second here), "No known Consul servers",
    // even for stale reads.
    eventually("the agent gives up on its server", SHORT, POLL, || {
        let agent = agent.clone();
        async move {
            let q = QueryOptions::default().with_consistency(Consistency::Stale);
            match agent.kv_get("drawbridge/gate", &q).await {
                Err(e @ Error::NoServers { .. }) if e.is_transient() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // The server counts the agent as joined again before the agent has heard that the server is
    // alive: for that moment it still answers "No known Consul servers", a transient error.
    server.restart().await;
    let read = eventually(
        "the agent reads through its server again",
        SHORT,
        POLL,
        || {
            let agent = agent.clone();
            async move {
                match agent
                    .kv_get("drawbridge/gate", &QueryOptions::default())
                    .await
                {
                    Ok(read) => Ok(read),
                    Err(e) if e.is_transient() => Err(format!("{e:?}")),
                    Err(e) => panic!("a lasting error once the server is back: {e:?}"),
                }
            }
        },
    )
    .await;
    assert_eq!(read.entry.unwrap().value.as_deref(), Some(&b"normal"[..]));
}

#[tokio::test]
async fn unreachable_address_is_unreachable_and_https_is_refused() {
    let port = free_port();
    let consul = Client::new(&format!("127.0.0.1:{port}"), None).unwrap();
    let err = consul
        .kv_get("drawbridge/gate", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "consul kv get drawbridge/gate at http://127.0.0.1:{port}: cannot connect"
        )),
        "{err}"
    );
    // The cause is in the source chain, not repeated in the message.
    let source = std::error::Error::source(&err).expect("a source");
    assert!(!err.to_string().contains(&source.to_string()));

    let err = Client::new("https://127.0.0.1:8501", None).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
    assert!(err.to_string().contains("https is not supported"), "{err}");
}

/// A fake agent: accepts one connection per canned answer and returns the request heads.
async fn fake_agent(answers: Vec<String>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        let mut heads = Vec::new();
        for answer in answers {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            heads.push(String::from_utf8_lossy(&buf).into_owned());
            if answer.is_empty() {
                // Say nothing: the client must time out.
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
            conn.write_all(answer.as_bytes()).await.unwrap();
            conn.shutdown().await.unwrap();
        }
        heads
    });
    (addr, task)
}

fn answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn token_goes_in_the_header_never_in_the_url() {
    let not_found = answer(
        "404 Not Found",
        "X-Consul-Index: 7\r\nX-Consul-KnownLeader: false\r\nX-Consul-LastContact: 1234\r\n",
        "",
    );
    let (addr, heads) = fake_agent(vec![not_found.clone(), not_found]).await;
    let with_token = Client::new(&addr, Some("s3cr3t-token".into())).unwrap();
    let read = with_token
        .kv_get(
            "drawbridge/gate",
            &QueryOptions::default().with_consistency(Consistency::Stale),
        )
        .await
        .unwrap();
    assert_eq!(read.entry, None);
    assert_eq!(read.meta.index, 7);
    assert!(!read.meta.known_leader);
    assert_eq!(read.meta.last_contact, Duration::from_millis(1234));
    let without = Client::new(&addr, None).unwrap();
    without
        .kv_get("drawbridge/gate", &QueryOptions::default())
        .await
        .unwrap();

    let heads = heads.await.unwrap();
    let first = heads[0].to_ascii_lowercase();
    assert!(
        first.starts_with("get /v1/kv/drawbridge/gate?stale http/1.1\r\n"),
        "{first}"
    );
    assert!(
        first.contains("\r\nx-consul-token: s3cr3t-token\r\n"),
        "{first}"
    );
    assert!(!first.lines().next().unwrap().contains("token"), "{first}");
    assert!(
        !heads[1].to_ascii_lowercase().contains("x-consul-token"),
        "{}",
        heads[1]
    );
}

#[tokio::test]
async fn http_errors_map_to_variants_callers_can_branch_on() {
    let (addr, _heads) = fake_agent(vec![
        answer("403 Forbidden", "", "ACL not found"),
        answer("500 Internal Server Error", "", "No cluster leader"),
        answer(
            "429 Too Many Requests",
            "",
            "Your IP is issuing too many concurrent connections",
        ),
        answer("500 Internal Server Error", "", "No known Consul servers"),
        answer("500 Internal Server Error", "", "rpc error: boom"),
        answer("200 OK", "X-Consul-Index: 3\r\n", "[{\"Key\": 5}]"),
        answer("200 OK", "", "maybe"),
    ])
    .await;
    let consul = Client::new(&addr, None).unwrap();
    let plain = QueryOptions::default();
    let get = || consul.kv_get("drawbridge/gate", &plain);

    let err = get().await.unwrap_err();
    assert!(
        matches!(&err, Error::AclDenied { body, .. } if body == "ACL not found"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("CONSUL_HTTP_TOKEN"), "{err}");
    let err = get().await.unwrap_err();
    assert!(matches!(err, Error::NoLeader { .. }), "{err:?}");
    assert!(err.is_transient());
    let err = get().await.unwrap_err();
    assert!(matches!(err, Error::TooManyConnections { .. }), "{err:?}");
    let err = get().await.unwrap_err();
    assert!(matches!(err, Error::NoServers { .. }), "{err:?}");
    let err = get().await.unwrap_err();
    assert!(
        matches!(&err, Error::Status { code: 500, body, .. } if body == "rpc error: boom"),
        "{err:?}"
    );
    assert!(err.is_transient());
    let err = get().await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let err = consul
        .kv_put("drawbridge/gate", b"x", PutMode::Always)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

#[tokio::test]
async fn silent_agent_gives_timeout_after_wait_and_margin() {
    let (addr, _heads) = fake_agent(vec![String::new()]).await;
    let consul = Client::new(&addr, None).unwrap();
    // Blocking with a 1 ms wait: the timeout is 1 ms + 5 s of margin.
    let q = QueryOptions::blocking(5, Duration::from_millis(1));
    let started = Instant::now();
    let err = consul.kv_get("drawbridge/gate", &q).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "{took:?}"
    );
}
