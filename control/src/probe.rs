//! `maintctl probe`: a steady stream of GET requests at the public URLs while a procedure runs,
//! recording every answer that is not an expected status (by default 200 or 503) and every
//! connection failure, with its time, so "nobody saw a 502" is a measured fact.
//!
//! [`probe`] is the loop (fixed-rate ticker, round-robin over the URLs, at most one request in
//! flight per URL); [`ProbeReport`] is what it found, as text or JSON.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use drawbridge_core::timestamp;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

/// Statuses that count as expected when none are given: the service itself (200) and the
/// maintenance answer (503).
pub const DEFAULT_EXPECT: [u16; 2] = [200, 503];

/// Time allowed for one request (connect, headers and body) when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two requests when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

/// The shortest interval accepted: a zero period would make the ticker spin.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// What to probe, how often, and what counts as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// The URLs, asked in turn (`http://` or `https://`).
    pub urls: Vec<String>,
    /// Time between two requests (to any URL): a fixed rate, not a pause after each answer.
    pub interval: Duration,
    /// Statuses that are not reported as unexpected.
    pub expect: Vec<u16>,
    /// Stop after this long; `None` runs until `stop` resolves.
    pub duration: Option<Duration>,
    /// Time allowed for one request, from sending to the end of the body.
    pub timeout: Duration,
    /// Extra request headers (name, value), e.g. a `Host` or a bypass token.
    pub headers: Vec<(String, String)>,
}

impl ProbeOptions {
    /// Options for `urls` with the defaults: [`DEFAULT_INTERVAL`], [`DEFAULT_EXPECT`],
    /// [`DEFAULT_TIMEOUT`], no duration limit, no extra headers.
    pub fn new(urls: Vec<String>) -> ProbeOptions {
        ProbeOptions {
            urls,
            interval: DEFAULT_INTERVAL,
            expect: DEFAULT_EXPECT.to_vec(),
            duration: None,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
        }
    }

    /// Checks the options before a run; [`probe`] itself never fails, so bad options would
    /// only show up as a report full of unexpected results.
    ///
    /// # Errors
    /// Every problem found, joined with "; ": no URL, a URL that does not parse or is not
    /// http(s), a zero interval or timeout, an expected status outside 100..=599, a header
    /// that is not valid HTTP.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.urls.is_empty() {
            problems.push("probe: at least one URL is needed".to_owned());
        }
        for url in &self.urls {
            match reqwest::Url::parse(url) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => problems.push(format!(
                    "probe url {url:?}: scheme must be http or https, not {}",
                    u.scheme()
                )),
                Ok(u) if u.host_str().is_none() => {
                    problems.push(format!("probe url {url:?}: has no host"));
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("probe url {url:?}: {e}")),
            }
        }
        if self.interval < MIN_INTERVAL {
            problems.push(format!(
                "probe interval {:?}: must be at least {MIN_INTERVAL:?}",
                self.interval
            ));
        }
        if self.timeout.is_zero() {
            problems.push("probe timeout: must be more than 0".to_owned());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            problems.push("probe duration: must be more than 0".to_owned());
        }
        for code in &self.expect {
            if !(100..=599).contains(code) {
                problems.push(format!(
                    "probe expect {code}: not an HTTP status (100 to 599)"
                ));
            }
        }
        if let Err(e) = header_map(&self.headers) {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// One result outside the expected statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unexpected {
    /// When the request was sent (UTC).
    pub at: OffsetDateTime,
    /// The URL asked.
    pub url: String,
    /// What happened: `status 502`, `connection refused`, `timeout after 5s`, …
    pub what: String,
}

/// A run of consecutive unexpected results, in the order the requests were sent (across all
/// URLs: an expected answer from any URL ends a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexpectedRun {
    /// When its first request was sent.
    pub start: OffsetDateTime,
    /// When its last request was sent.
    pub end: OffsetDateTime,
    /// How many results it holds.
    pub count: u64,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Results counted: every answered or failed request (not the skipped ticks).
    pub total: u64,
    /// Answers by status code, expected or not.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests without a status: refused, reset, timed out, or a broken response.
    pub connection_errors: u64,
    /// Ticks skipped because that URL's previous request was still in flight.
    pub skipped: u64,
    /// The statuses that counted as expected.
    pub expect: Vec<u16>,
    /// Every unexpected result, in the order the requests were sent.
    pub unexpected: Vec<Unexpected>,
    /// The longest run of consecutive unexpected results (the first one, on a tie).
    pub longest_unexpected_run: Option<UnexpectedRun>,
    /// From the first request to the last result.
    pub elapsed: Duration,
}

