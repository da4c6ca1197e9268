//! Real OpenSSH servers standing for the "boxes" `maintctl` reaches over SSH: one `sshd` per
//! box on its own loopback address (127.0.0.x) and allocated port, with its own host key, and
//! one client-side `ssh_config` for the whole fleet that keeps host-key checking on.
//!
//! ```ignore
//! let dir = TestDir::new("my_test");
//! let mut fleet = SshFleet::new(&dir);                  // client key, known_hosts, ssh_config
//! let mut w1 = fleet.start_box("worker1", Ipv4Addr::new(127, 0, 0, 4)).await;
//! let out = fleet.ssh("worker1", "/path/check.sh").await; // ssh -F <config> worker1 …
//! w1.stop();  w1.start().await;                          // unreachable, then back
//! ```
//!
//! Everything (keys, `sshd_config`, pid files, logs) lives in the test directory; no user's or
//! system's SSH configuration is read or written. `ssh -F` skips `~/.ssh/config` and
//! `/etc/ssh/ssh_config`, and with `-F` the client does not create `~/.ssh` either.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::eventually::try_eventually;
use crate::ports::free_port_on;
use crate::process::{ChildGuard, TestDir, TAIL_LINES};
use crate::services::assert_plain_name;

/// The sshd binary (Debian's openssh-server). It must be run by absolute path: sshd re-executes
/// itself for every connection and refuses a relative path.
pub const SSHD_BIN: &str = "/usr/sbin/sshd";

/// sshd's privilege-separation directory (its chroot for the pre-auth child). Debian creates it
/// from the systemd unit, so on a container without systemd it is missing.
const PRIVSEP_DIR: &str = "/run/sshd";

/// How long a box may take to accept a real `ssh … true` after spawn.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Longest one `ssh` command of the helpers here may take.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The install command shown when a tool is missing (missing tools fail, never skip).
const INSTALL_HINT: &str =
    "run scripts/setup.sh (or: apt-get install -y openssh-server openssh-client)";

/// One box as the client sees it: a `Host` block in the fleet's `ssh_config`.
#[derive(Debug, Clone)]
struct HostEntry {
    alias: String,
    ip: Ipv4Addr,
    port: u16,
    /// `ssh-ed25519 AAAA…` of the box's host key.
    host_key: String,
}

/// The client side of a set of boxes: one client key (authorised on every box), one
/// `known_hosts` holding every box's host key, one `ssh_config` with a `Host` block per box.
///
/// The config and `known_hosts` are rewritten (atomically) whenever a box is added, so
/// `ssh -F <config_path>` always sees every box started so far.
#[derive(Debug)]
pub struct SshFleet {
    root: PathBuf,
    logs: PathBuf,
    client_key: PathBuf,
    authorized_keys: PathBuf,
    known_hosts: PathBuf,
    config: PathBuf,
    hosts: Vec<HostEntry>,
}

impl SshFleet {
    /// Prepares `<dir>/ssh/`: generates the client key and writes an empty `authorized_keys`,
    /// `known_hosts` and `ssh_config`.
    ///
    /// # Panics
    /// When `ssh-keygen` is missing or fails, or a file cannot be written.
    pub fn new(dir: &TestDir) -> SshFleet {
        let root = dir.join("ssh");
        create_dir(&root);
        let client_key = root.join("client_key");
        keygen(&client_key, "drawbridge-tests-client");
        let authorized_keys = root.join("authorized_keys");
        let public = read(&client_key.with_extension("pub"));
        write_atomic(&authorized_keys, &public);
        let fleet = SshFleet {
            logs: dir.path().to_path_buf(),
            known_hosts: root.join("known_hosts"),
            config: root.join("ssh_config"),
            root,
            client_key,
            authorized_keys,
            hosts: Vec::new(),
        };
        fleet.write_client_files();
        fleet
    }

    /// Starts a box `alias` (its `Host` name in the config) on `ip`, a 127.0.0.x address, on
    /// a freshly allocated port, and waits until a real `ssh <alias> true` succeeds.
    ///
    /// # Panics
    /// When `alias` is taken or not a plain name, sshd is missing, or the box is not ready
    /// within [`READY_DEADLINE`] (with its log).
    pub async fn start_box(&mut self, alias: &str, ip: Ipv4Addr) -> SshBox {
        assert_plain_name("box alias", alias);
        assert!(
            self.hosts.iter().all(|h| h.alias != alias),
            "box alias {alias:?} is already in this fleet"
        );
        let dir = self.root.join(alias);
        create_dir(&dir);
        let host_key = dir.join("host_key");
        keygen(&host_key, &format!("drawbridge-tests-{alias}"));
        let port = free_port_on(ip);
        let sshd_config = dir.join("sshd_config");
        write_atomic(
            &sshd_config,
            &sshd_config_text(ip, port, &dir, &self.authorized_keys),
        );
        let host_key_line = known_hosts_key(&host_key);
        self.hosts.push(HostEntry {
            alias: alias.to_owned(),
            ip,
            port,
            host_key: host_key_line,
        });
        self.write_client_files();
        let mut ssh_box = SshBox {
            alias: alias.to_owned(),
            ip,
            port,
            dir,
            logs: self.logs.clone(),
            sshd_config,
            client_config: self.config.clone(),
            child: None,
        };
        ssh_box.start().await;
        ssh_box
    }

