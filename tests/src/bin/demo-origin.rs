//! A small origin for `scripts/demo.sh`: the test upstream as a standalone server.
//!
//!   demo-origin --name ui --listen 127.0.0.1:3001 --kind page
//!   curl -i http://127.0.0.1:3001/anything
//!
//! Runs until killed. For the demo's bypass walk-through it also signs a token with the key of
//! `config/demo.toml` (what `maintctl bypass` does in production):
//!
//!   demo-origin mint-token --environment demo --key-id demo --secret SECRET [--ttl-secs 3600]

use drawbridge_core::bypass::{BypassKey, Keyring};
use drawbridge_tests::upstream::{Kind, Upstream};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: demo-origin --name NAME --listen IP:PORT [--kind page|api]\n       \
                     demo-origin mint-token --environment ENV --key-id ID --secret SECRET [--ttl-secs N]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("mint-token") {
        args.next();
        return match mint_token(args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("demo-origin: {msg}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
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

/// Signs a bypass token from `--environment`, `--key-id`, `--secret` and `--ttl-secs`.
fn mint_token(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    let (mut env, mut id, mut secret, mut ttl) = (None, None, None, 3600u64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--environment" => env = Some(value),
            "--key-id" => id = Some(value),
            "--secret" => secret = Some(value),
            "--ttl-secs" => {
                ttl = value
                    .parse()
                    .map_err(|e| format!("--ttl-secs {value:?}: {e}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let env = env.ok_or("--environment is required")?;
    let id = id.ok_or("--key-id is required")?;
    let secret = secret.ok_or("--secret is required")?;
    let key = BypassKey::new(&id, secret.as_bytes()).map_err(|e| e.to_string())?;
    let keyring = Keyring::new(vec![key]).map_err(|e| e.to_string())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(keyring.sign(&env, now, Duration::from_secs(ttl), Some("demo")))
}
