//! TLS on the public listener: the certificate chosen by the name the client sends (exact,
//! wildcard, default), TLS 1.2 and 1.3 only, the maintenance answers and the bypass over
//! HTTPS, certificates reloaded on SIGHUP and on a file change without dropping a connection, a
//! bad file at reload keeping the old certificate (reported in `/status` and a metric), the
//! certificate list of the config file applied on SIGHUP, and a bad file at start refused with its
//! key.
//!
//! The certificates are made by each test in its folder with `rcgen`; Debian's `openssl
//! s_client` plays the clients that pick the protocol version or send no name.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drawbridge_core::bypass::{BypassKey, Keyring};
use drawbridge_tests::eventually::eventually;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{header, now_unix, run_drawbridge, Drawbridge, Route, Site};
use drawbridge_tests::tls_ca::{Issued, TestCa};
use drawbridge_tests::upstream::Upstream;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENV: &str = "e2e";
const SECRET: &str = "e2e-bypass-secret-0123456789abcdef-0123456789";
/// How long a reload may take to reach new handshakes (a SIGHUP is read at once; a file
/// change within `tls.watch_interval`, 1 s in these tests).
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// Replaces the file `to` with `from`'s bytes at once (a rename), as a certificate manager does.
fn replace(from: &Path, to: &Path) {
    let temporary = to.with_extension("new");
    std::fs::copy(from, &temporary).unwrap();
    std::fs::rename(&temporary, to).unwrap();
}

/// What `openssl s_client` saw of a handshake with `addr`: the subject of the certificate,
/// `None` when the handshake failed, and the whole output.
async fn s_client(addr: SocketAddr, args: &[&str]) -> (Option<String>, String) {
    let run = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out: Output = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("openssl s_client ends once its standard input is closed")
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let subject = text
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(str::to_string);
    (subject, text)
}

/// The DER certificate the server presented on the connection that carried `answer`.
fn peer_certificate(answer: &reqwest::Response) -> Vec<u8> {
    answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("an answer over TLS from a client with tls_info")
        .to_vec()
}

/// `GET https://<host><path>` from `client`; a transport error panics with the proxy's log.
async fn get(
    edge: &Drawbridge,
    client: &reqwest::Client,
    host: &str,
    path: &str,
) -> reqwest::Response {
    edge.send(client.get(edge.tls_url(host, path))).await
}

/// Waits until a new connection to `host` is served `expected`.
async fn wait_served(edge: &Drawbridge, ca: &Path, host: &str, expected: &Issued) {
    eventually(
        &format!("new handshakes for {host} get {}", expected.cert.display()),
        RELOAD_DEADLINE,
        Duration::from_millis(100),
        || async move {
            let fresh = edge.tls_client(ca, &[host]);
            let answer = fresh
                .get(edge.tls_url(host, "/"))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            if peer_certificate(&answer) == expected.der {
                Ok(())
            } else {
                Err("the previous certificate".to_string())
            }
        },
    )
    .await;
}