impl ProbeReport {
    fn empty(expect: &[u16]) -> ProbeReport {
        ProbeReport {
            total: 0,
            by_status: BTreeMap::new(),
            connection_errors: 0,
            skipped: 0,
            expect: expect.to_vec(),
            unexpected: Vec::new(),
            longest_unexpected_run: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Whether at least one result came in and none was unexpected. A probe that counted
    /// nothing proves nothing, so it is not clean.
    pub fn is_clean(&self) -> bool {
        self.total > 0 && self.unexpected.is_empty()
    }

    /// The report for a person: counts by status, every unexpected result with its RFC 3339
    /// time, the longest run, and the verdict.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "probe: {} results in {}\n",
            self.total,
            seconds(self.elapsed)
        );
        for (code, n) in &self.by_status {
            let mark = if self.expect.contains(code) {
                ""
            } else {
                " (unexpected)"
            };
            out.push_str(&format!("  status {code}: {n}{mark}\n"));
        }
        if self.connection_errors > 0 {
            out.push_str(&format!(
                "  connection errors: {} (unexpected)\n",
                self.connection_errors
            ));
        }
        if self.skipped > 0 {
            out.push_str(&format!(
                "  skipped: {} (the previous request to that URL was still in flight)\n",
                self.skipped
            ));
        }
        if !self.unexpected.is_empty() {
            out.push_str(&format!("unexpected results: {}\n", self.unexpected.len()));
            for u in &self.unexpected {
                out.push_str(&format!(
                    "  {}  {}  {}\n",
                    timestamp::millis(u.at),
                    u.url,
                    u.what
                ));
            }
        }
        if let Some(run) = &self.longest_unexpected_run {
            out.push_str(&format!(
                "longest unexpected run: {} in a row, from {} to {} ({})\n",
                run.count,
                timestamp::millis(run.start),
                timestamp::millis(run.end),
                seconds((run.end - run.start).try_into().unwrap_or_default())
            ));
        }
        let expect = self
            .expect
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if self.is_clean() {
            out.push_str(&format!("clean: every answer was one of {expect}\n"));
        } else if self.total == 0 {
            out.push_str("not clean: no result came in\n");
        } else {
            out.push_str(&format!(
                "not clean: {} of {} results were not one of {expect}\n",
                self.unexpected.len(),
                self.total
            ));
        }
        out
    }

