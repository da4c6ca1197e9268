//! A route split between its own pool (`api`, upstream `api-blue`) and a second one
//! (`api-green`) by the split document at `<gate key>/split`: the share of new clients, each
//! client keeping its side by its cookie or its address, blue-green switches under load,
//! requests in flight finishing where they started, bad documents changing nothing, and the
//! split kept across a restart while Consul is away.
//!
//! The test client stands for many clients by sending `X-Forwarded-For` as a load balancer in
//! front would (127.0.0.1 is a trusted proxy here).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drawbridge_core::status::StatusReport;
use drawbridge_tests::consul::ConsulServer;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{clear_gate, header, set_gate, test_key, Drawbridge, Ready, Route};
use drawbridge_tests::upstream::Upstream;

/// How long `api-blue` takes to answer `/slow/…`.
const SLOW: Duration = Duration::from_secs(3);

/// The scene: fields drop in order, the test directory last.
struct Scene {
    edge: Drawbridge,
    blue: Upstream,
    green: Upstream,
    consul: ConsulServer,
    split_key: String,
    _dir: TestDir,
}

/// What one answer said of its side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    status: u16,
    /// `X-Drawbridge-Pool`.
    pool: Option<String>,
    /// `X-Upstream`: the upstream that answered.
    upstream: String,
    /// The bucket a `Set-Cookie` gave, if any.
    bucket: Option<u8>,
}

impl Scene {
    async fn start(test: &str) -> Scene {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let blue = Upstream::builder("api-blue").delay("/slow", SLOW).start();
        let green = Upstream::builder("api-green").start();
        let key = test_key(test);
        let edge = Drawbridge::builder(&consul.http_addr(), &key)
            .trusted_proxies(&["127.0.0.1/32"])
            .static_pool("api", &[&blue], None)
            .static_pool("api-green", &[&green], None)
            .route(Route::api("api", "/", "api"))
            .start(&dir)
            .await;
        Scene {
            edge,
            blue,
            green,
            consul,
            split_key: format!("{key}/split"),
            _dir: dir,
        }
    }

    /// Writes `value` at the split key and waits until the proxy applied it.
    async fn put_split(&self, value: &str) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.split_key, value).await;
        self.edge
            .wait_status("the split applied", Duration::from_secs(10), |r| {
                r.split.as_ref().is_some_and(|s| s.applied_index >= index)
            })
            .await
    }

    /// Writes `value` at the split key and waits until the proxy refused it.
    async fn put_refused(&self, value: &str) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.split_key, value).await;
        self.edge
            .wait_status("the split refused", Duration::from_secs(10), |r| {
                r.split
                    .as_ref()
                    .and_then(|s| s.last_rejected.as_ref())
                    .is_some_and(|rejected| rejected.modify_index == index)
            })
            .await
    }

    /// GET `path` from client `client` (by `X-Forwarded-For`), with the split cookie of
    /// `bucket` when given.
    async fn get_from(&self, client: u32, path: &str, bucket: Option<u8>) -> Served {
        let mut request = self
            .edge
            .request(reqwest::Method::GET, path)
            .header("x-forwarded-for", client_address(client));
        if let Some(bucket) = bucket {
            request = request.header("cookie", format!("other=1; drawbridge_split={bucket}"));
        }
        let answer = request.send().await.expect("an answer");
        served(&answer)
    }

    /// GET `path` from one client, with the split cookie of `bucket` when given.
    async fn get(&self, path: &str, bucket: Option<u8>) -> Served {
        self.get_from(0, path, bucket).await
    }
}

/// The address of client `n`: 10.x.y.z.
fn client_address(n: u32) -> String {
    std::net::Ipv4Addr::from(0x0a00_0000 | n).to_string()
}

fn served(answer: &reqwest::Response) -> Served {
    let bucket = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("drawbridge_split="))
        .and_then(|rest| rest.split(';').next()?.parse().ok());
    Served {
        status: answer.status().as_u16(),
        pool: header(answer, "x-drawbridge-pool"),
        upstream: header(answer, "x-upstream").unwrap_or_default(),
        bucket,
    }
}

/// Whether `served` came from the green pool, checking that its header and its upstream agree.
fn is_green(served: &Served) -> bool {
    match served.pool.as_deref() {
        Some("api-green") => {
            assert_eq!(served.upstream, "api-green", "{served:?}");
            true
        }
        Some("api") => {
            assert_eq!(served.upstream, "api-blue", "{served:?}");
            false
        }
        other => panic!("no pool header on a split route's answer: {other:?} ({served:?})"),
    }
}

