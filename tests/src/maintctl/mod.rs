//! The `maintctl` fixture: the binary, its inventory, runs with a deadline (in the foreground,
//! or in the background to be killed mid-run), a read-only view of its journal in Consul, and
//! [`MaintScene`], the whole fleet it acts on.
//!
//! ```ignore
//! let scene = MaintScene::start("maintctl_cycle").await;   // Consul, boxes, proxies, upstreams
//! scene.maintctl.run(&["down", "--env", "mock", "--reason", "db", "--yes"]).await.assert_success();
//! assert!(scene.node_in_maintenance("api1").await);
//! let run = scene.journal().latest().await.expect("a run");
//! assert_eq!(run.step_status("stop_workers"), Some("done"));
//! ```
//!
//! Every effect is checked from outside maintctl: Consul's catalog and KV, the processes of
//! the services (`/proc`), the proxies' answers and `/status`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drawbridge_core::consul::{Client, KvEntry, QueryOptions};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::consul::{ConsulClientAgent, ConsulServer};
use crate::eventually::try_eventually;
use crate::process::{tail_of_file, workspace_bin, ChildGuard, TestDir};
use crate::proxy::{Drawbridge, Route};
use crate::services::{SchedulerBox, SchedulerState, ServiceBox};
use crate::sshd::{SshBox, SshFleet};
use crate::upstream::{Kind, Upstream};

/// Longest a foreground `maintctl` run may take before the test fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Longest a background run may live (its watchdog kills it after this).
pub const BACKGROUND_LIFETIME: Duration = Duration::from_secs(120);

/// The environment of the scene's inventory.
pub const ENV: &str = "mock";

/// The gate key the scene's proxies watch.
pub const GATE_KEY: &str = "drawbridge/mock/gate";

/// The Consul KV prefix of maintctl's lock and journal for [`ENV`].
pub const PREFIX: &str = "maintctl/mock";

/// The bypass key shared by the proxies and the inventory (id, secret).
pub const BYPASS_KEY_ID: &str = "k1";
/// The bypass secret (32+ characters).
pub const BYPASS_SECRET: &str = "mock-bypass-secret-0123456789abcdef-e2e";

/// Worker processes per worker box.
pub const WORKER_PROCESSES: usize = 2;

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

// === the inventory ===

/// One `[[environments.NAME.smoke]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeTest {
    pub name: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
}

/// One `[[environments.NAME.boxes]]` entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InventoryBox {
    pub name: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl InventoryBox {
    /// An `api_ui` box put into node maintenance through its own Consul agent.
    pub fn api_ui(name: &str, consul_agent: &str) -> InventoryBox {
        InventoryBox {
            name: name.to_owned(),
            role: "api_ui".to_owned(),
            consul_agent: Some(consul_agent.to_owned()),
            ..InventoryBox::default()
        }
    }

    /// A box of `role` (`worker` or `scheduler`) reached with `ssh <alias>`, with its commands.
    pub fn over_ssh(
        name: &str,
        role: &str,
        alias: &str,
        stop: &Path,
        start: &Path,
        check: &Path,
    ) -> InventoryBox {
        InventoryBox {
            name: name.to_owned(),
            role: role.to_owned(),
            ssh: Some(alias.to_owned()),
            stop: Some(stop.display().to_string()),
            start: Some(start.display().to_string()),
            check: Some(check.display().to_string()),
            ..InventoryBox::default()
        }
    }
}

/// One `[[environments.NAME.steps]]` entry: a command or a webhook.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraStep {
    pub name: String,
    /// `before_down`, `after_down`, `before_up` or `after_up`.
    pub when: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl ExtraStep {
    /// A step that runs `command` with `sh -c`.
    pub fn command(name: &str, when: &str, command: &str) -> ExtraStep {
        ExtraStep {
            name: name.to_owned(),
            when: when.to_owned(),
            command: Some(command.to_owned()),
            webhook: None,
        }
    }

    /// A step that POSTs the run's details to `url`.
    pub fn webhook(name: &str, when: &str, url: &str) -> ExtraStep {
        ExtraStep {
            name: name.to_owned(),
            when: when.to_owned(),
            command: None,
            webhook: Some(url.to_owned()),
        }
    }
}

/// `[[environments.NAME.bypass.keys]]`.
#[derive(Debug, Clone, Serialize)]
pub struct BypassKey {
    pub id: String,
    pub secret: String,
}

/// `[environments.NAME.bypass]`.
#[derive(Debug, Clone, Serialize)]
pub struct Bypass {
    pub environment: String,
    pub keys: Vec<BypassKey>,
}

