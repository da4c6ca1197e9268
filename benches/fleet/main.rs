//! `drawbridge-fleet`: gate propagation and correctness at fleet scale. A fleet of `drawbridge`
//! proxies follows one gate key on a real three-server Consul cluster while the key is switched,
//! the leader is killed and followers are restarted; once per `consul.consistency` mode. Prints
//! the tables and writes them to `benches/runs/<date>-fleet-<N>/`. Method: `benches/fleet/README.md`.

mod applied;
mod report;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, ValueEnum};
use drawbridge_benches::run_folder::{
    first_line, home_dir, load_average, setup_header, unique_dir, workspace_root, RunFolder,
};
use drawbridge_tests::consul::{ConsulCluster, CLUSTER_SIZE};
use drawbridge_tests::process::{max_lifetime, TestDir};
use drawbridge_tests::proxy::{drawbridge_bin, Drawbridge, DrawbridgeBuilder, HealthCheck, Route};
use drawbridge_tests::upstream::{Kind, Upstream};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use applied::{unix_us, LogTail};
use report::{ModeResult, Round, Rss};
use writer::Writer;

/// Gate propagation and correctness to a fleet of proxies on a three-server Consul cluster.
#[derive(Parser, Debug)]
#[command(name = "drawbridge-fleet")]
struct Cli {
    /// Proxies in the fleet (fewer if they do not fit in memory or do not all become ready).
    #[arg(long, default_value_t = 100)]
    proxies: usize,
    /// Switches of the propagation phase, maintenance and normal alternately.
    #[arg(long, default_value_t = 50)]
    switches: usize,
    /// Disruption rounds: a leader killed, then a follower restarted under writes, and so on.
    #[arg(long, default_value_t = 6)]
    disruptions: usize,
    /// `consul.consistency` of the fleet; `both` runs `default`, then `stale`.
    #[arg(long, value_enum, default_value_t = Consistencies::Both)]
    consistency: Consistencies,
    /// Results folder (default: benches/runs/<date>-fleet-<N>, made unique).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the proxies' and servers' logs (they are kept anyway when a flip or step back is
    /// found).
    #[arg(long)]
    keep_logs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Consistencies {
    Default,
    Stale,
    Both,
}

impl Consistencies {
    fn modes(self) -> &'static [&'static str] {
        match self {
            Consistencies::Default => &["default"],
            Consistencies::Stale => &["stale"],
            Consistencies::Both => &["default", "stale"],
        }
    }
}

/// The gate key the fleet follows.
const KEY: &str = "drawbridge/fleet/gate";

/// Pause after every proxy applied a switch, before the next one.
const GAP: Duration = Duration::from_millis(200);

/// How long one write may wait for an answer (a server holds a write for up to 7 s while there
/// is no leader).
const ATTEMPT: Duration = Duration::from_secs(10);

/// How long the writes go on from the start of a follower's restart, at the least.
const RESTART_WRITES: Duration = Duration::from_secs(3);

/// How long a write may be retried before the run gives up.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// How long the fleet may take to apply a write in a quiet cluster, and after a disruption.
const APPLY_QUIET: Duration = Duration::from_secs(10);
const APPLY_DISRUPTED: Duration = Duration::from_secs(60);

/// Proxies started at once.
const START_BATCH: usize = 10;

/// Memory left free for Consul, the bench and the rest of the machine.
const RESERVE_MIB: f64 = 2048.0;

/// `consul.wait` of the fleet (the proxy's default) and the matching `stale_after`.
const CONSUL_WAIT: &str = "60s";
const STALE_AFTER: &str = "64s";

