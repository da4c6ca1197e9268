//! Figures 5 and 6: how fast a switch of the Consul key reaches a fleet of proxies, and what
//! clients under load see while the key flips. Drawbridge follows the key itself; the incumbent
//! is HAProxy reloaded by a `consul watch` handler.

use crate::http::Probe;
use crate::load::Oha;
use crate::report::{Propagation, Results, SwitchErrors};
use crate::systems::{self, Consul, Cpu, Drawbridge, DrawbridgeSpec, Incumbent};
use crate::throughput::PAGE_PATH;
use crate::Bench;
use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The longest one switch may take to reach every proxy before it counts as not propagated.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after every proxy serves the new state, before the next switch.
const SETTLE: Duration = Duration::from_millis(250);

/// Which side of the comparison a fleet is.
#[derive(Clone, Copy)]
enum Side {
    Drawbridge,
    Incumbent,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Drawbridge => "drawbridge",
            Side::Incumbent => "haproxy + consul watch",
        }
    }
}

/// A fleet's listeners and the processes behind them.
struct Fleet {
    addrs: Vec<SocketAddr>,
    drawbridges: Vec<Drawbridge>,
    incumbents: Vec<Incumbent>,
}

impl Fleet {
    fn start(bench: Bench, side: Side, n: usize, key: &str, cpu: Cpu) -> anyhow::Result<Fleet> {
        let Bench {
            env,
            origin,
            consul,
            answers,
            ..
        } = bench;
        let origin = origin.addr;
        let mut fleet = Fleet {
            addrs: Vec::new(),
            drawbridges: Vec::new(),
            incumbents: Vec::new(),
        };
        for i in 0..n {
            match side {
                Side::Drawbridge => {
                    let db = Drawbridge::start(
                        env,
                        &DrawbridgeSpec {
                            name: &format!("fleet{n}-drawbridge{i}"),
                            threads: 1,
                            origin,
                            consul,
                            key,
                            cpu,
                            tls: None,
                        },
                    )?;
                    fleet.addrs.push(db.instance.addr);
                    fleet.drawbridges.push(db);
                }
                Side::Incumbent => {
                    let inc = Incumbent::start(
                        env,
                        &format!("fleet{n}-haproxy{i}"),
                        origin,
                        consul,
                        key,
                        answers,
                        cpu,
                    )?;
                    fleet.addrs.push(inc.addr);
                    fleet.incumbents.push(inc);
                }
            }
        }
        Ok(fleet)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for inc in &mut self.incumbents {
            inc.check_alive()?;
        }
        Ok(())
    }
}

impl Drop for Fleet {
    /// Every Drawbridge drains for its grace period on SIGTERM: signal them all first, so they
    /// drain together instead of one after the other.
    fn drop(&mut self) {
        for db in &mut self.drawbridges {
            if let Some(proc) = db.instance.proc.as_mut() {
                proc.signal(Signal::SIGTERM);
            }
        }
    }
}

/// Writes `value` and returns how long until every proxy answered `expected`, measured from the
/// moment Consul acknowledged the write; `None` past the timeout.
fn switch(
    consul: &Consul,
    key: &str,
    value: &str,
    expected: u16,
    probe: &mut Probe,
    proxies: usize,
) -> anyhow::Result<Option<Duration>> {
    consul.put(key, value)?;
    let t0 = Instant::now();
    let mut pending: Vec<usize> = (0..proxies).collect();
    while !pending.is_empty() {
        if t0.elapsed() > SWITCH_TIMEOUT {
            return Ok(None);
        }
        let answers = probe.sweep(&pending, PAGE_PATH);
        pending = pending
            .into_iter()
            .zip(answers)
            .filter(|(_, status)| *status != Some(expected))
            .map(|(i, _)| i)
            .collect();
    }
    Ok(Some(t0.elapsed()))
}

