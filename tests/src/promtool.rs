//! promtool, Prometheus' rule checker, for the tests of the shipped alert rules: found once per
//! test binary ([`promtool_bin`]) and run to its end under a [`ChildGuard`] ([`promtool`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use crate::consul::workspace_root;
use crate::process::{tail_of_file, ChildGuard, TestDir};

/// How long `scripts/setup.sh --print-promtool` may take (it downloads the package the first
/// time).
const SETUP_DEADLINE: Duration = Duration::from_secs(300);

/// How long one promtool run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// How a program run to its end finished, and what it wrote (stdout, then stderr).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub output: String,
}

/// The promtool binary: `PROMTOOL_BIN`, else the path `scripts/setup.sh --print-promtool`
/// prints (it unpacks Debian's prometheus package into `.tools/prometheus` when missing). Found
/// once per test binary, so tests running at once do not install it twice.
///
/// # Panics
/// When `PROMTOOL_BIN` is not a file, or setup fails or prints no executable file.
pub fn promtool_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(find_promtool).clone()
}

fn find_promtool() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROMTOOL_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return bin;
        }
        panic!(
            "promtool not found: PROMTOOL_BIN={} is not a file; run scripts/setup.sh (unpacks \
             Debian's prometheus package into .tools/prometheus) or set PROMTOOL_BIN",
            bin.display()
        );
    }
    let root = workspace_root();
    let dir = TestDir::new("setup-print-promtool");
    let mut cmd = Command::new(root.join("scripts/setup.sh"));
    cmd.arg("--print-promtool").current_dir(&root);
    let setup = run_to_end("setup", cmd, dir.path(), SETUP_DEADLINE);
    let printed = std::fs::read_to_string(dir.join("setup.stdout.log")).unwrap_or_default();
    let bin = printed.lines().last().map(PathBuf::from);
    match bin {
        Some(bin) if setup.status.success() && bin.is_file() => bin,
        _ => panic!(
            "promtool not found: scripts/setup.sh --print-promtool exited with {} (set \
             PROMTOOL_BIN to skip it):\n{}",
            setup.status, setup.output
        ),
    }
}

/// Runs `promtool args` in `dir` to its end; its output goes to `<dir>/<name>.*.log`.
///
/// # Panics
/// When promtool cannot be found or started, or does not end within a minute (it is killed).
pub fn promtool<I, S>(dir: &Path, name: &str, args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(promtool_bin());
    cmd.args(args).current_dir(dir);
    run_to_end(name, cmd, dir, RUN_DEADLINE)
}

/// Spawns `cmd` under a [`ChildGuard`] (killed by PID at the deadline or if this panics) and
/// waits for its end.
fn run_to_end(name: &str, cmd: Command, dir: &Path, deadline: Duration) -> Finished {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = ChildGuard::spawn_with_lifetime(name, cmd, dir, deadline + deadline);
    let Some(status) = child.wait_timeout(deadline) else {
        panic!(
            "{program} did not end within {deadline:?}\n{}",
            child.log_tail(40)
        );
    };
    let output = format!(
        "{}\n{}",
        tail_of_file(child.stdout_path(), 400),
        tail_of_file(child.stderr_path(), 400)
    );
    Finished { status, output }
}
