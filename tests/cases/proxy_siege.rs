//! Attacks on connections with legitimate traffic beside them, measured (the reliability tests
//! of slowloris and of a connection flood): slow headers are cut at `header_timeout` however
//! their bytes trickle, connections over `max_connections` are closed at once while the admin
//! listener answers, legitimate requests keep being served, and the proxy's client
//! connections close. The suite runs small sizes; the long runs take theirs from the environment:
//! `DRAWBRIDGE_SIEGE_SLOW` (slow connections, 200), `DRAWBRIDGE_SIEGE_GAP_MS` (between two
//! bytes of one, 1000), `DRAWBRIDGE_SIEGE_HEADER_SECS` (2), `DRAWBRIDGE_SIEGE_RATE` (legitimate
//! requests a second, 100), `DRAWBRIDGE_SIEGE_SECS` (how long the attack lasts, 5),
//! `DRAWBRIDGE_SIEGE_MAX_CONNECTIONS` (200) and `DRAWBRIDGE_SIEGE_FLOOD` (connections over it,
//! 300). Each test prints its figures. The suite runs beside other tests on a small machine, so
//! its latency bounds are loose by default (`DRAWBRIDGE_SIEGE_SLOWEST_MS`, 250: the legitimate
//! p99 under attack may be 3 times its baseline or this, whichever is more, and `/healthz` must
//! answer within it); a long run on a quiet machine sets 50.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_tests::load::{open_loop, Served};
use drawbridge_tests::proxy::Site;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `GET <url>` at `rate` a second for `secs` with `client` ([`open_loop`]).
async fn legitimate_load(client: &reqwest::Client, url: &str, rate: u64, secs: Duration) -> Served {
    open_loop(client, url, rate, secs, None).await
}

/// The latency bound of the run (`DRAWBRIDGE_SIEGE_SLOWEST_MS`).
fn slowest_allowed() -> Duration {
    Duration::from_millis(from_env("DRAWBRIDGE_SIEGE_SLOWEST_MS", 250))
}

/// A client of its own for the legitimate load, so that its idle keep-alive connections can be
/// closed before the proxy's descriptors are counted.
fn legitimate_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client")
}

/// The proxy's open descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The proxy's client connections: its sockets whose local port is `port` (the listener
/// itself aside). Its connections to the upstreams, pooled for reuse, are not among them.
fn client_sockets(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            let listening = fields.get(3) == Some(&"0A");
            local_port == Some(port)
                && !listening
                && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
        .count()
}

