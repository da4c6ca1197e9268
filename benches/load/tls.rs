//! Figure 8: TLS. HAProxy, nginx, the floor and Drawbridge each get a TLS listener beside the
//! plain one, all serving the same ECDSA P-256 certificate (made with `openssl` at the start).
//! Each round and thread count starts them afresh and measures them in turn: CPU per request on
//! kept-open connections in plain HTTP/1.1, HTTP/1.1 over TLS and HTTP/2 over TLS, then full
//! handshakes per CPU-second with `openssl s_time -new`.

use crate::load::{self, Connections, Wire};
use crate::procs::{self, Proc};
use crate::report::{Results, Sample, HANDSHAKES, TLS_WIRES};
use crate::systems::{self, Certificate, Cpu, Drawbridge, DrawbridgeSpec, Env, Instance};
use crate::throughput::{self, Scenario, PAGE_PATH};
use crate::Bench;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// s_time clients at once. Each waits for its handshake to end before it starts the next, so
/// one alone leaves the proxy idle between handshakes; a few keep it busy.
pub const HANDSHAKE_CLIENTS: usize = 4;

/// Runs figure 8 for every round and thread count, adding to `results`.
pub fn run(bench: Bench, results: &mut Results) -> anyhow::Result<()> {
    let Bench {
        env, plan, consul, ..
    } = bench;
    let cert = Certificate::make(env)?;
    let key = "bench/tls/gate";
    consul.put(key, systems::NORMAL)?;
    for round in 1..=plan.rounds {
        for &threads in &plan.threads {
            eprintln!("round {round}/{}: TLS, {threads} thread(s)", plan.rounds);
            block(bench, &cert, key, round, threads, results)
                .with_context(|| format!("TLS, round {round}, {threads} thread(s)"))?;
        }
    }
    Ok(())
}

/// One round at one thread count.
fn block(
    bench: Bench,
    cert: &Certificate,
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
        ..
    } = bench;
    let o = origin.addr;
    let drawbridge = Drawbridge::start(
        env,
        &DrawbridgeSpec {
            name: &format!("tls-drawbridge-t{threads}"),
            threads,
            origin: o,
            consul,
            key,
            cpu: Cpu::Proxy,
            tls: Some(cert),
        },
    )?;
    let proxies = [
        systems::start_haproxy(env, threads, o, None, Some(cert))?,
        systems::start_nginx(env, threads, o, None, Some(cert))?,
        systems::start_floor(env, threads, o, None, Some(cert))?,
    ];
    let order: Vec<&Instance> = proxies.iter().chain([&drawbridge.instance]).collect();
    if round == 1 && threads == plan.threads[0] {
        for (name, inst) in [
            ("haproxy-tls.cfg", &proxies[0]),
            ("nginx-tls.conf", &proxies[1]),
            ("drawbridge-tls.toml", &drawbridge.instance),
        ] {
            if let Some(path) = &inst.config {
                results.keep_config(name, path);
            }
        }
        for inst in &order {
            let what = negotiated(env, tls_addr(inst)?, cert)
                .with_context(|| format!("{}'s TLS listener", inst.system.label()))?;
            results
                .tls_negotiated
                .insert(inst.system.label().to_string(), what);
        }
    }

    let ca = cert.chain.as_path();
    let wires = [Wire::Plain, Wire::Https { ca }, Wire::H2 { ca }];
    for (label, wire) in TLS_WIRES.into_iter().zip(wires) {
        for inst in &order {
            let scenario = Scenario {
                path: PAGE_PATH,
                connections: Connections::KeepAlive,
                wire,
                expected: 200,
            };
            let sample = throughput::measure(bench, inst, scenario, round, threads)?;
            results.push("tls", sample.with_scenario(label));
        }
    }
    for inst in &order {
        let sample = handshakes(bench, inst, round, threads)?;
        results.push("tls", sample.with_scenario(HANDSHAKES));
    }
    Ok(())
}

