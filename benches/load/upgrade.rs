//! Figure 7: what clients under load see across Drawbridge's graceful upgrade: a new
//! `drawbridge --config F --upgrade` is started, the old process gets SIGQUIT and hands the
//! listening sockets over, then drains for `server.grace_period` (1 s here) and exits.

use crate::load::Oha;
use crate::procs::Proc;
use crate::report::{Results, SwitchErrors};
use crate::systems::{self, Cpu, Drawbridge, DrawbridgeSpec, Env};
use crate::throughput::PAGE_PATH;
use crate::Bench;
use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// How long the new process may take to open its upgrade socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an old process may take to exit after SIGQUIT (grace 1 s + shutdown 1 s + slack).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);

pub fn run(bench: Bench, results: &mut Results) -> anyhow::Result<()> {
    let Bench {
        env,
        plan,
        origin,
        consul,
        ..
    } = bench;
    let origin = origin.addr;
    let key = "bench/upgrade/gate";
    consul.put(key, systems::NORMAL)?;
    let threads = plan.threads.iter().copied().max().unwrap_or(1);
    let mut db = Drawbridge::start(
        env,
        &DrawbridgeSpec {
            name: "upgrade-drawbridge",
            threads,
            origin,
            consul,
            key,
            cpu: Cpu::Proxy,
            tls: None,
        },
    )?;
    let mut record = SwitchErrors::new("drawbridge upgrade");
    let mut generation = 0;
    for round in 1..=plan.rounds {
        eprintln!(
            "round {round}/{}: graceful upgrades under load",
            plan.rounds
        );
        let lead = Duration::from_millis(500);
        // The load goes on until the last old process has surely exited (the fd transfer may
        // retry for 1 s, then 1 s grace and 1 s shutdown): its last connections are what
        // clients can trip over.
        let tail = Duration::from_secs(4);
        let duration = lead + plan.upgrade_interval * plan.upgrades_per_round as u32 + tail;
        let oha = Oha::start(
            env,
            db.instance.addr,
            PAGE_PATH,
            plan.switch_load_rate,
            duration,
        )?;
        std::thread::sleep(lead);
        let mut draining: Vec<Proc> = Vec::new();
        for _ in 0..plan.upgrades_per_round {
            let started = Instant::now();
            generation += 1;
            upgrade_once(env, &mut db, generation, &mut draining)?;
            std::thread::sleep(plan.upgrade_interval.saturating_sub(started.elapsed()));
        }
        let r = oha.finish()?;
        for mut old in draining {
            if !old.wait_exit(DRAIN_TIMEOUT) {
                bail!(
                    "the old drawbridge did not exit within {DRAIN_TIMEOUT:?} after SIGQUIT\n{}",
                    old.log_tail(30)
                );
            }
        }
        record.add(round, plan.upgrades_per_round, &r);
    }
    let admin = db.admin;
    systems::wait_answer(db.proc_mut()?, admin, "/healthz", 200)
        .context("the last upgraded drawbridge does not answer")?;
    results.upgrade = Some(record);
    Ok(())
}

/// Starts the next process with `--upgrade`, waits for its upgrade socket, SIGQUITs the old one
/// and keeps it in `draining` until it exits.
fn upgrade_once(
    env: &Env,
    db: &mut Drawbridge,
    generation: usize,
    draining: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let sock = db.dir.join("upgrade.sock");
    // The new process creates the socket afresh; a leftover would be mistaken for it.
    let _ = std::fs::remove_file(&sock);
    let mut new = db.spawn(env, &format!("upgrade-drawbridge-{generation}"), true)?;
    let start = Instant::now();
    while !sock.exists() {
        if new.has_exited() || start.elapsed() > SOCKET_TIMEOUT {
            bail!(
                "drawbridge --upgrade did not open {} within {SOCKET_TIMEOUT:?}\n{}",
                sock.display(),
                new.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut old = db
        .instance
        .proc
        .replace(new)
        .context("no drawbridge process to upgrade from")?;
    old.signal(Signal::SIGQUIT);
    draining.push(old);
    Ok(())
}
