//! Running the `maintctl` binary on an inventory file: to completion within a deadline
//! ([`Maintctl::run`]), or in the background to be interrupted or killed mid-run
//! ([`Maintctl::spawn`]); [`MaintctlOutput`] is what a run did.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::inventory::{Inventory, ENV};
use crate::process::{tail_of_file, workspace_bin, ChildGuard, TestDir};

/// Longest a foreground `maintctl` run may take before the test fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Longest a background run may live (its watchdog kills it after this).
pub const BACKGROUND_LIFETIME: Duration = Duration::from_secs(120);

/// The OS user maintctl runs as in the tests (it names the lock holder and the runs' `by`).
pub const OPERATOR: &str = "e2e-operator";

/// The path of the `maintctl` binary: `MAINTCTL_BIN`, else next to the test executable (its
/// directory, minus a trailing `deps`).
///
/// # Panics
/// When neither exists, with the command that builds it.
pub fn maintctl_bin() -> PathBuf {
    workspace_bin("maintctl", "MAINTCTL_BIN")
}

/// Runs `cmd`, maintctl with `args`, to completion within `deadline` (killed after it, and the
/// test fails), its output captured.
///
/// # Panics
/// When it cannot be started or does not exit in time.
pub async fn run_to_end(cmd: Command, args: &[&str], deadline: Duration) -> MaintctlOutput {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", maintctl_bin().display()));
    let out = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("maintctl {args:?}: {e}"),
        Err(_) => panic!("maintctl {args:?} did not exit within {deadline:?} (killed)"),
    };
    MaintctlOutput {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// What one `maintctl` run did: its arguments, exit code, output and duration.
#[derive(Debug, Clone)]
pub struct MaintctlOutput {
    pub args: Vec<String>,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl std::fmt::Display for MaintctlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "maintctl {}\nexit code: {} (after {:.2?})",
            self.args.join(" "),
            self.code
                .map_or_else(|| "none (killed by a signal)".to_owned(), |c| c.to_string()),
            self.took
        )?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

impl MaintctlOutput {
    /// Asserts the exit code, printing the whole run when it differs.
    ///
    /// # Panics
    /// When the code is not `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "maintctl exited otherwise than expected:\n{self}"
        );
        self
    }

    /// Asserts exit code 0.
    ///
    /// # Panics
    /// When the run did not succeed.
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Stdout and stderr together.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts that stdout or stderr contains `needle`.
    ///
    /// # Panics
    /// When neither does.
    pub fn assert_mentions(&self, needle: &str) -> &Self {
        assert!(
            self.all_output().contains(needle),
            "the output does not mention {needle:?}:\n{self}"
        );
        self
    }

    /// Stdout as JSON lines (`--output json`).
    ///
    /// # Panics
    /// When a non-empty line is not JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\n{self}"))
            })
            .collect()
    }
}

/// `maintctl` bound to one inventory file in a test directory.
#[derive(Debug, Clone)]
pub struct Maintctl {
    dir: PathBuf,
    config: PathBuf,
    runs: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Maintctl {
    /// Writes `inventory` as environment [`ENV`] to `<dir>/maintctl.toml`.
    pub fn new(dir: &TestDir, inventory: &Inventory) -> Maintctl {
        let m = Maintctl {
            dir: dir.path().to_path_buf(),
            config: dir.join("maintctl.toml"),
            runs: Default::default(),
        };
        m.write_inventory(inventory);
        m
    }

    /// Rewrites the inventory file (e.g. with a changed smoke test).
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_inventory(&self, inventory: &Inventory) {
        let text = inventory.to_toml(ENV);
        std::fs::write(&self.config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config.display()));
    }

    /// The inventory file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `maintctl --config <file> <args>` with a clean environment: no Consul variables or
    /// HTTP proxies of the developer's, `USER` = [`OPERATOR`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(maintctl_bin());
        cmd.arg("--config").arg(&self.config).args(args);
        for var in [
            "CONSUL_HTTP_ADDR",
            "CONSUL_HTTP_TOKEN",
            "CONSUL_HTTP_TOKEN_FILE",
            "MAINTCTL_CONFIG",
            "SUDO_USER",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("USER", OPERATOR).stdin(Stdio::null());
        cmd
    }