/// One `[environments.NAME]`, as the file says it; fields are public so a test can change any
/// before writing it with [`Maintctl::write_inventory`].
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub consul: String,
    pub key: String,
    pub verify_timeout: String,
    pub step_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<PathBuf>,
    pub proxy_service: String,
    pub public_page_urls: Vec<String>,
    pub public_api_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bypass: Option<Bypass>,
    pub smoke: Vec<SmokeTest>,
    pub boxes: Vec<InventoryBox>,
    pub steps: Vec<ExtraStep>,
}

impl Inventory {
    /// The whole file with this inventory as environment `env`.
    pub fn to_toml(&self, env: &str) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            environments: BTreeMap<&'a str, &'a Inventory>,
        }
        let file = File {
            environments: BTreeMap::from([(env, self)]),
        };
        toml::to_string(&file).expect("the inventory always serialises")
    }

    /// The smoke test called `name`, to change it.
    ///
    /// # Panics
    /// When there is none.
    pub fn smoke_mut(&mut self, name: &str) -> &mut SmokeTest {
        self.smoke
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no smoke test {name:?} in the inventory"))
    }

    /// The box called `name`, to change it.
    ///
    /// # Panics
    /// When there is none.
    pub fn box_mut(&mut self, name: &str) -> &mut InventoryBox {
        self.boxes
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no box {name:?} in the inventory"))
    }
}

// === running it ===

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
        let mut cmd = tokio::process::Command::from(self.command(args));
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
        let output = MaintctlOutput {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        };
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

    /// The tail of its output so far.
    pub fn log_tail(&self) -> String {
        format!(
            "{}\n{}",
            tail_of_file(self.child.stdout_path(), 40),
            tail_of_file(self.child.stderr_path(), 40)
        )
    }
}

// === the journal, read from Consul ===

/// One journalled run, as JSON (`maintctl/<env>/runs/<id>`).
#[derive(Debug, Clone)]
pub struct RunView(pub Value);

impl std::fmt::Display for RunView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            serde_json::to_string_pretty(&self.0).unwrap_or_default()
        )
    }
}

impl RunView {
    /// The run id.
    pub fn id(&self) -> &str {
        self.0["id"].as_str().unwrap_or_default()
    }

    /// `running`, `done`, `failed` or `interrupted`.
    pub fn status(&self) -> &str {
        self.0["status"].as_str().unwrap_or_default()
    }

    /// `down` or `up`.
    pub fn direction(&self) -> &str {
        self.0["direction"].as_str().unwrap_or_default()
    }

    /// The ids of its steps, in order.
    pub fn step_ids(&self) -> Vec<String> {
        self.steps()
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    }

    fn steps(&self) -> Vec<Value> {
        self.0["steps"].as_array().cloned().unwrap_or_default()
    }

    /// The record of step `id`.
    pub fn step(&self, id: &str) -> Option<Value> {
        self.steps().into_iter().find(|s| s["id"] == id)
    }

    /// The status of step `id` (`pending`, `running`, `done`, `failed`).
    pub fn step_status(&self, id: &str) -> Option<String> {
        self.step(id)?["status"].as_str().map(str::to_owned)
    }

    /// The status of `target` in step `step` (`pending`, `intent`, `done`, `skipped`,
    /// `failed`).
    pub fn target_status(&self, step: &str, target: &str) -> Option<String> {
        self.target(step, target)?["status"]
            .as_str()
            .map(str::to_owned)
    }

    /// The record of `target` in step `step`.
    pub fn target(&self, step: &str, target: &str) -> Option<Value> {
        self.step(step)?["targets"]
            .as_array()?
            .iter()
            .find(|t| t["target"] == target)
            .cloned()
    }
}

/// Read-only access to maintctl's records in Consul KV under a prefix.
#[derive(Debug, Clone)]
pub struct JournalView {
    consul: Client,
    prefix: String,
}

impl JournalView {
    /// The records under `prefix` (e.g. [`PREFIX`]) in the Consul at `consul`.
    pub fn new(consul: Client, prefix: &str) -> JournalView {
        JournalView {
            consul,
            prefix: prefix.to_owned(),
        }
    }

