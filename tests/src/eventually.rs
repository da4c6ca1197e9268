//! Waiting for a condition with a deadline, never with a bare sleep: [`eventually`] for checks
//! that say why they failed, [`assert_eventually!`](crate::assert_eventually) for plain
//! boolean conditions.

use std::future::Future;
use std::time::Duration;

/// Deadline of [`assert_eventually!`](crate::assert_eventually) when none is given.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Pause between two tries.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `check` every `interval` until it returns `Ok`, and returns that value; each try is
/// itself cut off at the deadline.
///
/// # Panics
/// When the deadline passes, with `what` and the text of the last failure.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match try_eventually(deadline, interval, check).await {
        Ok(value) => value,
        Err(last) => panic!("{what}: still not true after {deadline:?}; last failure: {last}"),
    }
}

/// As [`eventually`], but returns the last failure text instead of panicking.
///
/// # Errors
/// The last failure text (or a note that the last try hung) when the deadline passes.
pub async fn try_eventually<T, F, Fut>(
    deadline: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last = String::from("never tried");
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            return Err(last);
        }
        match tokio::time::timeout_at(end, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(why)) => last = why,
            Err(_) => return Err(format!("{last} (then a try hung until the deadline)")),
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + interval).min(end)).await;
    }
}

/// The pause between two tries of [`assert_eventually!`](crate::assert_eventually).
#[doc(hidden)]
pub async fn pause() {
    tokio::time::sleep(DEFAULT_INTERVAL).await;
}

/// Asserts that a boolean condition (which may contain `.await`) becomes true within a
/// deadline (default [`DEFAULT_DEADLINE`]), checking every 50 ms.
///
/// ```ignore
/// assert_eventually!(edge.get("/v1/orders").await.status() == 503);
/// assert_eventually!(done(), Duration::from_secs(30), "switch applied on {}", node);
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, $crate::eventually::DEFAULT_DEADLINE)
    };
    ($cond:expr, $deadline:expr $(,)?) => {
        $crate::assert_eventually!($cond, $deadline, "{}", stringify!($cond))
    };
    ($cond:expr, $deadline:expr, $($msg:tt)+) => {{
        let deadline: ::std::time::Duration = $deadline;
        let start = ::std::time::Instant::now();
        loop {
            if $cond {
                break;
            }
            if start.elapsed() >= deadline {
                panic!("not true within {:?}: {}", deadline, format!($($msg)+));
            }
            $crate::eventually::pause().await;
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() {
        let mut n = 0;
        let v = eventually(
            "counter",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                let now = n;
                async move {
                    if now >= 3 {
                        Ok(now)
                    } else {
                        Err(format!("only {now}"))
                    }
                }
            },
        )
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn reports_the_last_failure_on_timeout() {
        let err = try_eventually(
            Duration::from_millis(100),
            Duration::from_millis(10),
            || async { Err::<(), _>("still closed".to_owned()) },
        )
        .await
        .unwrap_err();
        assert_eq!(err, "still closed");
    }

    #[tokio::test]
    async fn a_hanging_try_is_cut_at_the_deadline() {
        let err = try_eventually(
            Duration::from_millis(100),
            Duration::from_millis(10),
            || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<(), String>(())
            },
        )
        .await
        .unwrap_err();
        assert!(err.contains("hung"), "{err}");
    }

    #[tokio::test]
    async fn assert_eventually_accepts_await_in_the_condition() {
        let start = std::time::Instant::now();
        let ready = || async move { start.elapsed() > Duration::from_millis(120) };
        crate::assert_eventually!(ready().await);
        crate::assert_eventually!(
            ready().await,
            Duration::from_secs(1),
            "ready after {:?}",
            start.elapsed()
        );
    }
}