/// With certificates for `a.test`, `b.test` (the default, though listed second) and
/// `*.w.test`: each name gets its certificate over HTTPS and through the proxy to the upstream;
/// a name two labels under the wildcard, an unknown name and no name get the default; TLS 1.0
/// and 1.1 are refused, 1.2 and 1.3 served; ALPN gives h2 to a client offering it and HTTP/1.1 to one offering only that;
/// `/status` lists the certificates and the expiry gauge has one series each.
#[tokio::test]
async fn sni_picks_each_certificate_and_the_default_answers_the_rest() {
    let test = "sni_picks_each_certificate";
    let certs = TestDir::new(&format!("{test}-certs"));
    let ca = TestCa::new(certs.path());
    let a = ca.issue("a", &["a.test"]);
    let b = ca.issue("b", &["b.test"]);
    let w = ca.issue("w", &["*.w.test"]);
    let site = Site::start_with(test, |builder| {
        builder
            .tls_certificate(&a.cert, &a.key, false)
            .tls_certificate(&b.cert, &b.key, true)
            .tls_certificate(&w.cert, &w.key, false)
    })
    .await;
    let edge = &site.edge;
    let client = edge.tls_client(&ca.cert, &["a.test", "b.test", "x.w.test"]);
    for (host, issued) in [("a.test", &a), ("b.test", &b), ("x.w.test", &w)] {
        let answer = get(edge, &client, host, "/page").await;
        assert_eq!(answer.status(), 200, "{host}");
        assert_eq!(peer_certificate(&answer), issued.der, "{host}");
        assert_eq!(
            header(&answer, "x-upstream").as_deref(),
            Some("ui"),
            "{host}"
        );
    }
    let addr = edge.tls_addr();
    for (args, subject) in [
        (&["-servername", "a.test"][..], "CN = a"),
        (&["-servername", "X.W.Test"], "CN = w"),
        (&["-servername", "y.x.w.test"], "CN = b"),
        (&["-servername", "w.test"], "CN = b"),
        (&["-servername", "other.test"], "CN = b"),
        (&["-noservername"], "CN = b"),
    ] {
        let (seen, text) = s_client(addr, args).await;
        assert_eq!(seen.as_deref(), Some(subject), "{args:?}:\n{text}");
    }
    for version in ["-tls1", "-tls1_1"] {
        // The client's own floor is lowered, so the refusal is the server's.
        let (seen, text) = s_client(
            addr,
            &[
                "-servername",
                "a.test",
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
        )
        .await;
        assert_eq!(seen, None, "{version} was served:\n{text}");
        assert!(
            text.contains("alert"),
            "{version}: no alert from the server:\n{text}"
        );
    }
    for version in ["-tls1_2", "-tls1_3"] {
        let (seen, text) = s_client(addr, &["-servername", "a.test", version]).await;
        assert_eq!(seen.as_deref(), Some("CN = a"), "{version}:\n{text}");
    }
    for (offered, chosen) in [("h2,http/1.1", "h2"), ("http/1.1", "http/1.1")] {
        let (_, text) = s_client(addr, &["-servername", "a.test", "-alpn", offered]).await;
        assert!(text.contains(&format!("ALPN protocol: {chosen}")), "{text}");
    }

    let report = edge.status().await;
    let tls = report.tls.expect("/status has a tls section");
    assert_eq!(tls.listen, [addr.to_string()]);
    let summary: Vec<(Vec<String>, bool, Option<String>)> = tls
        .certificates
        .iter()
        .map(|c| (c.names.clone(), c.default, c.last_error.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (vec!["a.test".to_string()], false, None),
            (vec!["b.test".to_string()], true, None),
            (vec!["*.w.test".to_string()], false, None),
        ]
    );
    assert_eq!(tls.certificates[0].cert, a.cert.display().to_string());
    let metrics = edge.metrics().await;
    for (issued, names) in [(&a, "a.test"), (&b, "b.test"), (&w, "*.w.test")] {
        let cert = issued.cert.display().to_string();
        let expiry = metrics
            .get(
                "drawbridge_tls_certificate_expiry_timestamp_seconds",
                &[("cert", cert.as_str()), ("names", names)],
            )
            .unwrap_or_else(|| panic!("no expiry for {names}:\n{}", metrics.text));
        let days = (expiry - now_unix() as f64) / 86_400.0;
        assert!(
            (29.0..=30.0).contains(&days),
            "{names} expires in {days} days"
        );
    }
    // The plain listener still serves plain HTTP.
    assert_eq!(edge.get("/page").await.status(), 200);
}

fn bypass_token() -> String {
    let keyring = Keyring::new(vec![
        BypassKey::new("k1", SECRET.as_bytes()).expect("a valid test key")
    ])
    .expect("one key is a valid keyring");
    keyring.sign(ENV, now_unix(), Duration::from_secs(600), Some("test"))
}

/// With the gate closed, HTTPS clients get the maintenance page on page routes and
/// problem+json on API routes, both marked as planned; a bypass token passes; opened again,
/// the upstream answers.
#[tokio::test]
async fn maintenance_answers_and_the_bypass_work_over_tls() {
    let (site, certs) = Site::start_tls("maintenance_over_tls", "a.test", |b| {
        b.bypass_key(ENV, "k1", SECRET)
    })
    .await;
    let ca = &certs.ca;
    site.put_gate(r#"{"mode":"maintenance","message":"Back soon"}"#)
        .await;
    let edge = &site.edge;
    let client = edge.tls_client(&ca.cert, &["a.test"]);

    let page = get(edge, &client, "a.test", "/").await;
    assert_eq!(page.status(), 503);
    assert_eq!(
        header(&page, "x-drawbridge-outage").as_deref(),
        Some("planned")
    );
    assert!(header(&page, "content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("Back soon"));

    let problem = get(edge, &client, "a.test", "/api/orders").await;
    assert_eq!(problem.status(), 503);
    assert_eq!(
        header(&problem, "x-drawbridge-outage").as_deref(),
        Some("planned")
    );
    assert!(header(&problem, "content-type")
        .unwrap_or_default()
        .starts_with("application/problem+json"));
    let body: serde_json::Value = serde_json::from_str(&problem.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], 503, "{body}");
    assert_eq!(body["detail"], "Back soon", "{body}");

    let passed = edge
        .send(
            client
                .get(edge.tls_url("a.test", "/api/orders"))
                .header("x-drawbridge-bypass", bypass_token()),
        )
        .await;
    assert_eq!(passed.status(), 200);
    assert_eq!(
        header(&passed, "x-drawbridge-bypassed").as_deref(),
        Some("token")
    );
    assert_eq!(header(&passed, "x-upstream").as_deref(), Some("api"));

    site.delete_gate().await;
    assert_eq!(get(edge, &client, "a.test", "/").await.status(), 200);
}

/// With `server.https_redirect`, a plain request is sent to the same host, path and query over
/// HTTPS with 308 (writes too, which 308 keeps as they are), but for ACME challenges and
/// `/.well-known/maintenance`; answers over TLS carry `tls.hsts`, the proxy's own too, and the
/// upstream learns the scheme from `X-Forwarded-Proto`.
#[tokio::test]
async fn plain_requests_go_to_https_and_tls_answers_carry_hsts() {
    let hsts = "max-age=63072000; includeSubDomains";
    // The test client's address stands for a load balancer in front.
    let (site, certs) = Site::start_tls("https_redirect_and_hsts", "a.test", |b| {
        b.setting("server", "https_redirect", true)
            .setting("tls", "hsts", hsts)
            .trusted_proxies(&["127.0.0.1/32"])
    })
    .await;
    let ca = &certs.ca;
    let edge = &site.edge;
    let port = edge.tls_addr().port();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let answer = edge
            .send(
                edge.request(method.clone(), "/page/x?q=1&r=%20")
                    .header("host", "a.test"),
            )
            .await;
        assert_eq!(answer.status(), 308, "{method}");
        assert_eq!(
            header(&answer, "location"),
            Some(format!("https://a.test:{port}/page/x?q=1&r=%20")),
            "{method}"
        );
        assert_eq!(header(&answer, "strict-transport-security"), None);
    }
    assert_eq!(
        site.ui.requests_to("/page/x"),
        0,
        "a redirected request was proxied"
    );
    let known = edge.get("/.well-known/maintenance").await;
    assert_eq!(known.status(), 200);
    let challenge = edge.get("/.well-known/acme-challenge/t0ken").await;
    assert_eq!(
        (
            challenge.status().as_u16(),
            header(&challenge, "x-upstream")
        ),
        (200, Some("ui".to_string()))
    );
    // Only a challenge token is served plain, and only the maintenance document itself.
    for elsewhere in [
        "/.well-known/acme-challenge/a/b",
        "/.well-known/maintenanceX",
    ] {
        assert_eq!(edge.get(elsewhere).await.status(), 308, "{elsewhere}");
    }
    // A load balancer that ended TLS says so: served, not sent round again.
    let behind = edge
        .send(
            edge.request(reqwest::Method::GET, "/page/lb")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    assert_eq!(behind.status(), 200);
    let seen = site
        .ui
        .last_request()
        .expect("the upstream saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let client = edge.tls_client(&ca.cert, &["a.test"]);
    let page = get(edge, &client, "a.test", "/page").await;
    assert_eq!(page.status(), 200);
    assert_eq!(
        header(&page, "strict-transport-security").as_deref(),
        Some(hsts)
    );
    let seen = site
        .ui
        .last_request()
        .expect("the upstream saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("a.test:{port}").as_str())
    );
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let closed = get(edge, &client, "a.test", "/api/orders").await;
    assert_eq!(closed.status(), 503);
    assert_eq!(
        header(&closed, "strict-transport-security").as_deref(),
        Some(hsts)
    );
}

/// Counts requests and errors of a client that keeps sending on its kept-alive connection until
/// told to stop.
struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    fn start(client: reqwest::Client, url: String) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, sent, errors) = (stop.clone(), sent.clone(), errors.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(answer) if answer.status() == 200 => {
                            let _ = answer.bytes().await;
                        }
                        Ok(answer) => errors.lock().unwrap().push(answer.status().to_string()),
                        Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Sender {
            stop,
            sent,
            errors,
            task,
        }
    }

    /// Waits until it has sent `more` requests beyond those sent now.
    async fn wait_more(&self, more: usize) {
        let target = self.sent.load(Ordering::Relaxed) + more;
        eventually(
            &format!("{more} more requests sent"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async move {
                let sent = self.sent.load(Ordering::Relaxed);
                if sent >= target {
                    Ok(())
                } else {
                    Err(format!("{sent} sent"))
                }
            },
        )
        .await;
    }

    /// Stops it; returns the requests sent and the errors met.
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let errors = self.errors.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), errors)
    }
}

