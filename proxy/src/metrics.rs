//! Every metric the proxy exports, defined in one place and registered at start (a registration
//! error fails the start instead of silently dropping a metric). Names are prefixed `drawbridge_`.

use crate::config::RouteSettings;
use crate::decide::Answer;
use drawbridge_core::gate::Mode;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

/// The proxy's metrics and the registry `/metrics` serves.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, route kind, status code and the gate mode of their route.
    pub requests: IntCounterVec,
    /// Maintenance responses the proxy served itself, by route, route kind and answer
    /// (`page` or `problem`).
    pub maintenance_responses: IntCounterVec,
    /// Requests that passed a closed gate, by route and how (`cidr`, `token`).
    pub bypasses: IntCounterVec,
    /// Requests that failed towards an upstream, by pool and the status the proxy answered
    /// (`502`: refused, reset, no healthy server, a broken answer; `504`: timed out).
    pub upstream_errors: IntCounterVec,
    /// Requests in flight to each server, by pool and server (`ip:port`): 0 to a drained
    /// server once its last request has ended.
    pub upstream_in_flight: IntGaugeVec,
    /// 1 for each server of a pool that passes its health check, 0 for one that does not; set
    /// from the pools at each scrape (servers that left a pool are gone).
    pub upstream_healthy: IntGaugeVec,
    /// Failed requests to Consul by the gate watcher, by kind.
    pub consul_watch_errors: IntCounterVec,
    /// Values at the gate key that were refused.
    pub gate_rejected_values: IntCounter,
    /// Answers older than the applied gate state that were not applied (a server behind).
    pub gate_step_backs_refused: IntCounter,
    /// Times the gate watcher moved to the next Consul address.
    pub consul_failovers: IntCounter,
    /// The Consul index of the applied gate state.
    pub gate_applied_index: IntGauge,
    /// 1 for the mode being served, 0 for the others.
    pub gate_mode: IntGaugeVec,
    /// When the gate state was last applied (Unix seconds).
    pub gate_applied_timestamp: Gauge,
    /// The index the watcher's blocking query waits on.
    pub consul_watch_index: IntGauge,
    /// When Consul last answered the watcher (Unix seconds).
    pub consul_last_answer_timestamp: Gauge,
    /// 1 when the watcher has had no contact with Consul for longer than `consul.stale_after`.
    pub consul_stale: IntGauge,
    /// 1 while the fail-safe state (`server.unknown_state`) is served: the gate state is unknown.
    pub gate_fail_safe: IntGauge,
    /// 1 while the gate is closed past its `until` plus `maintenance.overdue_grace`.
    pub gate_overdue: IntGauge,
    /// 1 while an overdue gate with `expire` is served open.
    pub gate_expired: IntGauge,
    /// State files refused at start, by reason (`unreadable`, `damaged`, `invalid_document`,
    /// `other_key`).
    pub state_file_refused: IntCounterVec,
    /// Connections and requests the proxy's own limits cut, by reason (the [`Refusal`]s:
    /// `max_connections`, `header_timeout`, `body_size`, …), and admin requests refused for
    /// their token (`admin_token`).
    ///
    /// [`Refusal`]: crate::guard::Refusal
    pub refused: IntCounterVec,
    /// Client connections open on the public listeners (admitted by the caps).
    pub client_connections: IntGauge,
    /// When each certificate served on the TLS listeners expires (Unix seconds), by its file
    /// and its names (comma-separated).
    pub tls_certificate_expiry: GaugeVec,
    /// Reads of certificate files (on SIGHUP or after a change) that were refused: the
    /// certificate read before is still served.
    pub tls_reload_errors: IntCounter,
    /// Reads of the config file on SIGHUP, by outcome: `read` or `refused` (nothing changed).
    pub config_reloads: IntCounterVec,
    /// 1 while the config file has changes that apply only at the next restart.
    pub config_restart_needed: IntGauge,
    /// Zero-downtime restarts (SIGUSR2) refused: this process goes on serving.
    pub restart_refusals: IntCounter,
    /// 1, with the version and commit as labels.
    pub build_info: IntGaugeVec,
    /// When this process started, in Unix seconds: it changes with each restart.
    pub start_time: IntGauge,
    /// Answers of split routes, by route, the pool that served them and class (`2xx`, …,
    /// `none` when no answer was written).
    pub split_answers: IntCounterVec,
    /// How long requests of split routes took, by route and the pool that served them.
    pub split_duration: HistogramVec,
    /// The Consul index of the applied split document.
    pub split_applied_index: IntGauge,
    /// Values at the split key that were refused (the split stayed as it was).
    pub split_rejected_values: IntCounter,
    /// The Consul index of the applied windows document.
    pub windows_applied_index: IntGauge,
    /// Values at the windows key that were refused (the windows stayed as they were).
    pub windows_rejected_values: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// A metric that cannot be registered (a name clash, which is a bug).
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        // A counter of a few known outcomes, each at 0 from the start: an alert on its increase
        // then sees the first one.
        let outcomes = |name: &str, help: &str, outcomes: &[&str]| {
            let c = counter_vec(name, help, &["outcome"])?;
            for outcome in outcomes {
                c.with_label_values(&[outcome]);
            }
            Ok::<_, prometheus::Error>(c)
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gate_mode = IntGaugeVec::new(
            Opts::new("drawbridge_gate_mode", "1 for the gate mode being served"),
            &["mode"],
        )?;
        registry.register(Box::new(gate_mode.clone()))?;
        let upstream_in_flight = IntGaugeVec::new(
            Opts::new(
                "drawbridge_upstream_requests_in_flight",
                "Requests in flight to each server of a pool",
            ),
            &["pool", "server"],
        )?;
        registry.register(Box::new(upstream_in_flight.clone()))?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "drawbridge_upstream_server_healthy",
                "1 for a server of a pool that passes its health check, 0 for one that does not",
            ),
            &["pool", "server"],
        )?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        let tls_certificate_expiry = GaugeVec::new(
            Opts::new(
                "drawbridge_tls_certificate_expiry_timestamp_seconds",
                "When the certificate served on the TLS listeners expires, by file and names",
            ),
            &["cert", "names"],
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        let split_duration = HistogramVec::new(
            HistogramOpts::new(
                "drawbridge_split_request_duration_seconds",
                "How long requests of split routes took, by route and pool",
            ),
            &["route", "pool"],
        )?;
        registry.register(Box::new(split_duration.clone()))?;
        Ok(Metrics {
            requests: counter_vec(
                "drawbridge_requests_total",
                "Requests by route, kind, status and gate mode",
                &["route", "kind", "status", "mode"],
            )?,
            maintenance_responses: counter_vec(
                "drawbridge_maintenance_responses_total",
                "Maintenance responses served by the proxy",
                &["route", "kind", "answer"],
            )?,
            bypasses: counter_vec(
                "drawbridge_bypasses_total",
                "Requests that passed a closed gate",
                &["route", "via"],
            )?,
            upstream_errors: counter_vec(
                "drawbridge_upstream_errors_total",
                "Requests that failed towards an upstream pool, by the status answered (502, 504)",
                &["pool", "status"],
            )?,
            upstream_in_flight,
            upstream_healthy,
            consul_watch_errors: counter_vec(
                "drawbridge_consul_watch_errors_total",
                "Failed requests of the gate watcher to Consul",
                &["kind"],
            )?,
            gate_rejected_values: counter(
                "drawbridge_gate_rejected_values_total",
                "Values at the gate key that were refused (the gate kept its state)",
            )?,
            gate_step_backs_refused: counter(
                "drawbridge_gate_step_backs_refused_total",
                "Answers older than the applied gate state that were not applied",
            )?,
            consul_failovers: counter(
                "drawbridge_consul_failovers_total",
                "Times the gate watcher moved to the next configured Consul address",
            )?,
            gate_applied_index: int_gauge(
                "drawbridge_gate_applied_index",
                "Consul index of the applied gate state",
            )?,
            gate_mode,
            gate_applied_timestamp: gauge(
                "drawbridge_gate_applied_timestamp_seconds",
                "When the gate state was last applied",
            )?,
            consul_watch_index: int_gauge(
                "drawbridge_consul_watch_index",
                "Index the gate watcher's blocking query waits on",
            )?,
            consul_last_answer_timestamp: gauge(
                "drawbridge_consul_last_answer_timestamp_seconds",
                "When Consul last answered the gate watcher",
            )?,
            consul_stale: int_gauge(
                "drawbridge_consul_stale",
                "1 when the watcher has had no contact with Consul for longer than consul.stale_after",
            )?,
            gate_fail_safe: int_gauge(
                "drawbridge_gate_fail_safe",
                "1 while the gate state is unknown and server.unknown_state is served",
            )?,
            gate_overdue: int_gauge(
                "drawbridge_gate_overdue",
                "1 while the gate is closed past its until plus maintenance.overdue_grace",
            )?,
            gate_expired: int_gauge(
                "drawbridge_gate_expired",
                "1 while an overdue gate whose document has expire is served open",
            )?,
            state_file_refused: counter_vec(
                "drawbridge_state_file_refused_total",
                "State files that could not be used at start, by reason",
                &["reason"],
            )?,
            refused: counter_vec(
                "drawbridge_refused_requests_total",
                "Connections and requests cut by the proxy's own limits, by reason",
                &["reason"],
            )?,
            client_connections: int_gauge(
                "drawbridge_client_connections",
                "Client connections open on the public listeners",
            )?,
            tls_certificate_expiry,
            tls_reload_errors: counter(
                "drawbridge_tls_reload_errors_total",
                "Certificate reloads refused (the certificate read before is still served)",
            )?,
            config_reloads: outcomes(
                "drawbridge_config_reloads_total",
                "Reads of the config file on SIGHUP, by outcome (read, refused)",
                &["read", "refused"],
            )?,
            config_restart_needed: int_gauge(
                "drawbridge_config_restart_needed",
                "1 while the config file has changes that apply only at the next restart (SIGUSR2)",
            )?,
            restart_refusals: counter(
                "drawbridge_restart_refusals_total",
                "Zero-downtime restarts (SIGUSR2) refused; the process goes on serving",
            )?,
            build_info: {
                let info = IntGaugeVec::new(
                    Opts::new(
                        "drawbridge_build_info",
                        "1, labelled with the version and the commit this binary was built from",
                    ),
                    &["version", "commit"],
                )?;
                registry.register(Box::new(info.clone()))?;
                info.with_label_values(&[
                    env!("CARGO_PKG_VERSION"),
                    drawbridge_core::cli_docs::COMMIT,
                ])
                .set(1);
                info
            },
            start_time: {
                let started = int_gauge(
                    "drawbridge_start_time_seconds",
                    "When this process started, in Unix seconds (it changes with each restart)",
                )?;
                started.set(time::OffsetDateTime::now_utc().unix_timestamp());
                started
            },
            split_answers: counter_vec(
                "drawbridge_split_answers_total",
                "Answers of split routes, by route, pool and class",
                &["route", "pool", "class"],
            )?,
            split_duration,
            split_applied_index: int_gauge(
                "drawbridge_split_applied_index",
                "Consul index of the applied split document",
            )?,
            split_rejected_values: counter(
                "drawbridge_split_rejected_values_total",
                "Values at the split key that were refused (the split stayed as it was)",
            )?,
            windows_applied_index: int_gauge(
                "drawbridge_windows_applied_index",
                "Consul index of the applied windows document",
            )?,
            windows_rejected_values: counter(
                "drawbridge_windows_rejected_values_total",
                "Values at the windows key that were refused (the windows stayed as they were)",
            )?,
            registry,
        })
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
    }
}

