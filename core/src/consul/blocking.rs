//! The arithmetic of a watch loop: the blocking-query index rules, a capped full-jitter
//! backoff and a token bucket that turns a churning key into polling.
//!
//! Rules from Consul's `api-docs/features/blocking` and `RELIABILITY-TESTS.md` §3.1 and §3.4.

use std::time::{Duration, Instant};

use rand::Rng;

/// The index to send with the next blocking read, given the one sent and the one answered.
///
/// An index that went backwards (snapshot restore, deleted keys, a restarted `-dev` agent:
/// hashicorp/consul#2621) resets to 0, and the result is never below 1, because an index of 0
/// from a misbehaving server would make every read return at once (a busy loop).
pub fn next_index(previous: u64, answered: u64) -> u64 {
    let next = if answered < previous { 0 } else { answered };
    next.max(1)
}

/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(cap, base * 2^n)]` (AWS Architecture Blog, "Exponential Backoff And Jitter").
///
/// The arithmetic saturates, so it can fail forever without overflowing into a busy loop
/// (hashicorp/consul-template#1028).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never above `cap`; a zero `base` is raised to 1 ms so
    /// that a retry loop never spins, and `cap` is raised to `base` if below it.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next retry, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`, saturating.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// How many failures since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A token bucket for the watch loop: go straight through while calm, and fall back to one
/// read per `refill` when the value churns ("a token bucket with burst of 2").
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u32,
    refill: Duration,
    tokens: u32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, gaining one every `refill` (zero is raised to 1 ms).
    pub fn new(burst: u32, refill: Duration, now: Instant) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            burst,
            refill: refill.max(Duration::from_millis(1)),
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now`; `Err(wait)` says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill_to(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            Ok(())
        } else {
            Err((self.last + self.refill).saturating_duration_since(now))
        }
    }

    fn refill_to(&mut self, now: Instant) {
        if self.tokens >= self.burst {
            self.last = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last);
        let gained = elapsed.as_nanos() / self.refill.as_nanos();
        if gained == 0 {
            return;
        }
        let gained = u32::try_from(gained).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(gained).min(self.burst);
        if self.tokens >= self.burst {
            self.last = now;
        } else {
            // Keep the fraction of a refill already accrued.
            self.last += self.refill.saturating_mul(gained);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_moves_forward_with_the_answer() {
        assert_eq!(next_index(0, 5), 5);
        assert_eq!(next_index(5, 5), 5);
        assert_eq!(next_index(5, 9), 9);
    }

    #[test]
    fn index_that_went_backwards_resets() {
        // Reset to 0, then forced to the safe minimum of 1.
        assert_eq!(next_index(100, 3), 1);
        assert_eq!(next_index(u64::MAX, 0), 1);
    }

    #[test]
    fn index_is_never_zero() {
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(1, 0), 1);
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay();
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn ten_thousand_failures_stay_within_the_cap_and_are_not_all_zero() {
        let cap = Duration::from_secs(30);
        let mut b = Backoff::new(Duration::from_millis(250), cap);
        let mut non_zero = 0;
        for _ in 0..10_000 {
            let d = b.next_delay();
            assert!(d <= cap, "{d:?} above the cap");
            if !d.is_zero() {
                non_zero += 1;
            }
        }
        assert!(non_zero > 9_000, "only {non_zero} non-zero delays");
        assert_eq!(b.attempt(), 10_000);
        assert_eq!(b.ceiling(), cap);
    }

    #[test]
    fn backoff_saturates_with_huge_values() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::MAX);
        let _ = b.next_delay();
        assert_eq!(b.attempt(), u32::MAX);
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.ceiling(), Duration::from_millis(1));
        assert!(zero.next_delay() <= Duration::from_millis(1));
    }

    #[test]
    fn bucket_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let refill = Duration::from_secs(15);
        let mut bucket = TokenBucket::new(2, refill, t0);
        assert_eq!(bucket.try_take(t0), Ok(()));
        assert_eq!(bucket.try_take(t0), Ok(()));
        assert_eq!(bucket.try_take(t0), Err(refill));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(bucket.try_take(t1), Err(Duration::from_secs(5)));
        let t2 = t0 + Duration::from_secs(16);
        assert_eq!(bucket.try_take(t2), Ok(()));
        assert_eq!(bucket.try_take(t2), Err(Duration::from_secs(14)));
        // A long calm period refills to the burst, not beyond.
        let t3 = t2 + Duration::from_secs(3600);
        assert_eq!(bucket.try_take(t3), Ok(()));
        assert_eq!(bucket.try_take(t3), Ok(()));
        assert!(bucket.try_take(t3).is_err());
    }
}