/// New clients (no cookie) of a 10 % split: 2 000 of them (by address) land within 7–13 % on
/// the green pool, each told its bucket, green exactly for buckets below 10; each keeps its side
/// by its cookie from any address, and by its address without a cookie; raised to 25 %, the
/// green ones stay green and buckets 10–24 move over; and the per-pool answers are counted
/// apart.
#[tokio::test]
async fn a_ten_percent_split_takes_a_tenth_of_new_clients_and_each_keeps_its_side() {
    let scene = Scene::start("split_ten_percent").await;
    let status = scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 10}}, "by": "e2e"}"#)
        .await;
    let split = status.split.expect("a split in /status");
    assert_eq!(split.routes["api"].percent, 10);
    assert_eq!(split.by.as_deref(), Some("e2e"));

    let mut buckets: BTreeMap<u8, bool> = BTreeMap::new();
    let mut green = 0;
    let mut by_client = Vec::new();
    for i in 0..2000 {
        let served = scene.get_from(i, &format!("/orders/{i}"), None).await;
        assert_eq!(served.status, 200);
        let bucket = served.bucket.expect("a new client is given its bucket");
        let is_green = is_green(&served);
        assert_eq!(is_green, bucket < 10, "bucket {bucket}: {served:?}");
        green += usize::from(is_green);
        buckets.insert(bucket, is_green);
        by_client.push(is_green);
    }
    let share = green as f64 / 2000.0 * 100.0;
    println!("10 % split: {green} of 2 000 new clients on api-green ({share:.1} %)");
    assert!((7.0..=13.0).contains(&share), "{share:.1} % on green");
    assert!(buckets.len() > 90, "buckets drawn: {}", buckets.len());

    // Each client keeps its side, and is not given a new bucket.
    for (&bucket, &was_green) in &buckets {
        for _ in 0..3 {
            let served = scene.get("/orders/again", Some(bucket)).await;
            assert_eq!(served.bucket, None, "{served:?}");
            assert_eq!(is_green(&served), was_green, "bucket {bucket} changed side");
        }
    }
    // Without a cookie, a client keeps its side by its address.
    for (client, &was_green) in by_client.iter().enumerate().take(100) {
        let served = scene
            .get_from(client as u32, "/orders/no-cookie", None)
            .await;
        assert_eq!(is_green(&served), was_green, "client {client} changed side");
    }
    // A cookie that is not a bucket is replaced.
    let served = scene.get("/orders/forged", Some(200)).await;
    assert!(served.bucket.is_some_and(|b| b < 100), "{served:?}");

    // An answer is counted when its request is logged, just after the client has it: the
    // last one may be counted a moment later.
    let expected = 2000.0 + 3.0 * buckets.len() as f64 + 100.0 + 1.0;
    let answered = |metrics: &drawbridge_tests::proxy::Metrics, pool: &str| {
        metrics.value(
            "drawbridge_split_answers_total",
            &[("route", "api"), ("pool", pool), ("class", "2xx")],
        )
    };
    drawbridge_tests::eventually::eventually(
        "every answer counted",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let metrics = scene.edge.metrics().await;
            let counted = answered(&metrics, "api-green") + answered(&metrics, "api");
            if counted == expected {
                Ok(())
            } else {
                Err(format!("{counted} of {expected}"))
            }
        },
    )
    .await;
    let metrics = scene.edge.metrics().await;
    let answered = |pool: &str| answered(&metrics, pool);
    assert_eq!(answered("api-green") + answered("api"), expected);
    assert!(answered("api-green") >= green as f64);
    assert!(
        metrics
            .get(
                "drawbridge_split_request_duration_seconds_count",
                &[("route", "api"), ("pool", "api-green")]
            )
            .is_some_and(|n| n >= green as f64),
        "{}",
        metrics.text
    );

    scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 25}}}"#)
        .await;
    for (&bucket, &was_green) in &buckets {
        let served = scene.get("/orders/raised", Some(bucket)).await;
        assert_eq!(is_green(&served), bucket < 25, "bucket {bucket}");
        if was_green {
            assert!(is_green(&served), "bucket {bucket} went back to blue");
        }
    }
}

