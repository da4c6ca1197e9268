//! The blocking-query loop shared by everything the proxy follows in Consul (the gate key, the
//! instances of a Consul-service pool): a bounded first read before the service reports ready,
//! then reads that block until something changes, until shutdown.
//!
//! Which read comes next is the [`Cursor`]'s rule, kept free of I/O so it can be tested alone:
//! - the first read, the first after any error and the first after an answer the follower
//!   doubts (an index below what it serves) are [`ReadKind::Confirm`]: at once, confirmed by the
//!   leader, because a server that was just restarted answers other reads from a store that is
//!   still replaying its log (older values, or none at all);
//! - while no leader can confirm (no leader, or a 5xx from a server whose leader just died),
//!   reads block on the same server ([`ReadKind::Stale`]) from the index already known, so only
//!   newer data wakes them and the first write after the election is seen as soon as that
//!   server has it;
//! - otherwise reads block after the last index ([`ReadKind::Watch`]).
//!
//! A failure that says "this address cannot serve" (no connection, no answer) moves to the next
//! configured address after a short jittered pause; once every address has failed in a row,
//! full-jitter backoff applies. A token bucket turns a churning value into polling, and a
//! blocking read answered at once with no news is followed by a pause.

use async_trait::async_trait;
use drawbridge_core::consul::{
    self, Backoff, Client, Consistency, Failover, QueryOptions, TokenBucket,
};
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use rand::Rng;
use std::time::{Duration, Instant};

/// How long the first read may take before the service reports ready without it.
pub const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Reads go straight through while calm; under churn at most one per this interval.
const CHURN_INTERVAL: Duration = Duration::from_millis(100);
/// A blocking read that comes back with the index it was sent with brought no news, which
/// Consul does only once its wait is over unless something is wrong with it; the next read goes
/// out no sooner than this after the one that brought nothing, so a server answering "no
/// change" at once is read at most 2.5 times a second (the token bucket alone allows 10).
const NO_NEWS_INTERVAL: Duration = Duration::from_millis(400);

/// How one read is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Blocking after the index, with the follower's configured consistency.
    Watch,
    /// At once, and confirmed by the leader with a quorum (`consistent`): the truth.
    Confirm,
    /// Blocking after the index on whichever server answers (`stale`), while there is no leader.
    Stale,
}

impl ReadKind {
    /// The query options of a read of this kind after `index`: watches wait a spread share of
    /// `wait` (see [`spread_wait`]) with `consistency`.
    pub fn options(self, index: u64, wait: Duration, consistency: Consistency) -> QueryOptions {
        match self {
            ReadKind::Watch => {
                QueryOptions::blocking(index, spread_wait(wait)).with_consistency(consistency)
            }
            ReadKind::Stale => QueryOptions::blocking(index, spread_wait(wait))
                .with_consistency(Consistency::Stale),
            ReadKind::Confirm => QueryOptions::default().with_consistency(Consistency::Consistent),
        }
    }
}

/// What a follower made of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Applied, or nothing to apply.
    Settled,
    /// Not applied because it may be older than what is served: confirm with the leader.
    Doubted,
}

/// Something followed with blocking queries.
#[async_trait]
pub trait Followed: Send + Sync {
    /// What one read returns besides its index.
    type Answer: Send;

    /// What is followed, for log lines.
    fn describe(&self) -> String;

    /// The agent addresses to read from.
    fn failover(&self) -> &Failover;

    /// One read through `client`: blocking after `index` for [`ReadKind::Watch`] and
    /// [`ReadKind::Stale`] (at once when `index` is 0), at once for [`ReadKind::Confirm`].
    /// Returns the answer and the `X-Consul-Index` it came with.
    async fn read(
        &self,
        client: &Client,
        kind: ReadKind,
        index: u64,
    ) -> Result<(Self::Answer, u64), consul::Error>;

    /// Takes an answer that came with `index` from a read of `kind`.
    async fn take(&self, answer: Self::Answer, index: u64, kind: ReadKind) -> Taken;

    /// Notes a failed read (the loop itself logs it and decides when to retry).
    fn failed(&self, _error: &consul::Error) {}

    /// Notes that the reads moved on to the next agent address after a failure.
    fn moved_on(&self) {}
}

