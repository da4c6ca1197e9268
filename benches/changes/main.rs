//! `drawbridge-changes`: the changes that need no downtime, under load. Four API boxes (a Consul
//! client agent each, with an upstream registered as service `api` and health-checked) behind two
//! `drawbridge` proxies; `maintctl roll` replaces all four one at a time (each box's upstream
//! really stops and starts again while it is drained), then `maintctl canary`
//! moves route `api` to a second pool 5 → 25 → 50 → 100 % and `--abort` rolls it back. Through
//! all of it, oha sends a fixed rate to each proxy and a many-client load (a client address per
//! request, so the canary's shares are real) runs beside it: the target is 0 errors and 0 answers
//! other than 200. Prints the table and writes `benches/runs/<date>-changes/`. Method:
//! `benches/changes/README.md`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use drawbridge_benches::oha::{self, OhaResult};
use drawbridge_benches::run_folder::{
    first_line, home_dir, load_average, setup_header, unique_dir, workspace_root, RunFolder,
};
use drawbridge_tests::consul::{ConsulClientAgent, ConsulServer};
use drawbridge_tests::maintctl::{
    maintctl_bin, register_api, wait_registered, Canary, Inventory, InventoryBox, Maintctl,
    MaintctlOutput, Roll, ENV, GATE_KEY,
};
use drawbridge_tests::process::{ChildGuard, TestDir};
use drawbridge_tests::proxy::{drawbridge_bin, header, Drawbridge, Route};
use drawbridge_tests::upstream::Upstream;
use serde::Serialize;

