//! Figures 1 to 4: proxied requests (keep-alive and a new connection per request), latency at
//! two fixed offered rates, maintenance answers served by the proxy itself, and memory. Each round
//! and thread count starts every system afresh and measures them in turn (A B C A B C …), so
//! drift of the machine hits all alike. [`measure`] serves figure 8 (TLS) too.

use crate::load::{self, Connections, Oha, RssPeak, Wire};
use crate::procs;
use crate::report::{rate_label, FixedRates, Results, Sample};
use crate::systems::{self, Cpu, Drawbridge, DrawbridgeSpec, Instance, System};
use crate::Bench;
use anyhow::{bail, Context};
use std::time::{Duration, Instant};

/// The request path of page routes, and one of the api route.
pub const PAGE_PATH: &str = "/";
pub const API_PATH: &str = "/api/orders";

/// Runs figures 1–4 for every round and thread count, adding to `results`.
pub fn run(bench: Bench, results: &mut Results) -> anyhow::Result<()> {
    let Bench { plan, consul, .. } = bench;
    let key = "bench/throughput/gate";
    consul.put(key, systems::NORMAL)?;
    for round in 1..=plan.rounds {
        for &threads in &plan.threads {
            eprintln!("round {round}/{}: {threads} thread(s)", plan.rounds);
            block(bench, key, round, threads, results)
                .with_context(|| format!("round {round}, {threads} thread(s)"))?;
        }
    }
    Ok(())
}

/// One round at one thread count.
fn block(
    bench: Bench,
    key: &str,
    round: usize,
    threads: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let Bench {
        env,
        plan,
        origin,
        consul,
        answers,
    } = bench;
    let o = origin.addr;
    let mut drawbridge = Drawbridge::start(
        env,
        &DrawbridgeSpec {
            name: &format!("drawbridge-t{threads}"),
            threads,
            origin: o,
            consul,
            key,
            cpu: Cpu::Proxy,
            tls: None,
        },
    )?;
    let proxies = [
        systems::start_haproxy(env, threads, o, None, None)?,
        systems::start_nginx(env, threads, o, None, None)?,
        systems::start_floor(env, threads, o, None, None)?,
    ];
    if round == 1 && threads == plan.threads[0] {
        for (name, inst) in [
            ("haproxy.cfg", &proxies[0]),
            ("nginx.conf", &proxies[1]),
            ("drawbridge.toml", &drawbridge.instance),
            ("origin-nginx.conf", origin),
        ] {
            if let Some(path) = &inst.config {
                results.keep_config(name, path);
            }
        }
    }
    // Idle memory, after the processes have settled.
    std::thread::sleep(Duration::from_millis(500));
    for inst in proxies.iter().chain([&drawbridge.instance]) {
        if let Some(pid) = inst.pid() {
            results.rss_idle(round, inst.system, threads, procs::rss_kib(pid));
        }
    }

    // Direct-to-origin does not depend on the proxies' threads: measured once per round.
    let with_direct = threads == plan.threads[0];
    let mut order: Vec<&Instance> = Vec::new();
    if with_direct {
        order.push(origin);
    }
    order.extend(proxies.iter());
    order.push(&drawbridge.instance);

    for connections in [Connections::KeepAlive, Connections::Close] {
        for inst in &order {
            let scenario = Scenario {
                path: PAGE_PATH,
                connections,
                wire: Wire::Plain,
                expected: 200,
            };
            let sample = measure(bench, inst, scenario, round, threads)?;
            if connections == Connections::KeepAlive {
                if let Some(rss) = sample.rss_load_kib {
                    results.rss_load(round, inst.system, threads, rss);
                }
            }
            results.push(
                "proxied",
                sample.with_scenario(connections_label(connections)),
            );
        }
    }

    let rates = match results.fixed_rates {
        Some(rates) => rates,
        None => {
            let rps = |system| {
                results
                    .find("proxied", "keep-alive", system, threads, round)
                    .map(|s| s.rps)
            };
            let haproxy = rps(System::Haproxy)
                .context("no HAProxy keep-alive figure to derive the fixed rates from")?;
            let slowest = [System::Nginx, System::PingoraFloor, System::Drawbridge]
                .into_iter()
                .filter_map(rps)
                .fold(haproxy, f64::min);
            let rates = FixedRates::derive(haproxy, slowest);
            results.fixed_rates = Some(rates);
            rates
        }
    };
    for (rate, _) in rates.each() {
        for inst in &order {
            let r = load::oha(env, inst.addr, PAGE_PATH, rate, plan.duration)?;
            let unexpected = r.unexpected(&[200]);
            results.push(
                "fixed-rate",
                Sample {
                    round,
                    system: inst.system,
                    threads,
                    scenario: rate_label(rate),
                    requests: r.requests,
                    rps: r.rps,
                    cpu_us_per_req: None,
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                    p999_ms: Some(r.p999_ms),
                    unexpected,
                    socket_errors: r.error_count(),
                    rss_load_kib: None,
                },
            );
        }
    }
    drop(order);
    drop(proxies);

    // Maintenance: the others get their maintenance configs, Drawbridge gets the key.
    let proxies = [
        systems::start_haproxy(env, threads, o, Some(answers), None)?,
        systems::start_nginx(env, threads, o, Some(answers), None)?,
        systems::start_floor(env, threads, o, Some(answers), None)?,
        systems::start_session_floor(env, threads, o, answers)?,
    ];
    if round == 1 && threads == plan.threads[0] {
        for (name, inst) in [
            ("haproxy-maintenance.cfg", &proxies[0]),
            ("nginx-maintenance.conf", &proxies[1]),
        ] {
            if let Some(path) = &inst.config {
                results.keep_config(name, path);
            }
        }
    }
    consul.put(key, systems::MAINTENANCE)?;
    let addr = drawbridge.instance.addr;
    systems::wait_answer(drawbridge.proc_mut()?, addr, PAGE_PATH, 503)?;
    for (kind, path) in [("page", PAGE_PATH), ("api", API_PATH)] {
        for inst in proxies.iter().chain([&drawbridge.instance]) {
            let scenario = Scenario {
                path,
                connections: Connections::KeepAlive,
                wire: Wire::Plain,
                expected: 503,
            };
            let sample = measure(bench, inst, scenario, round, threads)?;
            results.push("maintenance", sample.with_scenario(kind));
        }
    }
    consul.put(key, systems::NORMAL)?;
    Ok(())
}

