//! Legitimate traffic beside an attack, measured: `GET`s at a fixed rate, each on its own task
//! (an open loop: a slow answer does not slow the sending), and what they saw.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a run of legitimate requests saw.
#[derive(Debug)]
pub struct Served {
    pub sent: usize,
    /// Answered 200.
    pub ok: usize,
    /// The first failures (a status or an error), for an assertion's message.
    pub failures: Vec<String>,
    pub p50: Duration,
    pub p99: Duration,
}

impl Served {
    /// Asserts that every request was served and that the p99 stayed within `factor` times the
    /// `baseline`'s, or within `floor`, whichever is more.
    pub fn assert_unhurt(&self, baseline: &Served, factor: u32, floor: Duration) {
        assert_eq!(
            self.ok, self.sent,
            "legitimate requests failed: {:?}",
            self.failures
        );
        let allowed = (baseline.p99 * factor).max(floor);
        assert!(
            self.p99 <= allowed,
            "legitimate p99 {:?} during the attack, {:?} before",
            self.p99,
            baseline.p99
        );
    }
}

/// Sends `GET <url>` with `client` at `rate` a second until `on` is cleared (when given) or `most`
/// has passed, and waits for every answer.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    rate: u64,
    most: Duration,
    on: Option<&AtomicBool>,
) -> Served {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
    let started = Instant::now();
    let mut requests = Vec::new();
    while on.is_none_or(|on| on.load(Ordering::Relaxed)) && started.elapsed() < most {
        ticks.tick().await;
        let request = client.get(url).timeout(Duration::from_secs(5)).send();
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            match request.await {
                Ok(answer) if answer.status() == 200 => Ok(sent.elapsed()),
                Ok(answer) => Err(format!("status {}", answer.status())),
                Err(e) => Err(format!("{e}")),
            }
        }));
    }
    let sent = requests.len();
    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
    for request in requests {
        match request.await.expect("a request task does not panic") {
            Ok(latency) => latencies.push(latency),
            Err(e) => failures.push(e),
        }
    }
    latencies.sort();
    let at = |q: f64| {
        let last = latencies.len().saturating_sub(1);
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(last))
            .copied()
            .unwrap_or_default()
    };
    Served {
        sent,
        ok: latencies.len(),
        p50: at(0.50),
        p99: at(0.99),
        failures: failures.into_iter().take(5).collect(),
    }
}
