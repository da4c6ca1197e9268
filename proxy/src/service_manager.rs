//! Living under a service manager: systemd's readiness protocol (`Type=notify`), and the
//! zero-downtime restart on SIGUSR2.
//!
//! Once the proxy serves, `READY=1` and `MAINPID=<this process>` go to `$NOTIFY_SOCKET` (when
//! set); a process started with `--upgrade` says `MAINPID` as soon as it holds the listening
//! sockets. On SIGUSR2 the process checks the config file, starts its own successor (the binary
//! now installed at the path it was started from, with `--upgrade`), waits until that one waits
//! for the listening sockets, then hands them over with Pingora's SIGQUIT path and drains. A
//! restart that cannot work is refused before anything starts, and the proxy goes on serving:
//! a config that fails its check, or one whose listeners or upgrade socket differ (a restart
//! hands over the sockets it has); a successor that exits or does not open the upgrade socket
//! within [`SUCCESSOR_DEADLINE`] is stopped. Refusals are logged and counted. A successor that
//! dies after it took the sockets leaves nobody serving: this process then exits 1 at once, so
//! that the service manager starts the proxy again.

use crate::config_file::ConfigFile;
use crate::metrics::Metrics;
use crate::signals::Taken;
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::io;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::SignalKind;
use tokio::sync::{broadcast, watch};

/// How long a successor may take to open the upgrade socket.
pub const SUCCESSOR_DEADLINE: Duration = Duration::from_secs(10);

/// How long Pingora may take to start the hand-over after SIGQUIT.
const HAND_OVER_START: Duration = Duration::from_secs(2);

/// How the successor is started: the same binary path, config and daemon flag as this process.
#[derive(Debug, Clone)]
pub struct Successor {
    /// The binary's path as this process started (after a package upgrade, the new binary).
    pub program: PathBuf,
    /// The config file, absolute.
    pub config: PathBuf,
    pub daemon: bool,
    /// Where the successor waits for the listening sockets (`server.upgrade_sock`).
    pub upgrade_sock: PathBuf,
}

/// Takes SIGUSR2 from the start (the proxy service depends on it). Restarts only while the
/// proxy serves ([`Readiness`]) and Pingora runs its main loop (whose SIGQUIT path hands over).
pub struct Restarter {
    pub successor: Successor,
    pub config: Arc<ConfigFile>,
    pub metrics: Arc<Metrics>,
    pub serving: watch::Receiver<bool>,
    /// Pingora's execution phases, as it announces them.
    pub phases: tokio::sync::Mutex<Phases>,
}

/// Started once the proxy service is (its dependency), which binds its listeners, or takes them
/// over, at once: tells the service manager this process serves.
pub struct Readiness {
    pub serving: watch::Sender<bool>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.serving.send_replace(true);
        notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    }
}

#[async_trait]
impl BackgroundService for Restarter {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut restarts = Taken::new(
            SignalKind::user_defined2(),
            "SIGUSR2",
            "no zero-downtime restart by signal",
        );
        ready.notify_ready();
        let mut successor = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                () = restarts.next() => match successor {
                    Some(pid) => tracing::warn!(
                        successor = pid,
                        "SIGUSR2: the listeners went to the new process already; this one drains"
                    ),
                    None => successor = self.restart().await,
                },
            }
        }
    }
}

impl Restarter {
    /// The successor's pid once the listeners went to it (this process drains then).
    async fn restart(&self) -> Option<u32> {
        match self.try_restart().await {
            Ok(pid) => {
                tracing::info!(
                    successor = pid,
                    "SIGUSR2: the listeners go to the new process; this one drains"
                );
                Some(pid)
            }
            Err(why) => {
                self.metrics.restart_refusals.inc();
                tracing::error!("SIGUSR2: no restart, this process goes on serving: {why}");
                None
            }
        }
    }

