//! One run at a time per environment: a Consul session lock on `<prefix>/lock`, whose value says
//! who holds it, from where, since when and for which run. The session is renewed in the
//! background; when a renewal fails for good the lock counts as lost and the run stops at the
//! next step boundary. A lock left by a `maintctl` on this host whose process is gone (SIGKILL) is
//! taken over at once instead of waiting for its session to expire.

use drawbridge_core::consul::{self, Client, PutMode, QueryOptions, SessionRequest};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How long a session lives without renewal (Consul may take up to twice this to reap it).
const SESSION_TTL: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Who holds the lock, as written in its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub action: String,
}

impl Holder {
    /// This process, about to do `action`.
    pub fn me(action: &str) -> Holder {
        Holder {
            user: user_name(),
            host: hostname(),
            pid: std::process::id(),
            since: OffsetDateTime::now_utc(),
            action: action.to_string(),
        }
    }

    /// `user@host`.
    pub fn by(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// Whether the holder was a process on this host that is gone (e.g. SIGKILLed): its lock is
    /// taken over at once instead of waiting for its session to expire.
    pub fn died_here(&self) -> bool {
        self.host == hostname() && !process_alive(self.pid)
    }
}

/// Who runs this process: the operator behind sudo, else the login name, else the name of the
/// process's user id in /etc/passwd.
fn user_name() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var) {
            if !name.is_empty() {
                return name;
            }
        }
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(str::to_string))
        });
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    uid.and_then(|uid| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_string())
        })
    })
    .unwrap_or_else(|| "unknown".to_string())
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another maintctl run holds the lock of this environment: {action} by {user}@{host} (pid {pid}) since {since}; wait for it, or if that run is dead, its session expires within {ttl}s", action = .0.action, user = .0.user, host = .0.host, pid = .0.pid, since = drawbridge_core::timestamp::seconds(.0.since), ttl = SESSION_TTL.as_secs() * 2)]
    Held(Holder),
    #[error(transparent)]
    Consul(#[from] consul::Error),
}

/// A held lock. Dropping it without [`Lock::release`] leaves the session to expire.
pub struct Lock {
    client: Client,
    key: String,
    session: String,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lock {
    /// Takes the environment's lock for `holder`.
    ///
    /// # Errors
    /// [`LockError::Held`] with the holder when another live run has it; Consul failures.
    pub async fn acquire(
        client: &Client,
        prefix: &str,
        holder: &Holder,
    ) -> Result<Lock, LockError> {
        let key = format!("{prefix}/lock");
        let session = client
            .session_create(&SessionRequest::with_ttl(
                &format!("maintctl {}", holder.action),
                SESSION_TTL,
            ))
            .await?;
        let value = serde_json::to_vec(holder).expect("a holder always serialises");
        for attempt in 0..2 {
            if client
                .kv_put(&key, &value, PutMode::Acquire(&session))
                .await?
            {
                let lost = Arc::new(AtomicBool::new(false));
                let renewer = tokio::spawn(renew(client.clone(), session.clone(), lost.clone()));
                return Ok(Lock {
                    client: client.clone(),
                    key,
                    session,
                    lost,
                    renewer,
                });
            }
            let current = client.kv_get(&key, &QueryOptions::default()).await?;
            let Some(entry) = current.entry else { continue };
            let other: Option<Holder> = entry
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok());
            match (other, entry.session) {
                (Some(other), Some(other_session)) => {
                    if attempt == 0 && other.died_here() {
                        // The holder died on this machine (e.g. SIGKILL): its session would
                        // outlive it for up to twice the TTL. Ending it is safe.
                        client.session_destroy(&other_session).await?;
                        continue;
                    }
                    let _ = client.session_destroy(&session).await;
                    return Err(LockError::Held(other));
                }
                // Released meanwhile: try again.
                _ => continue,
            }
        }
        let _ = client.session_destroy(&session).await;
        let current = client.kv_get(&key, &QueryOptions::default()).await?;
        let other = current
            .entry
            .and_then(|e| e.value)
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_else(|| Holder::me("unknown"));
        Err(LockError::Held(other))
    }

    /// Whether the lock was lost (the session could not be renewed).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock and ends the session.
    ///
    /// # Errors
    /// Consul failures (the session then expires by itself).
    pub async fn release(self) -> Result<(), consul::Error> {
        self.renewer.abort();
        self.client
            .kv_put(&self.key, b"", PutMode::Release(&self.session))
            .await?;
        self.client.session_destroy(&self.session).await
    }
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Renews the session until it is gone or cannot be renewed within its TTL.
async fn renew(client: Client, session: String, lost: Arc<AtomicBool>) {
    let mut last_renewed = Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match client.session_renew(&session).await {
            Ok(_) => last_renewed = Instant::now(),
            Err(consul::Error::SessionNotFound { .. }) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                if last_renewed.elapsed() >= SESSION_TTL {
                    eprintln!("maintctl: the lock's session could not be renewed for {SESSION_TTL:?} ({e}); stopping at the next step");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// Who holds the environment's lock now, if anyone.
///
/// # Errors
/// Consul failures.
pub async fn holder(client: &Client, prefix: &str) -> Result<Option<Holder>, consul::Error> {
    let current = client
        .kv_get(&format!("{prefix}/lock"), &QueryOptions::default())
        .await?;
    Ok(current
        .entry
        .filter(|e| e.session.is_some())
        .and_then(|e| e.value)
        .and_then(|v| serde_json::from_slice(&v).ok()))
}