/// A client holds a kept-alive TLS connection and keeps sending while the certificate files
/// are replaced and SIGHUP is sent (files are not watched in this test: `tls.watch_interval`
/// is an hour): new handshakes get the new certificate, the held connection keeps working on
/// the old one, and no request fails.
#[tokio::test]
async fn sighup_swaps_the_certificate_while_a_kept_alive_connection_keeps_working() {
    let test = "sighup_swaps_the_certificate";
    let certs = TestDir::new(&format!("{test}-certs"));
    let ca = TestCa::new(certs.path());
    let served = ca.issue("served", &["a.test"]);
    let new = ca.issue("new", &["a.test", "www.a.test"]);
    let mut site = Site::start_with(test, |builder| {
        builder
            .tls_certificate(&served.cert, &served.key, false)
            .tls_watch_interval("1h")
    })
    .await;
    let held = site.edge.tls_client(&ca.cert, &["a.test"]);
    let first = get(&site.edge, &held, "a.test", "/").await;
    assert_eq!(peer_certificate(&first), served.der);
    let sender = Sender::start(held.clone(), site.edge.tls_url("a.test", "/page"));
    sender.wait_more(5).await;

    // The files change; they are not read again before SIGHUP.
    replace(&new.cert, &served.cert);
    replace(&new.key, &served.key);
    let fresh = site.edge.tls_client(&ca.cert, &["a.test"]);
    let before = get(&site.edge, &fresh, "a.test", "/").await;
    assert_eq!(
        peer_certificate(&before),
        served.der,
        "reloaded without SIGHUP"
    );

    site.edge.signal(Signal::SIGHUP);
    wait_served(&site.edge, &ca.cert, "a.test", &new).await;
    sender.wait_more(5).await;
    let (sent, errors) = sender.stop().await;
    assert!(
        errors.is_empty(),
        "{} of {sent} requests failed: {errors:?}",
        errors.len()
    );
    assert!(sent >= 10, "only {sent} requests sent");
    // The held connection is the one made before the reload: it still shows the old certificate.
    let after = get(&site.edge, &held, "a.test", "/").await;
    assert_eq!(after.status(), 200);
    assert_eq!(
        peer_certificate(&after),
        served.der,
        "the held connection was replaced"
    );

    let report = site.edge.status().await;
    let entry = &report.tls.expect("a tls section").certificates[0];
    assert_eq!(entry.names, ["a.test", "www.a.test"]);
    assert_eq!(entry.last_error, None);
    assert!(site
        .edge
        .log()
        .contains("SIGHUP: TLS certificates read again read=1 refused=0"));
}

