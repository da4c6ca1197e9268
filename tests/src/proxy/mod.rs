//! The `drawbridge` process fixture: a config builder, the running proxy, and the gate helpers
//! the e2e cases share (write the key, wait until a proxy applied it, read its metrics).
//!
//! ```ignore
//! let consul = ConsulServer::start(&dir).await;
//! let ui = Upstream::builder("ui").kind(Kind::Page).start();
//! let edge = Drawbridge::builder(&consul.http_addr(), "drawbridge/t/gate")
//!     .static_pool("ui", &[&ui], None)
//!     .route(Route::page("ui", "/", "ui"))
//!     .start(&dir)
//!     .await;
//! let index = set_gate(&consul.client(), edge.key(), r#"{"mode":"maintenance"}"#).await;
//! edge.wait_applied(index).await;
//! assert_eq!(edge.get("/").await.status(), 503);
//! ```
//!
//! # Layout
//! * `config`: the config builder, written as TOML ([`DrawbridgeBuilder`], [`Pool`],
//!   [`Route`], [`HealthCheck`], [`Ready`]).
//! * `running`: the running process ([`Drawbridge`]) and the binary ([`drawbridge_bin`],
//!   [`run_drawbridge`]).
//! * `metrics`: the `/metrics` text, parsed ([`Metrics`]).
//! * `site`: the usual scene ([`Site`]).
//! * `gate`: writing the gate key, and the clock its values use.
//! * `client`: the test's HTTP client and reading its answers.

mod client;
mod config;
mod gate;
mod metrics;
mod running;
mod site;

pub use client::{h2c_test_client, header, retry_after, test_client, REQUEST_TIMEOUT};
pub use config::{DrawbridgeBuilder, HealthCheck, Pool, Ready, Route, RouteKind};
pub use gate::{clear_gate, now_unix, rfc3339_in, set_gate, test_key};
pub use metrics::Metrics;
pub use running::{drawbridge_bin, run_drawbridge, Drawbridge, APPLY_DEADLINE, START_DEADLINE};
pub use site::{InFlight, Site, TlsCerts, SLOW_PATH_DELAY};
