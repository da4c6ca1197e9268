//! `drawbridge-bench`: Drawbridge against HAProxy, nginx and a bare Pingora pass-through, on
//! loopback, in one interleaved run (A B C A B C …). Prints the tables and writes them with the
//! raw results and setup notes to `benches/runs/<date>-<machine>/`. `scripts/bench.sh` installs
//! the tools and builds first; `benches/load/README.md` explains the method.

mod http;
mod load;
mod procs;
mod report;
mod switching;
mod systems;
mod throughput;
mod tls;
mod upgrade;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use drawbridge_benches::run_folder::{
    first_line, home_dir, setup_header, unique_dir, workspace_root, RunFolder,
};
use report::{FixedRates, Results};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use systems::{Answers, Consul, Cpu, Drawbridge, DrawbridgeSpec, Env, Tools};

/// Load benchmark of Drawbridge against HAProxy, nginx and a bare Pingora floor, on loopback.
#[derive(Parser, Debug)]
#[command(
    name = "drawbridge-bench",
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// Interleaved rounds; every figure is the median over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Short durations and fewer switches: a smoke run of a few minutes.
    #[arg(long)]
    quick: bool,
    /// Worker threads (HAProxy nbthread, nginx worker_processes, Pingora threads) to compare at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Offered rates of the fixed-rate latency figure, HAProxy's then the sustainable one
    /// (default: half of HAProxy's keep-alive req/s in the first round, and half of the slowest
    /// proxy's, which every proxy can serve).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    rate: Option<Vec<u64>>,
    /// Offered rate while switching or upgrading under load.
    #[arg(long, default_value_t = 5000)]
    switch_rate: u64,
    /// Figures to run: proxied (1–4), switches (5–6), upgrade (7), tls (8); `--figures tls`
    /// runs the TLS figure alone.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "proxied,switches,upgrade,tls"
    )]
    figures: Vec<String>,
    /// Run everything unpinned (no taskset).
    #[arg(long)]
    no_pin: bool,
    /// Results folder (default: benches/runs/<date>-<machine>, made unique).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Machine name for the results folder (default: <hostname>-<n>cpu).
    #[arg(long)]
    machine: Option<String>,
    /// A note for summary.md (e.g. "shared machine, other builds running").
    #[arg(long)]
    note: Option<String>,
    /// Keep the work folder (configs, logs, generator output) after a successful run too.
    #[arg(long)]
    keep_work: bool,
    /// The whole run is killed after this many minutes.
    #[arg(long)]
    deadline_minutes: Option<u64>,
    /// The drawbridge binary (default: next to this one).
    #[arg(long)]
    drawbridge: Option<PathBuf>,
    /// The bare-pingora binary (default: next to this one).
    #[arg(long)]
    floor: Option<PathBuf>,
    /// The consul binary (default: .tools/consul/usr/bin/consul, from scripts/setup.sh).
    #[arg(long)]
    consul: Option<PathBuf>,
    /// The oha binary (default: .tools/cargo/bin/oha, else on PATH).
    #[arg(long)]
    oha: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// Kills the run's children when the bench dies or overruns (started by the bench itself).
    #[command(hide = true)]
    Watchdog {
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        registry: PathBuf,
    },
}

/// What every figure runs against: the tools, the plan, the origin, Consul, and the maintenance
/// answers the other proxies replay.
#[derive(Clone, Copy)]
pub struct Bench<'a> {
    pub env: &'a Env,
    pub plan: &'a Plan,
    pub origin: &'a systems::Instance,
    pub consul: &'a Consul,
    pub answers: &'a Answers,
}

