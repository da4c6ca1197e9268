//! What a run found: propagation figures from the writes' acknowledgements and the proxies'
//! applied times, the correctness checks over every applied state, and the tables.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::applied::{Applied, LogTail};
use crate::writer::Write;

/// Figures of the issue the run is held against.
pub const TARGET_P99_MS: f64 = 50.0;

/// p50, p99 and max of a set of milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }
}

/// When each proxy first held the state of the write at `index`, or a newer one (Unix µs);
/// `None` for a proxy that never did.
pub fn reached(tails: &[LogTail], index: u64) -> Vec<Option<i64>> {
    tails
        .iter()
        .map(|t| t.applied.iter().find(|a| a.index >= index).map(|a| a.at_us))
        .collect()
}

/// Milliseconds from `from_us` to the last of `reached`, if every proxy got there.
pub fn to_last_ms(reached: &[Option<i64>], from_us: i64) -> Option<f64> {
    let mut last = None;
    for r in reached {
        last = Some(last.unwrap_or(i64::MIN).max((*r)?));
    }
    last.map(|at| ms(at - from_us))
}

/// Microseconds as milliseconds.
pub fn ms(us: i64) -> f64 {
    us as f64 / 1_000.0
}

/// Propagation of the switches of the propagation phase.
#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    pub switches: usize,
    /// Every (proxy, switch) pair: acknowledgement to applied.
    pub pairs: Option<Stats>,
    /// Per switch, the slowest proxy.
    pub to_last: Option<Stats>,
    /// Pairs of the proxies whose first server was the leader.
    pub leader_first: Option<Stats>,
    /// Pairs of the proxies whose first server was a follower.
    pub follower_first: Option<Stats>,
    /// Pairs where the proxy never applied the switch (or a newer state).
    pub missing: usize,
    pub per_switch: Vec<SwitchFigure>,
}

/// One switch of the propagation phase.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchFigure {
    pub seq: u64,
    pub index: u64,
    pub mode: &'static str,
    pub p50_ms: Option<f64>,
    pub to_last_ms: Option<f64>,
}

/// Propagation figures of the `phase` writes; `leader` is the server that led during them and
/// `first[i]` proxy i's first server.
pub fn propagation(
    writes: &[Write],
    phase: &str,
    tails: &[LogTail],
    first: &[usize],
    leader: usize,
) -> Propagation {
    let (mut all, mut on_leader, mut on_followers, mut lasts) = (vec![], vec![], vec![], vec![]);
    let mut missing = 0;
    let mut per_switch = Vec::new();
    for w in writes.iter().filter(|w| w.phase == phase) {
        let (Some(index), Some(acked)) = (w.index, w.acked_us) else {
            continue;
        };
        let reached = reached(tails, index);
        let mut this = Vec::new();
        for (i, r) in reached.iter().enumerate() {
            let Some(at) = r else {
                missing += 1;
                continue;
            };
            let latency = ms(at - acked);
            this.push(latency);
            if first[i] == leader {
                on_leader.push(latency);
            } else {
                on_followers.push(latency);
            }
        }
        all.extend_from_slice(&this);
        let last = to_last_ms(&reached, acked);
        lasts.extend(last);
        per_switch.push(SwitchFigure {
            seq: w.seq,
            index,
            mode: w.mode.as_str(),
            p50_ms: Stats::of(&this).map(|s| s.p50),
            to_last_ms: last,
        });
    }
    Propagation {
        switches: per_switch.len(),
        pairs: Stats::of(&all),
        to_last: Stats::of(&lasts),
        leader_first: Stats::of(&on_leader),
        follower_first: Stats::of(&on_followers),
        missing,
        per_switch,
    }
}

