//! The processes the bench starts, and what it reads about them from `/proc`.
//!
//! A [`Proc`] owns one child: output to a log file, SIGTERM then SIGKILL (with every descendant,
//! e.g. nginx workers) on drop, also when the bench fails. A [`Watchdog`] process kills whatever
//! is still listed in the registry when the bench itself dies or overruns its deadline.

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a child gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// The registry file: one `pid starttime` line per child started, read by the watchdog.
static REGISTRY: OnceLock<Mutex<File>> = OnceLock::new();

/// One child process, owned: terminated (with its descendants) and reaped on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `<logs>/<name>.log`, and
    /// lists it in the watchdog's registry.
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> anyhow::Result<Proc> {
        let log = logs.join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open the log {}", log.display()))?;
        let err = out
            .try_clone()
            .context("cannot duplicate a log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        register(child.id());
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            exited: false,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the child has exited (reaps it).
    pub fn has_exited(&mut self) -> bool {
        if !self.exited {
            self.exited = matches!(self.child.try_wait(), Ok(Some(_)));
        }
        self.exited
    }

    /// Sends `signal` to the child if it still runs.
    pub fn signal(&mut self, signal: Signal) {
        if !self.has_exited() {
            let _ = kill(nix_pid(self.pid()), signal);
        }
    }

    /// Waits up to `timeout` for the child to exit by itself; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while !self.has_exited() {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; the descendants it had are killed
    /// too, so no nginx or HAProxy worker outlives its master.
    pub fn stop(&mut self) {
        if self.has_exited() {
            return;
        }
        let family = descendants(self.pid());
        self.signal(Signal::SIGTERM);
        if !self.wait_exit(TERM_GRACE) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.exited = true;
        }
        for (pid, start) in family {
            if start_time(pid) == Some(start) {
                let _ = kill(nix_pid(pid), Signal::SIGKILL);
            }
        }
    }

    /// The last `lines` lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            tail_of_file(&self.log, lines)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nix_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Opens the registry the watchdog reads; call once before starting any child.
pub fn open_registry(path: &Path) -> anyhow::Result<()> {
    let file = File::create(path)
        .with_context(|| format!("cannot create the process registry {}", path.display()))?;
    REGISTRY
        .set(Mutex::new(file))
        .map_err(|_| anyhow::anyhow!("the process registry is already open"))
}

fn register(pid: u32) {
    if let (Some(registry), Some(start)) = (REGISTRY.get(), start_time(pid)) {
        let mut file = registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(file, "{pid} {start}");
        let _ = file.flush();
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, so field 3 (state) is index 0.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    // The state letter is not a number; keep positions by mapping it to 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// The process's start time (clock ticks after boot), which tells a PID's owner from a later
/// process that reused the number.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19).copied()
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?
        .get(1)
        .and_then(|&p| u32::try_from(p).ok())
}

/// Every live descendant of `pid` with its start time.
pub fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                if let Some(parent) = parent_of(p) {
                    parents.push((p, parent));
                }
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(current) = frontier.pop() {
        for &(child, parent) in &parents {
            if parent == current {
                if let Some(start) = start_time(child) {
                    found.push((child, start));
                    frontier.push(child);
                }
            }
        }
    }
    found
}

/// CPU time (user + system, all threads) of `pid` and its live descendants, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let own = stat_fields(pid)
        .and_then(|f| Some(f.get(11)? + f.get(12)?))
        .with_context(|| format!("process {pid} is gone (no /proc/{pid}/stat)"))?;
    let children: u64 = descendants(pid)
        .iter()
        .filter_map(|&(p, _)| stat_fields(p).and_then(|f| Some(f.get(11)? + f.get(12)?)))
        .sum();
    Ok(own + children)
}

/// Clock ticks of CPU time in microseconds.
pub fn cpu_us(ticks: u64, ticks_per_second: u64) -> f64 {
    ticks as f64 * 1e6 / ticks_per_second.max(1) as f64
}

/// Resident memory of `pid` and its live descendants, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(descendants(pid).into_iter().map(|(p, _)| p))
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Clock ticks per second of the `/proc` CPU times (`getconf CLK_TCK`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The last `lines` lines of a file (at most its last 64 KiB).
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The watchdog process: bounds the whole run in time even if the bench is SIGKILLed.
pub struct Watchdog(Child);

impl Watchdog {
    /// Starts `<this binary> watchdog`, which SIGKILLs every registered child (and its
    /// descendants) once this process is gone or `deadline` has passed, and this process too in
    /// the second case.
    pub fn start(registry: &Path, deadline: Duration) -> anyhow::Result<Watchdog> {
        let exe = std::env::current_exe().context("cannot find the bench's own binary")?;
        let child = Command::new(exe)
            .arg("watchdog")
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--seconds")
            .arg(deadline.as_secs().max(1).to_string())
            .arg("--registry")
            .arg(registry)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the watchdog")?;
        Ok(Watchdog(child))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The watchdog's loop (the hidden `watchdog` subcommand).
pub fn run_watchdog(parent: u32, seconds: u64, registry: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let me = std::process::id();
    loop {
        let orphaned = parent_of(me) != Some(parent);
        let overdue = Instant::now() >= deadline;
        if orphaned || overdue {
            if overdue {
                eprintln!(
                    "drawbridge-bench: the run passed its deadline of {seconds} s; killing it \
                     (raise --deadline-minutes for slower machines)"
                );
            }
            let listed = std::fs::read_to_string(registry).unwrap_or_default();
            for line in listed.lines() {
                let mut parts = line.split_whitespace();
                let (Some(pid), Some(start)) = (
                    parts.next().and_then(|p| p.parse::<u32>().ok()),
                    parts.next().and_then(|s| s.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                if start_time(pid) != Some(start) {
                    continue;
                }
                let family = descendants(pid);
                let _ = kill(nix_pid(pid), Signal::SIGKILL);
                for (p, s) in family {
                    if start_time(p) == Some(s) {
                        let _ = kill(nix_pid(p), Signal::SIGKILL);
                    }
                }
            }
            if overdue && !orphaned {
                let _ = kill(nix_pid(parent), Signal::SIGKILL);
                bail!("deadline passed");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
