//! Ownership of the real processes an e2e test starts, and of the test's own directory.
//!
//! A [`ChildGuard`] owns one child: its output goes to files in the test directory, and on drop
//! (also when the test panics) it gets SIGTERM, ~3 s to exit, then SIGKILL, and is reaped. A
//! watchdog process bounds its lifetime even when the test binary itself is SIGKILLed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longest a child may live, whatever happens to the test: 10 minutes, unless
/// `DRAWBRIDGE_TEST_LIFETIME_SECS` asks for more (the long runs: soaks and 10-minute idle checks).
pub fn max_lifetime() -> Duration {
    std::env::var("DRAWBRIDGE_TEST_LIFETIME_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(600), Duration::from_secs)
}

/// How long a child gets to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Lines of each log shown in failure messages.
pub const TAIL_LINES: usize = 40;

/// A per-test directory under the system temp dir; removed on drop unless the test panicked,
/// so the logs of a failed test stay for inspection.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `<tmp>/drawbridge-tests/<name>-<pid>-<n>`, empty.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(name: &str) -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("drawbridge-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        // A leftover from a run with the same pid would mix logs.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create test dir {}: {e}", path.display()));
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The watchdog: kills the child ($2) with SIGKILL when the test process ($1) is gone or
/// after $3 seconds, and exits quietly once the child is gone.
///
/// "Gone" for the test process means the watchdog is no longer its child (reparented), read
/// from `/proc/self/stat`: `kill -0` would still succeed on a killed test binary that its
/// parent has not reaped yet (a zombie).
///
/// Why a separate watchdog rather than `timeout --signal=KILL 600 cmd`: with `timeout` the PID
/// we hold is timeout's, and a SIGKILL to it (our `kill_hard`, or the test binary being
/// killed) orphans the real child instead of killing it. `PR_SET_PDEATHSIG` needs unsafe code
/// in `pre_exec` and fires when the spawning *thread* exits, which a test thread does.
/// This watchdog keeps the child's PID ours, so signals and reaping stay exact.
const WATCHDOG: &str = r#"i=0
while kill -0 "$2" 2>/dev/null; do
  read -r _ _ _ parent _ < /proc/$$/stat
  if [ "$i" -ge "$3" ] || [ "$parent" != "$1" ]; then
    kill -KILL "$2" 2>/dev/null
    exit 0
  fi
  sleep 1
  i=$((i+1))
done"#;

/// Starts the [`WATCHDOG`] of process `pid`.
fn spawn_watchdog(pid: u32, lifetime: Duration) -> std::io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("drawbridge-watchdog")
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(lifetime.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// A process the test did not start but must stop: one a proxy started itself (its successor
/// after SIGUSR2). SIGKILL on drop, and the same watchdog as a [`ChildGuard`]'s.
#[derive(Debug)]
pub struct AdoptedProcess {
    pid: Pid,
    watchdog: Option<Child>,
}

impl AdoptedProcess {
    /// # Panics
    /// When the watchdog cannot be started (the process is killed first).
    pub fn adopt(pid: u32) -> AdoptedProcess {
        let pid_i32 = i32::try_from(pid).expect("a Linux pid fits in i32");
        match spawn_watchdog(pid, max_lifetime()) {
            Ok(watchdog) => AdoptedProcess {
                pid: Pid::from_raw(pid_i32),
                watchdog: Some(watchdog),
            },
            Err(e) => {
                let _ = kill(Pid::from_raw(pid_i32), Signal::SIGKILL);
                panic!("cannot start the watchdog (sh) for pid {pid}: {e}");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Alive and not a zombie.
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z")
            })
            .unwrap_or(false)
    }
}

impl Drop for AdoptedProcess {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if self.is_running() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

/// One spawned child process, owned: terminated and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to `<dir>/<name>.stdout.log`
    /// and `<dir>/<name>.stderr.log`, with a [`max_lifetime`] watchdog.
    ///
    /// # Panics
    /// When the log files cannot be opened or the program cannot be started (a harness
    /// failure, reported with the program name).
    pub fn spawn(name: &str, cmd: Command, dir: &Path) -> ChildGuard {
        ChildGuard::spawn_with_lifetime(name, cmd, dir, max_lifetime())
    }

    /// As [`ChildGuard::spawn`], killed after `lifetime` at the latest (whole seconds).
    ///
    /// # Panics
    /// As [`ChildGuard::spawn`].
    pub fn spawn_with_lifetime(
        name: &str,
        mut cmd: Command,
        dir: &Path,
        lifetime: Duration,
    ) -> ChildGuard {
        let stdout = dir.join(format!("{name}.stdout.log"));
        let stderr = dir.join(format!("{name}.stderr.log"));
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("cannot open log {}: {e}", p.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout))
            .stderr(open(&stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        let watchdog = spawn_watchdog(child.id(), lifetime);
        let mut guard = ChildGuard {
            name: name.to_owned(),
            child,
            watchdog: None,
            stdout,
            stderr,
            status: None,
        };
        match watchdog {
            Ok(w) => guard.watchdog = Some(w),
            Err(e) => {
                guard.kill_hard();
                panic!("cannot start the watchdog (sh) for {name}: {e}");
            }
        }
        guard
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stdout log file.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// The stderr log file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Whether the child still runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status, once the child has exited (reaps it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                self.stop_watchdog();
            }
        }
        self.status
    }

    /// `Ok` while the child runs; once it has exited, an error naming it (`what`), its exit
    /// status and the tail of its logs: for waits that fail fast on a dead process.
    pub fn still_running(&mut self, what: &str) -> Result<(), String> {
        match self.exit_status() {
            Some(status) => Err(format!(
                "{what} exited with {status}\n{}",
                self.log_tail(TAIL_LINES)
            )),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` for the child to exit by itself; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the child, if it still runs.
    pub fn signal(&mut self, signal: Signal) {
        if self.is_running() {
            let _ = kill(self.nix_pid(), signal);
        }
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; reaps the child.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        // The watchdog goes first, so it can never signal a PID we have reaped and the
        // kernel has handed to another process.
        self.stop_watchdog();
        let _ = kill(self.nix_pid(), Signal::SIGTERM);
        match self.wait_timeout(TERM_GRACE) {
            Some(status) => status,
            None => self.kill_hard(),
        }
    }

    /// SIGKILL (no chance to clean up, as in a crash or power loss); reaps the child.
    pub fn kill_hard(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        self.stop_watchdog();
        let _ = kill(self.nix_pid(), Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {} (pid {}): {e}", self.name, self.pid()));
        self.status = Some(status);
        status
    }

    /// The last `lines` lines of the child's stdout and stderr, labelled, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (label, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let tail = tail_of_file(path, lines);
            if tail.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "--- {} {label} (last {lines} lines of {}) ---\n{tail}\n",
                self.name,
                path.display()
            ));
        }
        if out.is_empty() {
            out = format!("--- {}: no output ---\n", self.name);
        }
        out
    }

    fn nix_pid(&self) -> Pid {
        // PIDs fit in i32 on Linux (pid_max is at most 2^22).
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(TAIL_LINES));
        }
        self.terminate();
    }
}

/// The last `lines` lines of a file (reads at most the last 64 KiB).
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The path of the workspace binary `name`: the file named by `$env_var`, else the one next to
/// the test executable (its directory, minus a trailing `deps`, as cargo lays them out).
///
/// # Panics
/// When neither exists, saying how to build it.
pub fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    let missing = format!(
        "{name} binary not found: run `cargo build --workspace --bins` first or set {env_var}"
    );
    if let Some(bin) = std::env::var_os(env_var).filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return bin;
        }
        panic!("{missing} ({env_var}={} is not a file)", bin.display());
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe
        .parent()
        .expect("an executable lives in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    if bin.is_file() {
        return bin;
    }
    panic!("{missing} (looked for {})", bin.display());
}

/// The resident memory of process `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_terminates_and_reaps_and_logs_are_kept() {
        let dir = TestDir::new("process-drop");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo started; exec sleep 30");
        let mut guard = ChildGuard::spawn("sleeper", cmd, dir.path());
        let pid = Pid::from_raw(guard.pid() as i32);
        let start = Instant::now();
        while tail_of_file(guard.stdout_path(), 5).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "no output");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(guard.is_running());
        assert!(guard.log_tail(5).contains("started"));
        drop(guard);
        // Reaped: the PID no longer exists as our child (kill -0 fails).
        assert!(kill(pid, None).is_err());
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = TestDir::new("process-term");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("trap '' TERM; echo ready; while :; do sleep 0.1; done");
        let mut guard = ChildGuard::spawn("stubborn", cmd, dir.path());
        let start = Instant::now();
        while tail_of_file(guard.stdout_path(), 5).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "no output");
            std::thread::sleep(Duration::from_millis(10));
        }
        let start = Instant::now();
        let status = guard.terminate();
        assert!(!status.success());
        assert!(start.elapsed() >= TERM_GRACE);
    }

    #[test]
    fn the_watchdog_kills_a_child_past_its_lifetime() {
        let dir = TestDir::new("process-watchdog");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut guard =
            ChildGuard::spawn_with_lifetime("short", cmd, dir.path(), Duration::from_secs(1));
        let status = guard.wait_timeout(Duration::from_secs(10));
        assert!(status.is_some(), "the watchdog did not kill the child");
    }
}
