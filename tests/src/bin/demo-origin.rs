//! A small origin for `scripts/demo.sh`: the test upstream as a standalone server.
//!
//!   demo-origin --name ui --listen 127.0.0.1:3001 --kind page
//!   curl -i http://127.0.0.1:3001/anything
//!
//! Runs until killed.

use drawbridge_tests::upstream::{Kind, Upstream};
use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "usage: demo-origin --name NAME --listen IP:PORT [--kind page|api]";

fn main() -> ExitCode {
    let args = std::env::args().skip(1);
    match parse(args) {
        Ok((name, listen, kind)) => match Upstream::builder(&name)
            .listen(listen)
            .kind(kind)
            .try_start()
        {
            Ok(upstream) => {
                eprintln!("demo-origin: {name} serving on http://{}", upstream.addr());
                upstream.wait();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("demo-origin: cannot listen on {listen}: {e}");
                ExitCode::FAILURE
            }
        },
        Err(msg) => {
            eprintln!("demo-origin: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Reads `--name`, `--listen` and `--kind` from the arguments.
fn parse(mut args: impl Iterator<Item = String>) -> Result<(String, SocketAddr, Kind), String> {
    let (mut name, mut listen, mut kind) = (None, None, Kind::Page);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help requested".to_string());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(value),
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {value:?}: {e}"))?,
                )
            }
            "--kind" => {
                kind = match value.as_str() {
                    "page" => Kind::Page,
                    "api" => Kind::Api,
                    other => return Err(format!("--kind {other:?}: expected page or api")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    let listen = listen.ok_or("--listen is required")?;
    Ok((name, listen, kind))
}