    async fn try_restart(&self) -> Result<u32, String> {
        if !*self.serving.borrow() {
            return Err("the proxy does not serve yet (no listeners to hand over)".to_string());
        }
        match self.latest_phase().await {
            Some(ExecutionPhase::Running) => {}
            phase => {
                return Err(format!(
                    "the server is not running its main loop (phase {phase:?}): it starts or stops"
                ))
            }
        }
        self.config.check_for_restart()?;
        let mut child = self.successor.start().await?;
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGQUIT).map_err(|e| {
            stop(&mut child);
            format!("cannot send SIGQUIT to this process: {e}")
        })?;
        if !self.hand_over_started().await {
            stop(&mut child);
            return Err(format!(
                "the server did not start handing the sockets over within {HAND_OVER_START:?} \
                 of SIGQUIT; the new process was stopped"
            ));
        }
        let pid = child.id();
        watch_successor(child, self.successor.daemon);
        Ok(pid)
    }

    /// The last phase Pingora announced since this service started, if any.
    async fn latest_phase(&self) -> Option<ExecutionPhase> {
        let mut phases = self.phases.lock().await;
        loop {
            match phases.receiver.try_recv() {
                Ok(phase) => phases.latest = Some(phase),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return phases.latest.clone(),
            }
        }
    }

    /// Whether Pingora began handing the sockets over (it got the SIGQUIT) in time.
    async fn hand_over_started(&self) -> bool {
        let mut phases = self.phases.lock().await;
        let started = tokio::time::timeout(HAND_OVER_START, async {
            loop {
                match phases.receiver.recv().await {
                    Ok(
                        ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulUpgradeCloseTimeout,
                    ) => return true,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        started.unwrap_or(false)
    }
}

/// Pingora's phases as the restarter follows them.
pub struct Phases {
    pub receiver: broadcast::Receiver<ExecutionPhase>,
    pub latest: Option<ExecutionPhase>,
}

impl Successor {
    /// Starts the successor and waits until it waits on the upgrade socket.
    async fn start(&self) -> Result<Child, String> {
        // The successor makes the socket afresh; a leftover would be taken for it.
        match std::fs::remove_file(&self.upgrade_sock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove the old upgrade socket {} ({e}); the proxy's user must be \
                     able to write to server.upgrade_sock's folder",
                    self.upgrade_sock.display()
                ))
            }
        }
        let mut command = Command::new(&self.program);
        command.arg("--config").arg(&self.config).arg("--upgrade");
        if self.daemon {
            command.arg("--daemon");
        }
        // Its logs go where this process's go (the journal); nothing to read on stdin.
        command.stdin(Stdio::null());
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot start {} ({e}); is the binary installed there?",
                self.program.display()
            )
        })?;
        match self.wait_for_socket(&mut child).await {
            Ok(()) => Ok(child),
            Err(why) => {
                stop(&mut child);
                Err(why)
            }
        }
    }

    async fn wait_for_socket(&self, child: &mut Child) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        loop {
            if self.upgrade_sock.exists() {
                return Ok(());
            }
            match child.try_wait() {
                // A daemonising successor exits 0 after its fork; the fork goes on.
                Ok(Some(status)) if !(self.daemon && status.success()) => {
                    return Err(format!(
                        "the new process ({}) exited with {status} before taking the listeners; \
                         its log says why",
                        self.program.display()
                    ));
                }
                Err(e) => return Err(format!("cannot watch the new process: {e}")),
                _ => {}
            }
            if started.elapsed() > SUCCESSOR_DEADLINE {
                return Err(format!(
                    "the new process did not open {} within {SUCCESSOR_DEADLINE:?} and was \
                     stopped; its log says where it waited",
                    self.upgrade_sock.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Kills a successor that will not take over, and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits on the successor for as long as this process lives: one that ends while this one
/// drains took the sockets with it, so nobody serves. Then this process exits 1 at once, and the
/// service manager starts the proxy again (`Restart=on-failure`). A daemonising successor's
/// parent exits 0 after its fork, which is not an end.
fn watch_successor(mut child: Child, daemon: bool) {
    std::thread::spawn(move || {
        let pid = child.id();
        match child.wait() {
            Ok(status) if daemon && status.success() => {}
            ended => {
                tracing::error!(
                    successor = pid,
                    "the new process ended ({ended:?}) after it took the listening sockets: \
                     nobody serves them; exiting 1 so that the service manager starts the proxy"
                );
                std::process::exit(1);
            }
        }
    });
}

/// Tells the service manager this process is the main one now: a successor holds the listening
/// sockets from here on, before it serves.
pub fn notify_main_pid() {
    notify(&format!("MAINPID={}", std::process::id()));
}

/// Sends `state` to the service manager's `$NOTIFY_SOCKET`, if there is one (a path, or an
/// abstract name written `@name`). A failure is logged: the service manager then times the
/// start out, which says more than this process could.
fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = notify_socket_addr(&socket).and_then(|addr| {
        let out = UnixDatagram::unbound()?;
        out.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::error!(socket = ?socket, "cannot tell the service manager {state:?}: {e}");
    }
}

fn notify_socket_addr(socket: &std::ffi::OsStr) -> io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::from_abstract_name(name),
        None => UnixAddr::from_pathname(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abstract_name_is_written_with_an_at() {
        let addr = notify_socket_addr(std::ffi::OsStr::new("@/org/example/notify")).unwrap();
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(addr.as_abstract_name(), Some(&b"/org/example/notify"[..]));
    }
}
