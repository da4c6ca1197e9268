//! Real "services" on the boxes, driven by the shell scripts `maintctl` runs over SSH:
//! [`ServiceBox`] (`start.sh` / `stop.sh` / `check.sh` over N long-running processes) and
//! [`SchedulerBox`] (`disable.sh` / `enable.sh` / `check.sh` over a jobs flag and a runner).
//!
//! ```ignore
//! let api = ServiceBox::new(&dir, "api", 3);            // scripts in <dir>/svc-api/
//! api.run_ok("start");                                  // locally, for the initial state
//! fleet.ssh("worker1", &api.script("stop").display().to_string()).await;
//! assert_eq!(api.running_count(), 0);                   // checked from outside, via /proc
//! ```
//!
//! Each process is a `sleep 600` started with `setsid` whose `argv[0]` is a marker naming the
//! box directory and slot, so a recycled PID is never mistaken for it, and 600 s bounds its
//! life even if the test binary is SIGKILLed. Drop kills whatever is left. Every script call is
//! appended to `calls.log` (see [`Call`]); `inject/<script>.fail` and `inject/<script>.delay`
//! make a script fail or stall for failure tests.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::TestDir;

/// Exit code of `check.sh` when everything runs (scheduler: jobs enabled).
pub const CHECK_RUNNING: i32 = 0;

/// Exit code of `check.sh` when a state is half-way (some processes run, or the scheduler's
/// flag and runner disagree); the script prints what is wrong.
pub const CHECK_PARTIAL: i32 = 1;

/// Exit code of `check.sh` when everything is stopped (scheduler: jobs disabled).
pub const CHECK_STOPPED: i32 = 3;

/// How long a service process lives at most (seconds): the tests' own upper bound.
const PROCESS_LIFETIME_SECS: u32 = 600;

/// One recorded script call, from `calls.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// When the script started.
    pub at: SystemTime,
    /// The box name given at construction.
    pub box_name: String,
    /// The script, without `.sh` (`start`, `stop`, `check`, `enable`, `disable`).
    pub script: String,
}

/// A box's scripts and the real state they act on, in `<dir>/<prefix>-<name>/`, with the call
/// log, failure injection and the marker-checked processes; `K` is the kind of box,
/// [`Service`] ([`ServiceBox`]) or [`Scheduler`] ([`SchedulerBox`]), which decides the scripts
/// and how the state is read from outside.
#[derive(Debug)]
pub struct ScriptedBox<K> {
    name: String,
    root: PathBuf,
    /// Process slot names (`1`, `2`, … or `runner`).
    slots: Vec<String>,
    kind: PhantomData<K>,
}

/// The kind of a worker's service box: see [`ServiceBox`].
#[derive(Debug)]
pub enum Service {}

/// The kind of a scheduler box: see [`SchedulerBox`].
#[derive(Debug)]
pub enum Scheduler {}