    async fn get(&self, key: &str) -> Option<KvEntry> {
        self.consul
            .kv_get(key, &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get {key}: {e}"))
            .entry
    }

    /// Every key under the prefix.
    pub async fn keys(&self) -> Vec<String> {
        let prefix = format!("{}/", self.prefix);
        self.consul
            .kv_list(&prefix)
            .await
            .unwrap_or_else(|e| panic!("consul kv list {prefix}: {e}"))
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    /// The id `<prefix>/last` names.
    pub async fn last_id(&self) -> Option<String> {
        let entry = self.get(&format!("{}/last", self.prefix)).await?;
        entry
            .value
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The run `id`.
    ///
    /// # Panics
    /// When its value is not JSON.
    pub async fn run(&self, id: &str) -> Option<RunView> {
        let key = format!("{}/runs/{id}", self.prefix);
        let entry = self.get(&key).await?;
        let raw = entry.value.unwrap_or_default();
        Some(RunView(serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!("{key} is not JSON ({e}): {}", String::from_utf8_lossy(&raw))
        })))
    }

    /// The run `<prefix>/last` names.
    pub async fn latest(&self) -> Option<RunView> {
        let id = self.last_id().await?;
        self.run(&id).await
    }

    /// The lock's value (the holder JSON) and its session, when the key exists.
    pub async fn lock(&self) -> Option<(Option<Value>, Option<String>)> {
        let entry = self.get(&format!("{}/lock", self.prefix)).await?;
        let holder = entry
            .value
            .filter(|v| !v.is_empty())
            .and_then(|v| serde_json::from_slice(&v).ok());
        Some((holder, entry.session))
    }

    /// Waits until the latest run satisfies `check` and returns it.
    ///
    /// # Panics
    /// After `deadline`, with `what` and the last run seen.
    pub async fn wait_latest<F>(&self, what: &str, deadline: Duration, check: F) -> RunView
    where
        F: Fn(&RunView) -> bool,
    {
        let result = try_eventually(deadline, Duration::from_millis(25), || async {
            match self.latest().await {
                Some(run) if check(&run) => Ok(run),
                Some(run) => Err(run.to_string()),
                None => Err("no run in the journal yet".to_owned()),
            }
        })
        .await;
        match result {
            Ok(run) => run,
            Err(last) => panic!("journal: {what}: not within {deadline:?}; last run: {last}"),
        }
    }
}

// === the scene ===

/// Scenes alive at once: each has 3 Consul agents, 2 proxies and 3 sshd; more than two at a
/// time only slows a 2-core machine down.
static SCENES: Semaphore = Semaphore::const_new(2);

/// Loopback addresses of the boxes.
pub const API1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// See [`API1_IP`].
pub const API2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// See [`API1_IP`].
pub const WORKER1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// See [`API1_IP`].
pub const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// See [`API1_IP`].
pub const SCHED1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// What maintctl acts on, all real and on loopback: a Consul server; client agents `api1`
/// (127.0.0.2) and `api2` (127.0.0.3); sshd boxes `worker1` (127.0.0.4) and `worker2`
/// (127.0.0.5) each running a worker service of [`WORKER_PROCESSES`] processes, and `sched1`
/// (127.0.0.6) with its jobs enabled; upstreams `ui` (page) and `api` (JSON); two `drawbridge`
/// proxies (`edge1` through api1's agent, `edge2` through api2's) registered as Consul service
/// `drawbridge`, with routes `/api/` (api) and `/` (page) and the bypass key of environment
/// `mock`; and the inventory of environment [`ENV`] describing all of it.
///
/// Smoke tests use their own paths (`/smoke` on ui, `/api/smoke` on api) so a test can count
/// what reached the upstreams through the closed gate. Fields drop in order: proxies and
/// services first, the test directory last.
#[derive(Debug)]
pub struct MaintScene {
    pub edge1: Drawbridge,
    pub edge2: Drawbridge,
    pub ui: Upstream,
    pub api: Upstream,
    pub worker1: ServiceBox,
    pub worker2: ServiceBox,
    pub sched1: SchedulerBox,
    pub ssh_worker1: SshBox,
    pub ssh_worker2: SshBox,
    pub ssh_sched1: SshBox,
    pub fleet: SshFleet,
    pub api1: ConsulClientAgent,
    pub api2: ConsulClientAgent,
    pub consul: ConsulServer,
    /// The inventory as last written.
    pub inventory: Inventory,
    pub maintctl: Maintctl,
    _slot: SemaphorePermit<'static>,
    pub dir: TestDir,
}

impl MaintScene {
    /// Starts the whole scene for test `test` and writes the inventory.
    ///
    /// # Panics
    /// When a part does not start (with its log).
    pub async fn start(test: &str) -> MaintScene {
        let slot = SCENES
            .acquire()
            .await
            .expect("the scene semaphore is never closed");
        let dir = TestDir::new(test);
        let consul = ConsulServer::start(&dir).await;
        let (api1, api2) = tokio::join!(
            ConsulClientAgent::start(&dir, &consul, "api1", API1_IP),
            ConsulClientAgent::start(&dir, &consul, "api2", API2_IP),
        );
        let mut fleet = SshFleet::new(&dir);
        let ssh_worker1 = fleet.start_box("worker1", WORKER1_IP).await;
        let ssh_worker2 = fleet.start_box("worker2", WORKER2_IP).await;
        let ssh_sched1 = fleet.start_box("sched1", SCHED1_IP).await;
        let worker1 = ServiceBox::new(&dir, "worker1", WORKER_PROCESSES);
        let worker2 = ServiceBox::new(&dir, "worker2", WORKER_PROCESSES);
        let sched1 = SchedulerBox::new(&dir, "sched1");
        worker1.run_ok("start");
        worker2.run_ok("start");
        sched1.run_ok("enable");

        let ui = Upstream::builder("ui").kind(Kind::Page).start();
        let api = Upstream::builder("api").kind(Kind::Api).start();
        let edge = |name: &str, agent: &ConsulClientAgent| {
            Drawbridge::builder(&agent.http_addr(), GATE_KEY)
                .name(name)
                .register_as("drawbridge")
                .bypass_key(ENV, BYPASS_KEY_ID, BYPASS_SECRET)
                .static_pool("ui", &[&ui], None)
                .static_pool("api", &[&api], None)
                .route(Route::api("api", "/api/", "api"))
                .route(Route::page("ui", "/", "ui"))
        };
        let (edge1, edge2) = tokio::join!(
            edge("edge1", &api1).start(&dir),
            edge("edge2", &api2).start(&dir)
        );
        wait_registered(&consul, 2).await;

        let inventory = Inventory {
            consul: consul.http_addr(),
            key: GATE_KEY.to_owned(),
            verify_timeout: "10s".to_owned(),
            step_timeout: "20s".to_owned(),
            ssh_config: Some(fleet.config_path().to_path_buf()),
            proxy_service: "drawbridge".to_owned(),
            public_page_urls: vec![edge1.url("/")],
            public_api_urls: vec![edge1.url("/api/ping")],
            bypass: Some(Bypass {
                environment: ENV.to_owned(),
                keys: vec![BypassKey {
                    id: BYPASS_KEY_ID.to_owned(),
                    secret: BYPASS_SECRET.to_owned(),
                }],
            }),
            smoke: vec![
                SmokeTest {
                    name: "ui home".to_owned(),
                    url: edge1.url("/smoke"),
                    method: None,
                    expect_status: Some(200),
                    expect_body: Some("upstream <b>ui</b>".to_owned()),
                },
                SmokeTest {
                    name: "api ping".to_owned(),
                    url: edge1.url("/api/smoke"),
                    method: Some("GET".to_owned()),
                    expect_status: Some(200),
                    expect_body: Some(r#""upstream":"api""#.to_owned()),
                },
            ],
            boxes: vec![
                InventoryBox::api_ui("api1", &api1.http_addr()),
                InventoryBox::api_ui("api2", &api2.http_addr()),
                InventoryBox::over_ssh(
                    "worker1",
                    "worker",
                    "worker1",
                    &worker1.script("stop"),
                    &worker1.script("start"),
                    &worker1.script("check"),
                ),
                InventoryBox::over_ssh(
                    "worker2",
                    "worker",
                    "worker2",
                    &worker2.script("stop"),
                    &worker2.script("start"),
                    &worker2.script("check"),
                ),
                InventoryBox::over_ssh(
                    "sched1",
                    "scheduler",
                    "sched1",
                    &sched1.script("disable"),
                    &sched1.script("enable"),
                    &sched1.script("check"),
                ),
            ],
            steps: Vec::new(),
        };
        let maintctl = Maintctl::new(&dir, &inventory);
        MaintScene {
            edge1,
            edge2,
            ui,
            api,
            worker1,
            worker2,
            sched1,
            ssh_worker1,
            ssh_worker2,
            ssh_sched1,
            fleet,
            api1,
            api2,
            consul,
            inventory,
            maintctl,
            _slot: slot,
            dir,
        }
    }

    /// Writes `self.inventory` again (after a test changed it).
    pub fn rewrite_inventory(&self) {
        self.maintctl.write_inventory(&self.inventory);
    }

    /// Runs `maintctl <args>` against the scene's inventory.
    pub async fn run(&self, args: &[&str]) -> MaintctlOutput {
        self.maintctl.run(args).await
    }

    /// maintctl's journal and lock in the scene's Consul.
    pub fn journal(&self) -> JournalView {
        JournalView::new(self.consul.client(), PREFIX)
    }

    /// Both proxies.
    pub fn edges(&self) -> [&Drawbridge; 2] {
        [&self.edge1, &self.edge2]
    }

    /// The gate key's entry, if it exists.
    pub async fn gate_entry(&self) -> Option<KvEntry> {
        self.consul
            .client()
            .kv_get(GATE_KEY, &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get {GATE_KEY}: {e}"))
            .entry
    }

    /// Whether Consul's health of `node` (as the server's catalog has it) shows the node
    /// maintenance check.
    pub async fn node_in_maintenance(&self, node: &str) -> bool {
        self.consul
            .client()
            .health_node(node)
            .await
            .unwrap_or_else(|e| panic!("consul health node {node}: {e}"))
            .iter()
            .any(|c| c.is_node_maintenance())
    }

    /// The X-Consul-Index of the KV store (raised by any KV write), read at a key that never
    /// exists.
    pub async fn kv_index(&self) -> u64 {
        self.consul
            .client()
            .kv_get("drawbridge-tests/never-written", &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get: {e}"))
            .meta
            .index
    }

    /// Asserts both proxies answer the public as a closed gate: 503 HTML on `/`, 503
    /// problem+json on `/api/x`.
    ///
    /// # Panics
    /// When a proxy answers otherwise.
    pub async fn assert_closed(&self) {
        for edge in self.edges() {
            let page = edge.get("/").await;
            let ct = content_type(&page);
            assert_eq!(page.status(), 503, "{} /: {ct}", edge.url("/"));
            assert!(ct.starts_with("text/html"), "{} /: {ct}", edge.url("/"));
            let api = edge.get("/api/x").await;
            let ct = content_type(&api);
            assert_eq!(api.status(), 503, "{} /api/x: {ct}", edge.url("/"));
            assert!(
                ct.starts_with("application/problem+json"),
                "{} /api/x: {ct}",
                edge.url("/")
            );
        }
    }

    /// Asserts both proxies pass the public to the upstreams: 200 from `ui` on `/`, from `api`
    /// on `/api/x`.
    ///
    /// # Panics
    /// When a proxy answers otherwise.
    pub async fn assert_open(&self) {
        for edge in self.edges() {
            for (path, upstream) in [("/", "ui"), ("/api/x", "api")] {
                let answer = edge.get(path).await;
                let status = answer.status();
                let from = crate::proxy::header(&answer, "x-upstream");
                assert_eq!(status, 200, "{}{path}", edge.url(""));
                assert_eq!(from.as_deref(), Some(upstream), "{}{path}", edge.url(""));
            }
        }
    }

    /// Asserts the state before any maintenance, from outside: no gate key, no node in
    /// maintenance, every worker process running, the jobs enabled.
    ///
    /// # Panics
    /// When anything differs.
    pub async fn assert_untouched(&self) {
        assert!(
            self.gate_entry().await.is_none(),
            "the gate key {GATE_KEY} exists: {:?}",
            self.gate_entry().await
        );
        for node in ["api1", "api2"] {
            assert!(
                !self.node_in_maintenance(node).await,
                "node {node} is in maintenance"
            );
        }
        assert_eq!(self.worker1.running_count(), WORKER_PROCESSES, "worker1");
        assert_eq!(self.worker2.running_count(), WORKER_PROCESSES, "worker2");
        assert_eq!(self.sched1.state(), SchedulerState::Enabled, "sched1");
    }
}

/// The `content-type` of an answer, empty when absent.
pub fn content_type(answer: &reqwest::Response) -> String {
    crate::proxy::header(answer, "content-type").unwrap_or_default()
}

/// Waits until `count` instances of service `drawbridge` are in the server's catalog: maintctl
/// finds the proxies there.
async fn wait_registered(consul: &ConsulServer, count: usize) {
    let client = consul.client();
    let result = try_eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let (entries, _) = client
                .health_service("drawbridge", false, &QueryOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            if entries.len() >= count {
                Ok(())
            } else {
                Err(format!("{} of {count} proxies registered", entries.len()))
            }
        },
    )
    .await;
    if let Err(last) = result {
        panic!("the proxies did not register in Consul: {last}");
    }
}