/// Edits the proxy's config file in place: `edit` changes its TOML table.
fn edit_config(edge: &Drawbridge, edit: impl FnOnce(&mut toml::Table)) {
    let path = edge.config_path();
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, toml::to_string(&config).unwrap()).unwrap();
}

/// The subject of the certificate served to a client that sends `name`, checked without
/// verifying it (a name the certificate does not cover gets the default).
async fn subject_for(edge: &Drawbridge, name: &str) -> String {
    let (subject, text) = s_client(edge.tls_addr(), &["-servername", name]).await;
    subject.unwrap_or_else(|| panic!("no certificate for {name}:\n{text}"))
}

/// The `[[tls.certificates]]` list of a config table.
fn certificate_list(config: &mut toml::Table) -> &mut Vec<toml::Value> {
    config["tls"]["certificates"]
        .as_array_mut()
        .expect("a certificate list")
}

/// SIGHUP reads the config file again: a certificate added to `[[tls.certificates]]` is served
/// to new handshakes at once, and a change elsewhere (`[limits]`) is named as waiting for the
/// restart (`/status`, gauge, log). A file that fails its check changes nothing and is reported
/// with its key. A certificate removed from the list is no longer served, and its expiry series
/// is gone.
#[tokio::test]
async fn sighup_applies_the_certificate_list_and_names_what_waits_for_the_restart() {
    let test = "sighup_reads_the_config";
    let certs = TestDir::new(&format!("{test}-certs"));
    let ca = TestCa::new(certs.path());
    let a = ca.issue("a", &["a.test"]);
    let b = ca.issue("b", &["b.test"]);
    let mut site = Site::start_with(test, |builder| {
        builder
            .tls_certificate(&a.cert, &a.key, false)
            .tls_watch_interval("1h")
    })
    .await;
    let original = std::fs::read(site.edge.config_path()).unwrap();
    assert_eq!(subject_for(&site.edge, "b.test").await, "CN = a");

    edit_config(&site.edge, |config| {
        let mut entry = toml::Table::new();
        entry.insert("cert".into(), b.cert.display().to_string().into());
        entry.insert("key".into(), b.key.display().to_string().into());
        certificate_list(config).push(entry.into());
        config
            .entry("limits")
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .expect("[limits] is a table")
            .insert("max_headers".into(), 50.into());
    });
    site.edge.signal(Signal::SIGHUP);
    wait_served(&site.edge, &ca.cert, "b.test", &b).await;
    wait_served(&site.edge, &ca.cert, "a.test", &a).await;
    let report = site.edge.status().await;
    let config = report.config.expect("a config section");
    assert_eq!(config.restart_needed, ["limits"]);
    assert!(config.reread_at.is_some());
    assert_eq!(config.last_error, None);
    let metrics = site.edge.metrics().await;
    assert_eq!(
        metrics.get("drawbridge_config_restart_needed", &[]),
        Some(1.0)
    );
    assert_eq!(
        metrics.get("drawbridge_config_reloads_total", &[("outcome", "read")]),
        Some(1.0)
    );
    let b_series = [("cert", b.cert.to_str().unwrap()), ("names", "b.test")];
    assert!(metrics
        .get(
            "drawbridge_tls_certificate_expiry_timestamp_seconds",
            &b_series
        )
        .is_some());
    assert!(site.edge.log().contains("apply at the next restart"));

    let missing = certs.join("missing.key");
    edit_config(&site.edge, |config| {
        certificate_list(config)[1]["key"] = missing.display().to_string().into();
    });
    site.edge.signal(Signal::SIGHUP);
    site.edge
        .wait_metric(
            "drawbridge_config_reloads_total",
            &[("outcome", "refused")],
            1.0,
        )
        .await;
    let error = site
        .edge
        .status()
        .await
        .config
        .unwrap()
        .last_error
        .expect("the refusal");
    assert!(error.contains("tls.certificates[1].key"), "{error}");
    wait_served(&site.edge, &ca.cert, "b.test", &b).await;

    std::fs::write(site.edge.config_path(), &original).unwrap();
    site.edge.signal(Signal::SIGHUP);
    site.edge
        .wait_metric(
            "drawbridge_config_reloads_total",
            &[("outcome", "read")],
            2.0,
        )
        .await;
    assert_eq!(subject_for(&site.edge, "b.test").await, "CN = a");
    let config = site.edge.status().await.config.unwrap();
    assert!(config.restart_needed.is_empty(), "{config:?}");
    assert_eq!(config.last_error, None);
    let metrics = site.edge.metrics().await;
    assert_eq!(
        metrics.get("drawbridge_config_restart_needed", &[]),
        Some(0.0)
    );
    assert_eq!(
        metrics.get(
            "drawbridge_tls_certificate_expiry_timestamp_seconds",
            &b_series
        ),
        None
    );

    // TLS taken out of the file: nothing to serve live, so it all waits for the restart, and
    // the certificate served stays (with its expiry series).
    edit_config(&site.edge, |config| {
        config.remove("tls");
        config["server"]
            .as_table_mut()
            .expect("[server] is a table")
            .remove("tls_listen");
    });
    site.edge.signal(Signal::SIGHUP);
    site.edge
        .wait_metric(
            "drawbridge_config_reloads_total",
            &[("outcome", "read")],
            3.0,
        )
        .await;
    let config = site.edge.status().await.config.unwrap();
    assert_eq!(config.restart_needed, ["server", "tls"]);
    assert_eq!(subject_for(&site.edge, "a.test").await, "CN = a");
    let a_series = [("cert", a.cert.to_str().unwrap()), ("names", "a.test")];
    assert!(site
        .edge
        .metrics()
        .await
        .get(
            "drawbridge_tls_certificate_expiry_timestamp_seconds",
            &a_series
        )
        .is_some());
    // The reloader lives on: the file put back is read again.
    std::fs::write(site.edge.config_path(), &original).unwrap();
    site.edge.signal(Signal::SIGHUP);
    site.edge
        .wait_metric(
            "drawbridge_config_reloads_total",
            &[("outcome", "read")],
            4.0,
        )
        .await;
    assert!(site
        .edge
        .status()
        .await
        .config
        .unwrap()
        .restart_needed
        .is_empty());
}

