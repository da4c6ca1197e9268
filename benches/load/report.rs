//! The results: every measurement as taken, the medians with min–max over rounds, ratios to
//! HAProxy in the same round, the tables (stdout and `summary.md`), `results.json`, `raw.csv`,
//! and the targets met or missed.

use crate::systems::System;
use drawbridge_benches::oha::OhaResult;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One load measurement of one system.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub round: usize,
    pub system: System,
    pub threads: usize,
    /// `keep-alive`/`close` (proxied), `page`/`api` (maintenance), the rate (fixed-rate),
    /// `plain h1`/`https h1`/`https h2`/`handshakes` (tls).
    pub scenario: String,
    /// Requests answered; for `handshakes`, full handshakes made.
    pub requests: u64,
    pub rps: f64,
    /// The proxy's own CPU time (user + system, all threads and processes) per request.
    pub cpu_us_per_req: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: Option<f64>,
    /// Answers with another status than the scenario's; for `handshakes`, resumed sessions.
    pub unexpected: u64,
    pub socket_errors: u64,
    pub rss_load_kib: Option<u64>,
}

impl Sample {
    /// A sample with nothing measured yet.
    pub fn new(round: usize, system: System, threads: usize) -> Sample {
        Sample {
            round,
            system,
            threads,
            scenario: String::new(),
            requests: 0,
            rps: 0.0,
            cpu_us_per_req: None,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: None,
            unexpected: 0,
            socket_errors: 0,
            rss_load_kib: None,
        }
    }

    pub fn with_scenario(mut self, scenario: &str) -> Sample {
        self.scenario = scenario.to_string();
        self
    }
}

/// A group's CPU per request and its ratios (figures 1 and 3).
struct CpuFigures {
    per_request: Option<Stat>,
    vs_haproxy: Option<Stat>,
    vs_floor: Option<Stat>,
}

/// A median with the range it came from.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }

    /// The `p`-th percentile (nearest rank) of `values`.
    pub fn percentile(values: &[f64], p: f64) -> f64 {
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    fn show(&self, decimals: usize) -> String {
        if self.n > 1 {
            format!(
                "{:.d$} ({:.d$}–{:.d$})",
                self.median,
                self.min,
                self.max,
                d = decimals
            )
        } else {
            format!("{:.d$}", self.median, d = decimals)
        }
    }
}

/// Switch propagation of one fleet (figure 5).
#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    pub system: String,
    pub proxies: usize,
    /// Milliseconds until every proxy served the new state, per switch that got there.
    pub on_ms: Vec<f64>,
    pub off_ms: Vec<f64>,
    /// Switches that had not reached every proxy after 10 s.
    pub timeouts: usize,
}

impl Propagation {
    pub fn new(system: &str, proxies: usize) -> Propagation {
        Propagation {
            system: system.to_string(),
            proxies,
            on_ms: Vec::new(),
            off_ms: Vec::new(),
            timeouts: 0,
        }
    }

    pub fn add(&mut self, on: bool, took: Option<Duration>) {
        match took {
            Some(d) if on => self.on_ms.push(d.as_secs_f64() * 1e3),
            Some(d) => self.off_ms.push(d.as_secs_f64() * 1e3),
            None => self.timeouts += 1,
        }
    }

    fn all(&self) -> Vec<f64> {
        self.on_ms.iter().chain(&self.off_ms).copied().collect()
    }
}

/// Answers under load while something changes (figures 6 and 7).
#[derive(Debug, Clone, Serialize)]
pub struct SwitchErrors {
    pub system: String,
    /// Per round: (round, switches or upgrades, the generator's result).
    pub rounds: Vec<(usize, usize, OhaResult)>,
}

impl SwitchErrors {
    pub fn new(system: &str) -> SwitchErrors {
        SwitchErrors {
            system: system.to_string(),
            rounds: Vec::new(),
        }
    }

    pub fn add(&mut self, round: usize, events: usize, r: &OhaResult) {
        self.rounds.push((round, events, r.clone()));
    }

    fn events(&self) -> usize {
        self.rounds.iter().map(|(_, e, _)| e).sum()
    }

    fn responses(&self) -> u64 {
        self.rounds.iter().map(|(_, _, r)| r.requests).sum()
    }

    fn unexpected(&self) -> u64 {
        self.rounds
            .iter()
            .map(|(_, _, r)| r.unexpected(&[200, 503]))
            .sum()
    }

