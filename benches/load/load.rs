//! The load generators: wrk for the most a proxy serves (with a Lua `done` hook that prints the
//! counts and percentiles as JSON), oha for a fixed offered rate, for HTTP/2 and for counting
//! every status code and connection error, and `openssl s_time` for full TLS handshakes. All are
//! pinned to the load CPU and bounded by their duration.

use crate::procs::{self, Proc};
use crate::systems::{Cpu, Env};
use anyhow::{bail, Context};
use drawbridge_benches::oha::{self, OhaResult};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// wrk's `done` hook: one JSON line with what the bench needs.
const WRK_DONE: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// A unique log name per generator run.
fn run_name(tool: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{tool}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What one wrk run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Answers that were not 2xx or 3xx.
    pub status: u64,
    pub timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// How the load generator connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connections {
    /// 64 connections kept open.
    KeepAlive,
    /// A new connection per request (`Connection: close`).
    Close,
}

/// What the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire<'a> {
    /// HTTP/1.1 in the clear.
    Plain,
    /// HTTP/1.1 over TLS (the certificate checked against `ca` where the tool checks it).
    Https { ca: &'a Path },
    /// HTTP/2 over TLS (ALPN `h2`), 16 connections with 4 streams each: 64 requests in flight,
    /// as the HTTP/1.1 runs have.
    H2 { ca: &'a Path },
}

/// HTTP/2 connections oha opens (`-c`).
const H2_CONNECTIONS: u32 = 16;
/// Requests in flight on each of them (`-p`).
const H2_STREAMS: u32 = 4;

impl Wire<'_> {
    fn url(self, addr: SocketAddr, path: &str) -> String {
        match self {
            Wire::Plain => format!("http://{addr}{path}"),
            Wire::Https { .. } | Wire::H2 { .. } => format!("https://{addr}{path}"),
        }
    }
}

/// Runs wrk (one thread, 64 connections) against `addr{path}` over `wire` (HTTP/1.1, plain or
/// TLS) for `duration`, calling `during` every 100 ms while it runs (to sample memory).
pub fn wrk(
    env: &Env,
    addr: SocketAddr,
    path: &str,
    (connections, wire): (Connections, Wire),
    duration: Duration,
    mut during: impl FnMut(),
) -> anyhow::Result<WrkResult> {
    if let Wire::H2 { .. } = wire {
        bail!("wrk speaks HTTP/1.1 only; HTTP/2 is measured with oha");
    }
    let script = env.work.join("wrk-done.lua");
    if !script.exists() {
        std::fs::write(&script, WRK_DONE)
            .with_context(|| format!("cannot write {}", script.display()))?;
    }
    let name = run_name("wrk");
    let mut cmd = env.command(&env.tools.wrk, Cpu::Load);
    cmd.args(["-t1", "-c64"])
        // wrk takes whole seconds.
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script);
    if connections == Connections::Close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(wire.url(addr, path));
    let mut proc = Proc::spawn(&name, cmd, &env.logs)?;
    wait_for(&mut proc, duration + Duration::from_secs(10), &mut during)?;
    let log = env.logs.join(format!("{name}.log"));
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("wrk printed no result\n{}", proc.log_tail(20)))?;
    serde_json::from_str(line).with_context(|| format!("cannot read wrk's result {line:?}"))
}