/// One disruption round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub n: usize,
    /// `leader killed` or `follower restarted`.
    pub kind: &'static str,
    /// The node killed or restarted.
    pub server: String,
    /// Kill to the first acknowledged write (leader rounds).
    pub election_ms: Option<f64>,
    /// The first write acknowledged after the kill, to every proxy holding it (or newer).
    pub first_write_to_all_ms: Option<f64>,
    /// Writes acknowledged during the round (the restart writes of a follower round).
    pub writes: usize,
    /// The slowest of those writes to every proxy.
    pub slowest_to_all_ms: Option<f64>,
    /// Whole round, including the restart and the server's rejoin.
    pub seconds: f64,
}

/// Something wrong in one proxy's applied sequence, with its log around it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub proxy: String,
    /// `flip` or `step back`.
    pub kind: &'static str,
    pub why: String,
    pub applied: Applied,
    pub excerpt: Vec<String>,
}

/// The correctness checks over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Correctness {
    /// Applied states over all proxies.
    pub applied_states: usize,
    /// Applied states whose (index, mode) was not written.
    pub flips: usize,
    /// Applied states whose index was not above every earlier one of that proxy.
    pub step_backs: usize,
    /// Writes whose request failed but that proxies applied (committed without an answer).
    pub committed_without_ack: usize,
    /// Sum of `drawbridge_gate_step_backs_refused_total` over the proxies.
    pub step_backs_refused: f64,
    /// "refused to step back" log lines over the proxies (the same events, from the logs).
    pub step_back_refusals_logged: usize,
    /// Sum of `drawbridge_consul_failovers_total`.
    pub failovers: f64,
    /// Sum of `drawbridge_consul_watch_errors_total` (every kind).
    pub watch_errors: f64,
    /// Proxies whose parsed applied states differ from the harness's `applied_states()`.
    pub parser_mismatches: usize,
    pub findings: Vec<Finding>,
}

/// Checks every proxy's applied sequence against the writes: flips and step backs.
pub fn correctness(writes: &[Write], tails: &[LogTail], names: &[String]) -> Correctness {
    let by_reason: HashMap<&str, &Write> = writes.iter().map(|w| (w.reason.as_str(), w)).collect();
    let by_index: HashMap<u64, &Write> =
        writes.iter().filter_map(|w| Some((w.index?, w))).collect();
    let mut c = Correctness::default();
    let mut unacked_seen = HashSet::new();
    for (tail, name) in tails.iter().zip(names) {
        let mut highest = None;
        for a in &tail.applied {
            c.applied_states += 1;
            if let Some(h) = highest.filter(|&h| a.index <= h) {
                c.findings.push(finding(
                    tail,
                    name,
                    "step back",
                    format!("index {} after {h} was applied", a.index),
                    a,
                ));
            }
            highest = highest.max(Some(a.index));
            let why = match (by_index.get(&a.index), by_reason.get(a.reason.as_str())) {
                (Some(w), _) if w.mode.as_str() != a.mode || w.reason != a.reason => Some(format!(
                    "index {} was written as {} ({}), applied as {} ({})",
                    a.index,
                    w.mode.as_str(),
                    w.reason,
                    a.mode,
                    a.reason
                )),
                (Some(_), _) => None,
                (None, Some(w)) if w.index.is_none() && w.mode.as_str() == a.mode => {
                    unacked_seen.insert(w.seq);
                    None
                }
                (None, Some(w)) => Some(format!(
                    "{} ({}) was written as {} at index {:?}, applied as {} at index {}",
                    w.reason,
                    w.seq,
                    w.mode.as_str(),
                    w.index,
                    a.mode,
                    a.index
                )),
                (None, None) => Some(format!(
                    "no write had index {} or reason {:?}",
                    a.index, a.reason
                )),
            };
            if let Some(why) = why {
                c.findings.push(finding(tail, name, "flip", why, a));
            }
        }
        c.step_back_refusals_logged += tail.refusals;
    }
    c.flips = c.findings.iter().filter(|f| f.kind == "flip").count();
    c.step_backs = c.findings.iter().filter(|f| f.kind == "step back").count();
    c.committed_without_ack = unacked_seen.len();
    c
}