/// The roll of four boxes and a canary with its rollback, under load, on loopback.
#[derive(Parser, Debug)]
#[command(name = "drawbridge-changes")]
struct Cli {
    /// The oha binary (scripts/changes-bench.sh installs it).
    #[arg(long)]
    oha: PathBuf,
    /// Requests a second oha sends to each proxy.
    #[arg(long, default_value_t = 300)]
    rate: u64,
    /// Requests a second of the many-client load, over both proxies.
    #[arg(long, default_value_t = 100)]
    clients_rate: u64,
    /// How long each canary step is held and judged.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    hold: Duration,
    /// How long the load runs; the changes must end within it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    load: Duration,
    /// Results folder (default: benches/runs/<date>-changes, made unique).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The boxes and their loopback addresses.
const BOXES: [(&str, Ipv4Addr); 4] = [
    ("api1", Ipv4Addr::new(127, 0, 4, 1)),
    ("api2", Ipv4Addr::new(127, 0, 4, 2)),
    ("api3", Ipv4Addr::new(127, 0, 4, 3)),
    ("api4", Ipv4Addr::new(127, 0, 4, 4)),
];

/// How long the deploy server takes to answer a replace; the box's upstream is stopped and
/// started again meanwhile.
const REPLACE_TAKES: Duration = Duration::from_secs(1);

/// How long a replaced box's upstream is down.
const DOWN_FOR: Duration = Duration::from_millis(300);

/// The least share of the offered requests each load must have sent: a load that stalled
/// proves nothing.
const LEAST_SENT: f64 = 0.95;

/// Load before the first change and after the last, so both ends are seen steady.
const MARGIN: Duration = Duration::from_secs(5);

/// One change and how long it took, by step.
#[derive(Debug, Serialize)]
struct Change {
    command: String,
    seconds: f64,
    steps: Vec<(String, f64)>,
}

/// What the many-client load saw.
#[derive(Debug, Default, Serialize)]
struct ClientsLoad {
    sent: u64,
    ok: u64,
    /// Answers other than 200 and errors, by what they were.
    failures: BTreeMap<String, u64>,
    /// Answers by the pool that served them (`X-Drawbridge-Pool`, else the route's own).
    by_pool: BTreeMap<String, u64>,
}

/// Stops and starts again the upstream of each box the deploy server was asked to replace,
/// until `stop`; how many restarts of each.
async fn replace_boxes(
    mut upstreams: Vec<Upstream>,
    deployer: Arc<Upstream>,
    stop: Arc<AtomicBool>,
) -> (Vec<Upstream>, Vec<u64>) {
    let mut restarts = vec![0; upstreams.len()];
    while !stop.load(Ordering::Relaxed) {
        for (i, up) in upstreams.iter_mut().enumerate() {
            let asked = deployer.requests_to(&format!("/upgrade/{}", BOXES[i].0));
            if asked > restarts[i] {
                let (name, addr) = (up.name().to_string(), up.addr());
                up.stop();
                tokio::time::sleep(DOWN_FOR).await;
                *up = Upstream::builder(&name).listen(addr).start();
                restarts[i] = asked;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (upstreams, restarts)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("drawbridge-changes: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the bench; `Ok(false)` when a target was missed.
async fn run(cli: &Cli) -> anyhow::Result<bool> {
    let setup = setup_notes(cli);
    let dir = TestDir::new("changes-bench");
    let consul = ConsulServer::start(&dir).await;
    let mut agents = Vec::new();
    let mut upstreams = Vec::new();
    for (i, (name, ip)) in BOXES.iter().enumerate() {
        let agent = ConsulClientAgent::start(&dir, &consul, name, *ip).await;
        let up = Upstream::builder(&format!("api-box{}", i + 1))
            .listen((*ip, 0).into())
            .start();
        register_api(&agent, &format!("api-{}", i + 1), &up).await;
        agents.push(agent);
        upstreams.push(up);
    }
    let green = Upstream::builder("api-green").start();
    let deployer = Arc::new(
        Upstream::builder("deployer")
            .delay("/upgrade", REPLACE_TAKES)
            .start(),
    );
    let edge = |name: &str, agent: &ConsulClientAgent| {
        let mut edge = Drawbridge::builder(&agent.http_addr(), GATE_KEY)
            .name(name)
            .register_as("drawbridge")
            .trusted_proxies(&["127.0.0.1/32"])
            .consul_pool("api", "api", None)
            .static_pool("api-green", &[&green], None)
            .route(Route::api("api", "/", "api"));
        edge.service_id = Some(name.to_string());
        edge
    };
    let (edge1, edge2) = tokio::join!(
        edge("edge1", &agents[0]).start(&dir),
        edge("edge2", &agents[1]).start(&dir)
    );
    let edges = [edge1, edge2];
    wait_registered(&consul, 2).await;
    let boxes = agents.iter().map(InventoryBox::api_ui_of).collect();
    let mut inventory = Inventory::new(consul.http_addr(), GATE_KEY, boxes);
    inventory.step_timeout = "60s".to_string();
    inventory.roll = Some(Roll {
        url: deployer.url("/upgrade/{box}"),
        healthy_for: "3s".to_string(),
        healthy_timeout: "60s".to_string(),
        smoke_url: None,
        smoke_expect_body: None,
    });
    // Loopback latencies are too close and noisy to compare: errors decide.
    inventory.canary = Some(Canary {
        max_error_rate: 0.01,
        max_p99_ratio: 1000.0,
        min_requests: 20,
    });
    let maintctl = Maintctl::new(&dir, &inventory);
    wait_every_box_serves(&edges).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let replacer = tokio::spawn(replace_boxes(upstreams, deployer.clone(), stop.clone()));
    let began = Instant::now();
    let ohas: Vec<ChildGuard> = edges
        .iter()
        .enumerate()
        .map(|(i, edge)| start_oha(cli, &dir, i, &edge.url("/orders")))
        .collect();
    let clients = tokio::spawn(clients_load(
        edges.iter().map(|e| e.url("/clients")).collect(),
        cli.clients_rate,
        stop.clone(),
    ));
    tokio::time::sleep(MARGIN).await;
    let hold = humantime::format_duration(cli.hold).to_string();
    let mut changes = Vec::new();
    let runs: [&[&str]; 3] = [
        &["roll", "--env", ENV, "--batch", "1"],
        &[
            "canary",
            "--env",
            ENV,
            "--route",
            "api",
            "--to",
            "api-green",
            "--steps",
            "5,25,50,100",
            "--hold",
            &hold,
        ],
        &["canary", "--env", ENV, "--route", "api", "--abort"],
    ];
    let mut failed = Vec::new();
    for args in runs {
        let mut all = vec!["--output", "json"];
        all.extend(args);
        let out = maintctl.run_within(&all, Duration::from_secs(600)).await;
        if out.code != Some(0) {
            failed.push(format!(
                "maintctl {} exited {:?}:\n{out}",
                args.join(" "),
                out.code
            ));
            break;
        }
        changes.push(change(args, &out));
    }
    let changes_ended = began.elapsed();
    if changes_ended + MARGIN > cli.load {
        failed.push(format!(
            "the changes took {changes_ended:?} with the first margin, longer than the load ({:?}) less {MARGIN:?}: raise --load",
            cli.load
        ));
    }
    let mut oha_results = Vec::new();
    for (i, mut oha) in ohas.into_iter().enumerate() {
        oha_results.push(finish_oha(&mut oha, &dir, i, cli.load)?);
    }
    let load_ended = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let clients = clients.await.context("the many-client load")?;
    let (_upstreams, restarts) = replacer.await.context("the box replacer")?;
    let offered = cli.rate as f64 * cli.load.as_secs_f64();
    for (i, r) in oha_results.iter().enumerate() {
        let sent = r.requests + r.error_count();
        if (sent as f64) < LEAST_SENT * offered {
            failed.push(format!(
                "oha {i} sent {sent} requests, fewer than {:.0} % of the {offered:.0} offered",
                LEAST_SENT * 100.0
            ));
        }
    }
    let clients_offered = cli.clients_rate as f64 * load_ended.as_secs_f64();
    if (clients.sent as f64) < LEAST_SENT * clients_offered {
        failed.push(format!(
            "the many-client load sent {} requests, fewer than {:.0} % of the {clients_offered:.0} offered",
            clients.sent,
            LEAST_SENT * 100.0
        ));
    }
    if restarts.iter().any(|&n| n != 1) {
        failed.push(format!(
            "each box's upstream restarted once, seen {restarts:?}"
        ));
    }
    let upgrades: Vec<u64> = BOXES
        .iter()
        .map(|(name, _)| deployer.requests_to(&format!("/upgrade/{name}")))
        .collect();
    if upgrades.iter().any(|&n| n != 1) {
        failed.push(format!("each box replaced once, seen {upgrades:?}"));
    }
    if let Err(e) = back_on_the_old_pool(&edges).await {
        failed.push(e);
    }
    if clients.by_pool.get("api-green").copied().unwrap_or(0) == 0 {
        failed.push("the canary sent no request of the many-client load to api-green".to_string());
    }

    let errors: u64 = oha_results
        .iter()
        .map(|r| r.error_count() + r.unexpected(&[200]))
        .sum::<u64>()
        + clients.failures.values().sum::<u64>();
    let met = errors == 0 && failed.is_empty();
    let table = table(&oha_results, &clients, &changes, cli);
    println!("{table}");
    for f in &failed {
        println!("FAILED: {f}");
    }
    let out = cli.out.clone().unwrap_or_else(|| unique_dir("changes"));
    let folder = RunFolder::new(
        out.clone(),
        [
            (dir.path().to_path_buf(), "RUN_DIR".to_string()),
            (out.clone(), "OUT_DIR".to_string()),
            (workspace_root(), ".".to_string()),
            (home_dir(), "~".to_string()),
        ],
    );
    let setup = format!("{setup}- load average at the end: {}\n", load_average());
    let json = serde_json::json!({
        "setup": setup,
        "oha_rate_per_proxy": cli.rate,
        "clients_rate": cli.clients_rate,
        "hold_seconds": cli.hold.as_secs_f64(),
        "load_seconds": cli.load.as_secs_f64(),
        "oha": oha_results,
        "clients": clients,
        "changes": changes,
        "upgrades": upgrades,
        "failed": failed,
        "targets": {"errors": 0, "non_200": 0},
        "met": met,
    });
    folder.write("results.json", &serde_json::to_string_pretty(&json)?)?;
    folder.write(
        "summary.md",
        &format!(
            "# Drawbridge changes bench\n\n`drawbridge-changes` (through `scripts/changes-bench.sh`). Method: `benches/changes/README.md`.\n\n## Setup\n\n{setup}\n## Figures\n\n{table}\n{}\n",
            if met { "Targets met: 0 errors, 0 answers other than 200.".to_string() } else { format!("TARGETS MISSED: {errors} errors or other answers; {}", failed.join("; ")) }
        ),
    )?;
    println!("results in {}", out.display());
    Ok(met)
}

/// Waits until requests through each proxy reach every box.
async fn wait_every_box_serves(edges: &[Drawbridge]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for edge in edges {
        loop {
            let seen = edge.upstreams_of(16).await;
            let all = (1..=BOXES.len()).all(|i| seen.iter().any(|s| s == &format!("api-box{i}")));
            if all {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} does not send to every box: {seen:?}", edge.url("/"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// oha at `--rate` on 16 keep-alive connections to `url` for `--load`, its JSON result to a file
/// in the run's folder.
fn start_oha(cli: &Cli, dir: &TestDir, i: usize, url: &str) -> ChildGuard {
    let mut cmd = std::process::Command::new(&cli.oha);
    cmd.args(["--no-tui", "--output-format", "json", "-c", "16", "-q"])
        .arg(cli.rate.to_string())
        .arg("--latency-correction")
        .arg("-z")
        .arg(format!("{}ms", cli.load.as_millis()))
        .arg("--wait-ongoing-requests-after-deadline")
        .args(["-t", "10s"])
        .arg("-o")
        .arg(oha_output(dir, i))
        .arg(url);
    ChildGuard::spawn_with_lifetime(
        &format!("oha-{i}"),
        cmd,
        dir.path(),
        cli.load + Duration::from_secs(60),
    )
}

fn oha_output(dir: &TestDir, i: usize) -> PathBuf {
    dir.path().join(format!("oha-{i}.json"))
}

/// Waits for oha `i` to end (within the load and a minute) and reads its result.
fn finish_oha(
    oha: &mut ChildGuard,
    dir: &TestDir,
    i: usize,
    load: Duration,
) -> anyhow::Result<OhaResult> {
    let limit = Instant::now() + load + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = oha.exit_status() {
            break status;
        }
        if Instant::now() > limit {
            bail!("oha {i} did not end within the load and a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        bail!("oha {i} exited {status}");
    }
    let path = oha_output(dir, i);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("oha {i} wrote no result to {}", path.display()))?;
    oha::parse(&text)
}

/// GETs at `rate` a second, each from its own client address (`X-Forwarded-For` through the
/// trusted loopback), alternating between `urls`, each on its own task, until `stop`.
async fn clients_load(urls: Vec<String>, rate: u64, stop: Arc<AtomicBool>) -> ClientsLoad {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let seen = Arc::new(Mutex::new(ClientsLoad::default()));
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
    let mut tasks = Vec::new();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        n = n.wrapping_add(1);
        let url = format!("{}/{n}", urls[n as usize % urls.len()]);
        let from = Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
        let (client, seen) = (client.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let answer = client
                .get(&url)
                .header("x-forwarded-for", from.to_string())
                .send()
                .await;
            // The outcome first (the body read to its end), then the counts.
            let outcome = match answer {
                Ok(answer) if answer.status() == 200 => {
                    let pool =
                        header(&answer, "x-drawbridge-pool").unwrap_or_else(|| "api".to_string());
                    match answer.bytes().await {
                        Ok(body) if !body.is_empty() => Ok(pool),
                        Ok(_) => Err("200 with an empty body".to_string()),
                        Err(e) => Err(format!("body: {e}")),
                    }
                }
                Ok(answer) => Err(answer.status().to_string()),
                Err(e) => Err(format!("error: {e}")),
            };
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.sent += 1;
            match outcome {
                Ok(pool) => {
                    seen.ok += 1;
                    *seen.by_pool.entry(pool).or_default() += 1;
                }
                Err(failure) => *seen.failures.entry(failure).or_default() += 1,
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    seen
}

/// After the rollback, requests from many clients through both proxies go to the old pool.
async fn back_on_the_old_pool(edges: &[Drawbridge]) -> Result<(), String> {
    for edge in edges {
        for n in 0..50u32 {
            let answer = edge
                .request(reqwest::Method::GET, "/after-rollback")
                .header(
                    "x-forwarded-for",
                    Ipv4Addr::from(0x0b00_0000 | n).to_string(),
                )
                .send()
                .await
                .map_err(|e| format!("after the rollback: {e}"))?;
            if let Some(pool) = header(&answer, "x-drawbridge-pool") {
                return Err(format!(
                    "after the rollback, {} still sends to {pool}",
                    edge.url("/")
                ));
            }
        }
    }
    Ok(())
}

/// A change's duration and its steps', from maintctl's JSON lines.
fn change(args: &[&str], out: &MaintctlOutput) -> Change {
    let steps = out
        .json_lines()
        .iter()
        .filter(|l| l["event"] == "step_ended")
        .map(|l| {
            (
                l["step"].as_str().unwrap_or_default().to_string(),
                l["seconds"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    Change {
        command: format!("maintctl {}", args.join(" ")),
        seconds: out.took.as_secs_f64(),
        steps,
    }
}

/// The figures, as Markdown tables.
fn table(ohas: &[OhaResult], clients: &ClientsLoad, changes: &[Change], cli: &Cli) -> String {
    let mut t = String::from(
        "| load | requests | rate | answers other than 200 | errors | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (i, r) in ohas.iter().enumerate() {
        t += &format!(
            "| oha → edge{} ({} req/s offered) | {} | {:.0}/s | {} | {} | {:.2} ms | {:.2} ms |\n",
            i + 1,
            cli.rate,
            r.requests,
            r.rps,
            r.unexpected(&[200]),
            r.error_count(),
            r.p50_ms,
            r.p99_ms
        );
    }
    let client_errors: u64 = clients.failures.values().sum();
    t += &format!(
        "| many clients, both edges ({} req/s) | {} | | {} | | | |\n",
        cli.clients_rate, clients.sent, client_errors
    );
    t += &format!(
        "\nMany-client answers by pool: {}\n\n| change | took | steps |\n| --- | ---: | --- |\n",
        clients
            .by_pool
            .iter()
            .map(|(pool, n)| format!("{pool} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for c in changes {
        let steps: Vec<String> = c
            .steps
            .iter()
            .map(|(id, s)| format!("{id} {s:.1} s"))
            .collect();
        t += &format!(
            "| `{}` | {:.1} s | {} |\n",
            c.command,
            c.seconds,
            steps.join(", ")
        );
    }
    t
}

/// Commit, machine and versions, as Markdown lines.
fn setup_notes(cli: &Cli) -> String {
    let consul = drawbridge_tests::consul::consul_bin();
    let mut s = setup_header(&drawbridge_bin(), true);
    s += &format!("- consul: {}\n", first_line(&consul, &["version"]));
    s += &format!(
        "- maintctl: {}\n",
        first_line(&maintctl_bin(), &["--version"])
    );
    s += &format!(
        "- oha: {}\n",
        first_line(Path::new(&cli.oha), &["--version"])
    );
    s
}