/// Counts and settings of one run.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    proxies: usize,
    switches: usize,
    disruptions: usize,
    consistency: Vec<&'static str>,
    gap_ms: u128,
    consul_wait: &'static str,
    threads_per_proxy: usize,
    key: &'static str,
    normal_is: &'static str,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drawbridge-fleet: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.proxies == 0 {
        bail!("--proxies must be at least 1");
    }
    let began = Instant::now();
    let plan = Plan {
        proxies: cli.proxies,
        switches: cli.switches,
        disruptions: cli.disruptions,
        consistency: cli.consistency.modes().to_vec(),
        gap_ms: GAP.as_millis(),
        consul_wait: CONSUL_WAIT,
        threads_per_proxy: 1,
        key: KEY,
        normal_is: "{\"mode\":\"normal\",\"reason\":\"fleet-<n>\"} written (not a delete)",
    };
    let setup = setup_notes(cli);
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut dirs = Vec::new();
    for &mode in cli.consistency.modes() {
        let (plan, keep) = (plan.clone(), cli.keep_logs);
        // Each mode in its own task: a harness panic (a server that does not rejoin) ends that
        // mode, keeps its logs, and the other mode still runs.
        let task = tokio::spawn(async move { run_mode(mode, &plan, keep).await });
        match task.await {
            Ok(Ok((result, dir))) => {
                results.push(result);
                dirs.push(dir);
            }
            Ok(Err(e)) => failures.push(format!("{mode}: {e:#}")),
            Err(e) => failures.push(format!("{mode}: {}", panic_text(e))),
        }
    }
    let elapsed = began.elapsed();
    let setup = format!("{setup}- load average at the end: {}\n", load_average());
    if results.is_empty() {
        bail!("no mode completed: {}", failures.join("; "));
    }
    let tables = report::tables(&results);
    let rounds = report::rounds_table(&results);
    println!("{tables}\nThe disruption rounds:\n\n{rounds}");
    let fleet = results.iter().map(|r| r.proxies).min().unwrap_or(0);
    let out = out_dir(cli, fleet);
    let mut redact: Vec<(PathBuf, String)> = dirs
        .iter()
        .map(|(mode, dir)| (dir.clone(), format!("RUN_DIR/{mode}")))
        .collect();
    redact.push((out.clone(), "OUT_DIR".to_string()));
    redact.push((workspace_root(), ".".to_string()));
    redact.push((home_dir(), "~".to_string()));
    let folder = RunFolder::new(out.clone(), redact);
    let json = serde_json::json!({
        "seconds": elapsed.as_secs_f64(),
        "plan": plan,
        "setup": setup,
        "modes": results,
        "failed": failures,
        "targets": {
            "fleet_p99_ms": report::TARGET_P99_MS,
            "fleet_size": 100,
            "flips": 0,
            "step_backs": 0,
        },
    });
    folder.write("results.json", &serde_json::to_string_pretty(&json)?)?;
    folder.write(
        "summary.md",
        &format!(
            "# Drawbridge fleet bench\n\n`{}` (through `scripts/fleet-bench.sh`), {:.0} s. Method: `benches/fleet/README.md`.\n\n\
             {setup}\n{tables}\nThe disruption rounds:\n\n{rounds}",
            std::iter::once("drawbridge-fleet".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
            elapsed.as_secs_f64()
        ),
    )?;
    eprintln!(
        "drawbridge-fleet: done in {:.0} s; results in {}",
        elapsed.as_secs_f64(),
        out.display()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("some modes failed: {}", failures.join("; "))
    }
}

/// The fleet: proxy i lists the three servers rotated by i, so a third reads from each first.
struct Fleet {
    edges: Vec<Drawbridge>,
    names: Vec<String>,
    /// The server each proxy reads from first.
    first: Vec<usize>,
    tails: Vec<LogTail>,
}

impl Fleet {
    fn poll(&mut self) {
        for t in &mut self.tails {
            t.poll();
        }
    }