/// The statuses that get a cached counter: every status HTTP defines (100–599).
const STATUSES: std::ops::RangeInclusive<u16> = 100..=599;
const STATUS_SLOTS: usize = (*STATUSES.end() - *STATUSES.start()) as usize + 1;
/// Normal, maintenance, read-only.
const MODES: usize = 3;
/// Page, problem.
const ANSWERS: usize = 2;

/// The per-request counters of each route, resolved on first use: a request then counts itself
/// with one atomic add instead of a label lookup (hash, read lock, reference count) per counter.
/// Only the label sets that occur are created, so `/metrics` shows what it showed before.
pub struct RequestCounters {
    metrics: Arc<Metrics>,
    /// Route name and kind, by route index.
    labels: Vec<(String, &'static str)>,
    /// `requests`, by route, mode and status.
    requests: Box<[OnceLock<IntCounter>]>,
    /// `maintenance_responses`, by route and answer.
    maintenance: Box<[OnceLock<IntCounter>]>,
}

impl RequestCounters {
    pub fn new(metrics: Arc<Metrics>, routes: &[RouteSettings]) -> RequestCounters {
        let slots = |n: usize| (0..n).map(|_| OnceLock::new()).collect();
        RequestCounters {
            metrics,
            labels: routes
                .iter()
                .map(|r| (r.name.clone(), r.kind.as_str()))
                .collect(),
            requests: slots(routes.len() * MODES * STATUS_SLOTS),
            maintenance: slots(routes.len() * ANSWERS),
        }
    }

