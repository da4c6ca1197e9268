//! `maintctl`: the command line. Parses arguments, loads the inventory, runs one subcommand and
//! exits with its documented code.

use clap::{Parser, Subcommand};
use maintctl::commands::{
    self, CanaryRequest, CommandResult, DrainRequest, Failure, PlanRequest, RollRequest,
    RunRequest, ScheduleRequest, WindowTimes,
};
use maintctl::config::Config;
use maintctl::output::Format;
use maintctl::output::Output;
use maintctl::plan::{BatchSize, Direction};
use maintctl::probe::ProbeOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Takes a whole service down for planned maintenance and brings it back, one command each way:
/// sets the Drawbridge gate key and verifies every proxy and public URL, puts API/UI boxes into
/// Consul node maintenance, stops workers, disables scheduled jobs, and restores in reverse after
/// smoke tests through the closed gate. Locked, journalled in Consul, resumable. Drains single
/// API/UI boxes out of the traffic, and back, moves a route's clients to a new pool step by
/// step, and rolls a change over the API/UI boxes a batch at a time, without the maintenance
/// page. Schedules maintenance windows, tells partners and tenants by email and webhook, and
/// keeps the windows on time (`daemon`).
#[derive(Parser, Debug)]
#[command(
    name = "maintctl",
    version = drawbridge_core::cli_docs::VERSION,
    after_help = "Exit codes:\n  0    done, and the end state seen from outside\n  1    a step failed (the journal says where; `resume` continues, `up` restores)\n  \
                  2    usage or configuration error; nothing was done\n  3    a verification did not succeed in time\n  \
                  4    another run holds the environment's lock\n  5    pre-flight found problems; nothing was done\n  \
                  130  stopped at a step boundary (Ctrl-C or lost lock); `resume` continues\n\n\
                  Consul: the environment's `consul` and `consul_token`, else CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE."
)]
struct Cli {
    /// The inventory file (see config/maintctl.example.toml).
    #[arg(
        short,
        long,
        global = true,
        env = "MAINTCTL_CONFIG",
        default_value = "/etc/maintctl/maintctl.toml"
    )]
    config: PathBuf,
    /// `text` (progress for a person) or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

/// The flags every run (`down`, `up`, `resume`) takes.
#[derive(clap::Args, Debug)]
struct RunFlags {
    /// Do not ask for confirmation (environments with `confirm = true`).
    #[arg(long)]
    yes: bool,
    /// Print the plan and touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Send webhooks and run commands again even when a run of this maintenance did.
    #[arg(long)]
    repeat_steps: bool,
}

/// The flags of `canary`.
#[derive(clap::Args, Debug)]
struct CanaryFlags {
    /// The environment of the inventory, e.g. final, mock or prod.
    #[arg(long)]
    env: String,
    /// The route, by the proxies' route name.
    #[arg(long)]
    route: String,
    /// The new pool, by the proxies' pool name.
    #[arg(long, required_unless_present = "abort")]
    to: Option<String>,
    /// The shares of clients to go through, in percent, rising.
    #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
    steps: Vec<u8>,
    /// How long each step is held and judged, e.g. 5m.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    hold: Duration,
    /// Roll back at once: the route's clients all go to its own pool again.
    #[arg(long, conflicts_with_all = ["to"])]
    abort: bool,
    /// Do not ask for confirmation (environments with `confirm = true`).
    #[arg(long)]
    yes: bool,
    /// Print the steps and touch nothing.
    #[arg(long)]
    dry_run: bool,
}

impl CanaryFlags {
    /// The environment and the request.
    fn request(self) -> (String, CanaryRequest) {
        let f = self;
        let request = CanaryRequest {
            route: f.route,
            to: f.to,
            steps: f.steps,
            hold: f.hold,
            abort: f.abort,
            yes: f.yes,
            dry_run: f.dry_run,
        };
        (f.env, request)
    }
}

/// The flags of `drain` and `undrain`.
#[derive(clap::Args, Debug)]
struct BoxFlags {
    /// The environment of the inventory, e.g. final, mock or prod.
    #[arg(long)]
    env: String,
    /// The api_ui boxes, by inventory name.
    #[arg(required = true)]
    boxes: Vec<String>,
    /// How long to wait for the proxies (and, draining, for the requests in flight), e.g. 10m
    /// (default: the environment's step_timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Do not ask for confirmation (environments with `confirm = true`).
    #[arg(long)]
    yes: bool,
    /// Print the steps and touch nothing.
    #[arg(long)]
    dry_run: bool,
}