/// Blue-green: under a steady load, the route switches to the green pool at 100 % and back to
/// blue at 0 %, each within the time the proxy takes to apply the document, with no error and no
/// answer other than 200; a slow request that started on blue finishes there with its 200 after
/// the switch.
#[tokio::test]
async fn blue_green_switches_and_back_under_load_with_no_error() {
    let scene = Arc::new(Scene::start("split_blue_green").await);
    scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 0}}}"#)
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (scene, stop) = (scene.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                let request = scene
                    .edge
                    .request(reqwest::Method::GET, &format!("/load/{worker}/{answered}"));
                match request.send().await {
                    Ok(answer) if answer.status() == 200 => answered += 1,
                    Ok(answer) => bad.push(format!("status {}", answer.status())),
                    Err(e) => bad.push(format!("error {e}")),
                }
            }
            (answered, bad)
        }));
    }
    let slow = scene.edge.slow_request_at(&scene.blue).await;

    scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 100}}}"#)
        .await;
    for i in 0..20 {
        let served = scene.get(&format!("/after-switch/{i}"), None).await;
        assert!(is_green(&served), "{served:?}");
    }
    let answer = slow
        .await
        .expect("task")
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(header(&answer, "x-upstream").as_deref(), Some("api-blue"));

    scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 0}}}"#)
        .await;
    for i in 0..20 {
        let served = scene.get(&format!("/after-back/{i}"), None).await;
        assert!(!is_green(&served), "{served:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in load {
        let (answered, bad) = worker.await.expect("a load task");
        assert!(
            bad.is_empty(),
            "unexpected answers under the switch: {bad:?}"
        );
        total += answered;
    }
    println!("blue-green there and back: {total} requests under load, all 200");
    assert!(total > 100, "the load ran: {total}");
}

/// Bad documents (not JSON, a pool or route the proxy does not have, a percentage over 100, a
/// route sent to its own pool) are refused with the reason in `/status` and counted, and the
/// split stays as it was; deleting the key splits nothing: no pool header and no cookie.
#[tokio::test]
async fn a_bad_split_document_changes_nothing_and_a_deleted_key_splits_nothing() {
    let scene = Scene::start("split_bad_documents").await;
    let applied = scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 10}}}"#)
        .await
        .split
        .expect("a split");
    let refusals = [
        ("not json", "not a split document"),
        (
            r#"{"routes": {"api": {"to": "api-purple", "percent": 10}}}"#,
            "pool \"api-purple\" is not one of this proxy's pools",
        ),
        (
            r#"{"routes": {"admin": {"to": "api-green", "percent": 10}}}"#,
            "route \"admin\" is not one of this proxy's routes",
        ),
        (
            r#"{"routes": {"api": {"to": "api-green", "percent": 150}}}"#,
            "more than 100",
        ),
        (
            r#"{"routes": {"api": {"to": "api", "percent": 50}}}"#,
            "already its own pool",
        ),
    ];
    for (value, why) in refusals {
        let status = scene.put_refused(value).await;
        let split = status.split.expect("a split");
        let rejected = split.last_rejected.as_ref().expect("rejected");
        assert!(rejected.error.contains(why), "{value}: {}", rejected.error);
        assert_eq!(split.applied_index, applied.applied_index, "{value}");
        assert_eq!(split.routes, applied.routes, "{value}");
        assert!(is_green(&scene.get("/orders/bucket-5", Some(5)).await));
        assert!(!is_green(&scene.get("/orders/bucket-50", Some(50)).await));
    }
    let metrics = scene.edge.metrics().await;
    assert_eq!(
        metrics.value("drawbridge_split_rejected_values_total", &[]),
        refusals.len() as f64
    );

    let index = clear_gate(&scene.consul.client(), &scene.split_key).await;
    scene
        .edge
        .wait_status("the split key deleted", Duration::from_secs(10), |r| {
            r.split
                .as_ref()
                .is_some_and(|s| s.applied_index >= index && s.routes.is_empty())
        })
        .await;
    let served = scene.get("/orders/unsplit", None).await;
    assert_eq!(served.pool, None);
    assert_eq!(served.bucket, None);
    assert_eq!(served.upstream, "api-blue");
    assert_eq!(scene.green.requests_to("/orders/unsplit"), 0);
}

/// A proxy restarted while Consul is away keeps the split it had applied (saved beside its
/// gate state): the switched clients stay on green.
#[tokio::test]
async fn a_proxy_restarted_while_consul_is_away_keeps_its_split() {
    let mut scene = Scene::start("split_kept_across_a_restart").await;
    let applied = scene
        .put_split(r#"{"routes": {"api": {"to": "api-green", "percent": 100}}}"#)
        .await
        .split
        .expect("a split");
    assert!(is_green(&scene.get("/before", None).await));

    scene.consul.stop();
    scene.edge.restart_with(Ready::Healthz).await;
    let split = scene.edge.status().await.split.expect("a split");
    assert_eq!(split.applied_index, applied.applied_index);
    assert_eq!(split.routes, applied.routes);
    for i in 0..10 {
        let served = scene
            .get_from(i, &format!("/after-restart/{i}"), None)
            .await;
        assert!(is_green(&served), "{served:?}");
    }
}
