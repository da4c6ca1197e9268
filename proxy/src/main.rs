//! `drawbridge`: the edge proxy's command line. Reads and checks the config, then serves.

use clap::Parser;
use drawbridge::config::Config;
use drawbridge::server::{self, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;

// Pingora allocates on every request (headers, buffers, tasks); mimalloc's thread-local free
// lists cost less CPU per request than the system allocator (benches/README.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Drawbridge edge proxy: proxies UI, admin and API traffic to upstream pools and serves a
/// planned-maintenance answer when the Consul gate key says so.
#[derive(Parser, Debug)]
#[command(
    name = "drawbridge",
    version,
    after_help = "Exit codes: 0 clean shutdown or valid configuration (--check); \
                  1 invalid configuration or a failure at start; 2 usage error.\n\
                  Logs go to stderr; set DRAWBRIDGE_LOG (e.g. \"info\", \"drawbridge=debug\") to filter them.\n\
                  Signals: SIGTERM drains requests in flight for server.grace_period (idle kept-alive \
                  connections get their next answer with Connection: close), then exits; \
                  SIGQUIT hands the listeners to a new process started with --upgrade."
)]
struct Cli {
    /// The configuration file (TOML; see config/drawbridge.example.toml).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration, print the result and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
    /// Take the listeners over from the running process (send it SIGQUIT); graceful upgrade.
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    drawbridge_core::install_crypto_provider();
    init_logging();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("drawbridge: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        println!("configuration is valid: {}", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let start = StartOptions {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    match server::build(config, start) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("drawbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRAWBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