/// The blocking index and the kind of the next read, and the pause after a failure.
#[derive(Debug)]
pub struct Cursor {
    index: u64,
    next: ReadKind,
    addresses: u32,
    failures_in_a_row: u32,
    backoff: Backoff,
}

impl Cursor {
    /// A cursor before the first read, over `addresses` agent addresses.
    pub fn new(addresses: usize) -> Cursor {
        Cursor {
            index: 0,
            next: ReadKind::Confirm,
            addresses: u32::try_from(addresses.max(1)).unwrap_or(u32::MAX),
            failures_in_a_row: 0,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
        }
    }

    /// The next read: its kind and the index to send (0 for a confirming read).
    pub fn next(&self) -> (ReadKind, u64) {
        match self.next {
            ReadKind::Confirm => (ReadKind::Confirm, 0),
            kind => (kind, self.index),
        }
    }

    /// After a read of `kind` answered with `answered` and the follower `taken` it.
    pub fn answered(&mut self, kind: ReadKind, answered: u64, taken: Taken) {
        self.failures_in_a_row = 0;
        self.backoff.reset();
        // An index below the one sent means another history, or a store that is behind.
        let went_back = kind != ReadKind::Confirm && answered < self.index;
        self.index = match kind {
            ReadKind::Confirm => answered.max(1),
            _ => consul::next_index(self.index, answered),
        };
        self.next = if went_back || taken == Taken::Doubted {
            ReadKind::Confirm
        } else {
            ReadKind::Watch
        };
    }

    /// After a read of `kind` failed with `error`; `moved` tells whether reads now go to another
    /// address. Returns how long to pause before the next read.
    pub fn failed(&mut self, kind: ReadKind, error: &consul::Error, moved: bool) -> Duration {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let leader_trouble = !moved && is_leader_trouble(error);
        self.next = if leader_trouble && kind == ReadKind::Confirm {
            ReadKind::Stale
        } else {
            ReadKind::Confirm
        };
        // Another address, or on to a blocking read that only newer data wakes: no reason to
        // wait long, until every address has failed in a row (and, for a leader in trouble,
        // the confirmation after the failed watch too).
        let quick = (moved && self.failures_in_a_row <= self.addresses)
            || (leader_trouble && self.failures_in_a_row <= self.addresses.saturating_add(1));
        if quick {
            jitter(BACKOFF_BASE)
        } else {
            self.backoff.next_delay()
        }
    }
}

/// Whether a server answered that the cluster cannot lead now: no leader, or a 5xx such as a
/// follower failing to reach a leader that just died. Any server still answers stale reads.
fn is_leader_trouble(error: &consul::Error) -> bool {
    match error {
        consul::Error::NoLeader { .. } => true,
        consul::Error::Status { code, .. } => *code >= 500,
        _ => false,
    }
}

/// The pause after a read of `kind` sent with index `sent` answered `answered` after `took`:
/// none, unless a blocking read came back with no news before [`NO_NEWS_INTERVAL`] had passed.
fn pause_after_answer(kind: ReadKind, sent: u64, answered: u64, took: Duration) -> Duration {
    if kind != ReadKind::Confirm && sent >= 1 && answered == sent {
        NO_NEWS_INTERVAL.saturating_sub(took)
    } else {
        Duration::ZERO
    }
}

