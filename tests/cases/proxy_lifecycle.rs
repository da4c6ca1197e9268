//! The proxy's life around requests in flight and its Consul registration: a switch does not
//! cut a request already passed, SIGTERM drains (requests in flight and idle keep-alive
//! connections alike), SIGUSR2 restarts without an error under systemd's readiness protocol, and
//! the proxy registers and deregisters itself.

use std::time::{Duration, Instant};

use drawbridge_core::consul::QueryOptions;
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::process::{AdoptedProcess, ChildGuard, TestDir};
use drawbridge_tests::proxy::{drawbridge_bin, Drawbridge, Route};
use drawbridge_tests::proxy::{header, set_gate, Site, SLOW_PATH_DELAY};
use drawbridge_tests::raw_http::RawConnection;
use drawbridge_tests::upstream::Upstream;
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

/// The next message the proxy sends to the `NOTIFY_SOCKET` the test made, as systemd would get
/// it (`READY=1\nMAINPID=…`).
async fn next_notice(socket: &tokio::net::UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("reading the notify socket ({what}): {e}"),
        Err(_) => panic!("no message on the notify socket within 20 s ({what})"),
    }
}

/// Under systemd (`Type=notify`): the proxy says READY=1 with its pid once it serves. SIGUSR2
/// while the config on disk is broken starts nothing: the proxy goes on serving, and counts and
/// logs the refusal. SIGUSR2 with a good config, while a client sends at a steady rate: a new
/// process takes the listeners over and tells its own pid, the old one drains and exits 0, and
/// every request is answered 200.
#[tokio::test]
async fn sigusr2_restarts_without_an_error_and_tells_systemd_the_new_main_pid() {
    let notify_dir = TestDir::new("sigusr2_restart_notify");
    let notify_path = notify_dir.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let mut site = Site::start_with("sigusr2_restart", |mut b| {
        b.env.push((
            "NOTIFY_SOCKET".to_string(),
            notify_path.display().to_string(),
        ));
        b
    })
    .await;
    let old_pid = site.edge.pid();
    assert_eq!(
        next_notice(&notify, "at start").await,
        format!("READY=1\nMAINPID={old_pid}")
    );

    // Refused before anything starts: a file that fails its check, then one that moves the
    // upgrade socket (the sockets would be handed over on the old one).
    let config = std::fs::read_to_string(site.edge.config_path()).expect("read the config");
    let sock = site
        .dir
        .join("drawbridge.upgrade.sock")
        .display()
        .to_string();
    assert!(
        config.contains(&sock),
        "the upgrade socket is {sock}: {config}"
    );
    for (refusals, changed, reason) in [
        (
            1.0,
            "[server]\nlisten = 8080\n".to_string(),
            "does not pass its check",
        ),
        (
            2.0,
            config.replace(&sock, &format!("{sock}.moved")),
            "server.upgrade_sock changed",
        ),
    ] {
        std::fs::write(site.edge.config_path(), changed).expect("change the config");
        site.edge.signal(Signal::SIGUSR2);
        site.edge
            .wait_metric("drawbridge_restart_refusals_total", &[], refusals)
            .await;
        assert!(site.edge.is_running(), "{}", site.edge.log_tail());
        assert_eq!(site.edge.get("/after-refusal").await.status(), 200);
        assert!(
            site.edge.log().contains(reason),
            "no {reason:?} in the log:\n{}",
            site.edge.log_tail()
        );
    }
    std::fs::write(site.edge.config_path(), &config).expect("restore the config");
    let started = site
        .edge
        .metrics()
        .await
        .value("drawbridge_start_time_seconds", &[]);

    let sending = std::sync::atomic::AtomicBool::new(true);
    let url = site.edge.url("/page");
    let client = site.edge.client().clone();
    let served = drawbridge_tests::load::open_loop(
        &client,
        &url,
        50,
        Duration::from_secs(60),
        Some(&sending),
    );
    let restart = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        site.edge.signal(Signal::SIGUSR2);
        // Adopted at once, so that it is killed even if the test fails before it serves.
        let successor = adopt_child_of(old_pid).await;
        let held = next_notice(&notify, "after SIGUSR2, the sockets taken").await;
        assert_eq!(held, format!("MAINPID={}", successor.pid()));
        let notice = next_notice(&notify, "after SIGUSR2").await;
        let new_pid: u32 = notice
            .strip_prefix("READY=1\nMAINPID=")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("unexpected notice {notice:?}"));
        assert_ne!(new_pid, old_pid);
        assert_eq!(
            successor.pid(),
            new_pid,
            "the new process is the proxy's child"
        );
        // Polled, not waited on: the upstreams and the load run on this test's one thread.
        let drain_ends = Instant::now() + Duration::from_secs(20);
        while site.edge.is_running() && Instant::now() < drain_ends {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exit = site.edge.wait_exit(Duration::ZERO);
        assert!(
            exit.is_some_and(|e| e.success()),
            "the old process ended with {exit:?}\n{}",
            site.edge.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        successor
    };
    let (served, successor) = tokio::join!(served, restart);
    println!(
        "{} / {} answered 200 through the restart, p99 {:?}",
        served.ok, served.sent, served.p99
    );
    assert!(served.sent > 200, "only {} sent", served.sent);
    assert_eq!(
        served.ok, served.sent,
        "failures through the restart: {:?}",
        served.failures
    );
    assert!(successor.is_running(), "the new process is gone");
    let fresh = drawbridge_tests::proxy::test_client(None);
    let answer = fresh
        .get(site.edge.url("/fresh"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 200, "the new process serves");
    // The admin listener was handed over too: this is the new process's.
    let metrics = site.edge.metrics().await;
    assert!(metrics.value("drawbridge_start_time_seconds", &[]) >= started);
    assert_eq!(metrics.value("drawbridge_restart_refusals_total", &[]), 0.0);
}

/// The only child of process `parent` once it has one (within 10 s), adopted: killed when the
/// test ends.
async fn adopt_child_of(parent: u32) -> AdoptedProcess {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = child_of(parent) {
            return AdoptedProcess::adopt(pid);
        }
        assert!(
            Instant::now() < deadline,
            "no child of {parent} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A process whose parent is `parent`, from `/proc/<pid>/stat` (its fourth field).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
}

/// SIGHUP and SIGUSR2 sent while a process started with `--upgrade` waits for the listening
/// sockets (here from nobody: it gives up after about 5 s and exits 1, Pingora's "Bootstrap
/// failed"): neither ends it, though both end a process by default and no service listens for
/// them yet. (A reload or a restart sent at the moment of an upgrade must not kill the new
/// process while the old one drains.)
#[tokio::test]
async fn signals_before_the_services_start_are_not_fatal() {
    let dir = TestDir::new("early_signals");
    let upstream = Upstream::start("ui");
    let config = Drawbridge::builder("http://127.0.0.1:1", "drawbridge/test/early/gate")
        .static_pool("ui", &[&upstream], None)
        .route(Route::page("ui", "/", "ui"))
        .write_config(dir.path());
    let mut command = std::process::Command::new(drawbridge_bin());
    command
        .arg("--config")
        .arg(&config)
        .arg("--upgrade")
        .env("DRAWBRIDGE_LOG", "info");
    let mut proxy = ChildGuard::spawn("drawbridge", command, dir.path());
    let waiting = eventually(
        "the new process waits for the sockets",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            let log = std::fs::read_to_string(proxy.stderr_path()).unwrap_or_default();
            async move {
                if log.contains("Bootstrap starting") {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            }
        },
    );
    waiting.await;
    for signal in [Signal::SIGHUP, Signal::SIGUSR2] {
        proxy.signal(signal);
    }
    let exit = tokio::task::spawn_blocking(move || {
        let exit = proxy.wait_timeout(Duration::from_secs(15));
        (exit, proxy.log_tail(20))
    })
    .await
    .expect("no panic");
    match exit {
        (Some(exit), _) if exit.code() == Some(1) => {}
        (exit, log) => panic!("expected exit 1 after the bootstrap gave up, got {exit:?}\n{log}"),
    }
}
