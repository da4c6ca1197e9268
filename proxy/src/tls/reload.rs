//! The background service that reloads the certificates: on SIGHUP the config file is read
//! again (its certificate list applied live, see `config_file`) and every certificate file is
//! read again; every `tls.watch_interval` the files are looked at (a `stat` each) and a changed
//! entry's files are read again. Without TLS listeners SIGHUP still reads the config file, and a
//! SIGHUP sent out of habit never ends the process (its default action).

use super::store::Certificates;
use crate::config_file::ConfigFile;
use crate::signals::Taken;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::SignalKind;
use tokio::time::MissedTickBehavior;

/// Reloads `certificates` on SIGHUP and when their files change.
pub struct TlsReloader {
    /// `None` without TLS listeners.
    pub certificates: Option<Arc<Certificates>>,
    /// How often the files are looked at (`tls.watch_interval`).
    pub watch_interval: Duration,
    pub config: Arc<ConfigFile>,
}

impl TlsReloader {
    fn on_hangup(&self) {
        let new_list = self.config.reread(self.certificates.is_some());
        let Some(certificates) = &self.certificates else {
            return;
        };
        match new_list {
            Some(settings) => certificates.replace(&settings),
            None => {
                let done = certificates.reload(true);
                tracing::info!(
                    read = done.read,
                    refused = done.refused,
                    "SIGHUP: TLS certificates read again"
                );
            }
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
        let mut hangups = Taken::new(
            SignalKind::hangup(),
            "SIGHUP",
            "certificates are reloaded only when their files change",
        );
        ready.notify_ready();
        let mut ticks = tokio::time::interval(self.watch_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is at once, and the files were just read.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                () = hangups.next() => self.on_hangup(),
                _ = ticks.tick(), if self.certificates.is_some() => {
                    if let Some(certificates) = &self.certificates {
                        certificates.reload(false);
                    }
                }
            }
        }
    }
}
