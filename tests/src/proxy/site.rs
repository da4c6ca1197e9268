//! [`Site`], the usual scene of a proxy test (Consul, a page and an API upstream, one proxy), and
//! the gate writes that wait until its proxy applied them.

use std::time::Duration;

use drawbridge_core::status::StatusReport;

use super::config::{DrawbridgeBuilder, Route};
use super::gate::{clear_gate, set_gate, test_key};
use super::running::Drawbridge;
use crate::consul::ConsulServer;
use crate::process::TestDir;
use crate::upstream::{Kind, Upstream};

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

    /// Deletes the gate key and waits until the proxy applied that.
    pub async fn delete_gate(&self) -> StatusReport {
        let index = clear_gate(&self.consul.client(), &self.key).await;
        self.edge.wait_applied(index).await
    }
}