/// Waits up to 15 s for the proxy's client connections on `port` to come down to `before` + 10;
/// returns the last count.
async fn clients_settle(pid: u32, port: u16, before: usize) -> usize {
    let started = Instant::now();
    loop {
        let now = client_sockets(pid, port);
        if now <= before + 10 || started.elapsed() > Duration::from_secs(15) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects to `to` from the loopback address `127.0.0.<host>`.
async fn connect_from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
    socket.connect(to).await
}

/// How long after `since` the peer closed `stream` (end of file or reset), if within `within`.
async fn closed_after(
    stream: &mut TcpStream,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_deadline_while_legitimate_traffic_is_served() {
    let slow = from_env("DRAWBRIDGE_SIEGE_SLOW", 200) as usize;
    let gap = Duration::from_millis(from_env("DRAWBRIDGE_SIEGE_GAP_MS", 1000));
    let header_timeout = Duration::from_secs(from_env("DRAWBRIDGE_SIEGE_HEADER_SECS", 2));
    let rate = from_env("DRAWBRIDGE_SIEGE_RATE", 100);
    let attack = Duration::from_secs(from_env("DRAWBRIDGE_SIEGE_SECS", 5));
    let site = Site::start_with(
        "slowloris_is_cut_at_the_header_deadline_while_legitimate_traffic_is_served",
        |b| {
            // The legitimate load comes from one address and may open many connections when
            // answers slow down: this test is about the deadline, not the per-client cap.
            b.limit("header_timeout", format!("{}s", header_timeout.as_secs()))
                .limit("max_connections_per_client", 10_000)
        },
    )
    .await;
    let addr = site.edge.listen_addr();
    let url = site.edge.url("/legit");
    let pid = site.edge.pid();
    let fds_before = open_fds(pid);
    let clients_before = client_sockets(pid, addr.port());
    let client = legitimate_client();
    let baseline = legitimate_load(&client, &url, rate, Duration::from_secs(2)).await;

    // Every slow connection sends one byte of an endless header every `gap`, and opens again
    // when cut, for as long as the attack lasts: each cut is timed.
    let attack_ends = Instant::now() + attack;
    let cuts = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut attackers = Vec::new();
    for i in 0..slow {
        let cuts = cuts.clone();
        attackers.push(tokio::spawn(async move {
            while Instant::now() < attack_ends {
                let host = 2 + (i % 200) as u8;
                let Ok(stream) = connect_from(host, addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let opened = Instant::now();
                let (mut reader, mut writer) = stream.into_split();
                let trickle = async move {
                    let line = b"GET /slowloris HTTP/1.1\r\nHost: siege.test\r\nX-a: ";
                    for b in line.iter().chain(std::iter::repeat(&b'a')) {
                        if writer.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(gap).await;
                    }
                    std::future::pending::<()>().await;
                };
                let cut = async {
                    let mut buf = [0u8; 512];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => return opened.elapsed(),
                            Ok(_) => {}
                        }
                    }
                };
                tokio::select! {
                    after = cut => cuts.lock().unwrap().push(after),
                    () = trickle => {}
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(attack_ends + header_timeout * 2)) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_during = open_fds(pid);
    let served = legitimate_load(&client, &url, rate, attack).await;
    for attacker in attackers {
        attacker.await.expect("an attacker task does not panic");
    }
    drop(client);
    let clients_after = clients_settle(pid, addr.port(), clients_before).await;
    let fds_after = open_fds(pid);

    let mut cuts = cuts.lock().unwrap().clone();
    cuts.sort();
    eprintln!(
        "slowloris: {slow} connections, a byte every {gap:?}, header_timeout {header_timeout:?}: \
         {} cuts after {:.0}..{:.0} ms (median {:.0}); legitimate {}/{} ok at {rate}/s, \
         p50 {:.1} ms, p99 {:.1} ms (before the attack {:.1} ms); proxy descriptors {fds_before} \
         before, {fds_during} during, {fds_after} after ({clients_before} client connections \
         before, {clients_after} 15 s after)",
        cuts.len(),
        ms(cuts.first().copied().unwrap_or_default()),
        ms(cuts.last().copied().unwrap_or_default()),
        ms(cuts.get(cuts.len() / 2).copied().unwrap_or_default()),
        served.ok,
        served.sent,
        ms(served.p50),
        ms(served.p99),
        ms(baseline.p99),
    );
    assert!(
        cuts.len() >= slow,
        "{} cuts of {slow} slow connections",
        cuts.len()
    );
    let (first, last) = (cuts[0], cuts[cuts.len() - 1]);
    // Timed from the client's connect, which a busy client sees returning late: the proxy's
    // clock, from its accept, may have started a little earlier.
    assert!(
        first >= header_timeout * 9 / 10 && last <= header_timeout + Duration::from_secs(2),
        "cuts between {first:?} and {last:?}; header_timeout is {header_timeout:?}"
    );
    served.assert_unhurt(&baseline, 3, slowest_allowed());
    assert!(
        clients_after <= clients_before + 10,
        "the proxy holds {clients_after} client connections 15 s after the attack, \
         {clients_before} before"
    );
    assert_eq!(site.ui.requests_to("/slowloris"), 0);
}

#[tokio::test]
async fn a_connection_flood_is_refused_at_once_and_the_admin_listener_answers() {
    let max_connections = from_env("DRAWBRIDGE_SIEGE_MAX_CONNECTIONS", 200) as usize;
    let flood = from_env("DRAWBRIDGE_SIEGE_FLOOD", 300) as usize;
    let site = Site::start_with(
        "a_connection_flood_is_refused_at_once_and_the_admin_listener_answers",
        |b| {
            b.limit("header_timeout", "60s")
                .limit("max_connections", max_connections as i64)
                .limit("max_connections_per_client", max_connections as i64)
        },
    )
    .await;
    let addr = site.edge.listen_addr();
    let pid = site.edge.pid();
    let fds_before = open_fds(pid);
    let clients_before = client_sockets(pid, addr.port());
    let healthz = site.edge.admin_url("/healthz");
    let client = legitimate_client();

    // The admin listener, asked every 20 ms while the flood comes and goes.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = {
        let probing = probing.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut failed = 0;
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                match client
                    .get(&healthz)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                {
                    Ok(answer) if answer.status() == 200 => slowest = slowest.max(asked.elapsed()),
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (slowest, failed)
        })
    };

    let opened = Instant::now();
    let mut streams = Vec::new();
    for i in 0..max_connections + flood {
        let host = 2 + (i % 200) as u8;
        streams.push(connect_from(host, addr).await.expect("connect"));
    }
    let connected = opened.elapsed();
    let fds_peak = open_fds(pid);
    let mut watches = Vec::new();
    for mut stream in streams {
        watches.push(tokio::spawn(async move {
            let since = Instant::now();
            let closed = closed_after(&mut stream, since, Duration::from_millis(1500)).await;
            (closed, stream)
        }));
    }
    let mut closed = 0;
    let mut held = Vec::new();
    for watch in watches {
        let (was_closed, stream) = watch.await.expect("a watch task does not panic");
        if was_closed.is_some() {
            closed += 1;
        } else {
            held.push(stream);
        }
    }
    let fds_held = open_fds(pid);
    drop(held);
    let ended = Instant::now();
    let mut served_after = None;
    while ended.elapsed() < Duration::from_secs(2) {
        let answer = client
            .get(site.edge.url("/after-the-flood"))
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            served_after = Some(ended.elapsed());
            break;
        }
    }
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (slowest_healthz, healthz_failed) = probe.await.expect("the probe does not panic");
    drop(client);
    let clients_after = clients_settle(pid, addr.port(), clients_before).await;
    let fds_after = open_fds(pid);
    eprintln!(
        "connection flood: {} connections opened in {:.0} ms against max_connections \
         {max_connections}: {closed} closed within 1.5 s, {} held; proxy descriptors \
         {fds_before} before, {fds_peak} at the peak, {fds_held} held, {fds_after} after \
         ({clients_after} client connections 15 s after); \
         /healthz slowest {:.1} ms, {healthz_failed} failed; served again {:?} after the flood",
        max_connections + flood,
        ms(connected),
        max_connections + flood - closed,
        ms(slowest_healthz),
        served_after,
    );
    assert_eq!(
        closed, flood,
        "the connections over max_connections are closed"
    );
    assert!(
        fds_peak <= fds_before + max_connections + 100
            && fds_held <= fds_before + max_connections + 10,
        "the proxy held {fds_peak} descriptors at the peak, {fds_held} after the cut"
    );
    assert_eq!(healthz_failed, 0, "/healthz failed during the flood");
    assert!(
        slowest_healthz <= slowest_allowed(),
        "/healthz took {slowest_healthz:?}"
    );
    assert!(
        served_after.is_some_and(|after| after <= Duration::from_secs(1)),
        "served {served_after:?} after the flood"
    );
    assert!(
        clients_after <= clients_before + 10,
        "{clients_after} client connections after, {clients_before} before"
    );
}