/// Figure 5: for each fleet size, switches of Drawbridge's and the incumbent's key in turn.
pub fn propagation(bench: Bench, results: &mut Results) -> anyhow::Result<()> {
    let Bench { plan, consul, .. } = bench;
    for &n in &plan.fleet_sizes {
        eprintln!("switch propagation: {n} proxies");
        let sides = [Side::Incumbent, Side::Drawbridge];
        let mut fleets = Vec::new();
        for side in sides {
            let key = format!("bench/propagation/{n}/{}", side_key(side));
            consul.put(&key, systems::NORMAL)?;
            let fleet = Fleet::start(bench, side, n, &key, Cpu::Any)
                .with_context(|| format!("starting {n} × {}", side.label()))?;
            let probe = Probe::new(&fleet.addrs, Duration::from_secs(2));
            fleets.push((side, key, fleet, probe, Propagation::new(side.label(), n)));
        }
        // The watch handlers run once at start; wait until every incumbent has settled.
        std::thread::sleep(Duration::from_secs(1));
        let per_round = plan.propagation_switches.div_ceil(plan.rounds);
        for _round in 0..plan.rounds {
            for (side, key, fleet, probe, record) in &mut fleets {
                fleet.check_alive()?;
                for i in 0..per_round {
                    let on = i % 2 == 0;
                    let (value, expected) = if on {
                        (systems::MAINTENANCE, 503)
                    } else {
                        (systems::NORMAL, 200)
                    };
                    let took = switch(consul, key, value, expected, probe, n)
                        .with_context(|| format!("switching {}", side.label()))?;
                    record.add(on, took);
                    std::thread::sleep(SETTLE);
                }
                // Every block ends open, so the next starts from the same state.
                if per_round % 2 == 1 {
                    switch(consul, key, systems::NORMAL, 200, probe, n)?;
                    std::thread::sleep(SETTLE);
                }
            }
        }
        for (_, _, _, _, record) in fleets {
            results.propagation.push(record);
        }
    }
    Ok(())
}

fn side_key(side: Side) -> &'static str {
    match side {
        Side::Drawbridge => "drawbridge",
        Side::Incumbent => "incumbent",
    }
}

/// Figure 6: one proxy of each side under a fixed load while its key flips; every answer other
/// than 200 or 503 and every connection error is counted.
pub fn errors_under_switches(bench: Bench, results: &mut Results) -> anyhow::Result<()> {
    let Bench {
        env, plan, consul, ..
    } = bench;
    let mut sides = Vec::new();
    for side in [Side::Incumbent, Side::Drawbridge] {
        let key = format!("bench/switch-load/{}", side_key(side));
        consul.put(&key, systems::NORMAL)?;
        let fleet = Fleet::start(bench, side, 1, &key, Cpu::Proxy)?;
        if let Some(inc) = fleet.incumbents.first() {
            for (name, file) in [
                ("incumbent-haproxy-normal.cfg", "normal.cfg"),
                ("incumbent-haproxy-maintenance.cfg", "maintenance.cfg"),
                ("incumbent-consul-watch-handler.sh", "handler.sh"),
            ] {
                results.keep_config(name, &inc.dir.join(file));
            }
        }
        sides.push((side, key, fleet, SwitchErrors::new(side.label())));
    }
    std::thread::sleep(Duration::from_secs(1));
    let per_round = plan.load_switches.div_ceil(plan.rounds);
    // An even count, so every block ends with the gate open.
    let per_round = per_round + per_round % 2;
    for round in 1..=plan.rounds {
        for (side, key, fleet, record) in &mut sides {
            eprintln!(
                "round {round}/{}: switches under load, {}",
                plan.rounds,
                side.label()
            );
            fleet.check_alive()?;
            let addr = fleet.addrs[0];
            let lead = Duration::from_millis(500);
            // The load goes on after the last switch until a reloaded HAProxy's old worker has
            // surely finished, so what it does to its connections is seen.
            let tail = Duration::from_secs(2);
            let duration = lead + plan.switch_interval * per_round as u32 + tail;
            let oha = Oha::start(env, addr, PAGE_PATH, plan.switch_load_rate, duration)?;
            std::thread::sleep(lead);
            for i in 0..per_round {
                let value = if i % 2 == 0 {
                    systems::MAINTENANCE
                } else {
                    systems::NORMAL
                };
                consul.put(key, value)?;
                std::thread::sleep(plan.switch_interval);
            }
            let r = oha.finish()?;
            if r.requests == 0 {
                bail!("{} served nothing under the switch load", side.label());
            }
            record.add(round, per_round, &r);
        }
    }
    for (_, _, _, record) in sides {
        results.switch_errors.push(record);
    }
    Ok(())
}