/// With files looked at every second: a rotation that writes the certificate before its key is
/// refused until the key follows (the old certificate is served meanwhile, and the refusal
/// names the key file in the log, `/status` and the metric); then a certificate file that holds
/// a key is refused, and the one served before stays.
#[tokio::test]
async fn changed_files_are_reloaded_and_a_bad_one_keeps_the_old_certificate() {
    let test = "changed_files_are_reloaded";
    let certs = TestDir::new(&format!("{test}-certs"));
    let ca = TestCa::new(certs.path());
    let served = ca.issue("served", &["a.test"]);
    let rotated = ca.issue("rotated", &["a.test", "*.a.test"]);
    let site = Site::start_with(test, |builder| {
        builder
            .tls_certificate(&served.cert, &served.key, false)
            .tls_watch_interval("1s")
    })
    .await;
    let edge = &site.edge;
    let cert = served.cert.display().to_string();
    let key = served.key.display().to_string();
    let status_error = |what: &'static str, needle: String| async move {
        edge.wait_status(what, RELOAD_DEADLINE, |r| {
            r.tls.as_ref().is_some_and(|t| {
                t.certificates[0]
                    .last_error
                    .as_ref()
                    .is_some_and(|e| e.contains(&needle))
            })
        })
        .await
    };

    // The certificate first: its key is still the old one.
    replace(&rotated.cert, &served.cert);
    status_error(
        "the new certificate without its key refused",
        format!("{key}: is not the key of the certificate in {cert}"),
    )
    .await;
    edge.wait_metric("drawbridge_tls_reload_errors_total", &[], 1.0)
        .await;
    let fresh = edge.tls_client(&ca.cert, &["a.test"]);
    let meanwhile = get(edge, &fresh, "a.test", "/").await;
    assert_eq!(meanwhile.status(), 200);
    assert_eq!(peer_certificate(&meanwhile), served.der);
    assert!(
        edge.log().contains("TLS certificate not reloaded"),
        "{}",
        edge.log_tail()
    );

    // Then the key: the pair is served, the error cleared, the gauge follows the names.
    replace(&rotated.key, &served.key);
    wait_served(edge, &ca.cert, "x.a.test", &rotated).await;
    let report = edge.status().await;
    let entry = &report.tls.expect("a tls section").certificates[0];
    assert_eq!(entry.last_error, None);
    assert_eq!(entry.names, ["a.test", "*.a.test"]);
    let metrics = edge.metrics().await;
    let gauge = "drawbridge_tls_certificate_expiry_timestamp_seconds";
    assert!(metrics
        .get(gauge, &[("cert", &cert), ("names", "a.test,*.a.test")])
        .is_some());
    assert_eq!(
        metrics.get(gauge, &[("cert", &cert), ("names", "a.test")]),
        None
    );

    // A certificate file that holds no certificate (a key, by mistake).
    replace(&rotated.key, &served.cert);
    status_error(
        "a file without a certificate refused",
        format!("{cert}: holds no \"BEGIN CERTIFICATE\" block"),
    )
    .await;
    edge.wait_metric("drawbridge_tls_reload_errors_total", &[], 2.0)
        .await;
    let fresh = edge.tls_client(&ca.cert, &["a.test"]);
    let still = get(edge, &fresh, "a.test", "/").await;
    assert_eq!(peer_certificate(&still), rotated.der);
}

