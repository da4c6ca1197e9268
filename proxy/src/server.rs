//! Wires a checked `Config` into a Pingora server: the gate watcher, the pools, the certificate
//! reloader, the proxy service (which starts only once the watcher has a state: Consul's, the
//! saved one, or the fail-safe one), with its plain and TLS listeners, the admin listener and
//! the registration. Nothing here starts a thread: Pingora starts the runtimes in
//! `run_forever`.

use crate::admin::Admin;
use crate::clock::{Clock, DeadMan};
use crate::config::{Config, Limits};
use crate::config_file::ConfigFile;
use crate::doc_watch::{Applied, DocWatch};
use crate::edge::Edge;
use crate::gate_state::StateBuilder;
use crate::guard::{Caps, EarlyRefusal, Gatehouse, RefusalLog};
use crate::https::HttpsSettings;
use crate::metrics::{Metrics, RequestCounters};
use crate::pools;
use crate::registration::Registration;
use crate::router::Router;
use crate::service_manager::{self, Phases, Readiness, Restarter, Successor};
use crate::sessions::SessionRules;
use crate::split::{SplitBuilder, SplitWatcher};
use crate::tls::{Certificates, TlsAcceptor, TlsReloader};
use crate::watcher::{GateWatcher, WatchStatus};
use crate::windows::{Announcer, WindowsWatcher};
use anyhow::Context;
use arc_swap::ArcSwap;
use drawbridge_core::consul::Failover;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::{background_service, Opt};
use pingora::protocols::http::v2::server::H2Options;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the process was asked to start.
pub struct StartOptions {
    /// Take the listeners over from a running process (graceful upgrade).
    pub upgrade: bool,
    /// Fork into the background.
    pub daemon: bool,
    /// The binary and config file a restart on SIGUSR2 starts again.
    pub program: PathBuf,
    pub config_path: PathBuf,
}

/// The write buffer of each client connection. Pingora's default (1460 bytes) sends a response
/// header and a body that do not fit together in two writes; at 8 KiB the built-in maintenance
/// page (about 2 KiB with its header) and most proxied headers with their first body chunk go
/// out in one, which saves a send and a TCP segment per answer.
const CLIENT_WRITE_BUFFER: usize = 8 * 1024;

/// How HTTP/2 connections are held to `[limits]`: streams at once, the decoded header list (as
/// `max_header_bytes`), and resets (a client that opens and cancels streams in a loop, the
/// "rapid reset" attack, is sent GOAWAY by the h2 library after this many).
fn h2_options(limits: &Limits) -> H2Options {
    let mut options = H2Options::default();
    options
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_ERROR_RESETS));
    options
}