    fn errors(&self) -> u64 {
        self.rounds.iter().map(|(_, _, r)| r.error_count()).sum()
    }

    fn error_kinds(&self) -> BTreeMap<String, u64> {
        let mut kinds = BTreeMap::new();
        for (_, _, r) in &self.rounds {
            for (k, n) in &r.errors {
                *kinds.entry(k.clone()).or_insert(0) += n;
            }
            for (s, n) in &r.statuses {
                if *s != 200 && *s != 503 {
                    *kinds.entry(format!("status {s}")).or_insert(0) += n;
                }
            }
        }
        kinds
    }
}

/// The two offered rates of figure 2: the (about half of HAProxy's most), at which a
/// proxy slower than half of HAProxy queues, and one every proxy can serve (half of the slowest
/// proxy's most), at which the latencies compare service, not queueing.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FixedRates {
    pub half_haproxy: u64,
    pub sustainable: u64,
}

impl FixedRates {
    /// From `--rate A,B` (clap checks there are two).
    pub fn given(rates: &[u64]) -> FixedRates {
        FixedRates {
            half_haproxy: rates[0],
            sustainable: rates[1],
        }
    }

    /// Half of HAProxy's and half of the slowest proxy's keep-alive req/s, rounded to 500.
    pub fn derive(haproxy_rps: f64, slowest_rps: f64) -> FixedRates {
        let half = |rps: f64| ((rps / 2.0 / 500.0).round() as u64).max(1) * 500;
        FixedRates {
            half_haproxy: half(haproxy_rps),
            sustainable: half(slowest_rps),
        }
    }

    /// Each rate with what it is (one, if both came out the same).
    pub fn each(self) -> Vec<(u64, &'static str)> {
        let mut rates = vec![(self.half_haproxy, "about half of HAProxy's most")];
        if self.sustainable != self.half_haproxy {
            rates.push((
                self.sustainable,
                "about half of the slowest proxy's most, which every proxy serves",
            ));
        }
        rates
    }
}

/// The scenario label of a fixed-rate sample.
pub fn rate_label(rate: u64) -> String {
    format!("{rate} req/s")
}

/// Everything measured in one run.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// Samples by figure: `proxied`, `fixed-rate`, `maintenance`.
    pub samples: BTreeMap<String, Vec<Sample>>,
    /// (round, system, threads, KiB)
    pub rss_idle: Vec<(usize, System, usize, u64)>,
    pub rss_load: Vec<(usize, System, usize, u64)>,
    /// The offered rates of the fixed-rate figure.
    pub fixed_rates: Option<FixedRates>,
    pub propagation: Vec<Propagation>,
    pub switch_errors: Vec<SwitchErrors>,
    pub upgrade: Option<SwitchErrors>,
    /// What each system's TLS listener negotiated with `openssl s_client` (figure 8), by system.
    pub tls_negotiated: BTreeMap<String, String>,
    /// Config files used, copied into the run folder.
    #[serde(skip)]
    pub configs: Vec<(String, PathBuf)>,
}

impl Results {
    pub fn push(&mut self, figure: &str, sample: Sample) {
        self.samples
            .entry(figure.to_string())
            .or_default()
            .push(sample);
    }

    pub fn find(
        &self,
        figure: &str,
        scenario: &str,
        system: System,
        threads: usize,
        round: usize,
    ) -> Option<&Sample> {
        self.samples.get(figure)?.iter().find(|s| {
            s.scenario == scenario && s.system == system && s.threads == threads && s.round == round
        })
    }

    pub fn rss_idle(&mut self, round: usize, system: System, threads: usize, kib: u64) {
        self.rss_idle.push((round, system, threads, kib));
    }

    pub fn rss_load(&mut self, round: usize, system: System, threads: usize, kib: u64) {
        self.rss_load.push((round, system, threads, kib));
    }

    /// Keeps a config file for the setup notes, copied as `configs/<name>`.
    pub fn keep_config(&mut self, name: &str, path: &Path) {
        self.configs.push((name.to_string(), path.to_path_buf()));
    }

