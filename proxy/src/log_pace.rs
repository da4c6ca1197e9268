//! Log lines for events that come in floods (refusals, failing upstream handshakes): at most
//! one line a second per kind of event, saying how many were not logged since the last one.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

/// Events of one kind, logged at most one line a second.
#[derive(Debug)]
pub struct EachSecond {
    started: Instant,
    /// The second of the last line (counted from 1).
    last_second: AtomicU64,
    /// Events not logged since the last line.
    not_logged: AtomicU64,
}

impl Default for EachSecond {
    fn default() -> EachSecond {
        EachSecond {
            started: Instant::now(),
            last_second: AtomicU64::new(0),
            not_logged: AtomicU64::new(0),
        }
    }
}

impl EachSecond {
    /// Notes one event now: `Some(n)` when its line goes out, `n` being the events not logged
    /// since the last line; `None` when a line went out this second.
    pub fn note(&self) -> Option<u64> {
        // Seconds since start, plus one so that the first event is always logged.
        self.note_in(self.started.elapsed().as_secs() + 1)
    }

    /// Notes one event in `second`; `None` when a line for this second or a later one went out.
    fn note_in(&self, second: u64) -> Option<u64> {
        let last = self.last_second.load(Ordering::Relaxed);
        if second <= last
            || self
                .last_second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.not_logged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.not_logged.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_logged_at_most_one_line_a_second_with_the_count_since() {
        let line = EachSecond::default();
        assert_eq!(line.note(), Some(0));
        assert_eq!(line.note_in(100), Some(0));
        for _ in 0..499 {
            assert_eq!(line.note_in(100), None);
        }
        assert_eq!(line.note_in(101), Some(499));
        assert_eq!(line.note_in(101), None);
        // A thread that read an older second does not move the line back.
        assert_eq!(line.note_in(99), None);
        assert_eq!(line.note_in(102), Some(2));
    }
}