fn connections_label(c: Connections) -> &'static str {
    match c {
        Connections::KeepAlive => "keep-alive",
        Connections::Close => "close",
    }
}

/// What one measurement asks of a system.
#[derive(Clone, Copy)]
pub struct Scenario<'a> {
    pub path: &'static str,
    pub connections: Connections,
    /// HTTP/1.1 in the clear or over TLS (wrk), or HTTP/2 over TLS (oha).
    pub wire: Wire<'a>,
    /// The status every answer must have.
    pub expected: u16,
}

/// One measurement after a warm-up: the proxy's CPU time per request from `/proc`, its memory
/// peak, and a check that every answer had the `expected` status. wrk measures HTTP/1.1, oha
/// HTTP/2; over TLS the system's TLS listener is used.
pub fn measure(
    bench: Bench,
    inst: &Instance,
    scenario: Scenario,
    round: usize,
    threads: usize,
) -> anyhow::Result<Sample> {
    let Bench { env, plan, .. } = bench;
    let Scenario {
        path,
        connections,
        wire,
        expected,
    } = scenario;
    let addr = match wire {
        Wire::Plain => inst.addr,
        Wire::Https { .. } | Wire::H2 { .. } => inst
            .tls
            .with_context(|| format!("{} has no TLS listener", inst.system.label()))?,
    };
    load::warm_up(env, addr, path, (connections, wire), plan.warmup)?;
    // Direct-to-origin has no proxy whose CPU time could be measured.
    let pid = inst.pid().filter(|_| inst.system != System::Direct);
    let before = pid.map(procs::cpu_ticks).transpose()?;
    let mut peak = pid.map(RssPeak::new);
    let mut sample_peak = || {
        if let Some(p) = peak.as_mut() {
            p.sample();
        }
    };
    let started = Instant::now();
    let mut sample = if let Wire::H2 { .. } = wire {
        let r = Oha::flat_out(env, addr, path, (connections, wire), plan.duration)?
            .finish_sampling(&mut sample_peak)?;
        Sample {
            requests: r.requests,
            rps: r.rps,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            p999_ms: Some(r.p999_ms),
            unexpected: r.unexpected(&[expected]),
            socket_errors: r.error_count(),
            ..Sample::new(round, inst.system, threads)
        }
    } else {
        let how = (connections, wire);
        let r = load::wrk(env, addr, path, how, plan.duration, &mut sample_peak)?;
        Sample {
            requests: r.requests,
            rps: r.rps(),
            p50_ms: r.p50_us as f64 / 1e3,
            p99_ms: r.p99_us as f64 / 1e3,
            // wrk counts answers that are not 2xx/3xx; all of them are wanted for a 503 figure.
            unexpected: if expected == 503 {
                r.requests - r.status.min(r.requests)
            } else {
                r.status
            },
            socket_errors: r.socket_errors(),
            ..Sample::new(round, inst.system, threads)
        }
    };
    let after = pid.map(procs::cpu_ticks).transpose()?;
    if sample.requests == 0 {
        bail!(
            "{} served no request in {:?} on {path}",
            inst.system.label(),
            started.elapsed()
        );
    }
    if let (Some(b), Some(a)) = (before, after) {
        sample.cpu_us_per_req =
            Some(procs::cpu_us(a - b, plan.ticks_per_second) / sample.requests as f64);
    }
    sample.rss_load_kib = peak.map(|p| p.peak_kib);
    Ok(sample)
}
