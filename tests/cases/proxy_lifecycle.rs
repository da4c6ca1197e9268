//! The proxy's life around requests in flight and its Consul registration: a switch does not
//! cut a request already passed, SIGTERM drains (requests in flight and idle keep-alive
//! connections alike), and the proxy registers and deregisters
//! itself.

use std::time::{Duration, Instant};

use drawbridge_core::consul::QueryOptions;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::proxy::{header, set_gate, Site, SLOW_PATH_DELAY};
use drawbridge_tests::raw_http::RawConnection;
use nix::sys::signal::Signal;

/// How long a proxy may take to exit after SIGTERM: the scene's grace_period (2 s) plus the
/// runtimes' shutdown timeout and slack.
const EXIT_LIMIT: Duration = Duration::from_secs(2 + 5);

/// Waits for the proxy to exit after SIGTERM, at most `EXIT_LIMIT`.
fn exit_after_sigterm(site: &mut Site) -> std::process::ExitStatus {
    site.edge.wait_exit(EXIT_LIMIT).unwrap_or_else(|| {
        panic!(
            "drawbridge still runs {EXIT_LIMIT:?} after SIGTERM\n{}",
            site.edge.log_tail()
        )
    })
}

/// A request to a slow upstream path (1.5 s) that started before the key flips to
/// maintenance completes with the upstream's 200; requests after the flip get 503.
#[tokio::test]
async fn request_in_flight_during_the_switch_completes() {
    let site = Site::start("request_in_flight_during_the_switch_completes").await;
    let started = Instant::now();
    let slow = site.start_slow(site.edge.client(), "/slow/report").await;

    let index = set_gate(
        &site.consul.client(),
        &site.key,
        r#"{"mode":"maintenance"}"#,
    )
    .await;
    site.edge.wait_applied(index).await;
    assert_eq!(
        site.edge.get("/after").await.status(),
        503,
        "after the flip"
    );
    assert!(
        !slow.is_finished(),
        "the slow request finished before the flip was applied; the test proves nothing"
    );

    let answer = site.slow_answer(slow).await;
    assert_eq!(answer.status(), 200, "the in-flight request was cut");
    assert_eq!(header(&answer, "x-upstream").as_deref(), Some("ui"));
    assert!(started.elapsed() >= SLOW_PATH_DELAY);
}

/// SIGTERM while a slow request is in flight: the request completes with 200 and the
/// process exits 0 within grace_period (2 s) plus a few seconds.
#[tokio::test]
async fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let mut site = Site::start("sigterm_drains_the_request_in_flight").await;
    let slow = site.start_slow(site.edge.client(), "/slow/export").await;

    let term = Instant::now();
    site.edge.signal(Signal::SIGTERM);
    let answer = site.slow_answer(slow).await;
    assert_eq!(answer.status(), 200, "the in-flight request was cut");

    let status = exit_after_sigterm(&mut site);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        site.edge.log_tail()
    );
    assert!(term.elapsed() <= EXIT_LIMIT);
}

/// A keep-alive connection idle when SIGTERM arrives is not cut: its next request, sent after
/// the shutdown started, is served with `Connection: close`, and only then does the proxy close
/// it. (Pingora alone closes such connections at once, and a client sending at that moment
/// gets a connection error; graceful upgrades hit this under load.)
#[tokio::test]
async fn idle_keep_alive_connection_gets_its_next_answer_after_sigterm() {
    let mut site = Site::start("idle_keep_alive_connection_after_sigterm").await;
    let mut conn = RawConnection::connect(site.edge.listen_addr()).await;
    conn.send("GET /before HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let before = conn.read_answer("the request before SIGTERM").await;
    assert_eq!(before.status, 200, "{}", before.head);

    site.edge.signal(Signal::SIGTERM);
    // The listeners close once the shutdown started: wait for that, so the next request is
    // surely sent during the shutdown.
    let listen = site.edge.listen_addr();
    eventually(
        "the listener closed after SIGTERM",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move {
            match tokio::net::TcpStream::connect(listen).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepting".to_string()),
            }
        },
    )
    .await;

    conn.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let after = conn
        .read_answer("the request on the idle connection after SIGTERM")
        .await;
    assert_eq!(
        after.status,
        200,
        "{}\n{}",
        after.head,
        site.edge.log_tail()
    );
    assert_eq!(after.header("x-upstream").as_deref(), Some("ui"));
    assert_eq!(
        after.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "the answer during the shutdown should tell the client to reconnect:\n{}",
        after.head
    );
    assert!(
        conn.closed_by_peer().await,
        "the proxy did not close the connection after its answer"
    );
    let status = exit_after_sigterm(&mut site);
    assert_eq!(status.code(), Some(0), "{}", site.edge.log_tail());
}

/// With `consul.register`, the proxy registers itself as the configured service with its
/// admin URL in the service meta, and deregisters on SIGTERM.
#[tokio::test]
async fn proxy_registers_itself_and_deregisters_on_sigterm() {
    let mut site = Site::start_with("proxy_registers_itself_and_deregisters", |b| {
        b.register_as("drawbridge-e2e")
    })
    .await;
    let consul = site.consul.client();
    let admin_url = site.edge.admin_url("");

    let consul_ref = &consul;
    let entry = eventually(
        "the proxy is registered",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async move {
            let (entries, _) = consul_ref
                .health_service("drawbridge-e2e", false, &QueryOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            match entries.as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!("{} instances", other.len())),
            }
        },
    )
    .await;
    assert_eq!(
        entry
            .service
            .meta
            .get("admin_url")
            .map(|u| u.trim_end_matches('/')),
        Some(admin_url.as_str()),
        "service meta {:?}",
        entry.service.meta
    );

    site.edge.signal(Signal::SIGTERM);
    let status = exit_after_sigterm(&mut site);
    assert!(
        status.success(),
        "exit status {status}\n{}",
        site.edge.log_tail()
    );
    let (entries, _) = consul
        .health_service("drawbridge-e2e", false, &QueryOptions::default())
        .await
        .expect("consul answers");
    assert!(
        entries.is_empty(),
        "still registered after SIGTERM: {entries:#?}"
    );
}