    /// Counts a request in `drawbridge_requests_total`. `route` and `mode` are `None` for a
    /// request no route matched, or one that failed before the gate was read; `status` is 0
    /// when no response was written.
    pub fn request(&self, route: Option<usize>, mode: Option<Mode>, status: u16) {
        let status_code = http::StatusCode::from_u16(status).ok();
        let status_label = status_code.as_ref().map_or("0", http::StatusCode::as_str);
        let mode_label = mode.map_or("", Mode::as_str);
        let count = || {
            let (name, kind) =
                route.map_or(("", ""), |r| (self.labels[r].0.as_str(), self.labels[r].1));
            self.metrics
                .requests
                .with_label_values(&[name, kind, status_label, mode_label])
        };
        match (route, mode) {
            (Some(route), Some(mode)) if STATUSES.contains(&status) => {
                let slot = (route * MODES + mode_index(mode)) * STATUS_SLOTS
                    + usize::from(status - STATUSES.start());
                self.requests[slot].get_or_init(count).inc();
            }
            _ => count().inc(),
        }
    }

    /// Counts a maintenance response the proxy served on `route`.
    pub fn maintenance(&self, route: usize, answer: Answer) {
        let slot = route * ANSWERS
            + match answer {
                Answer::Page => 0,
                Answer::Problem => 1,
            };
        let (name, kind) = &self.labels[route];
        self.maintenance[slot]
            .get_or_init(|| {
                self.metrics.maintenance_responses.with_label_values(&[
                    name.as_str(),
                    kind,
                    answer.as_str(),
                ])
            })
            .inc();
    }
}

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::Normal => 0,
        Mode::Maintenance => 1,
        Mode::ReadOnly => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteKind;