    /// Runs maintctl to completion within [`RUN_DEADLINE`].
    ///
    /// # Panics
    /// When it cannot be started or does not exit in time.
    pub async fn run(&self, args: &[&str]) -> MaintctlOutput {
        self.run_within(args, RUN_DEADLINE).await
    }

    /// Runs maintctl to completion within `deadline` (killed after it, and the test fails).
    ///
    /// # Panics
    /// When it cannot be started or does not exit in time.
    pub async fn run_within(&self, args: &[&str], deadline: Duration) -> MaintctlOutput {
        let output = run_to_end(self.command(args), args, deadline).await;
        // Kept in the test directory, which stays when the test fails.
        let n = self.next_run();
        let _ = std::fs::write(
            self.dir.join(format!("maintctl-{n:02}.log")),
            output.to_string(),
        );
        output
    }

    /// Starts maintctl in the background, its output going to files in the test directory;
    /// killed on drop.
    pub fn spawn(&self, args: &[&str]) -> BackgroundRun {
        let n = self.next_run();
        let name = format!("maintctl-{n:02}-bg");
        BackgroundRun {
            args: args.iter().map(|a| a.to_string()).collect(),
            started: Instant::now(),
            child: ChildGuard::spawn_with_lifetime(
                &name,
                self.command(args),
                &self.dir,
                BACKGROUND_LIFETIME,
            ),
        }
    }

    /// Starts `maintctl probe` of `urls` in the background, every 20 ms, expecting only 200
    /// (see [`BackgroundRun::assert_clean_probe`]).
    pub fn spawn_probe(&self, urls: &[String]) -> BackgroundRun {
        let mut args = vec![
            "--output",
            "json",
            "probe",
            "--interval",
            "20ms",
            "--expect",
            "200",
        ];
        args.extend(urls.iter().map(String::as_str));
        self.spawn(&args)
    }

    fn next_run(&self) -> u32 {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A maintctl started with [`Maintctl::spawn`].
#[derive(Debug)]
pub struct BackgroundRun {
    args: Vec<String>,
    started: Instant,
    child: ChildGuard,
}

impl BackgroundRun {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGINT, as Ctrl-C at the terminal; does not wait.
    pub fn interrupt(&mut self) {
        self.child.signal(nix::sys::signal::Signal::SIGINT);
    }

    /// SIGKILL, as in a crash of the operator's machine; reaps it (so its PID is gone).
    pub fn kill(&mut self) -> MaintctlOutput {
        let status = self.child.kill_hard();
        self.output(status.code())
    }

    /// Waits up to `deadline` for it to exit by itself.
    ///
    /// # Panics
    /// When it still runs after `deadline` (it is then killed by the guard).
    pub async fn wait(&mut self, deadline: Duration) -> MaintctlOutput {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.exit_status() {
                return self.output(status.code());
            }
            if Instant::now() >= end {
                let so_far = self.output(None);
                panic!("maintctl did not exit within {deadline:?}:\n{so_far}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn output(&self, code: Option<i32>) -> MaintctlOutput {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        MaintctlOutput {
            args: self.args.clone(),
            code,
            stdout: read(self.child.stdout_path()),
            stderr: read(self.child.stderr_path()),
            took: self.started.elapsed(),
        }
    }

    /// Stops a probe of [`Maintctl::spawn_probe`] (Ctrl-C) and asserts it saw answers and
    /// nothing unexpected.
    ///
    /// # Panics
    /// When it reports an unexpected answer, or fewer than 10 answers.
    pub async fn assert_clean_probe(&mut self) {
        self.interrupt();
        let out = self.wait(Duration::from_secs(15)).await;
        out.assert_success();
        let report = &out.json_lines()[0];
        assert_eq!(report["clean"], true, "{out}");
        assert!(
            report["by_status"]["200"].as_u64().unwrap_or(0) > 10,
            "{out}"
        );
    }

    /// The tail of its output so far.
    pub fn log_tail(&self) -> String {
        format!(
            "{}\n{}",
            tail_of_file(self.child.stdout_path(), 40),
            tail_of_file(self.child.stderr_path(), 40)
        )
    }
}