    /// Waits until every proxy applied `index` or a newer state; the names of those that did
    /// not within `deadline`.
    async fn wait_applied(&mut self, index: u64, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            self.poll();
            let behind: Vec<&str> = self
                .tails
                .iter()
                .zip(&self.names)
                .filter(|(t, _)| t.max_index() < index)
                .map(|(_, n)| n.as_str())
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                let shown: Vec<&str> = behind.iter().take(5).copied().collect();
                return Err(format!(
                    "{} proxies had not applied index {index} after {deadline:?} ({}…)",
                    behind.len(),
                    shown.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The sum of the proxies' RSS now, in MiB.
    fn rss_mib(&self) -> f64 {
        self.edges
            .iter()
            .map(|e| proc_status_kib(e.pid(), "VmRSS:"))
            .sum::<f64>()
            / 1024.0
    }
}

/// One proxy of the fleet.
fn proxy(i: usize, addrs: &[String], consistency: &str, origin: &Upstream) -> DrawbridgeBuilder {
    let rotated: Vec<String> = (0..addrs.len())
        .map(|k| addrs[(i + k) % addrs.len()].clone())
        .collect();
    let mut b = Drawbridge::builder(&rotated[0], KEY)
        .name(&format!("proxy-{i:03}"))
        .consul_addresses(&rotated)
        .consul_wait(CONSUL_WAIT)
        .stale_after(STALE_AFTER)
        .consistency(consistency)
        .static_pool("origin", &[origin], Some(HealthCheck::None))
        .route(Route::page("site", "/", "origin"));
    b.threads = 1;
    b.access_log = "off".to_string();
    b
}

/// Starts up to `wanted` proxies, [`START_BATCH`] at a time, while they fit in memory and all
/// become ready; the fleet and, when it is smaller than asked, why.
async fn start_fleet(
    dir: &Arc<TestDir>,
    addrs: &[String],
    consistency: &str,
    wanted: usize,
    origin: &Upstream,
) -> (Fleet, Option<String>) {
    let mut started: Vec<(usize, Drawbridge)> = Vec::new();
    let mut capped = None;
    while started.len() < wanted {
        // Per proxy: the largest seen so far with a margin for growth, 64 MiB before any.
        let per_proxy = started
            .iter()
            .map(|(_, e)| proc_status_kib(e.pid(), "VmRSS:") / 1024.0 * 1.25)
            .reduce(f64::max)
            .unwrap_or(64.0);
        let available = mem_available_mib();
        let fits = ((available - RESERVE_MIB) / per_proxy).floor().max(0.0) as usize;
        if fits == 0 {
            capped = Some(format!(
                "stopped at {} proxies: {available:.0} MiB available, about {per_proxy:.0} MiB per \
                 proxy, {RESERVE_MIB:.0} MiB kept free",
                started.len()
            ));
            break;
        }
        let batch = START_BATCH.min(wanted - started.len()).min(fits);
        let mut set = JoinSet::new();
        let next = started.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
        for i in next..next + batch {
            let builder = proxy(i, addrs, consistency, origin);
            let dir = Arc::clone(dir);
            set.spawn(async move { (i, builder.start(&dir).await) });
        }
        let mut failed = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(pair) => started.push(pair),
                Err(e) => failed = Some(panic_text(e)),
            }
        }
        if let Some(why) = failed {
            let first_line = why.lines().next().unwrap_or("").to_string();
            capped = Some(format!(
                "stopped at {} proxies: one did not become ready: {first_line}",
                started.len()
            ));
            break;
        }
    }
    started.sort_by_key(|(i, _)| *i);
    let mut fleet = Fleet {
        edges: Vec::new(),
        names: Vec::new(),
        first: Vec::new(),
        tails: Vec::new(),
    };
    for (i, edge) in started {
        let name = edge.config().name.clone();
        // ChildGuard::spawn writes a child's stderr to <dir>/<name>.stderr.log.
        fleet
            .tails
            .push(LogTail::new(&dir.join(format!("{name}.stderr.log"))));
        fleet.names.push(name);
        fleet.first.push(i % addrs.len());
        fleet.edges.push(edge);
    }
    (fleet, capped)
}

/// The servers with `leader` first.
fn leader_first(leader: usize) -> Vec<usize> {
    std::iter::once(leader)
        .chain((0..CLUSTER_SIZE).filter(|&i| i != leader))
        .collect()
}

/// One consistency mode from start to finish: the cluster, the fleet, the switches, the
/// disruptions, the checks. Returns the figures and the logs' folder.
async fn run_mode(
    consistency: &'static str,
    plan: &Plan,
    keep_logs: bool,
) -> anyhow::Result<(ModeResult, (&'static str, PathBuf))> {
    let began = Instant::now();
    // Every child lives at most max_lifetime() (the harness's watchdog); stop adding work well
    // before the first ones are killed.
    let budget_end = began + max_lifetime() - Duration::from_secs(90);
    let mut notes = Vec::new();
    let dir = Arc::new(TestDir::new(&format!("fleet-{consistency}")));
    let log = |what: String| {
        eprintln!(
            "drawbridge-fleet [{consistency} {:>5.1} s]: {what}",
            began.elapsed().as_secs_f64()
        )
    };
    log(format!("logs in {}", dir.path().display()));

    let mut cluster = ConsulCluster::start(&dir).await;
    let addrs = cluster.http_addrs();
    let mut writer = Writer::new(addrs.clone(), KEY)?;
    let leader = cluster.leader_index().await;
    let initial = writer
        .switch("initial", &leader_first(leader), ATTEMPT, WRITE_DEADLINE)
        .await?;
    log(format!(
        "cluster up, {} leads; key written at index {:?}",
        cluster.node_name(leader),
        initial.index
    ));

    let origin = Upstream::builder("origin").kind(Kind::Page).start();
    let available_before = mem_available_mib();
    let (mut fleet, capped) = start_fleet(&dir, &addrs, consistency, plan.proxies, &origin).await;
    if let Some(why) = &capped {
        eprintln!("drawbridge-fleet: {consistency}: {why}");
        notes.push(why.clone());
    }
    if fleet.edges.is_empty() {
        bail!("no proxy started");
    }
    let initial_index = initial.index.unwrap_or(0);
    if let Err(e) = fleet.wait_applied(initial_index, APPLY_QUIET).await {
        bail!("the fleet did not apply the initial state: {e}");
    }
    let mut rss = Rss {
        fleet_at_start: fleet.rss_mib(),
        available_before,
        available_min: mem_available_mib(),
        ..Rss::default()
    };
    rss.fleet_sampled_max = rss.fleet_at_start;
    let sample = |fleet: &Fleet, rss: &mut Rss| {
        rss.fleet_sampled_max = rss.fleet_sampled_max.max(fleet.rss_mib());
        rss.available_min = rss.available_min.min(mem_available_mib());
    };
    log(format!(
        "{} proxies ready, {:.0} MiB RSS in all",
        fleet.edges.len(),
        rss.fleet_at_start
    ));

    // Propagation: switch, wait until every proxy applied it, pause, again.
    let leader = cluster.leader_index().await;
    let order = leader_first(leader);
    for s in 0..plan.switches {
        if Instant::now() >= budget_end {
            notes.push(format!("out of time after {s} switches"));
            break;
        }
        let w = writer
            .switch("propagation", &order, ATTEMPT, WRITE_DEADLINE)
            .await?;
        if let Err(e) = fleet.wait_applied(w.index.unwrap_or(0), APPLY_QUIET).await {
            notes.push(format!("switch {}: {e}", s + 1));
        }
        tokio::time::sleep(GAP).await;
    }
    if cluster.leader_index().await != leader {
        notes.push("the leader changed during the propagation phase".to_string());
    }
    sample(&fleet, &mut rss);
    log(format!("{} switches done", plan.switches));

    // Disruptions: leader kills and follower restarts, alternately.
    let mut rounds = Vec::new();
    for n in 1..=plan.disruptions {
        if Instant::now() >= budget_end {
            notes.push(format!("out of time after {} disruption rounds", n - 1));
            break;
        }
        let round_began = Instant::now();
        let leader = cluster.leader_index().await;
        let first_ack = writer.writes.len();
        let mut round = if n % 2 == 1 {
            let killed = unix_us(OffsetDateTime::now_utc());
            cluster.stop(leader);
            let survivors: Vec<usize> = (0..CLUSTER_SIZE).filter(|&i| i != leader).collect();
            let first = writer
                .switch("election", &survivors, ATTEMPT, WRITE_DEADLINE)
                .await?;
            let (index, acked) = (first.index.unwrap_or(0), first.acked_us.unwrap_or(0));
            if let Err(e) = fleet.wait_applied(index, APPLY_DISRUPTED).await {
                notes.push(format!("round {n}: {e}"));
            }
            let to_all = report::to_last_ms(&report::reached(&fleet.tails, index), acked);
            cluster.restart(leader).await;
            Round {
                n,
                kind: "leader killed",
                server: cluster.node_name(leader).to_string(),
                election_ms: Some(report::ms(acked - killed)),
                first_write_to_all_ms: to_all,
                writes: 1,
                slowest_to_all_ms: to_all,
                seconds: 0.0,
            }
        } else {
            let followers: Vec<usize> = (0..CLUSTER_SIZE).filter(|&i| i != leader).collect();
            let follower = followers[(n / 2) % followers.len()];
            let stop = AtomicBool::new(false);
            let restart = async {
                cluster.restart(follower).await;
                stop.store(true, Ordering::SeqCst);
            };
            let order = leader_first(leader);
            // A restart takes well under a second when the server stays in the raft
            // configuration; the writes go on for at least RESTART_WRITES so they also cover the
            // moments after it, while the server may still be catching up.
            let until = Instant::now() + RESTART_WRITES;
            let writes = async {
                while !stop.load(Ordering::SeqCst) || Instant::now() < until {
                    writer
                        .switch("restart", &order, ATTEMPT, WRITE_DEADLINE)
                        .await?;
                    tokio::time::sleep(GAP).await;
                }
                anyhow::Ok(())
            };
            let ((), wrote) = tokio::join!(restart, writes);
            wrote?;
            let acked: Vec<(u64, i64)> = writer.writes[first_ack..]
                .iter()
                .filter_map(|w| Some((w.index?, w.acked_us?)))
                .collect();
            if let Some(&(last, _)) = acked.last() {
                if let Err(e) = fleet.wait_applied(last, APPLY_DISRUPTED).await {
                    notes.push(format!("round {n}: {e}"));
                }
            }
            let to_all: Vec<Option<f64>> = acked
                .iter()
                .map(|&(index, at)| report::to_last_ms(&report::reached(&fleet.tails, index), at))
                .collect();
            Round {
                n,
                kind: "follower restarted",
                server: cluster.node_name(follower).to_string(),
                election_ms: None,
                first_write_to_all_ms: to_all.first().copied().flatten(),
                writes: acked.len(),
                slowest_to_all_ms: to_all.iter().flatten().copied().reduce(f64::max),
                seconds: 0.0,
            }
        };
        // Every proxy in step again before the next round: one more write, applied by all.
        let leader = cluster.leader_index().await;
        let settle = writer
            .switch("settle", &leader_first(leader), ATTEMPT, WRITE_DEADLINE)
            .await?;
        if let Err(e) = fleet
            .wait_applied(settle.index.unwrap_or(0), APPLY_DISRUPTED)
            .await
        {
            notes.push(format!("round {n}, settle: {e}"));
        }
        round.seconds = round_began.elapsed().as_secs_f64();
        log(format!(
            "round {n}: {} {}: election {:?} ms, first write to every proxy {:?} ms, {:.1} s",
            round.kind, round.server, round.election_ms, round.first_write_to_all_ms, round.seconds
        ));
        rounds.push(round);
        sample(&fleet, &mut rss);
    }

    // A last moment for anything still in flight, then the checks.
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.poll();
    sample(&fleet, &mut rss);
    let mut correctness = report::correctness(&writer.writes, &fleet.tails, &fleet.names);
    for (edge, tail) in fleet.edges.iter().zip(&fleet.tails) {
        let metrics = edge.metrics().await;
        correctness.step_backs_refused +=
            metrics.value("drawbridge_gate_step_backs_refused_total", &[]);
        correctness.failovers += metrics.value("drawbridge_consul_failovers_total", &[]);
        correctness.watch_errors += metrics.value("drawbridge_consul_watch_errors_total", &[]);
        let parsed: Vec<(String, u64)> = tail
            .applied
            .iter()
            .map(|a| (a.mode.clone(), a.index))
            .collect();
        if parsed != edge.applied_states() {
            correctness.parser_mismatches += 1;
        }
    }
    let mut peaks: Vec<f64> = fleet
        .edges
        .iter()
        .map(|e| proc_status_kib(e.pid(), "VmHWM:") / 1024.0)
        .collect();
    peaks.sort_by(f64::total_cmp);
    rss.fleet_peak_sum = peaks.iter().sum();
    rss.per_proxy_peak = [peaks[0], peaks[peaks.len() / 2], peaks[peaks.len() - 1]];
    if correctness.parser_mismatches > 0 {
        notes.push(format!(
            "{} proxies' applied states as parsed here differ from the harness's applied_states()",
            correctness.parser_mismatches
        ));
    }

    let propagation = report::propagation(
        &writer.writes,
        "propagation",
        &fleet.tails,
        &fleet.first,
        leader,
    );
    let result = ModeResult {
        consistency,
        proxies: fleet.edges.len(),
        proxies_requested: plan.proxies,
        capped,
        seconds: began.elapsed().as_secs_f64(),
        leader: cluster.node_name(leader).to_string(),
        propagation,
        rounds,
        correctness,
        rss,
        notes,
        writes: writer.writes.clone(),
    };
    let found = result.correctness.flips + result.correctness.step_backs > 0;
    let path = dir.path().to_path_buf();
    if keep_logs || found {
        // Never dropped, so never removed.
        std::mem::forget(Arc::clone(&dir));
        log(format!("logs kept in {}", path.display()));
    }
    log(format!("done in {:.0} s", result.seconds));
    drop(fleet);
    drop(cluster);
    Ok((result, (consistency, path)))
}

/// The text of a task's panic (or why it was cancelled).
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}

/// A `/proc/<pid>/status` line's value in KiB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
fn proc_status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `MemAvailable` in MiB.
fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `--out`, else `benches/runs/<date>-fleet-<fleet>`, with `-2`, `-3`… if it exists.
fn out_dir(cli: &Cli, fleet: usize) -> PathBuf {
    match &cli.out {
        Some(out) => out.clone(),
        None => unique_dir(&format!("fleet-{fleet}")),
    }
}

/// Commit, machine and versions, as Markdown lines.
fn setup_notes(cli: &Cli) -> String {
    let consul = drawbridge_tests::consul::consul_bin();
    let mut s = setup_header(&drawbridge_bin(), true);
    s += &format!("- consul: {}\n", first_line(&consul, &["version"]));
    s += &format!(
        "- plan: up to {} proxies (1 worker thread, `consul.wait = \"{CONSUL_WAIT}\"`, the three servers \
         rotated by proxy), {} switches {} ms apart once all applied, {} disruption rounds, consistency {:?}\n",
        cli.proxies,
        cli.switches,
        GAP.as_millis(),
        cli.disruptions,
        cli.consistency.modes()
    );
    s
}
