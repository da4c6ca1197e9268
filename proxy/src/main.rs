//! `drawbridge`: the edge proxy's command line. Reads and checks the config, then serves.

use clap::Parser;
use drawbridge::config::Config;
use drawbridge::server::{self, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;

// Pingora allocates on every request (headers, buffers, tasks); mimalloc's thread-local free
// lists cost less CPU per request than the system allocator (figures: README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. With huge pages every 2 MiB region of
/// mimalloc's arena that is touched becomes resident whole: idle RSS was 21 MiB with them and
/// 12 MiB without, at the same CPU per request (README, Performance). mimalloc is built not to
/// ask for them (feature `no_thp`); this covers hosts where the kernel gives them unasked
/// (`transparent_hugepage=always`). The flag is checked at each page fault, so setting it first
/// thing in `main` covers the arena reserved before.
fn no_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!(
            "drawbridge: warning: cannot turn transparent huge pages off ({e}); \
             memory use will be higher"
        );
    }
}

/// The Drawbridge edge proxy: proxies UI, admin and API traffic to upstream pools and serves a
/// planned-maintenance answer when the Consul gate key says so.
#[derive(Parser, Debug)]
#[command(
    name = "drawbridge",
    version,
    after_help = "Exit codes: 0 clean shutdown or valid configuration (--check); \
                  1 a failure at start; 2 usage error or invalid configuration (as maintctl).\n\
                  Logs go to stderr; set DRAWBRIDGE_LOG (e.g. \"info\", \"drawbridge=debug\") to filter them.\n\
                  Signals: SIGTERM drains requests in flight for server.grace_period (idle kept-alive \
                  connections get their next answer with Connection: close), then exits; \
                  SIGQUIT hands the listeners to a new process started with --upgrade; \
                  SIGHUP reads the TLS certificate files again."
)]
struct Cli {
    /// The configuration file (TOML; see config/drawbridge.example.toml).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration, print the result and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
    /// Take the listeners over from the running process (send it SIGQUIT); graceful upgrade.
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
}

/// The exit code of an invalid configuration: a usage error, as for `maintctl`.
const INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    drawbridge_core::install_crypto_provider();
    init_logging();
    if cli.check {
        // Checking looks nothing up: no name resolution, no host name.
        return match Config::check_file(&cli.config) {
            Ok(warnings) => {
                for warning in &warnings {
                    println!("warning: {warning}");
                }
                println!("configuration is valid: {}", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("drawbridge: {e}");
                ExitCode::from(INVALID_CONFIG)
            }
        };
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("drawbridge: {e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
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
