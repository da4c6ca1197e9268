//! oha's JSON result (`--output-format json`), read into the figures the benches report: counts
//! by status and by error, the rate and the latency percentiles.

use serde::Serialize;
use std::collections::BTreeMap;

/// What one oha run measured.
#[derive(Debug, Clone, Serialize)]
pub struct OhaResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Failed requests by oha's error message (connection refused, reset, …).
    pub errors: BTreeMap<String, u64>,
}

impl OhaResult {
    /// Answers whose status is not in `expected`.
    pub fn unexpected(&self, expected: &[u16]) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !expected.contains(s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Reads oha's JSON output.
///
/// # Errors
/// When it is not JSON.
pub fn parse(text: &str) -> anyhow::Result<OhaResult> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let ms = |key: &str| -> f64 { v["latencyPercentiles"][key].as_f64().unwrap_or(f64::NAN) * 1e3 };
    let mut statuses = BTreeMap::new();
    if let Some(map) = v["statusCodeDistribution"].as_object() {
        for (code, n) in map {
            statuses.insert(code.parse().unwrap_or(0), n.as_u64().unwrap_or(0));
        }
    }
    let mut errors = BTreeMap::new();
    if let Some(map) = v["errorDistribution"].as_object() {
        for (message, n) in map {
            errors.insert(message.clone(), n.as_u64().unwrap_or(0));
        }
    }
    let answered: u64 = statuses.values().sum();
    Ok(OhaResult {
        requests: answered,
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        p999_ms: ms("p99.9"),
        statuses,
        errors,
    })
}
