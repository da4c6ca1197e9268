//! Every metric the proxy exports, defined in one place and registered at start (a registration
//! error fails the start instead of silently dropping a metric). Names are prefixed `drawbridge_`.

use prometheus::{
    Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    /// Requests that failed towards an upstream (no healthy server, connect or read failure).
    pub upstream_errors: IntCounterVec,
    /// Failed requests to Consul by the gate watcher, by kind.
    pub consul_watch_errors: IntCounterVec,
    /// Values at the gate key that were refused.
    pub gate_rejected_values: IntCounter,
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
    /// 1 when Consul has not answered for longer than `consul.stale_after`.
    pub consul_stale: IntGauge,
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
        let gate_rejected_values = IntCounter::new(
            "drawbridge_gate_rejected_values_total",
            "Values at the gate key that were refused (the gate kept its state)",
        )?;
        registry.register(Box::new(gate_rejected_values.clone()))?;
        let gate_mode = IntGaugeVec::new(
            Opts::new("drawbridge_gate_mode", "1 for the gate mode being served"),
            &["mode"],
        )?;
        registry.register(Box::new(gate_mode.clone()))?;
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
                "Requests that failed towards an upstream pool",
                &["pool"],
            )?,
            consul_watch_errors: counter_vec(
                "drawbridge_consul_watch_errors_total",
                "Failed requests of the gate watcher to Consul",
                &["kind"],
            )?,
            gate_rejected_values,
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
                "1 when Consul has not answered for longer than consul.stale_after",
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
