//! The blocking-query loop shared by everything the proxy follows in Consul (the gate key, the
//! instances of a Consul-service pool): a bounded first read before the service reports ready,
//! then reads that block until something changes, with the index rules, a token bucket against
//! churn and full-jitter backoff on errors, until shutdown.

use async_trait::async_trait;
use drawbridge_core::consul::{self, Backoff, TokenBucket};
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use std::time::{Duration, Instant};

/// How long the first read may take before the service reports ready without it.
pub const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Reads go straight through while calm; under churn at most one per this interval.
const CHURN_INTERVAL: Duration = Duration::from_millis(100);

/// Something followed with blocking queries.
#[async_trait]
pub trait Followed: Send + Sync {
    /// What one read returns besides its index.
    type Answer: Send;

    /// What is followed, for log lines.
    fn describe(&self) -> String;

    /// One read: blocking after `index`, or at once when `index` is 0. Returns the answer and
    /// the `X-Consul-Index` it came with.
    async fn read(&self, index: u64) -> Result<(Self::Answer, u64), consul::Error>;

    /// Takes an answer; `index` is the one the next read will send.
    async fn take(&self, answer: Self::Answer, index: u64);

    /// Notes a failed read (the loop itself logs it and backs off).
    fn failed(&self, _error: &consul::Error) {}
}

/// Follows `followed` until `shutdown`; `ready` is notified after the first read or its timeout.
pub async fn follow<F: Followed>(
    followed: &F,
    mut shutdown: ShutdownWatch,
    ready: ServiceReadyNotifier,
) {
    let mut index = 0;
    match tokio::time::timeout(FIRST_READ_TIMEOUT, followed.read(0)).await {
        Ok(Ok((answer, answered))) => {
            index = consul::next_index(0, answered);
            followed.take(answer, index).await;
        }
        Ok(Err(e)) => {
            tracing::warn!("first read of {} failed: {e}", followed.describe());
            followed.failed(&e);
        }
        Err(_) => tracing::warn!(
            "Consul did not answer the first read of {} within {FIRST_READ_TIMEOUT:?}",
            followed.describe()
        ),
    }
    ready.notify_ready();

    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut bucket = TokenBucket::new(2, CHURN_INTERVAL, Instant::now());
    loop {
        if let Err(wait) = bucket.try_take(Instant::now()) {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        let result = tokio::select! {
            _ = shutdown.changed() => return,
            result = followed.read(index) => result,
        };
        match result {
            Ok((answer, answered)) => {
                backoff.reset();
                if answered < index {
                    tracing::info!(
                        previous = index,
                        answered,
                        "Consul index of {} went backwards, reading from the start",
                        followed.describe()
                    );
                }
                index = consul::next_index(index, answered);
                followed.take(answer, index).await;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    attempt = backoff.attempt(),
                    "reading {} failed, keeping what is served, retrying in {delay:?}: {e}",
                    followed.describe()
                );
                followed.failed(&e);
                // After an outage the index may belong to another Consul history (a restarted dev
                // agent, hashicorp/consul#2621): start over; the followers compare what they get.
                index = 0;
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
