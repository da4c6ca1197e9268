//! The Drawbridge edge proxy: Pingora in front of UI, admin and API pools, switched into
//! maintenance by one Consul key.
//!
//! # Layout
//! * `config`: the TOML file, checked section by section into `Config` with errors that name the
//!   key; pool host names and the host name are looked up only when it is finished.
//! * `config_file`: the config file read again on SIGHUP: the certificate list applied live,
//!   every other change reported as waiting for the restart.
//! * `gate_state`: a gate document made ready to serve (rendered page and bodies), swapped whole.
//! * `follow`: the blocking-query loop (index rules, rate limit, backoff) the watchers share.
//! * `watcher`: follows the gate key; saves and restores `state_file`.
//! * `clock`: what changes with time alone: the window announced, and the dead-man switch (a
//!   gate closed past its `until` and grace is overdue, and with `expire` opens by itself).
//! * `doc_watch`: follows a document key other than the gate's (split, windows) the same way.
//! * `split`: the split document: routes whose clients are shared with a second pool.
//! * `windows`: the maintenance windows as the edge announces them (well-known list, calendar,
//!   banner, the announcement header of API answers).
//! * `facts`, `router`, `decide`, `respond`: the pure request path, in order: what a request
//!   says (client address, token), its route, the decision, the answer the proxy writes itself.
//! * `edge`: the `ProxyHttp` implementation: facts → decide → respond → write.
//! * `pools`: upstream pools, static or following a Consul service, with health checks.
//! * `upstream_tls`: TLS to a pool's servers: its CAs and client certificate, read at start.
//! * `one_line`: text from outside escaped for a log line; `log_pace`: a line a second at most
//!   for events that come in floods.
//! * `admin`, `metrics`, `registration`: `/healthz` `/status` `/metrics`, and the proxy's own
//!   Consul registration.
//! * `guard`: connection caps at accept and the whole-request-header deadline.
//! * `sessions`: each HTTP session's timeouts (keep-alive, body, slow reader), and idle
//!   connections kept open through a shutdown's grace period.
//! * `https`: the plain listeners' redirect to HTTPS, and HSTS.
//! * `tls`: certificates of the TLS listeners, chosen by SNI and reloaded live.
//! * `signals`: SIGHUP and SIGUSR2, taken before the listeners open.
//! * `service_manager`: systemd's readiness protocol, and the zero-downtime restart on SIGUSR2.
//! * `server`: wires everything into a Pingora server.

pub mod admin;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod decide;
pub mod doc_watch;
pub mod edge;
pub mod facts;
pub mod follow;
pub mod gate_state;
pub mod guard;
pub mod https;
pub mod log_pace;
pub mod metrics;
pub mod one_line;
pub mod page;
pub mod pools;
pub mod registration;
pub mod respond;
pub mod router;
pub mod server;
pub mod service_manager;
pub mod sessions;
pub mod signals;
pub mod split;
pub mod state_file;
pub mod tls;
pub mod upstream_tls;
pub mod watcher;
pub mod windows;