fn finding(tail: &LogTail, name: &str, kind: &'static str, why: String, a: &Applied) -> Finding {
    Finding {
        proxy: name.to_string(),
        kind,
        why,
        applied: a.clone(),
        excerpt: tail.excerpt(a.line.saturating_sub(6).max(1), a.line + 3),
    }
}

/// Memory of the fleet, in MiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rss {
    /// Sum of the proxies' RSS right after all were ready.
    pub fleet_at_start: f64,
    /// The highest sum of the proxies' RSS sampled during the run (after each phase and round).
    pub fleet_sampled_max: f64,
    /// Sum of each proxy's own peak (`VmHWM`), an upper bound of the fleet's peak.
    pub fleet_peak_sum: f64,
    /// Smallest, median and largest per-proxy peak.
    pub per_proxy_peak: [f64; 3],
    /// `MemAvailable` before the fleet started, and at its lowest sample.
    pub available_before: f64,
    pub available_min: f64,
}

/// Everything measured for one consistency mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub consistency: &'static str,
    pub proxies: usize,
    pub proxies_requested: usize,
    /// Why fewer proxies than requested ran, if so.
    pub capped: Option<String>,
    pub seconds: f64,
    /// The node that led during the propagation phase.
    pub leader: String,
    pub propagation: Propagation,
    pub rounds: Vec<Round>,
    pub correctness: Correctness,
    pub rss: Rss,
    pub notes: Vec<String>,
    /// Every write attempt, acknowledged or not.
    pub writes: Vec<Write>,
}

fn f(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.1}"))
}

fn three(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!("{:.1} / {:.1} / {:.1}", s.p50, s.p99, s.max),
        None => "–".to_string(),
    }
}

/// A median and max of some rounds' values, `–` for none.
fn median_max(values: &[f64]) -> String {
    match Stats::of(values) {
        Some(s) => format!("{:.0} / {:.0}", s.p50, s.max),
        None => "–".to_string(),
    }
}

/// A Markdown table: the head (its cells separated by ` | `), the separator, and one line per
/// row of cells.
fn table(head: &str, rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let columns = head.split(" | ").count();
    let mut s = format!("| {head} |\n|{}\n", " --- |".repeat(columns));
    for row in rows {
        s += &format!("| {} |\n", row.join(" | "));
    }
    s
}

