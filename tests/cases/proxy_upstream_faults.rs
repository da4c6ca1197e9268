//! Upstreams that fail on purpose (the reliability test of upstream faults): one that closes at
//! once, one that resets in the middle of its answer, one that hangs, one that never reads. In
//! normal mode each gets 502 or 504 within its pool's timeout, with a body; in maintenance the
//! proxy answers 503 regardless and no connection reaches them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_tests::proxy::{Pool, Route, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The read timeout of the faulty pools.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How a faulty upstream misbehaves on every connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Accepts and closes at once.
    Close,
    /// Reads the request, sends half a status line, then resets the connection.
    ResetMidAnswer,
    /// Reads the request and never answers.
    Hang,
    /// Accepts and never reads.
    Deaf,
}

/// A server on loopback that misbehaves as told, counting the connections it accepted.
struct FaultyUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyUpstream {
    async fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    match fault {
                        Fault::Close => {}
                        Fault::ResetMidAnswer => {
                            let _ = stream.read(&mut buf).await;
                            let _ = stream.write_all(b"HTTP/1.1 2").await;
                            let _ = stream.set_zero_linger();
                        }
                        Fault::Hang => {
                            let _ = stream.read(&mut buf).await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        Fault::Deaf => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        FaultyUpstream {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The faults in the order of their routes, `/fault/<name>/`.
const FAULTS: [(&str, Fault); 4] = [
    ("close", Fault::Close),
    ("reset", Fault::ResetMidAnswer),
    ("hang", Fault::Hang),
    ("deaf", Fault::Deaf),
];

#[tokio::test]
async fn faulty_upstreams_get_502_or_504_in_time_and_none_in_maintenance() {
    let mut upstreams = Vec::new();
    for (_, fault) in FAULTS {
        upstreams.push(FaultyUpstream::start(fault).await);
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let site = Site::start_with(
        "faulty_upstreams_get_502_or_504_in_time_and_none_in_maintenance",
        |mut b| {
            for ((name, _), addr) in FAULTS.iter().zip(&addrs) {
                b.pools.push(Pool {
                    name: name.to_string(),
                    servers: Some(vec![addr.to_string()]),
                    consul_service: None,
                    health_check: None,
                    connect_timeout: "1s".to_string(),
                    read_timeout: format!("{}s", READ_TIMEOUT.as_secs()),
                });
                b = b.route(Route::api(name, &format!("/fault/{name}/"), name));
            }
            b
        },
    )
    .await;

    for ((name, fault), want) in FAULTS.iter().zip([502, 502, 504, 504]) {
        let asked = Instant::now();
        let answer = site.edge.get(&format!("/fault/{name}/x")).await;
        let took = asked.elapsed();
        let status = answer.status().as_u16();
        let body = answer.text().await.expect("a body");
        assert_eq!(status, want, "{fault:?}: {body}");
        assert!(
            body.contains(&want.to_string()),
            "{fault:?}: the body names the status: {body}"
        );
        let limit = if want == 504 {
            READ_TIMEOUT + READ_TIMEOUT / 10
        } else {
            Duration::from_secs(1)
        };
        assert!(
            took <= limit && (want == 502 || took >= READ_TIMEOUT - READ_TIMEOUT / 10),
            "{fault:?}: answered after {took:?}, the pool's read timeout is {READ_TIMEOUT:?}"
        );
        eprintln!("upstream fault {fault:?}: {status} after {took:?}");
    }
    // Counted once the answer is written: a moment after the client has it.
    for ((name, _), status) in FAULTS.iter().zip(["502", "502", "504", "504"]) {
        site.edge
            .wait_metric(
                "drawbridge_upstream_errors_total",
                &[("pool", name), ("status", status)],
                1.0,
            )
            .await;
    }

    // In maintenance the proxy answers by itself: fast, and the faulty upstreams see nothing.
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let before: Vec<u64> = upstreams.iter().map(FaultyUpstream::accepted).collect();
    let client = site.edge.client();
    let started = Instant::now();
    let mut answers = Vec::new();
    for i in 0..1000 {
        let (name, _) = FAULTS[i % FAULTS.len()];
        answers.push(
            client
                .get(site.edge.url(&format!("/fault/{name}/{i}")))
                .send(),
        );
    }
    let mut statuses = std::collections::BTreeMap::new();
    for answer in futures_join(answers).await {
        let status = answer.map_or(0, |a| a.status().as_u16());
        *statuses.entry(status).or_insert(0) += 1;
    }
    let took = started.elapsed();
    eprintln!("maintenance over faulty upstreams: 1000 requests in {took:?}: {statuses:?}");
    assert_eq!(statuses.get(&503), Some(&1000), "{statuses:?}");
    let after: Vec<u64> = upstreams.iter().map(FaultyUpstream::accepted).collect();
    assert_eq!(before, after, "connections reached the faulty upstreams");
}

/// Awaits every request, 64 at a time.
async fn futures_join<F>(requests: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut answers = Vec::with_capacity(requests.len());
    let mut requests = requests.into_iter();
    loop {
        let batch: Vec<_> = requests.by_ref().take(64).map(tokio::spawn).collect();
        if batch.is_empty() {
            return answers;
        }
        for task in batch {
            answers.push(task.await.expect("a request task does not panic"));
        }
    }
}