    /// The report as one JSON object (times in RFC 3339, `elapsed_ms` in milliseconds).
    pub fn to_json(&self) -> Value {
        let by_status: serde_json::Map<String, Value> = self
            .by_status
            .iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect();
        let unexpected: Vec<Value> = self
            .unexpected
            .iter()
            .map(|u| json!({"at": timestamp::millis(u.at), "url": u.url, "what": u.what}))
            .collect();
        let run = self
            .longest_unexpected_run
            .as_ref()
            .map(|r| json!({"start": timestamp::millis(r.start), "end": timestamp::millis(r.end), "count": r.count}));
        json!({
            "clean": self.is_clean(),
            "total": self.total,
            "by_status": by_status,
            "connection_errors": self.connection_errors,
            "skipped": self.skipped,
            "expect": self.expect,
            "unexpected": unexpected,
            "longest_unexpected_run": run,
            "elapsed_ms": u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A status and a complete body.
    Status(u16),
    /// A status, then the body broke off or stalled; unexpected whatever the status.
    BrokenBody(u16, String),
    /// No status: refused, reset, timed out, …
    Failed(String),
}

/// One result, as the request task hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    at: OffsetDateTime,
    url: String,
    answer: Answer,
}

/// The report under construction. Results may come back out of order (a slow URL behind a
/// fast one), so they are held until every earlier request has reported: runs are counted in
/// the order the requests were sent.
#[derive(Debug)]
struct Tally {
    report: ProbeReport,
    next: u64,
    pending: BTreeMap<u64, Outcome>,
    run: Option<UnexpectedRun>,
}

impl Tally {
    fn new(expect: &[u16]) -> Tally {
        Tally {
            report: ProbeReport::empty(expect),
            next: 0,
            pending: BTreeMap::new(),
            run: None,
        }
    }

    /// Takes the result of request number `seq`; returns whether the report changed.
    fn record(&mut self, seq: u64, outcome: Outcome) -> bool {
        self.pending.insert(seq, outcome);
        let mut changed = false;
        while let Some(outcome) = self.pending.remove(&self.next) {
            self.apply(outcome);
            self.next += 1;
            changed = true;
        }
        changed
    }

    fn apply(&mut self, o: Outcome) {
        let report = &mut self.report;
        report.total += 1;
        let unexpected = match o.answer {
            Answer::Status(code) => {
                *report.by_status.entry(code).or_default() += 1;
                (!report.expect.contains(&code)).then(|| format!("status {code}"))
            }
            Answer::BrokenBody(code, why) => {
                *report.by_status.entry(code).or_default() += 1;
                Some(format!("status {code}, then {why}"))
            }
            Answer::Failed(why) => {
                report.connection_errors += 1;
                Some(why)
            }
        };
        let Some(what) = unexpected else {
            self.run = None;
            return;
        };
        let run = self.run.get_or_insert(UnexpectedRun {
            start: o.at,
            end: o.at,
            count: 0,
        });
        run.end = o.at;
        run.count += 1;
        if report
            .longest_unexpected_run
            .as_ref()
            .is_none_or(|l| run.count > l.count)
        {
            report.longest_unexpected_run = Some(run.clone());
        }
        report.unexpected.push(Unexpected {
            at: o.at,
            url: o.url,
            what,
        });
    }

    /// The final report. Gaps in the sequence (a lost task) are stepped over.
    fn finish(mut self, elapsed: Duration) -> ProbeReport {
        for (_, outcome) in std::mem::take(&mut self.pending) {
            self.apply(outcome);
        }
        self.report.elapsed = elapsed;
        self.report
    }
}

/// Probes `opts.urls` until `opts.duration` has passed or `stop` resolves, calling `progress`
/// after every result, and returns what it found.
///
/// A fixed-rate ticker fires every `opts.interval`; each tick sends one GET to the next URL in
/// turn, unless that URL's previous request is still in flight (the tick is then counted as
/// skipped), so a hanging edge never piles up requests. Connections are kept alive and
/// redirects are not followed: a 301 is reported as itself. After the end, requests still in
/// flight are awaited, so the call returns at most `opts.timeout` later. Options are not
/// checked here (see [`ProbeOptions::validate`]): a request that cannot even be built counts
/// as an unexpected result.
pub async fn probe(
    opts: &ProbeOptions,
    stop: impl Future<Output = ()>,
    progress: &mut dyn FnMut(&ProbeReport),
) -> ProbeReport {
    let mut tally = Tally::new(&opts.expect);
    if opts.urls.is_empty() {
        return tally.finish(Duration::ZERO);
    }
    let client = build_client(opts);
    // The clock starts after the client is built (which takes a while with TLS roots), so
    // the duration is all probing and the first request goes out at once.
    let started = Instant::now();
    let mut ticker = tokio::time::interval(opts.interval.max(MIN_INTERVAL));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let end = opts.duration.map(|d| started + d);
    let deadline = async move {
        match end {
            Some(end) => tokio::time::sleep_until(end).await,
            None => std::future::pending().await,
        }
    };
    let mut stop = std::pin::pin!(stop);
    let mut deadline = std::pin::pin!(deadline);
    let mut stopping = false;
    let mut in_flight: JoinSet<(u64, usize, Outcome)> = JoinSet::new();
    // The (sequence, URL index) of each task, to free the URL even if a task panicked.
    let mut tasks: HashMap<tokio::task::Id, (u64, usize)> = HashMap::new();
    let mut busy = vec![false; opts.urls.len()];
    let mut turn = 0usize;
    let mut seq = 0u64;
    loop {
        if stopping && in_flight.is_empty() {
            break;
        }
        // Biased: an end that is due wins over a tick that is due, and results are taken
        // before new requests go out.
        tokio::select! {
            biased;
            () = &mut stop, if !stopping => stopping = true,
            () = &mut deadline, if !stopping => stopping = true,
            Some(joined) = in_flight.join_next_with_id() => {
                let (id, seq, i, outcome) = match joined {
                    Ok((id, (seq, i, outcome))) => (id, seq, i, outcome),
                    Err(e) => {
                        let id = e.id();
                        let Some(&(seq, i)) = tasks.get(&id) else { continue };
                        let outcome = Outcome {
                            at: OffsetDateTime::now_utc(),
                            url: opts.urls[i].clone(),
                            answer: Answer::Failed(format!("probe task failed: {e}")),
                        };
                        (id, seq, i, outcome)
                    }
                };
                tasks.remove(&id);
                busy[i] = false;
                if tally.record(seq, outcome) {
                    progress(&tally.report);
                }
            }
            _ = ticker.tick(), if !stopping => {
                let i = turn;
                turn = (turn + 1) % opts.urls.len();
                if busy[i] {
                    tally.report.skipped += 1;
                    continue;
                }
                busy[i] = true;
                let url = opts.urls[i].clone();
                let handle = in_flight.spawn(request(client.clone(), url, opts.timeout, seq, i));
                tasks.insert(handle.id(), (seq, i));
                seq += 1;
            }
        }
    }
    tally.finish(started.elapsed())
}

/// The shared client, or why it could not be built (then every request reports that).
fn build_client(opts: &ProbeOptions) -> Result<reqwest::Client, String> {
    // reqwest is built without a bundled crypto provider and panics without one. Installing
    // it again is a no-op; this lets the library work without main's set-up (tests).
    drawbridge_core::install_crypto_provider();
    let headers = header_map(&opts.headers)?;
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("maintctl-probe/", env!("CARGO_PKG_VERSION")))
        // A probe through a forward proxy would measure the proxy: go to the edge directly.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(opts.timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", innermost(&e)))
}

fn header_map(headers: &[(String, String)]) -> Result<reqwest::header::HeaderMap, String> {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("probe header {name:?}: not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("probe header {name}: value {value:?} is not valid"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Sends one GET and reads the whole body (so the connection can be reused), all within
/// `timeout`.
async fn request(
    client: Result<reqwest::Client, String>,
    url: String,
    timeout: Duration,
    seq: u64,
    i: usize,
) -> (u64, usize, Outcome) {
    let at = OffsetDateTime::now_utc();
    let deadline = Instant::now() + timeout;
    let answer = match client {
        Err(why) => Answer::Failed(why),
        Ok(client) => match tokio::time::timeout_at(deadline, client.get(&url).send()).await {
            Err(_) => Answer::Failed(format!("timeout after {}", seconds(timeout))),
            Ok(Err(e)) => Answer::Failed(describe(&e)),
            Ok(Ok(mut response)) => {
                let code = response.status().as_u16();
                let body = async {
                    while response.chunk().await?.is_some() {}
                    Ok::<(), reqwest::Error>(())
                };
                match tokio::time::timeout_at(deadline, body).await {
                    Ok(Ok(())) => Answer::Status(code),
                    Ok(Err(e)) => {
                        Answer::BrokenBody(code, format!("body failed: {}", innermost(&e)))
                    }
                    Err(_) => Answer::BrokenBody(
                        code,
                        format!("body incomplete after {}", seconds(timeout)),
                    ),
                }
            }
        },
    };
    (seq, i, Outcome { at, url, answer })
}

/// A short, stable text for a request that got no status: `connection refused`,
/// `connection reset`, else the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                ErrorKind::ConnectionReset => return "connection reset".to_owned(),
                ErrorKind::ConnectionAborted => return "connection aborted".to_owned(),
                _ => {}
            }
        }
        source = err.source();
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {}", innermost(e))
}

/// The most specific message of an error chain (reqwest's own top level only repeats the URL).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `1.250s`-style seconds with milliseconds.
fn seconds(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests;