fn tls_addr(inst: &Instance) -> anyhow::Result<SocketAddr> {
    inst.tls
        .with_context(|| format!("{} has no TLS listener", inst.system.label()))
}

/// Full handshakes after a warm-up: the proxy's CPU time per handshake from `/proc`.
fn handshakes(
    bench: Bench,
    inst: &Instance,
    round: usize,
    threads: usize,
) -> anyhow::Result<Sample> {
    let Bench { env, plan, .. } = bench;
    let addr = tls_addr(inst)?;
    let pid = inst
        .pid()
        .with_context(|| format!("{} has no process", inst.system.label()))?;
    load::handshakes(env, addr, HANDSHAKE_CLIENTS, plan.warmup)?;
    let before = procs::cpu_ticks(pid)?;
    let h = load::handshakes(env, addr, HANDSHAKE_CLIENTS, plan.duration)?;
    let after = procs::cpu_ticks(pid)?;
    let connections = h.full + h.resumed;
    if connections == 0 {
        bail!("{} completed no TLS handshake", inst.system.label());
    }
    Ok(Sample {
        requests: h.full,
        rps: h.full as f64 / h.seconds,
        cpu_us_per_req: Some(
            procs::cpu_us(after - before, plan.ticks_per_second) / connections as f64,
        ),
        unexpected: h.resumed,
        ..Sample::new(round, inst.system, threads)
    })
}

/// What a TLS listener negotiates with `openssl s_client` offering `h2,http/1.1` and checking
/// the certificate: protocol, cipher, key exchange, signature, ALPN, one line.
fn negotiated(env: &Env, addr: SocketAddr, cert: &Certificate) -> anyhow::Result<String> {
    let name = format!("s_client-{}", addr.port());
    let mut cmd = env.command(&env.tools.openssl, Cpu::Load);
    cmd.args(["s_client", "-connect"])
        .arg(addr.to_string())
        .args(["-alpn", "h2,http/1.1", "-CAfile"])
        .arg(&cert.chain);
    let mut proc = Proc::spawn(&name, cmd, &env.logs)?;
    // Standard input is closed, so s_client ends right after the handshake.
    let started = Instant::now();
    while !proc.has_exited() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("openssl s_client did not end\n{}", proc.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server's first HTTP/2 frames are printed as they came: not text.
    let raw = std::fs::read(env.logs.join(format!("{name}.log"))).unwrap_or_default();
    describe_session(&String::from_utf8_lossy(&raw))
        .with_context(|| format!("no TLS session in s_client's output\n{}", proc.log_tail(30)))
}

/// `TLSv1.3 TLS_AES_256_GCM_SHA384, X25519, ECDSA, ALPN h2, verified` from s_client's output.
fn describe_session(text: &str) -> Option<String> {
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let session = after("New, ")?.replace(", Cipher is", "");
    let group = after("Server Temp Key:")
        .and_then(|k| k.split(',').next())
        .unwrap_or("?");
    let signature = after("Peer signature type:").unwrap_or("?");
    let alpn = after("ALPN protocol:").unwrap_or("none");
    let verified = if after("Verify return code:") == Some("0 (ok)") {
        "verified"
    } else {
        "NOT verified"
    };
    Some(format!(
        "{session}, {group}, {signature}, ALPN {alpn}, {verified}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_in_one_line() {
        let out =
            "CONNECTED(00000003)\nPeer signature type: ECDSA\nServer Temp Key: X25519, 253 bits\n\
                   ---\nNew, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384\nALPN protocol: h2\n\
                   Verify return code: 0 (ok)\n";
        assert_eq!(
            describe_session(out).as_deref(),
            Some("TLSv1.3 TLS_AES_256_GCM_SHA384, X25519, ECDSA, ALPN h2, verified")
        );
        assert_eq!(describe_session("connect: Connection refused\n"), None);
    }
}