    /// The client `ssh_config` (pass it with `ssh -F`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The private key the client logs in with.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The client's `known_hosts`, pre-filled with every box's host key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// `ssh -F <config> <alias> <remote>`, ready to run (stdin closed, output captured).
    pub fn ssh_command(&self, alias: &str, remote: &str) -> tokio::process::Command {
        ssh_command(&self.config, alias, remote)
    }

    /// Runs `remote` on box `alias` through the real ssh client and returns its output
    /// (exit 255 is ssh's own failure: refused, host key, authentication).
    ///
    /// # Panics
    /// When ssh cannot be started or takes longer than [`SSH_TIMEOUT`].
    pub async fn ssh(&self, alias: &str, remote: &str) -> Output {
        run_ssh(&self.config, alias, remote).await
    }

    fn write_client_files(&self) {
        let mut known = String::new();
        let mut config = String::from(
            "# Client config of the drawbridge-tests SSH fleet: one Host block per box.\n\
             # Use with `ssh -F <this file> <alias> <command>`.\n",
        );
        for h in &self.hosts {
            known.push_str(&format!("[{}]:{} {}\n", h.ip, h.port, h.host_key));
            config.push_str(&format!(
                "\nHost {alias}\n\
                 \x20 HostName {ip}\n\
                 \x20 Port {port}\n\
                 \x20 User root\n\
                 \x20 IdentityFile {key}\n\
                 \x20 IdentitiesOnly yes\n\
                 \x20 IdentityAgent none\n\
                 \x20 UserKnownHostsFile {known}\n\
                 \x20 GlobalKnownHostsFile /dev/null\n\
                 \x20 StrictHostKeyChecking yes\n\
                 \x20 UpdateHostKeys no\n\
                 \x20 BatchMode yes\n\
                 \x20 ConnectTimeout 5\n\
                 \x20 ServerAliveInterval 5\n\
                 \x20 ServerAliveCountMax 2\n\
                 \x20 ControlMaster no\n\
                 \x20 ControlPath none\n\
                 \x20 LogLevel ERROR\n",
                alias = h.alias,
                ip = h.ip,
                port = h.port,
                key = self.client_key.display(),
                known = self.known_hosts.display(),
            ));
        }
        write_atomic(&self.known_hosts, &known);
        write_atomic(&self.config, &config);
    }
}

/// One real `sshd -D -e` for a box, owned: killed (with its sessions) on drop.
#[derive(Debug)]
pub struct SshBox {
    alias: String,
    ip: Ipv4Addr,
    port: u16,
    dir: PathBuf,
    logs: PathBuf,
    sshd_config: PathBuf,
    client_config: PathBuf,
    child: Option<ChildGuard>,
}

