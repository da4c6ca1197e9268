//! The background service that reloads the certificates: on SIGHUP every file is read again,
//! and every `tls.watch_interval` the files are looked at (a `stat` each) and a changed entry's
//! files are read again. Without TLS listeners, SIGHUP is still taken, so that a reload sent
//! out of habit does not end the process (its default action).

use super::store::Certificates;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::MissedTickBehavior;

/// Reloads `certificates` on SIGHUP and when their files change.
pub struct TlsReloader {
    /// `None` without TLS listeners.
    pub certificates: Option<Arc<Certificates>>,
    /// How often the files are looked at (`tls.watch_interval`).
    pub watch_interval: Duration,
}

impl TlsReloader {
    fn on_hangup(&self) {
        match &self.certificates {
            Some(certificates) => {
                let done = certificates.reload(true);
                tracing::info!(
                    read = done.read,
                    refused = done.refused,
                    "SIGHUP: TLS certificates read again"
                );
            }
            None => tracing::info!(
                "SIGHUP: no TLS certificates to read again (the config file is read only at start)"
            ),
        }
    }
}

#[async_trait]
impl BackgroundService for TlsReloader {
    /// Ready once SIGHUP is taken: the proxy listeners open only then, so a SIGHUP sent to a
    /// proxy that serves never ends it.
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                tracing::error!(
                    "cannot take SIGHUP ({e}): certificates are reloaded only when their files change"
                );
                None
            }
        };
        ready.notify_ready();
        let mut ticks = tokio::time::interval(self.watch_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is at once, and the files were just read.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.on_hangup(),
                _ = ticks.tick(), if self.certificates.is_some() => {
                    if let Some(certificates) = &self.certificates {
                        certificates.reload(false);
                    }
                }
            }
        }
    }
}