/// Durations and counts of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub rounds: usize,
    pub threads: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
    pub fleet_sizes: Vec<usize>,
    /// Switches per fleet size and side, over all rounds.
    pub propagation_switches: usize,
    /// Switches under load per side, over all rounds.
    pub load_switches: usize,
    pub switch_interval: Duration,
    pub switch_load_rate: u64,
    pub upgrades_per_round: usize,
    pub upgrade_interval: Duration,
    pub ticks_per_second: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Internal::Watchdog {
        parent,
        seconds,
        registry,
    }) = &cli.internal
    {
        return match procs::run_watchdog(*parent, *seconds, registry) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drawbridge-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn on_path(name: &str, install: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found on PATH; {install} (scripts/bench.sh installs everything)")
}

fn existing(path: PathBuf, what: &str, install: &str) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        bail!("{what} not found at {}; {install}", path.display())
    }
}

fn tools(cli: &Cli) -> anyhow::Result<Tools> {
    let exe = std::env::current_exe().context("cannot find the bench's own binary")?;
    let beside = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let root = workspace_root();
    let build = "build it: cargo build --release -p drawbridge -p drawbridge-benches";
    let oha = match &cli.oha {
        Some(p) => p.clone(),
        None => {
            let local = root.join(".tools/cargo/bin/oha");
            if local.is_file() {
                local
            } else {
                on_path(
                    "oha",
                    "install it: cargo install oha --locked --root .tools/cargo",
                )?
            }
        }
    };
    Ok(Tools {
        drawbridge: existing(
            cli.drawbridge.clone().unwrap_or(beside.join("drawbridge")),
            "drawbridge",
            build,
        )?,
        floor: existing(
            cli.floor.clone().unwrap_or(beside.join("bare-pingora")),
            "bare-pingora",
            build,
        )?,
        consul: existing(
            cli.consul
                .clone()
                .unwrap_or(root.join(".tools/consul/usr/bin/consul")),
            "consul",
            "run scripts/setup.sh, which installs it into .tools/consul",
        )?,
        oha: existing(
            oha,
            "oha",
            "install it: cargo install oha --locked --root .tools/cargo",
        )?,
        wrk: on_path("wrk", "install it: apt-get install wrk")?,
        haproxy: on_path("haproxy", "install it: apt-get install haproxy")?,
        nginx: on_path("nginx", "install it: apt-get install nginx")?,
        taskset: on_path("taskset", "install it: apt-get install util-linux")?,
        openssl: on_path("openssl", "install it: apt-get install openssl")?,
    })
}