impl<K> ScriptedBox<K> {
    /// Creates `<dir>/<prefix>-<name>/` and writes `scripts` (name, purpose, body) into it.
    fn create(
        dir: &TestDir,
        prefix: &str,
        name: &str,
        slots: Vec<String>,
        scripts: [(&str, &str, &str); 3],
    ) -> ScriptedBox<K> {
        assert_plain_name("box name", name);
        let root = dir.join(format!("{prefix}-{name}"));
        for sub in ["run", "inject"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        }
        let scripted = ScriptedBox {
            name: name.to_owned(),
            root,
            slots,
            kind: PhantomData,
        };
        for (script, purpose, body) in scripts {
            scripted.write_script(script, purpose, body);
        }
        scripted
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The box directory (`<dir>/svc-<name>` or `<dir>/sched-<name>`).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `<script>.sh` (`start`, `stop`, `check`; `enable`, `disable`,
    /// `check`).
    ///
    /// # Panics
    /// When there is no such script.
    pub fn script(&self, name: &str) -> PathBuf {
        let path = self.root.join(format!("{name}.sh"));
        assert!(path.is_file(), "box {} has no script {name}.sh", self.name);
        path
    }

    /// Runs `<script>.sh` here (not over SSH) and returns its output: for the initial state.
    pub fn run(&self, name: &str) -> Output {
        let path = self.script(name);
        Command::new(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }

    /// As [`ScriptedBox::run`], asserting exit 0.
    ///
    /// # Panics
    /// When the script fails (with its output).
    pub fn run_ok(&self, name: &str) -> Output {
        let out = self.run(name);
        assert!(
            out.status.success(),
            "{name}.sh of box {} failed: {}\nstdout: {}\nstderr: {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Makes `<script>.sh` fail (exit 1, `message` on stderr, before doing anything) until
    /// cleared with `None`.
    pub fn fail_script(&self, script: &str, message: Option<&str>) {
        self.inject(script, "fail", message.map(str::to_owned));
    }

    /// Makes `<script>.sh` sleep `delay` before doing anything, until cleared with `None`.
    pub fn delay_script(&self, script: &str, delay: Option<Duration>) {
        self.inject(
            script,
            "delay",
            delay.map(|d| format!("{:.3}", d.as_secs_f64())),
        );
    }

    /// Every script call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        let text = std::fs::read_to_string(self.root.join("calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (nanos, script) = line.split_once(' ')?;
                let nanos: u64 = nanos.parse().ok()?;
                Some(Call {
                    at: UNIX_EPOCH + Duration::from_nanos(nanos),
                    box_name: self.name.clone(),
                    script: script.to_owned(),
                })
            })
            .collect()
    }

    /// SIGKILLs every process of this box that still runs (marker-checked) and waits, up to
    /// 5 s, until they are gone: delivery of SIGKILL is not instant. Also done on drop.
    pub fn kill_all(&self) {
        let start = Instant::now();
        loop {
            let pids = self.live_pids();
            if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
                return;
            }
            for pid in pids {
                signal(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn write_script(&self, name: &str, purpose: &str, body: &str) {
        let text = format!(
            "#!/bin/bash\n\
             # {purpose}\n\
             # Generated by drawbridge-tests (tests/src/services.rs) for box {box_name}.\n\
             set -u\n\
             DIR={dir}\n\
             NAME={box_name_q}\n\
             SLOTS=({slots})\n\
             SCRIPT={name}\n\
             LIFETIME={PROCESS_LIFETIME_SECS}\n\
             {PRELUDE}\n\
             {body}",
            box_name = self.name,
            dir = sh_quote(&self.root.display().to_string()),
            box_name_q = sh_quote(&self.name),
            slots = self.slots.join(" "),
        );
        let path = self.root.join(format!("{name}.sh"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            })
            .and_then(|()| std::fs::rename(&tmp, &path))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn marker(&self, slot: &str) -> String {
        format!("drawbridge-svc:{}:{slot}", self.root.display())
    }

    /// The PID in `run/<slot>.pid` if that process runs and carries our marker.
    fn live_pid(&self, slot: &str) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.root.join("run").join(format!("{slot}.pid"))).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        // A zombie has an empty cmdline, so it does not count as running.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = cmdline.split(|&b| b == 0).next()?;
        (argv0 == self.marker(slot).as_bytes()).then_some(pid)
    }

    fn live_pids(&self) -> Vec<u32> {
        self.slots.iter().filter_map(|s| self.live_pid(s)).collect()
    }

    fn inject(&self, script: &str, kind: &str, content: Option<String>) {
        self.script(script);
        let path = self.root.join("inject").join(format!("{script}.{kind}"));
        let result = match content {
            Some(text) => std::fs::write(&path, text),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        result.unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

impl<K> Drop for ScriptedBox<K> {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Shell functions every script shares: the call log, failure injection, and the process
/// helpers (`alive SLOT`, `spawn SLOT`, `stop_slots SLOT…`).
const PRELUDE: &str = r#"
# Record the call before anything else: the tests assert the order of calls across boxes.
echo "$(date +%s%N) $SCRIPT" >> "$DIR/calls.log"
if [ -e "$DIR/inject/$SCRIPT.delay" ]; then
  sleep "$(cat "$DIR/inject/$SCRIPT.delay")"
fi
if [ -e "$DIR/inject/$SCRIPT.fail" ]; then
  echo "$NAME: $SCRIPT failed: $(cat "$DIR/inject/$SCRIPT.fail")" >&2
  exit 1
fi

marker() { printf 'drawbridge-svc:%s:%s' "$DIR" "$1"; }

# alive SLOT: the process of SLOT runs (its pid file names a live process carrying our
# marker as argv[0]; a zombie's cmdline is empty, so it does not count).
alive() {
  local f="$DIR/run/$1.pid" pid argv0=""
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  IFS= read -r -d '' argv0 < "/proc/$pid/cmdline" 2>/dev/null
  [ -n "$argv0" ] && [ "$argv0" = "$(marker "$1")" ]
}

# spawn SLOT: a detached process (own session, no terminal, output to /dev/null so the SSH
# session can close) that writes its own PID, then becomes `sleep` under our marker.
spawn() {
  rm -f "$DIR/run/$1.pid"
  setsid bash -c 'echo $$ > "$1.tmp" && mv -f "$1.tmp" "$1" && exec -a "$2" sleep "$3"' \
    spawn "$DIR/run/$1.pid" "$(marker "$1")" "$LIFETIME" </dev/null >/dev/null 2>&1 &
}

# wait_for up|down SLOT…: until every SLOT is alive (up) or gone (down), at most 5 s.
wait_for() {
  local want=$1 s i
  shift
  for i in $(seq 1 100); do
    local ok=1
    for s in "$@"; do
      if alive "$s"; then [ "$want" = up ] || ok=0; else [ "$want" = down ] || ok=0; fi
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}

# stop_slots SLOT…: SIGTERM, wait, then SIGKILL what is left; forget the PIDs.
stop_slots() {
  local s
  for s in "$@"; do
    if alive "$s"; then kill -TERM "$(cat "$DIR/run/$s.pid")" 2>/dev/null; fi
  done
  if ! wait_for down "$@"; then
    for s in "$@"; do
      if alive "$s"; then kill -KILL "$(cat "$DIR/run/$s.pid")" 2>/dev/null; fi
    done
    wait_for down "$@" || { echo "$NAME: processes did not die" >&2; return 1; }
  fi
  for s in "$@"; do rm -f "$DIR/run/$s.pid"; done
}
"#;

const SERVICE_START: &str = r#"started=""
for s in "${SLOTS[@]}"; do
  if ! alive "$s"; then spawn "$s"; started="$started $s"; fi
done
if ! wait_for up "${SLOTS[@]}"; then
  echo "$NAME: processes did not start" >&2
  exit 1
fi
echo "$NAME: running ${#SLOTS[@]} processes (started:${started:- none})"
"#;

const SERVICE_STOP: &str = r#"stop_slots "${SLOTS[@]}" || exit 1
echo "$NAME: stopped"
"#;

const SERVICE_CHECK: &str = r#"up=0
down=""
for s in "${SLOTS[@]}"; do
  if alive "$s"; then up=$((up+1)); else down="$down $s"; fi
done
if [ "$up" = "${#SLOTS[@]}" ]; then
  echo "$NAME: running (${#SLOTS[@]} of ${#SLOTS[@]} processes)"
  exit 0
elif [ "$up" = 0 ]; then
  echo "$NAME: stopped (0 of ${#SLOTS[@]} processes)"
  exit 3
else
  echo "$NAME: partially running: $up of ${#SLOTS[@]} processes (not running:$down)"
  exit 1
fi
"#;

const SCHEDULER_ENABLE: &str = r#"touch "$DIR/jobs-enabled"
alive runner || spawn runner
if ! wait_for up runner; then
  echo "$NAME: job runner did not start" >&2
  exit 1
fi
echo "$NAME: jobs enabled"
"#;

const SCHEDULER_DISABLE: &str = r#"rm -f "$DIR/jobs-enabled"
stop_slots runner || exit 1
echo "$NAME: jobs disabled"
"#;

const SCHEDULER_CHECK: &str = r#"if [ -e "$DIR/jobs-enabled" ]; then flag=1; else flag=0; fi
if alive runner; then run=1; else run=0; fi
case "$flag$run" in
  11) echo "$NAME: jobs enabled, runner running"; exit 0 ;;
  00) echo "$NAME: jobs disabled, runner stopped"; exit 3 ;;
  10) echo "$NAME: jobs enabled but the runner is not running"; exit 1 ;;
  01) echo "$NAME: jobs disabled but the runner still runs"; exit 1 ;;
esac
"#;

/// A worker box's service: `start.sh`, `stop.sh` and `check.sh` over N real processes, in
/// `<dir>/svc-<name>/`. Nothing runs until a script (or [`ScriptedBox::run_ok`]) starts it.
///
/// - `start.sh` starts the processes that are not running (idempotent) and waits until all
///   run; exit 0, or 1 if they did not come up.
/// - `stop.sh` stops them (SIGTERM, then SIGKILL) and waits until they are gone; idempotent.
/// - `check.sh` exits [`CHECK_RUNNING`] (0), [`CHECK_STOPPED`] (3) or [`CHECK_PARTIAL`] (1)
///   with a one-line message on stdout.
pub type ServiceBox = ScriptedBox<Service>;

impl ScriptedBox<Service> {
    /// Writes the scripts of service `name` with `processes` processes into
    /// `<dir>/svc-<name>/`.
    ///
    /// # Panics
    /// When `name` is not a plain name, `processes` is 0, or a file cannot be written.
    pub fn new(dir: &TestDir, name: &str, processes: usize) -> ServiceBox {
        assert!(processes > 0, "a service needs at least one process");
        let slots = (1..=processes).map(|i| i.to_string()).collect();
        ScriptedBox::create(
            dir,
            "svc",
            name,
            slots,
            [
                (
                    "start",
                    "Starts the service's processes that are not running; idempotent.",
                    SERVICE_START,
                ),
                (
                    "stop",
                    "Stops the service's processes and waits until they are gone; idempotent.",
                    SERVICE_STOP,
                ),
                (
                    "check",
                    "Exit 0: all processes run; 3: all stopped; 1: partially running.",
                    SERVICE_CHECK,
                ),
            ],
        )
    }

    /// How many processes the service has.
    pub fn process_count(&self) -> usize {
        self.slots.len()
    }

    /// How many of its processes run now, read from the pid files and `/proc`.
    pub fn running_count(&self) -> usize {
        self.live_pids().len()
    }

    /// The PIDs of its running processes.
    pub fn pids(&self) -> Vec<u32> {
        self.live_pids()
    }

    /// SIGKILLs process number `n` (1-based), as in a crash, leaving the service partially
    /// running. Returns whether it was running.
    ///
    /// # Panics
    /// When `n` is out of range.
    pub fn crash_process(&self, n: usize) -> bool {
        assert!(
            (1..=self.process_count()).contains(&n),
            "process {n} out of range"
        );
        match self.live_pid(&n.to_string()) {
            Some(pid) => {
                signal(pid, Signal::SIGKILL);
                let start = Instant::now();
                while self.live_pid(&n.to_string()).is_some() {
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "pid {pid} survived SIGKILL"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                true
            }
            None => false,
        }
    }
}

/// Whether a scheduler's jobs are enabled, as `check.sh` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerState {
    /// Flag set and runner running (`check.sh` exit 0).
    Enabled,
    /// Flag cleared and runner stopped (`check.sh` exit 3).
    Disabled,
    /// Flag and runner disagree (`check.sh` exit 1).
    Inconsistent,
}

/// A scheduler box: `enable.sh`, `disable.sh` and `check.sh` over a real state, a
/// `jobs-enabled` flag file plus one process standing for the job runner, in
/// `<dir>/sched-<name>/`. It starts disabled; [`ScriptedBox::run_ok`]`("enable")` sets the
/// usual pre-maintenance state.
///
/// - `enable.sh` sets the flag and starts the runner if needed; idempotent.
/// - `disable.sh` clears the flag and stops the runner, waiting until it is gone; idempotent.
/// - `check.sh` exits 0 (enabled), 3 (disabled) or 1 (flag and runner disagree).
pub type SchedulerBox = ScriptedBox<Scheduler>;

impl ScriptedBox<Scheduler> {
    /// Writes the scripts of scheduler `name` into `<dir>/sched-<name>/`.
    ///
    /// # Panics
    /// When `name` is not a plain name or a file cannot be written.
    pub fn new(dir: &TestDir, name: &str) -> SchedulerBox {
        ScriptedBox::create(
            dir,
            "sched",
            name,
            vec!["runner".to_owned()],
            [
                (
                    "enable",
                    "Enables jobs: sets the flag and starts the job runner; idempotent.",
                    SCHEDULER_ENABLE,
                ),
                (
                    "disable",
                    "Disables jobs: clears the flag and stops the job runner; idempotent.",
                    SCHEDULER_DISABLE,
                ),
                (
                    "check",
                    "Exit 0: jobs enabled; 3: jobs disabled; 1: flag and runner disagree.",
                    SCHEDULER_CHECK,
                ),
            ],
        )
    }

    /// Whether the jobs flag is set.
    pub fn jobs_enabled(&self) -> bool {
        self.root.join("jobs-enabled").exists()
    }

    /// Whether the job runner process runs.
    pub fn runner_running(&self) -> bool {
        self.live_pid("runner").is_some()
    }

    /// The state `check.sh` would report, read from outside.
    pub fn state(&self) -> SchedulerState {
        match (self.jobs_enabled(), self.runner_running()) {
            (true, true) => SchedulerState::Enabled,
            (false, false) => SchedulerState::Disabled,
            _ => SchedulerState::Inconsistent,
        }
    }
}

/// Merges the call logs of several boxes into one list, oldest first: for asserting the
/// order of a procedure across boxes.
pub fn merged_calls(logs: &[Vec<Call>]) -> Vec<Call> {
    let mut all: Vec<Call> = logs.iter().flatten().cloned().collect();
    all.sort_by_key(|c| c.at);
    all
}

/// Asserts that `name` (a box's `what`) is a plain name: letters, digits, `-` and `_`, so it
/// can stand in paths, shell scripts and SSH configs as it is.
///
/// # Panics
/// When it is empty or has another character.
pub(crate) fn assert_plain_name(what: &str, name: &str) {
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{what} {name:?} must be a plain name (letters, digits, - and _)"
    );
}

/// Single-quotes `s` for a shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(out: &Output) -> Option<i32> {
        out.status.code()
    }

    #[test]
    fn start_check_stop_are_real_and_idempotent() {
        let dir = TestDir::new("services-cycle");
        let svc = ServiceBox::new(&dir, "api", 3);
        let check = svc.run("check");
        assert_eq!(code(&check), Some(CHECK_STOPPED), "{check:?}");
        assert_eq!(
            String::from_utf8_lossy(&check.stdout),
            "api: stopped (0 of 3 processes)\n"
        );

        svc.run_ok("start");
        assert_eq!(svc.running_count(), 3);
        let pids = svc.pids();
        // Idempotent: a second start keeps the same processes.
        let again = svc.run_ok("start");
        assert_eq!(svc.pids(), pids);
        assert!(String::from_utf8_lossy(&again.stdout).contains("started: none"));
        assert_eq!(code(&svc.run("check")), Some(CHECK_RUNNING));
        // Detached: their own session, not our children's.
        for pid in &pids {
            let sid = nix::unistd::getsid(Some(Pid::from_raw(*pid as i32))).unwrap();
            assert_eq!(sid.as_raw() as u32, *pid);
        }

        assert!(svc.crash_process(2));
        assert_eq!(svc.running_count(), 2);
        let partial = svc.run("check");
        assert_eq!(code(&partial), Some(CHECK_PARTIAL), "{partial:?}");
        assert_eq!(
            String::from_utf8_lossy(&partial.stdout),
            "api: partially running: 2 of 3 processes (not running: 2)\n"
        );
        // start.sh repairs only the missing one.
        svc.run_ok("start");
        assert_eq!(svc.running_count(), 3);
        assert_eq!(svc.pids()[0], pids[0]);

        svc.run_ok("stop");
        assert_eq!(svc.running_count(), 0);
        for pid in &pids {
            assert!(
                !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                    || std::fs::read(format!("/proc/{pid}/cmdline"))
                        .unwrap()
                        .is_empty()
            );
        }
        svc.run_ok("stop");
        assert_eq!(code(&svc.run("check")), Some(CHECK_STOPPED));

        let scripts: Vec<String> = svc.calls().into_iter().map(|c| c.script).collect();
        assert_eq!(
            scripts,
            ["check", "start", "start", "check", "check", "start", "stop", "stop", "check"]
        );
    }

    #[test]
    fn drop_kills_leftover_processes() {
        let dir = TestDir::new("services-drop");
        let svc = ServiceBox::new(&dir, "api", 2);
        svc.run_ok("start");
        let pids = svc.pids();
        assert_eq!(pids.len(), 2);
        let markers: Vec<String> = ["1", "2"].iter().map(|s| svc.marker(s)).collect();
        drop(svc);
        for (pid, marker) in pids.iter().zip(markers) {
            let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(!argv0.starts_with(marker.as_bytes()), "pid {pid} survived");
        }
    }

    #[test]
    fn injected_failure_and_delay() {
        let dir = TestDir::new("services-inject");
        let svc = ServiceBox::new(&dir, "api", 1);
        svc.fail_script("start", Some("disk full"));
        let out = svc.run("start");
        assert_eq!(code(&out), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "api: start failed: disk full\n"
        );
        assert_eq!(svc.running_count(), 0);
        svc.fail_script("start", None);
        svc.delay_script("start", Some(Duration::from_millis(300)));
        let start = Instant::now();
        svc.run_ok("start");
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(svc.running_count(), 1);
    }

    #[test]
    fn scheduler_enable_disable_check() {
        let dir = TestDir::new("services-sched");
        let sched = SchedulerBox::new(&dir, "cron");
        assert_eq!(sched.state(), SchedulerState::Disabled);
        assert_eq!(code(&sched.run("check")), Some(CHECK_STOPPED));
        sched.run_ok("enable");
        sched.run_ok("enable");
        assert_eq!(sched.state(), SchedulerState::Enabled);
        assert_eq!(code(&sched.run("check")), Some(CHECK_RUNNING));
        sched.kill_all();
        assert_eq!(sched.state(), SchedulerState::Inconsistent);
        let out = sched.run("check");
        assert_eq!(code(&out), Some(CHECK_PARTIAL));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "cron: jobs enabled but the runner is not running\n"
        );
        sched.run_ok("disable");
        sched.run_ok("disable");
        assert_eq!(sched.state(), SchedulerState::Disabled);
        assert!(!sched.jobs_enabled());
    }

    #[test]
    fn merged_calls_are_in_time_order() {
        let dir = TestDir::new("services-merge");
        let a = ServiceBox::new(&dir, "a", 1);
        let s = SchedulerBox::new(&dir, "s");
        s.run("check");
        a.run("check");
        s.run("check");
        let all = merged_calls(&[a.calls(), s.calls()]);
        let names: Vec<&str> = all.iter().map(|c| c.box_name.as_str()).collect();
        assert_eq!(names, ["s", "a", "s"]);
    }

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