/// A uniform pause in `[0, most]`.
fn jitter(most: Duration) -> Duration {
    let nanos = u64::try_from(most.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// A blocking read's wait, spread over `[wait - wait/8, wait]` so that proxies started or woken
/// together do not come back to Consul in waves.
pub fn spread_wait(wait: Duration) -> Duration {
    wait - jitter(wait / 8)
}

/// One read and what follows from it; returns the pause before the next read.
async fn step<F: Followed>(followed: &F, cursor: &mut Cursor) -> Duration {
    let (kind, index) = cursor.next();
    let failover = followed.failover();
    let (at, client) = failover.current();
    let sent = Instant::now();
    match followed.read(client, kind, index).await {
        Ok((answer, answered)) => {
            if kind != ReadKind::Confirm && answered < index {
                tracing::info!(
                    previous = index,
                    answered,
                    "Consul index of {} went backwards, confirming with the leader",
                    followed.describe()
                );
            }
            let taken = followed.take(answer, answered, kind).await;
            cursor.answered(kind, answered, taken);
            pause_after_answer(kind, index, answered, sent.elapsed())
        }
        Err(e) => {
            followed.failed(&e);
            let moved = failover.move_on(at, &e);
            let pause = cursor.failed(kind, &e, moved);
            let then = if moved {
                followed.moved_on();
                format!("reading from {} next", failover.current().1.address())
            } else {
                "keeping what is served".to_owned()
            };
            tracing::warn!(
                failures = cursor.failures_in_a_row,
                "reading {} failed, {then}, retrying in {pause:?}: {e}",
                followed.describe()
            );
            pause
        }
    }
}

/// Follows `followed` until `shutdown`; `ready` is notified after the first read or its timeout.
pub async fn follow<F: Followed>(
    followed: &F,
    mut shutdown: ShutdownWatch,
    ready: ServiceReadyNotifier,
) {
    let mut cursor = Cursor::new(followed.failover().addresses().len());
    let mut pause =
        match tokio::time::timeout(FIRST_READ_TIMEOUT, step(followed, &mut cursor)).await {
            Ok(pause) => pause,
            Err(_) => {
                tracing::warn!(
                    "Consul did not answer the first read of {} within {FIRST_READ_TIMEOUT:?}",
                    followed.describe()
                );
                Duration::ZERO
            }
        };
    ready.notify_ready();

    let mut bucket = TokenBucket::new(2, CHURN_INTERVAL, Instant::now());
    loop {
        if !pause.is_zero() {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(wait) = bucket.try_take(Instant::now()) {
            pause = wait;
            continue;
        }
        pause = tokio::select! {
            _ = shutdown.changed() => return,
            pause = step(followed, &mut cursor) => pause,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_leader() -> consul::Error {
        consul::Error::NoLeader {
            what: "kv get k".into(),
            address: "http://127.0.0.1:8500".into(),
        }
    }

    fn timeout() -> consul::Error {
        consul::Error::Timeout {
            what: "kv get k".into(),
            address: "http://127.0.0.1:8500".into(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn first_read_is_confirmed_then_reads_block_after_its_index() {
        let mut c = Cursor::new(1);
        assert_eq!(c.next(), (ReadKind::Confirm, 0));
        c.answered(ReadKind::Confirm, 40, Taken::Settled);
        assert_eq!(c.next(), (ReadKind::Watch, 40));
        c.answered(ReadKind::Watch, 41, Taken::Settled);
        assert_eq!(c.next(), (ReadKind::Watch, 41));
    }

    #[test]
    fn an_error_a_doubt_or_an_index_going_back_is_confirmed_next() {
        let mut c = Cursor::new(1);
        c.answered(ReadKind::Confirm, 40, Taken::Settled);
        c.failed(ReadKind::Watch, &timeout(), false);
        assert_eq!(c.next(), (ReadKind::Confirm, 0));
        c.answered(ReadKind::Confirm, 45, Taken::Settled);
        c.answered(ReadKind::Watch, 50, Taken::Doubted);
        assert_eq!(c.next(), (ReadKind::Confirm, 0));
        c.answered(ReadKind::Confirm, 50, Taken::Settled);
        // A restarted server answering from an empty store: index 1 after 50.
        c.answered(ReadKind::Watch, 1, Taken::Settled);
        assert_eq!(c.next(), (ReadKind::Confirm, 0));
        // The leader confirms a rebuilt cluster's low index: reads follow it from there.
        c.answered(ReadKind::Confirm, 3, Taken::Settled);
        assert_eq!(c.next(), (ReadKind::Watch, 3));
    }

    #[test]
    fn without_a_leader_reads_block_on_any_server_from_the_known_index() {
        let mut c = Cursor::new(1);
        c.answered(ReadKind::Confirm, 40, Taken::Settled);
        c.failed(ReadKind::Watch, &no_leader(), false);
        assert_eq!(c.next(), (ReadKind::Confirm, 0));
        let pause = c.failed(ReadKind::Confirm, &no_leader(), false);
        assert!(pause <= BACKOFF_BASE, "{pause:?}");
        assert_eq!(c.next(), (ReadKind::Stale, 40));
        // The first write after the election, seen on a follower.
        c.answered(ReadKind::Stale, 44, Taken::Settled);
        assert_eq!(c.next(), (ReadKind::Watch, 44));
    }

    #[test]
    fn a_follower_that_lost_its_leader_is_read_stale_from_the_known_index() {
        let mut c = Cursor::new(3);
        c.answered(ReadKind::Confirm, 40, Taken::Settled);
        let lost = consul::Error::Status {
            what: "kv get k".into(),
            address: "http://127.0.0.1:8500".into(),
            code: 500,
            body: "rpc error getting client: failed to get conn".into(),
        };
        assert!(c.failed(ReadKind::Watch, &lost, false) <= BACKOFF_BASE);
        assert_eq!(c.next(), (ReadKind::Confirm, 0));
        assert!(c.failed(ReadKind::Confirm, &lost, false) <= BACKOFF_BASE);
        assert_eq!(c.next(), (ReadKind::Stale, 40));
    }

    #[test]
    fn moving_on_is_quick_until_every_address_failed_then_backoff_grows() {
        let mut c = Cursor::new(3);
        for _ in 0..3 {
            assert!(c.failed(ReadKind::Watch, &timeout(), true) <= BACKOFF_BASE);
        }
        // Every address failed in a row: the backoff's own ceiling now, and growing.
        let mut ceilings = Vec::new();
        for _ in 0..5 {
            ceilings.push(c.backoff.ceiling());
            c.failed(ReadKind::Confirm, &timeout(), true);
        }
        assert_eq!(ceilings[0], BACKOFF_BASE);
        assert!(ceilings[4] > ceilings[0], "{ceilings:?}");
        c.answered(ReadKind::Confirm, 9, Taken::Settled);
        assert_eq!(c.backoff.ceiling(), BACKOFF_BASE);
        assert!(c.failed(ReadKind::Watch, &timeout(), true) <= BACKOFF_BASE);
    }

    /// The reads `follow` sends on a simulated clock: each needs a token of the loop's bucket,
    /// and `pause_after(n)` is the pause `step` returns after read `n`. Returns when each went.
    fn simulate(reads: usize, mut pause_after: impl FnMut(usize) -> Duration) -> Vec<Instant> {
        let mut now = Instant::now();
        let mut bucket = TokenBucket::new(2, CHURN_INTERVAL, now);
        let mut sent = Vec::with_capacity(reads);
        for n in 0..reads {
            while let Err(wait) = bucket.try_take(now) {
                assert!(!wait.is_zero(), "an empty bucket asks for no wait");
                now += wait;
            }
            sent.push(now);
            now += pause_after(n);
        }
        sent
    }

    /// The most reads within any one second.
    fn most_in_a_second(sent: &[Instant]) -> usize {
        let mut most = 0;
        let mut first = 0;
        for (last, at) in sent.iter().enumerate() {
            while *at - sent[first] >= Duration::from_secs(1) {
                first += 1;
            }
            most = most.max(last - first + 1);
        }
        most
    }

    /// RELIABILITY-TESTS §6, test 9: 10 000 failures in a row, of every kind, over one address
    /// and several (and an absurd number, for the arithmetic): every pause is within
    /// `[0, BACKOFF_CAP]`, the loop never spins (at most the bucket's 2 + 10 reads in any second,
    /// hardly any pause near zero once the backoff applies), and the cursor never gives up: a
    /// read still follows, and one answer starts over from the base.
    #[test]
    fn ten_thousand_failures_in_a_row_stay_within_the_cap_and_never_give_up() {
        let errors = [
            timeout(),
            no_leader(),
            consul::Error::Status {
                what: "kv get k".into(),
                address: "http://127.0.0.1:8500".into(),
                code: 503,
                body: "rpc error".into(),
            },
            consul::Error::NoServers {
                what: "kv get k".into(),
                address: "http://127.0.0.1:8500".into(),
            },
        ];
        const FAILURES: usize = 10_000;
        for addresses in [1, 3, usize::MAX] {
            let mut c = Cursor::new(addresses);
            c.answered(ReadKind::Confirm, 40, Taken::Settled);
            let mut pauses = Vec::with_capacity(FAILURES);
            let sent = simulate(FAILURES, |n| {
                let (kind, _) = c.next();
                let error = &errors[n % errors.len()];
                // As the failover decides: an address that cannot serve is left, when there is
                // another to go to.
                let moved = addresses > 1
                    && matches!(
                        error,
                        consul::Error::Timeout { .. } | consul::Error::NoServers { .. }
                    );
                let pause = c.failed(kind, error, moved);
                pauses.push(pause);
                pause
            });
            assert!(
                pauses.iter().all(|p| *p <= BACKOFF_CAP),
                "{addresses} addresses: a pause above the cap: {:?}",
                pauses.iter().max()
            );
            let near_zero = pauses
                .iter()
                .skip(100)
                .filter(|p| **p < Duration::from_millis(1))
                .count();
            assert!(
                near_zero <= FAILURES / 100,
                "{addresses} addresses: {near_zero} pauses under 1 ms"
            );
            let most = most_in_a_second(&sent);
            assert!(
                most <= 12,
                "{addresses} addresses: {most} reads in one second"
            );
            let took = *sent.last().unwrap() - sent[0];
            if addresses < usize::MAX {
                // Full jitter over [0, cap] averages cap / 2 once the quick moves are spent.
                let least = BACKOFF_CAP / 2 * (FAILURES as u32) * 8 / 10;
                assert!(
                    took >= least,
                    "{addresses} addresses: {took:?} for {FAILURES}"
                );
                assert_eq!(c.backoff.ceiling(), BACKOFF_CAP);
            }
            assert_eq!(c.failures_in_a_row, FAILURES as u32);
            // Still reading, and the first answer starts over.
            assert!(matches!(c.next().0, ReadKind::Confirm | ReadKind::Stale));
            let (kind, _) = c.next();
            c.answered(kind, 41, Taken::Settled);
            assert_eq!(c.next(), (ReadKind::Watch, 41));
            assert_eq!(c.backoff.ceiling(), BACKOFF_BASE);
            assert_eq!(c.failures_in_a_row, 0);
        }
    }

    #[test]
    fn a_blocking_read_answered_at_once_with_no_news_is_followed_by_a_pause() {
        use ReadKind::{Confirm, Stale, Watch};
        let quick = Duration::from_millis(3);
        assert_eq!(
            pause_after_answer(Watch, 40, 40, quick),
            NO_NEWS_INTERVAL - quick
        );
        assert_eq!(
            pause_after_answer(Stale, 40, 40, quick),
            NO_NEWS_INTERVAL - quick
        );
        // After its wait, no news is the usual answer: the next read goes at once.
        let waited = Duration::from_secs(55);
        assert_eq!(pause_after_answer(Watch, 40, 40, waited), Duration::ZERO);
        // News, an index that went back or to 0, or a confirmation: at once too.
        for (kind, sent, answered) in [
            (Watch, 40, 41),
            (Watch, 40, 3),
            (Watch, 40, 0),
            (Confirm, 0, 40),
            (Stale, 0, 0),
        ] {
            assert_eq!(
                pause_after_answer(kind, sent, answered, quick),
                Duration::ZERO,
                "{kind:?} {sent} -> {answered}"
            );
        }
    }

    /// RELIABILITY-TESTS §6, test 7 (the pace): a server answering the same index at once 100
    /// times in a row is read at most 3 times in any second; a churning value (news every time)
    /// at most 12 times, the bucket's burst of 2 and one per 100 ms.
    #[test]
    fn same_index_answers_are_read_at_most_three_times_a_second() {
        let quick = Duration::from_millis(1);
        let same = simulate(100, |_| pause_after_answer(ReadKind::Watch, 40, 40, quick));
        assert!(most_in_a_second(&same) <= 3, "{}", most_in_a_second(&same));
        let churn = simulate(100, |n| {
            let sent = 40 + n as u64;
            pause_after_answer(ReadKind::Watch, sent, sent + 1, quick)
        });
        assert!(
            most_in_a_second(&churn) <= 12,
            "{}",
            most_in_a_second(&churn)
        );
        assert!(most_in_a_second(&churn) > 3, "churn is followed faster");
    }

    #[test]
    fn spread_waits_stay_in_the_last_eighth_and_vary() {
        let wait = Duration::from_secs(60);
        let waits: Vec<Duration> = (0..200).map(|_| spread_wait(wait)).collect();
        assert!(waits.iter().all(|w| *w <= wait && *w >= wait - wait / 8));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 100,
            "only {} distinct waits",
            distinct.len()
        );
    }
}