fn plan(cli: &Cli) -> anyhow::Result<Plan> {
    if cli.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if cli.threads.is_empty() || cli.threads.iter().any(|&t| t == 0 || t > 64) {
        bail!("--threads takes counts between 1 and 64, e.g. --threads 1,2");
    }
    let quick = cli.quick;
    Ok(Plan {
        rounds: cli.rounds,
        threads: cli.threads.clone(),
        warmup: Duration::from_millis(if quick { 300 } else { 1000 }),
        // Whole seconds: wrk takes no less.
        duration: Duration::from_secs(if quick { 1 } else { 5 }),
        fleet_sizes: vec![1, 10, 30],
        propagation_switches: if quick { 10 } else { 50 },
        load_switches: if quick { 30 } else { 100 },
        switch_interval: Duration::from_millis(200),
        switch_load_rate: cli.switch_rate,
        upgrades_per_round: if quick { 1 } else { 4 },
        upgrade_interval: Duration::from_millis(2500),
        ticks_per_second: procs::ticks_per_second(),
    })
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let began = Instant::now();
    let tools = tools(cli)?;
    let plan = plan(cli)?;
    for f in &cli.figures {
        if !["proxied", "switches", "upgrade", "tls"].contains(&f.as_str()) {
            bail!("unknown figure {f:?}; --figures takes proxied, switches, upgrade, tls");
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = (!cli.no_pin && cpus >= 2).then_some((0, 1));
    if !cli.no_pin && cpus < 2 {
        eprintln!("drawbridge-bench: one CPU only: running unpinned");
    }

    let work = std::env::temp_dir().join(format!("drawbridge-bench-{}", std::process::id()));
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let registry = work.join("children");
    procs::open_registry(&registry)?;
    let deadline = Duration::from_secs(
        60 * cli
            .deadline_minutes
            .unwrap_or(if cli.quick { 20 } else { 60 }),
    );
    let _watchdog = procs::Watchdog::start(&registry, deadline)?;
    let env = Env {
        tools,
        work: work.clone(),
        logs,
        pin,
    };
    let out = out_dir(cli, cpus);
    eprintln!(
        "drawbridge-bench: {} run, {} round(s), threads {:?}, work folder {}, results to {}",
        if cli.quick { "quick" } else { "full" },
        plan.rounds,
        plan.threads,
        work.display(),
        out.display()
    );
    let setup = setup_notes(&env, &plan, cli);

    let mut results = Results {
        fixed_rates: cli.rate.as_deref().map(FixedRates::given),
        ..Results::default()
    };
    let outcome = measure(&env, &plan, cli, &mut results);
    let elapsed = began.elapsed();
    // Whatever was measured is written, also when a later figure failed.
    let (tables, targets) = results.tables();
    println!("{tables}");
    let folder = RunFolder::new(
        out.clone(),
        [
            (work.clone(), "RUN_DIR".to_string()),
            (out.clone(), "OUT_DIR".to_string()),
            (workspace_root(), ".".to_string()),
            (home_dir(), "~".to_string()),
        ],
    );
    write_results(
        &folder, &results, &plan, &targets, &tables, &setup, cli, elapsed,
    )?;
    eprintln!(
        "drawbridge-bench: {} in {:.0} s; results in {}",
        if outcome.is_ok() { "done" } else { "stopped" },
        elapsed.as_secs_f64(),
        out.display()
    );
    match outcome {
        Ok(()) => {
            if cli.keep_work {
                eprintln!(
                    "drawbridge-bench: the work folder is kept: {}",
                    work.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&work);
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!("the logs are kept in {}", work.display()))),
    }
}

/// Starts the origin and Consul, learns the maintenance answers, and runs the chosen figures.
fn measure(env: &Env, plan: &Plan, cli: &Cli, results: &mut Results) -> anyhow::Result<()> {
    let origin = systems::start_origin(env)?;
    let consul = Consul::start(env)?;
    let answers = maintenance_answers(env, origin.addr, &consul)?;
    let bench = Bench {
        env,
        plan,
        origin: &origin,
        consul: &consul,
        answers: &answers,
    };
    let figures = |f: &str| cli.figures.iter().any(|x| x == f);
    if figures("proxied") {
        throughput::run(bench, results)?;
    }
    if figures("tls") {
        tls::run(bench, results)?;
    }
    if figures("switches") {
        switching::propagation(bench, results)?;
        switching::errors_under_switches(bench, results)?;
    }
    if figures("upgrade") {
        upgrade::run(bench, results)?;
    }
    Ok(())
}

/// The page and problem+json bodies as Drawbridge serves them, saved for the others to replay.
fn maintenance_answers(
    env: &Env,
    origin: std::net::SocketAddr,
    consul: &Consul,
) -> anyhow::Result<Answers> {
    let key = "bench/answers/gate";
    consul.put(key, systems::MAINTENANCE)?;
    let mut db = Drawbridge::start(
        env,
        &DrawbridgeSpec {
            name: "answers-drawbridge",
            threads: 1,
            origin,
            consul,
            key,
            cpu: Cpu::Any,
            tls: None,
        },
    )?;
    let addr = db.instance.addr;
    systems::wait_answer(db.proc_mut()?, addr, throughput::PAGE_PATH, 503)?;
    let answers = Answers {
        page: env.work.join("maintenance-page.html"),
        api: env.work.join("maintenance-api.json"),
    };
    for (path, file) in [
        (throughput::PAGE_PATH, &answers.page),
        (throughput::API_PATH, &answers.api),
    ] {
        let r = http::get(addr, path)?;
        if r.status != 503 || r.body.is_empty() {
            bail!(
                "drawbridge in maintenance answered {path} with {} and {} bytes",
                r.status,
                r.body.len()
            );
        }
        std::fs::write(file, &r.body)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(answers)
}

/// `--out`, else `benches/runs/<date>-<machine>`, with `-2`, `-3`… if it exists.
fn out_dir(cli: &Cli, cpus: usize) -> PathBuf {
    if let Some(out) = &cli.out {
        return out.clone();
    }
    let machine = cli.machine.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{cpus}cpu", host.trim())
    });
    unique_dir(&machine)
}

/// Commit, machine, tool versions, pinning and plan, as Markdown.
fn setup_notes(env: &Env, plan: &Plan, cli: &Cli) -> String {
    let t = &env.tools;
    let mut s = setup_header(&t.drawbridge, false);
    s += &format!("- haproxy: {}\n", first_line(&t.haproxy, &["-v"]));
    s += &format!("- nginx: {}\n", first_line(&t.nginx, &["-v"]));
    s += &format!("- wrk: {}\n", first_line(&t.wrk, &["-v"]));
    s += &format!("- oha: {}\n", first_line(&t.oha, &["--version"]));
    s += &format!("- consul: {}\n", first_line(&t.consul, &["version"]));
    s += &format!("- openssl: {}\n", first_line(&t.openssl, &["version"]));
    s += &format!(
        "- rustc: {}\n",
        first_line(Path::new("rustc"), &["--version"])
    );
    s += &match env.pin {
        Some((load, proxy)) => format!(
            "- pinning (taskset): load generator, origin and Consul on CPU {load}; the proxy under test on CPU {proxy} \
             (all its threads or processes); fleets of figure 5 unpinned\n"
        ),
        None => "- pinning: none\n".to_string(),
    };
    s += &format!(
        "- plan: {} round(s), threads {:?}, {} ms warm-up + {} ms per measurement, fixed-rate (two rates) and switch runs with oha \
         (64 keep-alive connections), {} propagation switches per fleet size and side, {} switches under load per side \
         every {} ms at {} req/s, {} upgrade(s) per round every {} ms, full TLS handshakes with {} `openssl s_time -new` \
         clients at once; `{}`\n",
        plan.rounds,
        plan.threads,
        plan.warmup.as_millis(),
        plan.duration.as_millis(),
        plan.propagation_switches,
        plan.load_switches,
        plan.switch_interval.as_millis(),
        plan.switch_load_rate,
        plan.upgrades_per_round,
        plan.upgrade_interval.as_millis(),
        tls::HANDSHAKE_CLIENTS,
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    if let Some(note) = &cli.note {
        s += &format!("- note: {note}\n");
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    folder: &RunFolder,
    results: &Results,
    plan: &Plan,
    targets: &[report::Target],
    tables: &str,
    setup: &str,
    cli: &Cli,
    elapsed: Duration,
) -> anyhow::Result<()> {
    for (name, path) in &results.configs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        folder.write(&format!("configs/{name}"), &text)?;
    }
    let json = serde_json::json!({
        "quick": cli.quick,
        "seconds": elapsed.as_secs_f64(),
        "plan": plan,
        "results": results,
        "targets": targets,
    });
    let write = |name: &str, text: &str| folder.write(name, text);
    write("results.json", &serde_json::to_string_pretty(&json)?)?;
    write("raw.csv", &results.csv())?;
    write(
        "setup.md",
        &format!("# Setup\n\n{setup}\nThe configs used are in `configs/`.\n"),
    )?;
    let kind = if cli.quick {
        "a **quick** run (short measurements: a smoke test of the harness, not a result to quote)"
    } else {
        "a full run"
    };
    write(
        "summary.md",
        &format!(
            "# Drawbridge load bench\n\n{kind}, {:.0} s. Each figure is the median over {} interleaved round(s), \
             with min–max. Method: `benches/load/README.md`.\n\n{setup}\n{tables}",
            elapsed.as_secs_f64(),
            plan.rounds
        ),
    )
}