    /// One CSV line per load sample.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "figure,round,system,threads,scenario,requests,rps,cpu_us_per_req,p50_ms,p99_ms,p999_ms,unexpected,socket_errors,rss_load_kib\n",
        );
        for (figure, samples) in &self.samples {
            for s in samples {
                let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{figure},{},{},{},{},{},{:.1},{},{:.3},{:.3},{},{},{},{}",
                    s.round,
                    s.system.label(),
                    s.threads,
                    s.scenario,
                    s.requests,
                    s.rps,
                    opt(s.cpu_us_per_req),
                    s.p50_ms,
                    s.p99_ms,
                    opt(s.p999_ms),
                    s.unexpected,
                    s.socket_errors,
                    s.rss_load_kib.map(|v| v.to_string()).unwrap_or_default()
                );
            }
        }
        out
    }

    /// The samples of one figure and scenario, grouped by (threads, system), in table order.
    fn groups(
        &self,
        figure: &str,
        scenario: Option<&str>,
    ) -> BTreeMap<(usize, System), Vec<&Sample>> {
        let mut groups: BTreeMap<(usize, System), Vec<&Sample>> = BTreeMap::new();
        for s in self.samples.get(figure).into_iter().flatten() {
            if scenario.is_none_or(|sc| s.scenario == sc) {
                groups.entry((s.threads, s.system)).or_default().push(s);
            }
        }
        groups
    }

    /// Per-round ratios `metric(sample) / metric(HAProxy's sample of the same round)`.
    fn ratio_to(
        &self,
        figure: &str,
        samples: &[&Sample],
        base: System,
        metric: impl Fn(&Sample) -> Option<f64>,
    ) -> Option<Stat> {
        let ratios: Vec<f64> = samples
            .iter()
            .filter_map(|s| {
                let b = self.find(figure, &s.scenario, base, s.threads, s.round)?;
                Some(metric(s)? / metric(b)?)
            })
            .collect();
        Stat::of(&ratios)
    }

    /// A group's CPU per request, and its per-round ratios to HAProxy and to the floor.
    fn cpu_figures(&self, figure: &str, samples: &[&Sample]) -> CpuFigures {
        let cpu = |s: &Sample| s.cpu_us_per_req;
        CpuFigures {
            per_request: Stat::of(&samples.iter().filter_map(|s| cpu(s)).collect::<Vec<_>>()),
            vs_haproxy: self.ratio_to(figure, samples, System::Haproxy, cpu),
            vs_floor: self.ratio_to(figure, samples, System::PingoraFloor, cpu),
        }
    }

    /// The rows of a CPU figure (1 or 3), per scenario and (threads, system): the CPU per
    /// request with its per-round ratios to HAProxy and to the floor, req/s, the `latencies`
    /// (ms) and the bad answers. Returns Drawbridge's CPU figures by threads and scenario, for
    /// the targets.
    fn cpu_rows<'a>(
        &self,
        figure: &str,
        scenarios: [&'a str; 2],
        latencies: &[fn(&Sample) -> f64],
        body: &mut String,
    ) -> Vec<(usize, &'a str, CpuFigures)> {
        let mut drawbridge = Vec::new();
        for scenario in scenarios {
            for ((threads, system), samples) in self.groups(figure, Some(scenario)) {
                let cpu = self.cpu_figures(figure, &samples);
                let mut cells = vec![
                    threads.to_string(),
                    scenario.to_string(),
                    system.label().to_string(),
                    show(cpu.per_request, 1),
                    show(cpu.vs_haproxy, 2),
                    show(cpu.vs_floor, 2),
                    show(Stat::of(&collect(&samples, |s| s.rps)), 0),
                ];
                for latency in latencies {
                    cells.push(show(Stat::of(&collect(&samples, latency)), 2));
                }
                cells.push(bad(&samples).to_string());
                let _ = writeln!(body, "| {} |", cells.join(" | "));
                if system == System::Drawbridge {
                    drawbridge.push((threads, scenario, cpu));
                }
            }
        }
        drawbridge
    }

    /// Figure 2's rows at one offered rate, and Drawbridge's p99 targets.
    fn fixed_rate_table(&self, scenario: &str, body: &mut String, targets: &mut Vec<Target>) {
        for ((threads, system), samples) in self.groups("fixed-rate", Some(scenario)) {
            let p99 = self.ratio_to("fixed-rate", &samples, System::Haproxy, |s| Some(s.p99_ms));
            let _ = writeln!(
                body,
                "| {threads} | {} | {} | {} | {} | {} | {} | {} |",
                system.label(),
                show(Stat::of(&collect(&samples, |s| s.p50_ms)), 2),
                show(Stat::of(&collect(&samples, |s| s.p99_ms)), 2),
                show(
                    Stat::of(&collect(&samples, |s| s.p999_ms.unwrap_or(f64::NAN))),
                    2
                ),
                show(p99, 2),
                show(Stat::of(&collect(&samples, |s| s.rps)), 0),
                bad(&samples),
            );
            if system == System::Drawbridge {
                if let Some(r) = p99 {
                    targets.push(Target::at_most(
                        format!("p99 at {scenario}, {threads} thread(s): ≤ 1.2× HAProxy"),
                        r.median,
                        1.2,
                        "×",
                    ));
                }
            }
        }
    }

    /// The tables, as Markdown, and the targets with their verdicts.
    pub fn tables(&self) -> (String, Vec<Target>) {
        let mut md = String::new();
        let mut targets = Vec::new();

        // Figure 1.
        let mut body = String::new();
        let head = "### 1. Proxied requests\n\nwrk, 1 thread, 64 connections, 1 KiB answers from the origin. \
               CPU = the proxy's own user+sys time from /proc over the run ÷ requests served; \
               × HAProxy and × floor are per-round ratios (median, min–max).\n\n\
               | threads | connections | system | CPU µs/req | × HAProxy | × floor | req/s | p50 ms | p99 ms | bad |\n\
               | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        let latencies: [fn(&Sample) -> f64; 2] = [|s| s.p50_ms, |s| s.p99_ms];
        let rows = self.cpu_rows("proxied", ["keep-alive", "close"], &latencies, &mut body);
        for (threads, scenario, cpu) in rows {
            targets.extend(Target::ratio_at_most_one(
                format!("proxied CPU/request, {threads} thread(s), {scenario}: ≤ 1.0× HAProxy"),
                cpu.vs_haproxy,
                "×",
            ));
            targets.extend(Target::ratio_at_most_one(
                format!("proxied CPU/request, {threads} thread(s), {scenario}: not above the bare Pingora floor"),
                cpu.vs_floor,
                "× floor",
            ));
        }

        push_section(&mut md, head, &mut body);

        // Figure 2, once per offered rate.
        for (rate, basis) in self.fixed_rates.map(FixedRates::each).unwrap_or_default() {
            let scenario = rate_label(rate);
            let head = format!(
                "\n### 2. Latency at a fixed offered rate: {scenario} ({basis})\n\n\
                 oha, 64 keep-alive connections, latency corrected for coordinated omission.\n\n\
                 | threads | system | p50 ms | p99 ms | p99.9 ms | p99 × HAProxy | req/s achieved | bad |\n\
                 | --- | --- | --- | --- | --- | --- | --- | --- |\n"
            );
            self.fixed_rate_table(&scenario, &mut body, &mut targets);
            push_section(&mut md, &head, &mut body);
        }

        // Figure 3.
        let head = "\n### 3. Maintenance answers served by the proxy itself\n\n\
               wrk, 64 keep-alive connections. HAProxy `http-request return`, nginx `return 503`, the floor a fixed \
               503 from `request_filter`, pingora-session the same 503 written on Pingora's HTTP session without \
               the proxy framework, Drawbridge its gate (the same bodies, byte for byte).\n\n\
               | threads | kind | system | CPU µs/req | × HAProxy | × floor | req/s | p99 ms | bad |\n\
               | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        let rows = self.cpu_rows("maintenance", ["page", "api"], &[|s| s.p99_ms], &mut body);
        for (threads, kind, cpu) in rows {
            targets.extend(Target::ratio_at_most_one(
                format!("maintenance {kind} CPU/request, {threads} thread(s): ≤ 1.0× HAProxy"),
                cpu.vs_haproxy,
                "×",
            ));
        }

        push_section(&mut md, head, &mut body);

        // Figure 4.
        let head = "\n### 4. Memory (RSS of the whole process tree)\n\n\
               | threads | system | idle MiB | under load MiB (keep-alive peak) |\n| --- | --- | --- | --- |\n";
        let mut keys: Vec<(usize, System)> =
            self.rss_idle.iter().map(|&(_, s, t, _)| (t, s)).collect();
        keys.sort();
        keys.dedup();
        for (threads, system) in keys {
            let mib = |list: &[(usize, System, usize, u64)]| {
                Stat::of(
                    &list
                        .iter()
                        .filter(|&&(_, s, t, _)| s == system && t == threads)
                        .map(|&(_, _, _, k)| k as f64 / 1024.0)
                        .collect::<Vec<_>>(),
                )
            };
            let idle = mib(&self.rss_idle);
            let _ = writeln!(
                body,
                "| {threads} | {} | {} | {} |",
                system.label(),
                show(idle, 1),
                show(mib(&self.rss_load), 1)
            );
            if system == System::Drawbridge {
                if let Some(idle) = idle {
                    targets.push(Target::at_most(
                        format!("RSS idle, {threads} thread(s): ≤ 20 MiB"),
                        idle.max,
                        20.0,
                        "MiB (max over rounds)",
                    ));
                }
            }
        }

        push_section(&mut md, head, &mut body);

        // Figure 5.
        let head = "\n### 5. Switch propagation\n\n\
               From the Consul PUT returning to every proxy of the fleet answering the new state (one kept-open \
               connection per proxy, all asked at once, again and again; on and off alternate, all switches counted).\n\n\
               | proxies | system | switches | p50 ms | p99 ms | max ms | not propagated in 10 s |\n\
               | --- | --- | --- | --- | --- | --- | --- |\n";
        for p in &self.propagation {
            let all = p.all();
            let _ = writeln!(
                body,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
                p.proxies,
                p.system,
                all.len() + p.timeouts,
                Stat::percentile(&all, 50.0),
                Stat::percentile(&all, 99.0),
                Stat::percentile(&all, 100.0),
                p.timeouts
            );
            if p.system == "drawbridge" && p.proxies >= 30 {
                let p99 = if p.timeouts > 0 {
                    f64::INFINITY
                } else {
                    Stat::percentile(&all, 99.0)
                };
                targets.push(Target::at_most(
                    format!("propagation p99 to {} proxies: ≤ 50 ms", p.proxies),
                    p99,
                    50.0,
                    "ms",
                ));
            }
        }

        push_section(&mut md, head, &mut body);

        // Figures 6 and 7.
        let head = "\n### 6. Errors during switches under load, and 7. across graceful upgrades\n\n\
               oha at a fixed rate over 64 keep-alive connections while the key flips (6) or while Drawbridge \
               is upgraded (7). Bad = answers other than 200/503; errors = connection errors.\n\n\
               | what | system | switches/upgrades | responses | bad answers | connection errors | kinds |\n\
               | --- | --- | --- | --- | --- | --- | --- |\n";
        let rows = self
            .switch_errors
            .iter()
            .map(|s| ("switches", s))
            .chain(self.upgrade.iter().map(|s| ("upgrades", s)));
        for (what, s) in rows {
            let kinds: Vec<String> = s
                .error_kinds()
                .iter()
                .map(|(k, n)| format!("{n}× {k}"))
                .collect();
            let _ = writeln!(
                body,
                "| {what} | {} | {} | {} | {} | {} | {} |",
                s.system,
                s.events(),
                s.responses(),
                s.unexpected(),
                s.errors(),
                if kinds.is_empty() {
                    "–".to_string()
                } else {
                    kinds.join("; ")
                }
            );
            if s.system.starts_with("drawbridge") {
                targets.push(Target::at_most(
                    format!(
                        "{what} under load ({}): 0 bad answers and 0 connection errors",
                        s.system
                    ),
                    (s.unexpected() + s.errors()) as f64,
                    0.0,
                    "bad + errors",
                ));
            }
        }

        push_section(&mut md, head, &mut body);

        self.tls_tables(&mut md, &mut targets);

        let head = "\n### Targets\n\n| target | measured | |\n| --- | --- | --- |\n";
        for t in &targets {
            let _ = writeln!(
                body,
                "| {} | {} | {} |",
                t.name,
                t.measured,
                if t.met { "met" } else { "MISSED" }
            );
        }
        push_section(&mut md, head, &mut body);
        (md, targets)
    }
}