    fn route(name: &str, kind: RouteKind) -> RouteSettings {
        RouteSettings {
            name: name.into(),
            hosts: Vec::new(),
            path_prefix: "/".into(),
            kind,
            pool: 0,
            exempt_paths: Vec::new(),
        }
    }

    fn counters() -> (Arc<Metrics>, RequestCounters) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let routes = [route("ui", RouteKind::Page), route("api", RouteKind::Api)];
        let counters = RequestCounters::new(metrics.clone(), &routes);
        (metrics, counters)
    }

    fn requests(metrics: &Metrics, labels: [&str; 4]) -> u64 {
        metrics.requests.with_label_values(&labels).get()
    }

    #[test]
    fn each_route_mode_and_status_counts_under_its_own_labels() {
        let (metrics, counters) = counters();
        counters.request(Some(1), Some(Mode::Maintenance), 503);
        counters.request(Some(1), Some(Mode::Maintenance), 503);
        counters.request(Some(0), Some(Mode::Maintenance), 503);
        counters.request(Some(1), Some(Mode::ReadOnly), 503);
        counters.request(Some(1), Some(Mode::Normal), 200);
        counters.request(Some(1), Some(Mode::Normal), 599);
        counters.request(Some(1), Some(Mode::Normal), 100);
        assert_eq!(requests(&metrics, ["api", "api", "503", "maintenance"]), 2);
        assert_eq!(requests(&metrics, ["ui", "page", "503", "maintenance"]), 1);
        assert_eq!(requests(&metrics, ["api", "api", "503", "read_only"]), 1);
        assert_eq!(requests(&metrics, ["api", "api", "200", "normal"]), 1);
        assert_eq!(requests(&metrics, ["api", "api", "599", "normal"]), 1);
        assert_eq!(requests(&metrics, ["api", "api", "100", "normal"]), 1);
    }

    #[test]
    fn requests_without_route_state_or_status_count_with_empty_labels() {
        let (metrics, counters) = counters();
        counters.request(None, Some(Mode::Normal), 404);
        counters.request(None, None, 0);
        counters.request(Some(0), Some(Mode::Normal), 0);
        assert_eq!(requests(&metrics, ["", "", "404", "normal"]), 1);
        assert_eq!(requests(&metrics, ["", "", "0", ""]), 1);
        assert_eq!(requests(&metrics, ["ui", "page", "0", "normal"]), 1);
    }

    #[test]
    fn maintenance_answers_count_by_route_and_answer() {
        let (metrics, counters) = counters();
        counters.maintenance(0, Answer::Page);
        counters.maintenance(1, Answer::Problem);
        counters.maintenance(1, Answer::Problem);
        let answers = |labels: [&str; 3]| {
            metrics
                .maintenance_responses
                .with_label_values(&labels)
                .get()
        };
        assert_eq!(answers(["ui", "page", "page"]), 1);
        assert_eq!(answers(["api", "api", "problem"]), 2);
        assert_eq!(answers(["api", "api", "page"]), 0);
    }

    #[test]
    fn only_the_label_sets_that_occurred_are_exported() {
        let (metrics, counters) = counters();
        counters.request(Some(0), Some(Mode::Maintenance), 503);
        let text = metrics.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("drawbridge_requests_total{"))
            .collect();
        assert_eq!(
            lines,
            ["drawbridge_requests_total{kind=\"page\",mode=\"maintenance\",route=\"ui\",status=\"503\"} 1"]
        );
        assert!(!text.contains("drawbridge_maintenance_responses_total{"));
    }
}