/// Waits for a generator to finish by itself, calling `during` every 100 ms.
fn wait_for(proc: &mut Proc, limit: Duration, during: &mut impl FnMut()) -> anyhow::Result<()> {
    let start = Instant::now();
    while !proc.has_exited() {
        if start.elapsed() > limit {
            proc.stop();
            bail!(
                "{} ran past {limit:?}; stopped it\n{}",
                proc.name(),
                proc.log_tail(20)
            );
        }
        during();
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A running oha: a fixed offered `rate` over 64 keep-alive connections for `duration`,
/// latencies corrected for coordinated omission, requests in flight at the end waited for.
pub struct Oha {
    proc: Proc,
    out: std::path::PathBuf,
    limit: Instant,
}

impl Oha {
    pub fn start(
        env: &Env,
        addr: SocketAddr,
        path: &str,
        rate: u64,
        duration: Duration,
    ) -> anyhow::Result<Oha> {
        Oha::spawn(
            env,
            addr,
            path,
            Some(rate),
            (Connections::KeepAlive, Wire::Plain),
            duration,
        )
    }

    /// As fast as it goes over `wire` (for the HTTP/2 figure and the warm-ups).
    pub fn flat_out(
        env: &Env,
        addr: SocketAddr,
        path: &str,
        how: (Connections, Wire),
        duration: Duration,
    ) -> anyhow::Result<Oha> {
        Oha::spawn(env, addr, path, None, how, duration)
    }

    fn spawn(
        env: &Env,
        addr: SocketAddr,
        path: &str,
        rate: Option<u64>,
        (connections, wire): (Connections, Wire),
        duration: Duration,
    ) -> anyhow::Result<Oha> {
        let name = run_name("oha");
        let out = env.logs.join(format!("{name}.json"));
        let mut cmd = env.command(&env.tools.oha, Cpu::Load);
        cmd.args([
            "--no-tui",
            "--output-format",
            "json",
            "--worker-threads",
            "1",
        ]);
        match wire {
            Wire::Plain => {
                cmd.args(["-c", "64"]);
            }
            Wire::Https { ca } => {
                cmd.args(["-c", "64", "--cacert"]).arg(ca);
            }
            Wire::H2 { ca } => {
                cmd.args(["--http2", "-c", &H2_CONNECTIONS.to_string()])
                    .args(["-p", &H2_STREAMS.to_string(), "--cacert"])
                    .arg(ca);
            }
        }
        cmd.arg("-o")
            .arg(&out)
            .arg("-z")
            .arg(format!("{}ms", duration.as_millis()))
            .arg("--wait-ongoing-requests-after-deadline");
        if let Some(rate) = rate {
            cmd.arg("-q")
                .arg(rate.to_string())
                .arg("--latency-correction");
        }
        if connections == Connections::Close {
            cmd.arg("--disable-keepalive");
        }
        cmd.arg(wire.url(addr, path));
        let proc = Proc::spawn(&name, cmd, &env.logs)?;
        Ok(Oha {
            proc,
            out,
            limit: Instant::now() + duration + Duration::from_secs(15),
        })
    }

    /// Waits for the end and reads the result.
    pub fn finish(self) -> anyhow::Result<OhaResult> {
        self.finish_sampling(|| {})
    }

    /// The same, calling `during` every 100 ms while it runs (to sample memory).
    pub fn finish_sampling(mut self, mut during: impl FnMut()) -> anyhow::Result<OhaResult> {
        let left = self.limit.saturating_duration_since(Instant::now());
        wait_for(&mut self.proc, left, &mut during)?;
        let text = std::fs::read_to_string(&self.out).with_context(|| {
            format!(
                "oha wrote no result to {}\n{}",
                self.out.display(),
                self.proc.log_tail(20)
            )
        })?;
        oha::parse(&text)
            .with_context(|| format!("cannot read oha's result {}", self.out.display()))
    }
}

/// Warms a system up: oha as fast as it goes for `duration` (wrk takes whole seconds only).
pub fn warm_up(
    env: &Env,
    addr: SocketAddr,
    path: &str,
    how: (Connections, Wire),
    duration: Duration,
) -> anyhow::Result<()> {
    Oha::flat_out(env, addr, path, how, duration)?.finish()?;
    Ok(())
}

/// Runs oha to the end (see [`Oha::start`]).
pub fn oha(
    env: &Env,
    addr: SocketAddr,
    path: &str,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<OhaResult> {
    Oha::start(env, addr, path, rate, duration)?.finish()
}

/// What the `openssl s_time` clients of one run did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Handshakes {
    /// Connections whose handshake was a full one.
    pub full: u64,
    /// Connections that resumed a session (none is wanted: `-new` never offers one).
    pub resumed: u64,
    /// Wall-clock time from the first client's start to the last one's end.
    pub seconds: f64,
}

/// Runs `clients` `openssl s_time -new` at once against `addr` for `duration` (whole seconds,
/// as s_time takes them). Each opens connection after connection, each with a full handshake
/// (no session is offered for resumption), sends no request and closes. s_time stops at the
/// first connection that fails, and then prints no total: that fails the run.
pub fn handshakes(
    env: &Env,
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Handshakes> {
    let seconds = duration.as_secs().max(1);
    let started = Instant::now();
    let mut runs = Vec::with_capacity(clients);
    for _ in 0..clients {
        let name = run_name("s_time");
        let mut cmd = env.command(&env.tools.openssl, Cpu::Load);
        cmd.args(["s_time", "-new", "-connect"])
            .arg(addr.to_string())
            .args(["-time", &seconds.to_string()]);
        let proc = Proc::spawn(&name, cmd, &env.logs)?;
        runs.push((env.logs.join(format!("{name}.log")), proc));
    }
    // s_time checks the clock between connections, so it ends within a second after `-time`.
    let limit = Duration::from_secs(seconds + 10);
    for (_, proc) in &mut runs {
        let left = limit.saturating_sub(started.elapsed());
        wait_for(proc, left, &mut || {})?;
    }
    let mut result = Handshakes {
        full: 0,
        resumed: 0,
        seconds: started.elapsed().as_secs_f64(),
    };
    for (log, proc) in &runs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let (connections, resumed) = parse_s_time(&text).with_context(|| {
            format!(
                "openssl s_time printed no total (a connection failed?)\n{}",
                proc.log_tail(20)
            )
        })?;
        result.full += connections - resumed.min(connections);
        result.resumed += resumed;
    }
    Ok(result)
}

/// s_time's connections (from `N connections in T real seconds, …`) and how many of them
/// resumed a session: it prints one character per connection, `r` for a resumed one.
fn parse_s_time(text: &str) -> Option<(u64, u64)> {
    let connections = text.lines().find_map(|l| {
        let (n, rest) = l.split_once(" connections in ")?;
        rest.contains("real seconds")
            .then(|| n.trim().parse().ok())?
    })?;
    let resumed = text
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| "*tr3".contains(c)))
        .map(|l| l.matches('r').count() as u64)
        .sum();
    Some((connections, resumed))
}

/// Samples the largest resident memory of a process tree.
pub struct RssPeak {
    pid: u32,
    pub peak_kib: u64,
}

impl RssPeak {
    pub fn new(pid: u32) -> RssPeak {
        RssPeak { pid, peak_kib: 0 }
    }

    pub fn sample(&mut self) {
        self.peak_kib = self.peak_kib.max(procs::rss_kib(self.pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_time_totals_and_resumed_connections() {
        let out = "Collecting connection statistics for 5 seconds\n\
                   ****r**\n\n7 connections in 0.03s; 233.33 connections/user sec, bytes read 0\n\
                   7 connections in 6 real seconds, 0 bytes read per connection\n";
        assert_eq!(parse_s_time(out), Some((7, 1)));
        assert_eq!(
            parse_s_time("Collecting connection statistics for 5 seconds\n***"),
            None
        );
    }
}