/// The plain-HTTP kept-open CPU/request ratios to HAProxy by threads that the README showed
/// when the TLS targets were set (run `2026-11-24-vm-2cpu-lto`): the HTTPS ratios are held to
/// them. At other thread counts they are held to the plain ratio of the same run.
const PLAIN_RATIOS_IN_README: [(usize, f64); 2] = [(1, 1.89), (2, 2.10)];

/// Figure 8's scenarios: requests over three wires, and full handshakes.
pub const TLS_WIRES: [&str; 3] = ["plain h1", "https h1", "https h2"];
pub const HANDSHAKES: &str = "handshakes";

impl Results {
    /// Figure 8: full handshakes per CPU-second, and CPU per request over plain HTTP/1.1,
    /// HTTP/1.1 over TLS and HTTP/2 over TLS, each with per-round ratios to HAProxy, nginx and
    /// the floor; Drawbridge's targets.
    fn tls_tables(&self, md: &mut String, targets: &mut Vec<Target>) {
        let figure = "tls";
        let mut body = String::new();
        let negotiated: Vec<String> = self
            .tls_negotiated
            .iter()
            .map(|(system, what)| format!("{system}: {what}"))
            .collect();
        let head = format!(
            "\n### 8. TLS\n\nEvery proxy serves the same ECDSA P-256 certificate on a TLS listener beside its \
             plain one (TLS 1.2 and 1.3 offered, ALPN `h2` then `http/1.1`). Negotiated with `openssl s_client`: \
             {}.\n\nFull handshakes: `openssl s_time -new`, 4 clients at once, each connection a full handshake \
             (no session is offered for resumption; resumed = connections that resumed one anyway) with no \
             request; handshakes ÷ the proxy's own CPU seconds over the run. × = per-round ratios of \
             handshakes per CPU-second (higher is better).\n\n\
             | threads | system | handshakes per CPU-s | × HAProxy | × nginx | × floor | CPU µs/handshake | handshakes/s | resumed |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            if negotiated.is_empty() {
                "–".to_string()
            } else {
                negotiated.join("; ")
            }
        );
        let per_cpu_s = |s: &Sample| s.cpu_us_per_req.map(|us| 1e6 / us);
        for ((threads, system), samples) in self.groups(figure, Some(HANDSHAKES)) {
            let ratio = |base| self.ratio_to(figure, &samples, base, per_cpu_s);
            let vs_haproxy = ratio(System::Haproxy);
            let _ = writeln!(
                body,
                "| {threads} | {} | {} | {} | {} | {} | {} | {} | {} |",
                system.label(),
                show(
                    Stat::of(&collect(&samples, |s| per_cpu_s(s).unwrap_or(f64::NAN))),
                    0
                ),
                show(vs_haproxy, 2),
                show(ratio(System::Nginx), 2),
                show(ratio(System::PingoraFloor), 2),
                show(
                    Stat::of(&collect(&samples, |s| s.cpu_us_per_req.unwrap_or(f64::NAN))),
                    1
                ),
                show(Stat::of(&collect(&samples, |s| s.rps)), 0),
                samples.iter().map(|s| s.unexpected).sum::<u64>(),
            );
            if system == System::Drawbridge {
                if let Some(r) = vs_haproxy {
                    targets.push(Target::at_least(
                        format!("TLS full handshakes per CPU-second, {threads} thread(s): ≥ 1.5× HAProxy"),
                        r.median,
                        1.5,
                        "×",
                    ));
                }
            }
        }
        push_section(md, &head, &mut body);