/// The tables of a run, as Markdown (they read as plain text too).
pub fn tables(modes: &[ModeResult]) -> String {
    let mut s = String::new();
    s += "Propagation: milliseconds from the PUT's acknowledgement to each proxy's \"gate state applied\" log line \
          (p50 / p99 / max).\n\n";
    s += &table(
        "consistency | proxies | switches | every (proxy, switch) | to the last proxy | proxies reading from the leader first | from a follower first",
        modes.iter().map(|m| {
            let p = &m.propagation;
            vec![
                m.consistency.to_string(),
                m.proxies.to_string(),
                p.switches.to_string(),
                three(&p.pairs),
                three(&p.to_last),
                three(&p.leader_first),
                three(&p.follower_first),
            ]
        }),
    );
    s += "\nDisruptions: milliseconds, median / max over the rounds of each kind.\n\n";
    s += &table(
        "consistency | leader kills | election (kill → first acknowledged write) | first write → every proxy | follower restarts | first write → every proxy | writes during the restarts | slowest of them → every proxy",
        modes.iter().map(|m| {
            let kind = |k: &'static str| m.rounds.iter().filter(move |r| r.kind == k);
            let vals = |k: &'static str, get: fn(&Round) -> Option<f64>| -> Vec<f64> {
                kind(k).filter_map(get).collect()
            };
            let (lead, follow) = ("leader killed", "follower restarted");
            vec![
                m.consistency.to_string(),
                kind(lead).count().to_string(),
                median_max(&vals(lead, |r| r.election_ms)),
                median_max(&vals(lead, |r| r.first_write_to_all_ms)),
                kind(follow).count().to_string(),
                median_max(&vals(follow, |r| r.first_write_to_all_ms)),
                kind(follow).map(|r| r.writes).sum::<usize>().to_string(),
                median_max(&vals(follow, |r| r.slowest_to_all_ms)),
            ]
        }),
    );
    s += "\nCorrectness over the whole run, and memory (MiB).\n\n";
    s += &table(
        "consistency | applied states | flips | step backs | refused step backs (metric) | failovers (metric) | watch errors (metric) | committed without ack | fleet RSS peak (sum of per-proxy peaks) | per proxy (min / median / max)",
        modes.iter().map(|m| {
            let c = &m.correctness;
            let r = &m.rss;
            vec![
                m.consistency.to_string(),
                c.applied_states.to_string(),
                c.flips.to_string(),
                c.step_backs.to_string(),
                c.step_backs_refused.to_string(),
                c.failovers.to_string(),
                c.watch_errors.to_string(),
                c.committed_without_ack.to_string(),
                format!("{:.0}", r.fleet_peak_sum),
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    r.per_proxy_peak[0], r.per_proxy_peak[1], r.per_proxy_peak[2]
                ),
            ]
        }),
    );
    s += "\nAgainst the targets of the issue:\n\n";
    let head: Vec<&str> = std::iter::once("target")
        .chain(modes.iter().map(|m| m.consistency))
        .collect();
    let row = |name: &str, cell: &dyn Fn(&ModeResult) -> String| {
        std::iter::once(name.to_string())
            .chain(modes.iter().map(cell))
            .collect()
    };
    let met = |n: usize| format!("{n}: {}", if n == 0 { "met" } else { "missed" });
    s += &table(
        &head.join(" | "),
        [
            row("fleet p99 ≤ 50 ms to 100 proxies", &|m| {
                let p99 = m.propagation.pairs.map(|p| p.p99);
                let met = p99.is_some_and(|p| p <= TARGET_P99_MS) && m.proxies >= 100;
                format!(
                    "{} ms to {} proxies: {}",
                    f(p99),
                    m.proxies,
                    if met {
                        "met"
                    } else if m.proxies < 100 {
                        "not measured at 100"
                    } else {
                        "missed"
                    }
                )
            }),
            row("0 flips", &|m| met(m.correctness.flips)),
            row("0 step backs", &|m| met(m.correctness.step_backs)),
        ],
    );
    let notes: Vec<String> = modes
        .iter()
        .flat_map(|m| {
            m.notes
                .iter()
                .map(move |n| format!("- {}: {n}", m.consistency))
        })
        .collect();
    if !notes.is_empty() {
        s += &format!("\nNotes:\n\n{}\n", notes.join("\n"));
    }
    s
}

/// The disruption rounds one by one.
pub fn rounds_table(modes: &[ModeResult]) -> String {
    table(
        "consistency | round | what | server | election (ms) | first write → every proxy (ms) | writes | slowest → every proxy (ms) | round (s)",
        modes.iter().flat_map(|m| {
            m.rounds.iter().map(|r| {
                vec![
                    m.consistency.to_string(),
                    r.n.to_string(),
                    r.kind.to_string(),
                    r.server.clone(),
                    f(r.election_ms),
                    f(r.first_write_to_all_ms),
                    r.writes.to_string(),
                    f(r.slowest_to_all_ms),
                    format!("{:.1}", r.seconds),
                ]
            })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        let one = Stats::of(&[3.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (3.0, 3.0, 3.0));
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn the_last_proxy_counts_only_when_all_got_there() {
        assert_eq!(to_last_ms(&[Some(1_000), Some(5_000)], 0), Some(5.0));
        assert_eq!(to_last_ms(&[Some(1_000), None], 0), None);
    }
}