impl BoxFlags {
    /// The request, with `reason` for Consul.
    fn request(self, reason: Option<String>) -> (String, DrainRequest) {
        let request = DrainRequest {
            boxes: self.boxes,
            reason,
            timeout: self.timeout,
            yes: self.yes,
            dry_run: self.dry_run,
        };
        (self.env, request)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take the environment down: gate key, node maintenance, workers, scheduled jobs.
    Down {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// Why (shown to clients and kept in the journal).
        #[arg(long)]
        reason: Option<String>,
        /// Expected end, RFC 3339 (e.g. 2026-11-25T21:00:00Z) or a duration from now (e.g. 1h).
        #[arg(long, value_parser = parse_until)]
        until: Option<OffsetDateTime>,
        /// The dead-man switch: every proxy opens the gate by itself once `--until` plus its
        /// `maintenance.overdue_grace` has passed (the key is left as it is).
        #[arg(long, requires = "until")]
        expire: bool,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Bring it back: restore everything any `down` since the last completed `up` changed,
    /// smoke-test through the gate, open traffic, then check the whole environment is up.
    Up {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// Restore every step, whatever the journal says (each checks first and skips what is
        /// already up): for an environment taken down by hand.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Take API/UI boxes out of the traffic without dropping a request: Consul node
    /// maintenance on each, then wait until every proxy sends them nothing and has no request
    /// in flight to them (pools that follow a Consul service drop them at once).
    Drain {
        #[command(flatten)]
        boxes: BoxFlags,
        /// Why (the node maintenance reason in Consul).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put drained boxes back, only when every Consul check of theirs passes: node maintenance
    /// off, then wait until every proxy sends to them again.
    Undrain {
        #[command(flatten)]
        boxes: BoxFlags,
    },
    /// Move a route's clients to a new pool step by step (canary; 100 is blue-green) through
    /// the split document every proxy follows: at each step wait until every proxy applied it,
    /// hold, and compare the new pool with the old from the proxies' metrics (error rate, p99;
    /// thresholds in the inventory's `canary` table); roll back by itself when it is worse. Run
    /// again, it goes on from the current share. Journalled; `resume` continues a killed one.
    Canary(CanaryFlags),
    /// Replace or upgrade the API/UI boxes one batch at a time while the others serve: drain
    /// the batch, run the inventory's `roll` command (ssh) or call (HTTP) for each box, wait
    /// until its Consul checks pass for `healthy_for`, smoke-test it directly (`smoke_url`),
    /// undrain it, and only then the next batch. Stops after more than --max-fail failed
    /// batches, their boxes left drained and the others serving. Journalled; `resume` continues.
    Roll {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        shape: RollShape,
        /// Why (the node maintenance reason in Consul, kept in the journal).
        #[arg(long)]
        reason: Option<String>,
        /// Do not ask for confirmation (environments with `confirm = true`).
        #[arg(long)]
        yes: bool,
        /// Print the plan and touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up the unfinished roll (journalled `abandoned`; `resume` no longer continues it)
        /// and say which of its boxes are still drained; nothing on the boxes changes.
        #[arg(long, conflicts_with = "dry_run")]
        abandon: bool,
    },
    /// Announce a maintenance window: written to the windows document in Consul (compare-and-
    /// set, read back). Refused when it starts in the past, ends before it starts, or overlaps
    /// another scheduled window; and, unless --force, when the rehearsals (the inventory's
    /// `rehearsals`) predict more than the window or `max_window`, or it is longer than
    /// `max_window`.
    Schedule {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        times: TimeFlags,
        /// Why (what partners and tenants are told).
        #[arg(long)]
        reason: String,
        /// A longer text for the people told.
        #[arg(long)]
        message: Option<String>,
        /// The maintenance touches the database: the rehearsals' times × `db_factor`.
        #[arg(long)]
        db: bool,
        /// Schedule it even when the estimate or `max_window` says it does not fit.
        #[arg(long)]
        force: bool,
        /// A notice recipient who asked to skip this window or to delay it, and why, as
        /// `NAME=REASON` (repeat for several): it is sent none of the window's notices.
        #[arg(long, value_name = "NAME=REASON")]
        skip: Vec<String>,
        /// Email the "scheduled" notice to this address only, and write nothing: the preview
        /// to oneself before the real run.
        #[arg(long, value_name = "ADDRESS")]
        preview: Option<String>,
        /// `maintctl daemon` runs `down` at the start and `up` (with its smoke tests) at the
        /// end.
        #[arg(long)]
        auto: bool,
    },
    /// The maintenance windows, past, now and coming, in UTC and in your zone (TZ).
    Windows {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
    },
    /// Move a scheduled window that is not over to new times (one that has begun: its end only).
    Reschedule {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// The window's id (`maintctl windows` lists them).
        id: String,
        #[command(flatten)]
        times: TimeFlags,
        /// Email the "changed" (or "extended") notice to this address only, and write nothing.
        #[arg(long, value_name = "ADDRESS")]
        preview: Option<String>,
    },
    /// Cancel a window that is not over; it stays listed, cancelled.
    Cancel {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// The window's id (`maintctl windows` lists them).
        id: String,
        /// Email the "cancelled" notice to this address only, and write nothing.
        #[arg(long, value_name = "ADDRESS")]
        preview: Option<String>,
    },
    /// Keep the windows on time: reminders, `down` and `up` of `--auto` windows, alerts when a
    /// window starts and nobody ran `down`, "overdue" notices, failed notices tried again. One
    /// daemon of an environment acts, a second stands by. Runs until SIGTERM or Ctrl-C.
    Daemon {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// How often it looks (e.g. 15s).
        #[arg(long, default_value = "15s", value_parser = parse_tick)]
        tick: Duration,
    },
    /// Record that a notice recipient asked to skip a window (or to delay it), and why: it is
    /// sent none of the window's notices from now on.
    Skip {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// The window's id (`maintctl windows` lists them).
        id: String,
        /// The recipient's name in the inventory (`notices.recipients`).
        recipient: String,
        /// What they asked, e.g. "delay: quarter-end closing".
        #[arg(long)]
        reason: String,
    },
    /// Continue the last run where it stopped (done steps are skipped, the failed one redone).
    Resume {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Print the exact steps and targets of `down`, `up` or `roll`; touches nothing.
    Plan {
        #[arg(value_enum)]
        direction: PlanDirection,
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// For `up`: every step, whatever the journal says.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        shape: RollShape,
    },
    /// The gate key, each proxy's applied index and staleness, each box, the lock and last run.
    Status {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
    },
    /// Past runs with the duration of each step.
    History {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
    },
    /// Print a bypass token and the header or cookie to send it in.
    Bypass {
        /// The environment of the inventory, e.g. final, mock or prod.
        #[arg(long)]
        env: String,
        /// How long it is valid, e.g. 30m (default: the environment's bypass.ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Keep requesting URLs and count answers by status; at the end (Ctrl-C or --duration)
    /// list every unexpected answer or connection error with its time and the longest run of
    /// them. Exits 1 if there was any. The proof that a switch or a deploy dropped nothing.
    Probe {
        /// The URLs, asked in turn.
        #[arg(required = true)]
        urls: Vec<String>,
        /// Time between two requests, e.g. 200ms (a fixed rate).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
        interval: Duration,
        /// Statuses that count as expected, e.g. 200,503.
        #[arg(long, value_delimiter = ',', default_value = "200,503")]
        expect: Vec<u16>,
        /// Stop after this long (default: at Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Time allowed for one request.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
        /// An extra request header, `Name: value` (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Check the inventory file and exit (0 valid, 2 invalid).
    CheckConfig,
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    raw.split_once(':')
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .ok_or_else(|| format!("{raw:?} is not a header like \"Name: value\""))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PlanDirection {
    Down,
    Up,
    Roll,
}

/// A window's times: RFC 3339 (2026-12-02T19:00:00Z) or a local time with its IANA zone
/// ("2026-12-02 20:00 Europe/Berlin").
#[derive(clap::Args, Debug)]
struct TimeFlags {
    /// When it starts: RFC 3339 (2026-12-02T19:00:00Z) or a local time with its IANA zone
    /// ("2026-12-02 20:00 Europe/Berlin").
    #[arg(long)]
    start: String,
    /// When it ends, written the same ways.
    #[arg(long)]
    end: String,
}

impl TimeFlags {
    fn times(self) -> WindowTimes {
        WindowTimes {
            start: self.start,
            end: self.end,
        }
    }
}

/// The batches of a roll.
#[derive(clap::Args, Debug)]
struct RollShape {
    /// The role whose boxes are rolled (only api_ui).
    #[arg(long, default_value = "api_ui")]
    role: String,
    /// Boxes per batch: a number, or a share of the role's boxes rounded up (25%).
    #[arg(long, value_parser = BatchSize::parse, default_value = "1")]
    batch: BatchSize,
    /// Failed batches allowed before the roll stops (each failed batch's boxes stay drained).
    #[arg(long, default_value_t = 0)]
    max_fail: usize,
}

fn parse_tick(raw: &str) -> Result<Duration, String> {
    let tick = humantime::parse_duration(raw).map_err(|e| format!("{raw:?}: {e}"))?;
    if tick < Duration::from_millis(100) || tick > Duration::from_secs(600) {
        return Err(format!("{raw:?}: give from 100ms to 10m"));
    }
    Ok(tick)
}

fn parse_until(raw: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(t);
    }
    humantime::parse_duration(raw)
        .map(|d| OffsetDateTime::now_utc() + d)
        .map_err(|_| {
            format!(
                "{raw:?} is neither an RFC 3339 time (2026-11-25T21:00:00Z) nor a duration (1h)"
            )
        })
}

/// Parses the command line; with `--output json` anywhere in it, a usage error is one JSON object
/// too (exit 2), so automation never parses text.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if e.use_stderr() && wants_json(std::env::args()) => {
            let out = commands::output(Format::Json);
            let message = e.kind().to_string();
            let detail = e.to_string();
            let detail = detail
                .lines()
                .next()
                .unwrap_or(&message)
                .trim_start_matches("error: ");
            Err(ExitCode::from(commands::report(
                &out,
                Failure::usage(detail),
            )))
        }
        Err(e) => e.exit(),
    }
}

fn wants_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().any(|a| a == "--output=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--output" && w[1] == "json")
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) =
        drawbridge_core::cli_docs::generate_if_asked(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    drawbridge_core::install_crypto_provider();
    let out = commands::output(cli.output);
    let result = dispatch(cli.command, &cli.config, out).await;
    ExitCode::from(result.unwrap_or_else(|failure| commands::report(&out, failure)))
}

/// Runs one command; all but `probe` read the inventory at `path` first.
async fn dispatch(command: Command, path: &Path, out: Output) -> CommandResult {
    let inventory = || Config::load(path).map_err(Failure::usage);
    let run = |reason, until, expire, all, flags: RunFlags| RunRequest {
        reason,
        until,
        expire,
        by_daemon: false,
        yes: flags.yes,
        dry_run: flags.dry_run,
        all,
        repeat_steps: flags.repeat_steps,
    };
    match command {
        Command::Down {
            env,
            reason,
            until,
            expire,
            flags,
        } => {
            let request = run(reason, until, expire, false, flags);
            commands::down(&inventory()?, &env, request, out).await
        }
        Command::Up { env, all, flags } => {
            let request = run(None, None, false, all, flags);
            commands::up(&inventory()?, &env, request, out).await
        }
        Command::Drain { boxes, reason } => {
            let (env, request) = boxes.request(reason);
            commands::drain(&inventory()?, &env, request, out).await
        }
        Command::Undrain { boxes } => {
            let (env, request) = boxes.request(None);
            commands::undrain(&inventory()?, &env, request, out).await
        }
        Command::Canary(flags) => {
            let (env, request) = flags.request();
            commands::canary(&inventory()?, &env, request, out).await
        }
        Command::Resume { env, flags } => {
            let request = run(None, None, false, false, flags);
            commands::resume(&inventory()?, &env, request, out).await
        }
        Command::Roll {
            env,
            shape,
            reason,
            yes,
            dry_run,
            abandon,
        } => {
            let request = RollRequest {
                role: shape.role,
                batch: shape.batch,
                max_fail: shape.max_fail,
                reason,
                yes,
                dry_run,
                abandon,
            };
            commands::roll(&inventory()?, &env, request, out).await
        }
        Command::Plan {
            direction,
            env,
            all,
            shape,
        } => {
            let direction = match direction {
                PlanDirection::Down => Direction::Down,
                PlanDirection::Up => Direction::Up,
                PlanDirection::Roll => Direction::Roll,
            };
            let request = PlanRequest {
                direction,
                all,
                role: shape.role,
                batch: shape.batch,
                max_fail: shape.max_fail,
            };
            commands::plan(&inventory()?, &env, request, out).await
        }
        Command::Schedule {
            env,
            times,
            reason,
            message,
            db,
            force,
            skip,
            preview,
            auto,
        } => {
            let request = ScheduleRequest {
                times: times.times(),
                reason,
                message,
                with_database: db,
                force,
                skip,
                preview,
                auto,
            };
            commands::schedule(&inventory()?, &env, request, out).await
        }
        Command::Windows { env } => commands::windows(&inventory()?, &env, out).await,
        Command::Reschedule {
            env,
            id,
            times,
            preview,
        } => commands::reschedule(&inventory()?, &env, &id, times.times(), preview, out).await,
        Command::Cancel { env, id, preview } => {
            commands::cancel(&inventory()?, &env, &id, preview, out).await
        }
        Command::Daemon { env, tick } => {
            commands::daemon(&inventory()?, &env, commands::DaemonRequest { tick }, out).await
        }
        Command::Skip {
            env,
            id,
            recipient,
            reason,
        } => commands::skip(&inventory()?, &env, &id, &recipient, &reason, out).await,
        Command::Status { env } => commands::status(&inventory()?, &env, out).await,
        Command::History { env } => commands::history(&inventory()?, &env, out).await,
        Command::Bypass { env, ttl } => commands::bypass(&inventory()?, &env, ttl, out),
        Command::Probe {
            urls,
            interval,
            expect,
            duration,
            timeout,
            headers,
        } => {
            let options = ProbeOptions {
                urls,
                interval,
                expect,
                duration,
                timeout,
                headers,
            };
            commands::probe(&options, out).await
        }
        Command::CheckConfig => commands::check_config(path, out),
    }
}