        let head = "\nRequests on 64 kept-open connections to the same origin as figure 1: plain HTTP/1.1 and \
               HTTP/1.1 over TLS with wrk (1 thread), HTTP/2 over TLS with oha (16 connections × 4 streams), on the \
               same processes in the same round.\n\n\
               | threads | wire | system | CPU µs/req | × HAProxy | × nginx | × floor | req/s | p99 ms | bad |\n\
               | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        let cpu = |s: &Sample| s.cpu_us_per_req;
        // Drawbridge's plain ratio to HAProxy by threads, beside which the HTTPS ones are read.
        let mut plain: BTreeMap<usize, Stat> = BTreeMap::new();
        for wire in TLS_WIRES {
            for ((threads, system), samples) in self.groups(figure, Some(wire)) {
                let ratio = |base| self.ratio_to(figure, &samples, base, cpu);
                let vs_haproxy = ratio(System::Haproxy);
                let _ = writeln!(
                    body,
                    "| {threads} | {wire} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    system.label(),
                    show(
                        Stat::of(&collect(&samples, |s| s.cpu_us_per_req.unwrap_or(f64::NAN))),
                        1
                    ),
                    show(vs_haproxy, 2),
                    show(ratio(System::Nginx), 2),
                    show(ratio(System::PingoraFloor), 2),
                    show(Stat::of(&collect(&samples, |s| s.rps)), 0),
                    show(Stat::of(&collect(&samples, |s| s.p99_ms)), 2),
                    bad(&samples),
                );
                let (System::Drawbridge, Some(r)) = (system, vs_haproxy) else {
                    continue;
                };
                if wire == TLS_WIRES[0] {
                    plain.insert(threads, r);
                    continue;
                }
                let readme = PLAIN_RATIOS_IN_README
                    .iter()
                    .find(|&&(t, _)| t == threads)
                    .map(|&(_, limit)| limit);
                let (limit, basis) = match (readme, plain.get(&threads)) {
                    (Some(limit), _) => (limit, "the plain kept-open ratio the README shows"),
                    (None, Some(p)) => (p.median, "the plain ratio of this run"),
                    (None, None) => continue,
                };
                let mut target = Target::at_most(
                    format!(
                        "{wire} CPU/request, {threads} thread(s): ≤ {limit:.2}× HAProxy ({basis})"
                    ),
                    r.median,
                    limit,
                    "×",
                );
                if let Some(p) = plain.get(&threads) {
                    target.measured += &format!("; plain h1 in this run: {:.2}×", p.median);
                }
                targets.push(target);
            }
        }
        push_section(md, head, &mut body);
    }
}