impl SshBox {
    /// Its `Host` alias in the fleet's `ssh_config`.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Its loopback address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The port sshd listens on (the same across [`SshBox::stop`] and [`SshBox::start`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ip:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, self.port))
    }

    /// The box's own directory (host key, `sshd_config`, pid file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client `ssh_config` of its fleet.
    pub fn client_config(&self) -> &Path {
        &self.client_config
    }

    /// Whether sshd runs (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Runs `remote` on this box through the real ssh client (see [`SshFleet::ssh`]).
    ///
    /// # Panics
    /// When ssh cannot be started or takes longer than [`SSH_TIMEOUT`].
    pub async fn ssh(&self, remote: &str) -> Output {
        run_ssh(&self.client_config, &self.alias, remote).await
    }

    /// The tail of its sshd log, for failure messages.
    pub fn log_tail(&self) -> String {
        match &self.child {
            Some(child) => child.log_tail(TAIL_LINES),
            None => format!("--- sshd-{}: not running ---\n", self.alias),
        }
    }

    /// Makes the box unreachable, as in a crash of its network: SIGKILLs sshd and every
    /// process still below it (SSH sessions in progress and the commands they run), so new
    /// connections are refused and open ones break. Processes that detached from their session
    /// (the services started by `start.sh`) keep running, as they would on a real box.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if child.is_running() {
            let root = child.pid();
            // Freeze the tree first so nothing forks between listing and killing it: a
            // stopped process cannot fork, so the listing converges.
            let mut frozen: HashSet<u32> = HashSet::new();
            signal(root, Signal::SIGSTOP);
            loop {
                let tree = descendants(root);
                let new: Vec<u32> = tree.difference(&frozen).copied().collect();
                if new.is_empty() {
                    break;
                }
                for pid in new {
                    signal(pid, Signal::SIGSTOP);
                    frozen.insert(pid);
                }
            }
            for &pid in &frozen {
                signal(pid, Signal::SIGKILL);
            }
        }
        child.kill_hard();
        self.child = None;
    }

    /// Starts sshd again (or for the first time) on the same address, port and keys, and
    /// waits until a real `ssh <alias> true` succeeds. Stops it first if it runs.
    ///
    /// # Panics
    /// When sshd is missing or not ready within [`READY_DEADLINE`] (with its log).
    pub async fn start(&mut self) {
        self.stop();
        ensure_privsep_dir();
        if !Path::new(SSHD_BIN).is_file() {
            panic!("sshd not found at {SSHD_BIN}: {INSTALL_HINT}");
        }
        let mut cmd = Command::new(SSHD_BIN);
        cmd.arg("-D").arg("-e").arg("-f").arg(&self.sshd_config);
        self.child = Some(ChildGuard::spawn(
            &format!("sshd-{}", self.alias),
            cmd,
            &self.logs,
        ));
        self.wait_ready().await;
    }

    /// Polls a TCP connect, then a real `ssh <alias> true`, until both succeed.
    async fn wait_ready(&mut self) {
        let addr = self.addr();
        let config = self.client_config.clone();
        let alias = self.alias.clone();
        let result = {
            let this = &mut *self;
            try_eventually(READY_DEADLINE, Duration::from_millis(50), || {
                let alive = this.check_alive();
                let config = config.clone();
                let alias = alias.clone();
                async move {
                    if let Err(dead) = alive {
                        // A dead sshd never becomes ready: report at once, with its log.
                        panic!("{dead}");
                    }
                    tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect {addr}: {e}"))?;
                    let out = tokio::time::timeout(
                        Duration::from_secs(10),
                        ssh_command(&config, &alias, "true").output(),
                    )
                    .await
                    .map_err(|_| format!("ssh {alias} true: no answer within 10s"))?
                    .map_err(|e| format!("cannot run ssh: {e} ({INSTALL_HINT})"))?;
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(format!(
                            "ssh {alias} true: {}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ))
                    }
                }
            })
            .await
        };
        if let Err(last) = result {
            panic!(
                "sshd for box {} on {addr}: not ready within {READY_DEADLINE:?}; last: {last}\n{}",
                self.alias,
                self.log_tail()
            );
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        let what = format!("sshd for box {}", self.alias);
        self.child
            .as_mut()
            .map_or(Ok(()), |c| c.still_running(&what))
    }
}

impl Drop for SshBox {
    fn drop(&mut self) {
        // The ChildGuard dropped in `stop` prints sshd's log tail if the test panicked.
        self.stop();
    }
}

/// The server config of one box. Every path is inside the box's directory; nothing falls back
/// to `/etc/ssh` (no `Include`, an explicit `HostKey`, `PidFile` and `AuthorizedKeysFile`).
fn sshd_config_text(ip: Ipv4Addr, port: u16, dir: &Path, authorized_keys: &Path) -> String {
    format!(
        "# sshd for one drawbridge-tests box; started as `sshd -D -e -f <this file>`.\n\
         ListenAddress {ip}:{port}\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {authorized}\n\
         AuthorizedPrincipalsFile none\n\
         # The tests run as root; keys only.\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         # The keys live in a temp dir, whose modes sshd would otherwise reject.\n\
         StrictModes no\n\
         # Do not run root's ~/.ssh/rc or read ~/.ssh/environment.\n\
         PermitUserRC no\n\
         PermitUserEnvironment no\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         X11Forwarding no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         # maintctl may open many sessions at once; the default 10:30:100 drops some at random.\n\
         MaxStartups 200\n\
         MaxSessions 50\n\
         LogLevel VERBOSE\n",
        host_key = dir.join("host_key").display(),
        pid = dir.join("sshd.pid").display(),
        authorized = authorized_keys.display(),
    )
}

/// `ssh -F <config> <alias> <remote>`, stdin closed, output captured, killed if dropped.
fn ssh_command(config: &Path, alias: &str, remote: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-F")
        .arg(config)
        .arg(alias)
        .arg("--")
        .arg(remote)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_ssh(config: &Path, alias: &str, remote: &str) -> Output {
    match tokio::time::timeout(SSH_TIMEOUT, ssh_command(config, alias, remote).output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run ssh: {e} ({INSTALL_HINT})"),
        Err(_) => panic!("ssh {alias} {remote:?}: no answer within {SSH_TIMEOUT:?}"),
    }
}

/// Runs `ssh-keygen` for a new ed25519 key without passphrase at `path` (and `path.pub`).
fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen: {e} ({INSTALL_HINT})"));
    assert!(
        out.status.success(),
        "ssh-keygen -f {}: {}: {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The public half of the key pair at `path` as known_hosts wants it: `ssh-keygen` writes
/// "type base64 comment", known_hosts takes "type base64".
fn known_hosts_key(path: &Path) -> String {
    read(&path.with_extension("pub"))
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ensure_privsep_dir() {
    std::fs::create_dir_all(PRIVSEP_DIR).unwrap_or_else(|e| {
        panic!("cannot create sshd's privilege-separation dir {PRIVSEP_DIR}: {e}")
    });
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// Every process below `root` (children, grandchildren, …), read from `/proc/*/stat`.
fn descendants(root: u32) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = HashSet::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if found.insert(child) {
                todo.push(child);
            }
        }
    }
    found
}

/// The parent PID from `/proc/<pid>/stat` ("pid (comm) state ppid …"; comm may hold spaces
/// and parentheses, so parse after the last ')').
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn create_dir(path: &Path) {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Writes via a temp file and rename, so a concurrent `ssh -F` never reads half a config.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

    #[test]
    fn parent_of_reads_our_own_parent() {
        let me = std::process::id();
        assert_eq!(parent_of(me), Some(nix::unistd::getppid().as_raw() as u32));
    }

    #[test]
    fn descendants_finds_grandchildren() {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("sleep 30 & sleep 30 & wait")
            .spawn()
            .unwrap();
        let root = child.id();
        let start = std::time::Instant::now();
        while descendants(root).len() < 2 {
            assert!(start.elapsed() < Duration::from_secs(5), "no grandchildren");
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in descendants(root) {
            signal(pid, Signal::SIGKILL);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn sshd_config_keeps_everything_in_the_box_dir() {
        let text = sshd_config_text(
            BOX_IP,
            2222,
            Path::new("/t/ssh/w1"),
            Path::new("/t/ssh/authorized_keys"),
        );
        assert!(text.contains("ListenAddress 127.0.0.4:2222\n"));
        assert!(text.contains("HostKey /t/ssh/w1/host_key\n"));
        assert!(text.contains("PidFile /t/ssh/w1/sshd.pid\n"));
        assert!(text.contains("AuthorizedKeysFile /t/ssh/authorized_keys\n"));
        assert!(text.contains("UsePAM no\n"));
        assert!(text.contains("StrictModes no\n"));
        assert!(!text.contains("Include"));
    }

    #[tokio::test]
    async fn a_box_answers_ssh_and_refuses_once_stopped() {
        let dir = TestDir::new("sshd-unit");
        let mut fleet = SshFleet::new(&dir);
        let mut worker = fleet.start_box("w1", BOX_IP).await;
        let out = worker.ssh("echo hello from $(id -un)").await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from root\n");

        let config = read(fleet.config_path());
        assert!(config.contains("Host w1\n"), "{config}");
        assert!(config.contains("StrictHostKeyChecking yes\n"), "{config}");
        let known = read(fleet.known_hosts());
        assert!(
            known.starts_with(&format!("[127.0.0.4]:{} ssh-ed25519 ", worker.port())),
            "{known}"
        );

        worker.stop();
        assert!(!worker.is_running());
        let out = fleet.ssh("w1", "true").await;
        assert_eq!(out.status.code(), Some(255), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_wrong_host_key_is_rejected() {
        let dir = TestDir::new("sshd-hostkey");
        let mut fleet = SshFleet::new(&dir);
        let worker = fleet.start_box("w1", Ipv4Addr::new(127, 0, 0, 6)).await;
        // Swap the known key for another one: the client must refuse, not learn the new one.
        let other = dir.join("other_key");
        keygen(&other, "other");
        let other_line = known_hosts_key(&other);
        write_atomic(
            fleet.known_hosts(),
            &format!("[{}]:{} {other_line}\n", worker.ip(), worker.port()),
        );
        let out = worker.ssh("true").await;
        assert_eq!(out.status.code(), Some(255), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Host key verification failed"), "{stderr}");
    }
}