/// A certificate with the key of another, or a certificate file that is missing, is refused at
/// start and by `--check` with exit 2 and its key named; the same config with the right key is
/// valid.
#[tokio::test]
async fn a_bad_certificate_at_start_is_refused_with_its_key() {
    let dir = TestDir::new("a_bad_certificate_at_start");
    let ca = TestCa::new(dir.path());
    let a = ca.issue("a", &["a.test"]);
    let b = ca.issue("b", &["b.test"]);
    let up = Upstream::start("unused");
    let builder = |cert: &Path, key: &Path| {
        Drawbridge::builder("http://127.0.0.1:1", "drawbridge/test/tls/gate")
            .static_pool("ui", &[&up], None)
            .route(Route::page("ui", "/", "ui"))
            .tls_certificate(cert, key, false)
    };
    let deadline = Duration::from_secs(20);

    let good = builder(&a.cert, &a.key)
        .name("good")
        .write_config(dir.path());
    let out = run_drawbridge(&good, &["--check"], deadline).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = dir.join("missing.pem");
    for (name, cert, key, words) in [
        (
            "other-key",
            &a.cert,
            &b.key,
            vec![
                "tls.certificates[0].key".to_string(),
                format!("is not the key of the certificate in {}", a.cert.display()),
            ],
        ),
        (
            "missing-cert",
            &missing,
            &a.key,
            vec![
                "tls.certificates[0].cert".to_string(),
                format!("{}: cannot read it", missing.display()),
            ],
        ),
    ] {
        let config = builder(cert, key).name(name).write_config(dir.path());
        for args in [&["--check"][..], &[]] {
            let out = run_drawbridge(&config, args, deadline).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
            for word in &words {
                assert!(
                    stderr.contains(word.as_str()),
                    "{name} {args:?}: no {word:?} in {stderr}"
                );
            }
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

/// A TLS connection holds its place under the caps from the accept, before its handshake; a
/// handshake that does not end within `limits.header_timeout` is cut, and one that fails (plain
/// HTTP sent to the TLS port) too: both counted as `tls_handshake`, neither logged as an error.
#[tokio::test]
async fn handshakes_are_held_to_the_caps_and_the_header_deadline() {
    let (site, certs) = Site::start_tls("tls_handshake_limits", "a.test", |b| {
        b.limit("header_timeout", "2s")
            .limit("max_connections_per_client", 2)
    })
    .await;
    let ca = &certs.ca;
    let edge = &site.edge;
    let addr = edge.tls_addr();
    let mut byte = [0u8; 1];
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut byte)).await;
    edge.wait_metric(
        "drawbridge_refused_requests_total",
        &[("reason", "tls_handshake")],
        1.0,
    )
    .await;
    edge.wait_metric("drawbridge_client_connections", &[], 0.0)
        .await;
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    edge.wait_metric("drawbridge_client_connections", &[], 2.0)
        .await;
    // A third connection from the same client is over its cap while the two handshake.
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let read = tokio::time::timeout(Duration::from_secs(1), third.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the third connection was not closed: {read:?}"
    );
    for mut conn in silent {
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
    let after = started.elapsed();
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(4)).contains(&after),
        "silent handshakes cut after {after:?}"
    );
    edge.wait_metric(
        "drawbridge_refused_requests_total",
        &[("reason", "tls_handshake")],
        3.0,
    )
    .await;
    edge.wait_metric(
        "drawbridge_refused_requests_total",
        &[("reason", "max_connections_per_client")],
        1.0,
    )
    .await;
    let log = edge.log();
    assert!(log.contains("refused: the TLS handshake failed"), "{log}");
    assert!(
        !log.contains("Downstream handshake"),
        "Pingora's own error lines:\n{log}"
    );
    // Handshakes that finish are served.
    let client = edge.tls_client(&ca.cert, &["a.test"]);
    assert_eq!(get(edge, &client, "a.test", "/page").await.status(), 200);
}
