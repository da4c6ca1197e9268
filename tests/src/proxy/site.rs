//! [`Site`], the usual scene of a proxy test (Consul, a page and an API upstream, one proxy), and
//! the gate writes that wait until its proxy applied them.

use std::time::Duration;

use drawbridge_core::status::StatusReport;

use super::config::{DrawbridgeBuilder, Route};
use super::gate::{clear_gate, set_gate, test_key};
use super::running::Drawbridge;
use crate::consul::ConsulServer;
use crate::eventually::eventually;
use crate::process::TestDir;
use crate::tls_ca::{Issued, TestCa};
use crate::upstream::{Kind, Upstream};

/// The certificates of a [`Site::start_tls`] scene.
pub struct TlsCerts {
    /// The CA clients trust.
    pub ca: TestCa,
    /// The certificate the proxy serves.
    pub issued: Issued,
    _dir: TestDir,
}

/// A request in flight on its own task.
pub type InFlight = tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>;

/// How long the [`Site`] upstreams take to answer paths under `/slow` (ui) and `/api/slow` (api).
pub const SLOW_PATH_DELAY: Duration = Duration::from_millis(1500);

/// The usual scene of a proxy test: a Consul server, a page upstream `ui` and a JSON upstream
/// `api` (both slow under `/slow`, see [`SLOW_PATH_DELAY`]), and a proxy with routes `/api/` ->
/// pool `api` (kind api) and `/` -> pool `ui` (kind page). Fields drop in order: the proxy
/// first, the test directory last.
#[derive(Debug)]
pub struct Site {
    pub edge: Drawbridge,
    pub ui: Upstream,
    pub api: Upstream,
    pub consul: ConsulServer,
    pub key: String,
    pub dir: TestDir,
}

impl Site {
    /// Starts the scene for test `test` with the default proxy settings.
    pub async fn start(test: &str) -> Site {
        Site::start_with(test, |b| b).await
    }

    /// Starts the scene; `customize` may change the proxy's settings before it starts (pools
    /// `ui` and `api` and the two routes are already set).
    pub async fn start_with(
        test: &str,
        customize: impl FnOnce(DrawbridgeBuilder) -> DrawbridgeBuilder,
    ) -> Site {
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let ui = Upstream::builder("ui")
            .kind(Kind::Page)
            .delay("/slow", SLOW_PATH_DELAY)
            .start();
        let api = Upstream::builder("api")
            .kind(Kind::Api)
            .delay("/api/slow", SLOW_PATH_DELAY)
            .start();
        let key = test_key(test);
        let builder = Drawbridge::builder(&consul.http_addr(), &key)
            .static_pool("ui", &[&ui], None)
            .static_pool("api", &[&api], None)
            .route(Route::api("api", "/api/", "api"))
            .route(Route::page("ui", "/", "ui"));
        let edge = customize(builder).start(&dir).await;
        Site {
            edge,
            ui,
            api,
            consul,
            key,
            dir,
        }
    }

    /// Starts the scene with a TLS listener too, serving a certificate for `host` issued by a
    /// CA made for the test (in a folder of its own, kept in the returned [`TlsCerts`], which
    /// must outlive the site); `customize` as for [`Site::start_with`].
    pub async fn start_tls(
        test: &str,
        host: &str,
        customize: impl FnOnce(DrawbridgeBuilder) -> DrawbridgeBuilder,
    ) -> (Site, TlsCerts) {
        let dir = TestDir::new(&format!("{test}-certs"));
        let ca = TestCa::new(dir.path());
        let issued = ca.issue("a", &[host]);
        let site = Site::start_with(test, |builder| {
            customize(builder.tls_certificate(&issued.cert, &issued.key, false))
        })
        .await;
        (
            site,
            TlsCerts {
                ca,
                issued,
                _dir: dir,
            },
        )
    }

    /// Writes `value` at the gate key and waits until the proxy applied it.
    pub async fn put_gate(&self, value: impl AsRef<[u8]>) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.key, value).await;
        self.edge.wait_applied(index).await
    }

    /// Writes `value` at the gate key and waits until the proxy refused it.
    pub async fn put_rejected(&self, value: impl AsRef<[u8]>) -> StatusReport {
        let index = set_gate(&self.consul.client(), &self.key, value).await;
        self.edge.wait_rejected(index).await
    }

    /// Starts `GET <path>` from `client` to the plain listener on its own task and waits until
    /// the `ui` upstream counts it, so the request is in flight at the proxy when this returns.
    pub async fn start_slow(&self, client: &reqwest::Client, path: &'static str) -> InFlight {
        self.start_slow_at(client, self.edge.url(path), path).await
    }

    /// As [`Site::start_slow`], to `url` (which ends in `path`).
    pub async fn start_slow_at(
        &self,
        client: &reqwest::Client,
        url: String,
        path: &'static str,
    ) -> InFlight {
        let task = tokio::spawn(client.get(url).send());
        let ui = &self.ui;
        eventually(
            "the slow request reached the upstream",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async move {
                if ui.requests_to(path) >= 1 {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
        task
    }

    /// The answer to a request of [`Site::start_slow`], once it completes.
    ///
    /// # Panics
    /// When the request failed (with the proxy's log).
    pub async fn slow_answer(&self, slow: InFlight) -> reqwest::Response {
        slow.await
            .expect("the request task does not panic")
            .unwrap_or_else(|e| {
                panic!(
                    "the in-flight request failed: {e}\n{}",
                    self.edge.log_tail()
                )
            })
    }

    /// Deletes the gate key and waits until the proxy applied that.
    pub async fn delete_gate(&self) -> StatusReport {
        let index = clear_gate(&self.consul.client(), &self.key).await;
        self.edge.wait_applied(index).await
    }
}