/// Streams a client may reset before the proxy took them, at once.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may reset for a client's protocol errors on one connection before it is
/// closed with GOAWAY.
const H2_MAX_ERROR_RESETS: usize = 64;

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Pingora's own settings, from ours.
fn server_conf(config: &Config, daemon: bool) -> ServerConf {
    ServerConf {
        daemon,
        threads: config.server.threads,
        pid_file: config.server.pid_file.display().to_string(),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        grace_period_seconds: Some(whole_seconds(config.server.grace_period)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds(config.server.shutdown_timeout)),
        // A single-threaded runtime per thread, and a connection's task stays on its thread: no
        // work stealing, so no cross-thread queues or wake-ups. Less CPU per request and a
        // shorter tail at a fixed rate than with stealing (README, Performance).
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// Builds the server with every service; `run_forever` on it starts serving.
///
/// # Errors
/// Metrics that cannot be registered or a Consul client that cannot be built.
pub fn build(mut config: Config, start: StartOptions) -> anyhow::Result<Server> {
    let opt = Opt {
        upgrade: start.upgrade,
        daemon: start.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config, start.daemon));
    server.bootstrap();
    if start.upgrade {
        // The listening sockets are this process's now.
        service_manager::notify_main_pid();
    }

    let metrics = Arc::new(Metrics::new().context("registering the metrics")?);
    let consul = Arc::new(
        Failover::new(&config.consul.addresses, config.consul.token.clone())
            .context("building the Consul client")?,
    );
    let builder = StateBuilder::new(&config);
    let gate = Arc::new(ArcSwap::from_pointee(builder.initial()));
    let watch = Arc::new(ArcSwap::from_pointee(WatchStatus::default()));

    let watcher = server.add_service(background_service(
        "gate watcher",
        GateWatcher {
            consul: consul.clone(),
            key: config.consul.key.clone(),
            wait: config.consul.wait,
            consistency: config.consul.consistency,
            state_file: config.server.state_file.clone(),
            unknown_state: config.server.unknown_state,
            builder,
            gate: gate.clone(),
            status: watch.clone(),
            metrics: metrics.clone(),
        },
    ));

    let split_builder = SplitBuilder {
        routes: config
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.pool))
            .collect(),
        pools: config.pools.iter().map(|p| p.name.clone()).collect(),
        metrics: metrics.clone(),
    };
    let split = Arc::new(ArcSwap::from_pointee(Applied::nothing(&split_builder)));
    let split_watch = Arc::new(ArcSwap::from_pointee(DocWatch::default()));
    let split_watcher = server.add_service(background_service(
        "split watcher",
        SplitWatcher {
            consul: consul.clone(),
            key: config.consul.split_key.clone(),
            state_file: config.server.state_file.with_extension("split.json"),
            wait: config.consul.wait,
            consistency: config.consul.consistency,
            kind: split_builder,
            state: split.clone(),
            watch: split_watch.clone(),
        },
    ));

    let announcer = Announcer {
        announce_before: config.maintenance.announce_before,
        key: config.consul.windows_key.clone(),
        metrics: metrics.clone(),
    };
    let windows = Arc::new(ArcSwap::from_pointee(Applied::nothing(&announcer)));
    let windows_watch = Arc::new(ArcSwap::from_pointee(DocWatch::default()));
    let windows_watcher = server.add_service(background_service(
        "windows watcher",
        WindowsWatcher {
            consul: consul.clone(),
            key: config.consul.windows_key.clone(),
            state_file: config.server.state_file.with_extension("windows.json"),
            wait: config.consul.wait,
            consistency: config.consul.consistency,
            kind: announcer,
            state: windows.clone(),
            watch: windows_watch.clone(),
        },
    ));

    server.add_service(background_service(
        "clock",
        Clock {
            dead_man: DeadMan {
                gate: gate.clone(),
                metrics: metrics.clone(),
            },
            windows: windows.clone(),
        },
    ));

    let mut pool_list = Vec::new();
    let mut pool_handles = Vec::new();
    for settings in &config.pools {
        let built = pools::build(settings, &consul, metrics.upstream_in_flight.clone());
        for service in built.services {
            pool_handles.push(server.add_boxed_service(service));
        }
        pool_list.push(built.pool);
    }

    let certificates = (!config.server.tls_listen.is_empty()).then(|| {
        Arc::new(Certificates::new(
            &config.tls,
            &config.server.tls_listen,
            metrics.clone(),
        ))
    });
    let config_file = Arc::new(ConfigFile::new(
        start.config_path.clone(),
        std::mem::take(&mut config.sections),
        metrics.clone(),
    ));
    let (serving, serving_seen) = tokio::sync::watch::channel(false);
    let restarter = server.add_service(background_service(
        "restarter",
        Restarter {
            successor: Successor {
                program: start.program,
                config: start.config_path,
                daemon: start.daemon,
                upgrade_sock: config.server.upgrade_sock.clone(),
            },
            config: config_file.clone(),
            metrics: metrics.clone(),
            serving: serving_seen,
            phases: tokio::sync::Mutex::new(Phases {
                receiver: server.watch_execution_phase(),
                latest: None,
            }),
        },
    ));
    let reloader = server.add_service(background_service(
        "tls reloader",
        TlsReloader {
            certificates: certificates.clone(),
            watch_interval: config.tls.watch_interval,
            config: config_file.clone(),
        },
    ));

    if config.consul.register {
        let port = config
            .server
            .listen
            .first()
            .or(config.server.tls_listen.first())
            .map_or(0, |a| a.port());
        server.add_service(background_service(
            "consul registration",
            Registration::new(
                consul.first().clone(),
                &config.consul.service_id,
                &config.consul.service_name,
                port,
                &config.admin.advertise_url,
                &config.consul.key,
            ),
        ));
    }

    let refusals = Arc::new(RefusalLog::new(metrics.clone()));
    let mut admin = Service::new(
        "admin".to_string(),
        HttpServer::new_app(Admin {
            token: config.admin.token.clone(),
            instance: config.consul.service_id.clone(),
            consul_addresses: consul.addresses(),
            key: config.consul.key.clone(),
            stale_after: config.consul.stale_after,
            gate: gate.clone(),
            watch,
            pools: pool_list.clone(),
            metrics: metrics.clone(),
            refusals: refusals.clone(),
            tls: certificates.clone(),
            config: config_file,
            split_key: config.consul.split_key.clone(),
            split: split.clone(),
            split_watch,
            windows_key: config.consul.windows_key.clone(),
            windows: windows.clone(),
            windows_watch,
        }),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);

    let listen = config.server.listen.clone();
    let tls_listen = config.server.tls_listen.clone();
    let threads = config.server.threads;
    let trusted_proxies = config.bypass.trusted_proxies.clone();
    let edge = Edge {
        gate,
        counters: RequestCounters::new(metrics.clone(), &config.routes),
        router: Router::new(config.routes),
        pools: pool_list,
        bypass: config.bypass,
        maintenance: config.maintenance,
        metrics: metrics.clone(),
        access_log: config.server.access_log,
        limits: config.limits.clone(),
        refusals: refusals.clone(),
        https: HttpsSettings {
            redirect_port: tls_listen
                .first()
                .map(SocketAddr::port)
                .filter(|_| config.server.https_redirect),
            hsts: config.tls.hsts.clone(),
        },
        split,
        windows,
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, edge);
    let mut options = HttpServerOptions::default();
    // h2c is told apart by the gatehouse, which hands such a connection on as HTTP/2 (Pingora's
    // own test waits for 24 bytes, which a short HTTP/1 request never sends).
    // CONNECT reaches the edge, which refuses it in the route's form (Pingora's own refusal is
    // a bare 405).
    options.allow_connect_method_proxying = true;
    // An HTTP/2 connection with no request in flight is held as long as an idle HTTP/1 one.
    options.h2_idle_timeout = Some(config.limits.keepalive_timeout);
    app.server_options = Some(options);
    app.h2_options = Some(h2_options(&config.limits));
    let app = SessionRules::new(app, config.server.grace_period, &config.limits);
    let caps = Arc::new(Caps::new(
        &config.limits,
        trusted_proxies,
        metrics.client_connections.clone(),
        refusals,
    ));
    let tls = match &certificates {
        Some(certificates) => Some(TlsAcceptor::new(
            certificates.resolver(),
            config.tls.http2,
            tls_listen.clone(),
        )?),
        None => None,
    };
    let mut proxy = Service::new(
        "drawbridge".to_string(),
        Gatehouse::new(
            app,
            caps.clone(),
            config.limits.header_timeout,
            config.server.h2c,
            tls,
        ),
    );
    proxy.set_connection_filter(Arc::new(EarlyRefusal(caps)));
    // TLS listeners are plain TCP ones to Pingora: the gatehouse does their handshakes.
    for addr in listen.iter().chain(&tls_listen) {
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .l4_buffer(L4BufferSettings::default().write(CLIENT_WRITE_BUFFER)),
        );
    }
    proxy.threads = Some(threads);
    let proxy = server.add_service(proxy);
    // SIGHUP and SIGUSR2 are taken before any listener opens.
    proxy.add_dependency(&reloader);
    proxy.add_dependency(&restarter);
    // The listeners open only once the gate has a state (never the default one served before
    // the first read of Consul), the split and windows keys were read (or did not answer within
    // their first read's bound: nothing is split or announced then) and the pools know their
    // servers.
    proxy.add_dependency(&watcher);
    proxy.add_dependency(&split_watcher);
    proxy.add_dependency(&windows_watcher);
    for handle in &pool_handles {
        proxy.add_dependency(handle);
    }
    let readiness = server.add_service(background_service("readiness", Readiness { serving }));
    readiness.add_dependency(&proxy);
    Ok(server)
}
