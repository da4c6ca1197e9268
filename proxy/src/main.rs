//! `drawbridge`: the edge proxy's command line. Reads and checks the config, then serves.

use clap::Parser;
use drawbridge::config::Config;
use drawbridge::server::{self, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
    version = drawbridge_core::cli_docs::VERSION,
    after_help = "Exit codes: 0 clean shutdown or valid configuration (--check); \
                  1 a failure at start; 2 usage error or invalid configuration (as maintctl).\n\
                  Logs go to stderr; set DRAWBRIDGE_LOG (e.g. \"info\", \"drawbridge=debug\") to filter them.\n\
                  Signals: SIGTERM drains requests in flight for server.grace_period (idle kept-alive \
                  connections get their next answer with Connection: close), then exits; \
                  SIGQUIT hands the listeners to a new process started with --upgrade; \
                  SIGUSR2 starts that new process itself (the binary at this path, this config \
                  file) and hands over, or goes on serving when the file fails its check, changes \
                  the listeners or the new process does not start; \
                  SIGHUP reads the config file and the TLS certificate files again (the \
                  certificate list applies at once, other changes at the next restart).\n\
                  With NOTIFY_SOCKET set (systemd Type=notify) it sends READY=1 and MAINPID once it \
                  serves."
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
    if let Some(code) =
        drawbridge_core::cli_docs::generate_if_asked(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    let cli = Cli::parse();
    drawbridge_core::install_crypto_provider();
    init_logging();
    if !cli.check {
        hold_signals();
    }
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
    // Both absolute, and read before anything else (a package upgrade may replace the binary
    // while the config is read) and before a daemon's fork changes the working folder: a
    // restart on SIGUSR2 starts the binary installed at this path then, with this config file.
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("drawbridge: cannot find this binary's own path ({e}); is /proc mounted?");
            return ExitCode::from(1);
        }
    };
    let config_path = match std::path::absolute(&cli.config) {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "drawbridge: cannot make {} absolute ({e}); pass an absolute --config",
                cli.config.display()
            );
            return ExitCode::from(INVALID_CONFIG);
        }
    };
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
        program,
        config_path,
    };
    match server::build(config, start) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("drawbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Takes SIGHUP, SIGUSR2 and SIGQUIT before the config is read: each one's default action ends
/// the process, and the services that act on them start only when the listeners are about to
/// open (after Consul's first answer, or after the listening sockets came from the process
/// before). One sent before a service listens for it is dropped: it only sets a flag nobody
/// reads. (A tokio stream taken this early would keep it and act on it later, a restart or a
/// hand-over long after it was asked for.)
fn hold_signals() {
    use signal_hook::consts::{SIGHUP, SIGQUIT, SIGUSR2};
    let dropped = Arc::new(AtomicBool::new(false));
    for signal in [SIGHUP, SIGUSR2, SIGQUIT] {
        if let Err(e) = signal_hook::flag::register(signal, dropped.clone()) {
            tracing::warn!(
                "cannot take signal {signal} early ({e}); one sent before the proxy serves ends it"
            );
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
