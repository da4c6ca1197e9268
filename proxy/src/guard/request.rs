//! The size and pace limits of one request: checked on its header before anything else is
//! done with it ([`refusal_for`]), and on its body as it is passed on ([`BodyPace`]).

use super::Refusal;
use crate::config::{Limits, BODY_RATE_GRACE};
use pingora::http::RequestHeader;
use std::time::Instant;

/// Why `req` is refused by the size limits, checked before anything else is done with it.
pub fn refusal_for(req: &RequestHeader, limits: &Limits) -> Option<(Refusal, String)> {
    let target = req.raw_path().len();
    if target > limits.max_uri_bytes {
        return Some((
            Refusal::UriLength,
            format!(
                "a request target of {target} bytes, over limits.max_uri_bytes ({})",
                limits.max_uri_bytes
            ),
        ));
    }
    let lines = req.headers.len();
    if lines > limits.max_headers {
        return Some((
            Refusal::HeaderCount,
            format!(
                "{lines} header lines, over limits.max_headers ({})",
                limits.max_headers
            ),
        ));
    }
    // As sent: "Name: value\r\n" each, after the request line.
    let bytes = target
        + req.method.as_str().len()
        + 12
        + req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if bytes > limits.max_header_bytes {
        return Some((
            Refusal::HeaderSize,
            format!(
                "a header of {bytes} bytes, over limits.max_header_bytes ({})",
                limits.max_header_bytes
            ),
        ));
    }
    let announced = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limits.max_body_bytes => Some((
            Refusal::BodySize,
            format!(
                "a body of {length} bytes announced, over limits.max_body_bytes ({})",
                limits.max_body_bytes
            ),
        )),
        _ => None,
    }
}

/// The pace of one request body: its size so far against `max_body_bytes`, and its average rate
/// against `body_min_rate`, timed from its first bytes, once [`BODY_RATE_GRACE`] has passed.
/// Stalls are `body_timeout`'s: time the proxy does not read (an upstream that is slow to
/// connect or to take the body) is not counted against the client.
#[derive(Debug, Default)]
pub struct BodyPace {
    received: u64,
    first_bytes: Option<Instant>,
}

impl BodyPace {
    /// Counts `chunk`, read at `now`; says why the body is refused, if it is.
    pub fn take(
        &mut self,
        chunk: usize,
        now: Instant,
        limits: &Limits,
    ) -> Option<(Refusal, String)> {
        if chunk == 0 {
            return None;
        }
        let first_bytes = *self.first_bytes.get_or_insert(now);
        let elapsed = now - first_bytes;
        self.received += chunk as u64;
        if self.received > limits.max_body_bytes {
            return Some((
                Refusal::BodySize,
                format!(
                    "a body over limits.max_body_bytes ({})",
                    limits.max_body_bytes
                ),
            ));
        }
        let counted = elapsed.saturating_sub(BODY_RATE_GRACE).as_secs_f64();
        let due = (limits.body_min_rate as f64 * counted) as u64;
        (self.received < due).then(|| {
            (
                Refusal::BodyPace,
                format!(
                    "a body of {} bytes after {elapsed:.1?}, slower than limits.body_min_rate ({} bytes/s)",
                    self.received, limits.body_min_rate
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 2048,
            max_headers: 20,
            max_uri_bytes: 512,
            max_body_bytes: 10_000,
            body_min_rate: 100,
            ..Limits::default()
        }
    }

    fn get(path: &str, headers: &[(&str, String)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), value.as_str()).unwrap();
        }
        req
    }

    fn refused(req: &RequestHeader) -> Option<Refusal> {
        refusal_for(req, &limits()).map(|(refusal, _)| refusal)
    }

    #[test]
    fn requests_over_a_size_limit_are_refused_with_its_status() {
        assert_eq!(refused(&get("/", &[("host", "a".into())])), None);
        let long = format!("/{}", "a".repeat(600));
        assert_eq!(refused(&get(&long, &[])), Some(Refusal::UriLength));
        let many: Vec<_> = (0..21).map(|i| ("x-n", i.to_string())).collect();
        assert_eq!(refused(&get("/", &many)), Some(Refusal::HeaderCount));
        let big = [("x-big", "b".repeat(2100))];
        assert_eq!(refused(&get("/", &big)), Some(Refusal::HeaderSize));
        let announced = [("content-length", "10001".to_string())];
        assert_eq!(refused(&get("/", &announced)), Some(Refusal::BodySize));
        let statuses: Vec<Option<u16>> = [
            Refusal::HeaderSize,
            Refusal::HeaderCount,
            Refusal::UriLength,
            Refusal::BodySize,
            Refusal::BodyPace,
            Refusal::HeaderTimeout,
        ]
        .iter()
        .map(|r| r.status())
        .collect();
        assert_eq!(
            statuses,
            [Some(431), Some(431), Some(414), Some(413), Some(408), None]
        );
    }

    #[test]
    fn a_body_is_held_to_its_size_and_after_the_grace_to_its_pace_from_its_first_bytes() {
        let limits = limits();
        let start = Instant::now();
        let mut pace = BodyPace::default();
        // The end of a body without bytes, however late (a slow upstream), is no body at all.
        assert!(pace
            .take(0, start + Duration::from_secs(60), &limits)
            .is_none());
        // Slow but within the grace of its first bytes.
        assert!(pace.take(10, start, &limits).is_none());
        assert!(pace.take(1, start + BODY_RATE_GRACE, &limits).is_none());
        // 5 s after the grace, 100 bytes/s want 500 bytes: 511 is enough, 111 is not.
        let later = start + BODY_RATE_GRACE + Duration::from_secs(5);
        let mut fast = BodyPace::default();
        assert!(fast.take(11, start, &limits).is_none());
        assert!(fast.take(500, later, &limits).is_none());
        let slow = pace.take(100, later, &limits).map(|(r, _)| r);
        assert_eq!(slow, Some(Refusal::BodyPace));
        let mut big = BodyPace::default();
        assert!(big.take(10_000, start, &limits).is_none());
        let over = big.take(1, start, &limits).map(|(r, _)| r);
        assert_eq!(over, Some(Refusal::BodySize));
    }
}