/// Appends a table's head and rows, unless it has no rows (a figure that was not run).
fn push_section(md: &mut String, head: &str, body: &mut String) {
    if !body.is_empty() {
        md.push_str(head);
        md.push_str(body);
        body.clear();
    }
}

/// One target and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub value: f64,
    pub limit: f64,
    pub measured: String,
    pub met: bool,
}

impl Target {
    /// The median of a per-round ratio to another system, at most 1; none when the ratio was
    /// not measured.
    fn ratio_at_most_one(name: String, ratio: Option<Stat>, unit: &str) -> Option<Target> {
        ratio.map(|r| Target::at_most(name, r.median, 1.0, unit))
    }

    /// `value` at least `limit` (a ratio where higher is better).
    fn at_least(name: String, value: f64, limit: f64, unit: &str) -> Target {
        let measured = if value.is_finite() {
            format!("{value:.2} {unit} (at least {limit})")
        } else {
            format!("not measured (at least {limit} {unit})")
        };
        Target {
            name,
            value,
            limit,
            measured,
            met: value >= limit,
        }
    }

    fn at_most(name: String, value: f64, limit: f64, unit: &str) -> Target {
        let measured = if value.is_finite() {
            format!("{value:.2} {unit} (limit {limit})")
        } else {
            format!("did not finish (limit {limit} {unit})")
        };
        Target {
            name,
            value,
            limit,
            measured,
            met: value <= limit,
        }
    }
}

fn collect(samples: &[&Sample], f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(|s| f(s)).collect()
}

fn show(stat: Option<Stat>, decimals: usize) -> String {
    stat.map_or_else(|| "–".to_string(), |s| s.show(decimals))
}

/// Unexpected answers plus socket errors over all rounds (0 is what is wanted).
fn bad(samples: &[&Sample]) -> u64 {
    samples.iter().map(|s| s.unexpected + s.socket_errors).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ranges_and_percentiles() {
        let s = Stat::of(&[3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(Stat::percentile(&v, 50.0), 50.0);
        assert_eq!(Stat::percentile(&v, 99.0), 99.0);
        assert_eq!(Stat::percentile(&v, 100.0), 100.0);
        assert_eq!(Stat::percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn ratios_are_taken_within_a_round() {
        let sample = |round, system, cpu| Sample {
            round,
            system,
            threads: 1,
            scenario: "keep-alive".into(),
            requests: 1,
            rps: 1.0,
            cpu_us_per_req: Some(cpu),
            p50_ms: 1.0,
            p99_ms: 1.0,
            p999_ms: None,
            unexpected: 0,
            socket_errors: 0,
            rss_load_kib: None,
        };
        let mut r = Results::default();
        for (round, haproxy, drawbridge) in [(1, 10.0, 12.0), (2, 20.0, 20.0), (3, 10.0, 15.0)] {
            r.push("proxied", sample(round, System::Haproxy, haproxy));
            r.push("proxied", sample(round, System::Drawbridge, drawbridge));
        }
        let groups = r.groups("proxied", Some("keep-alive"));
        let db = &groups[&(1, System::Drawbridge)];
        let ratio = r
            .ratio_to("proxied", db, System::Haproxy, |s| s.cpu_us_per_req)
            .unwrap();
        assert_eq!((ratio.median, ratio.min, ratio.max), (1.2, 1.0, 1.5));
    }
}
