//! Registers the proxy in Consul as a service, with its admin URL in the service meta, so that
//! `maintctl` finds every proxy of a fleet; deregisters it on shutdown.

use async_trait::async_trait;
use drawbridge_core::consul::{Backoff, CheckTarget, Client, ServiceCheck, ServiceRegistration};
use drawbridge_core::status::ADMIN_URL_META;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

/// The proxy's own registration.
pub struct Registration {
    pub client: Client,
    pub registration: ServiceRegistration,
}

impl Registration {
    /// The registration of a proxy listening on `port`, with its admin listener at `admin_url`.
    pub fn new(
        client: Client,
        id: &str,
        name: &str,
        port: u16,
        admin_url: &str,
        key: &str,
    ) -> Registration {
        let meta = [
            (ADMIN_URL_META, admin_url),
            ("gate_key", key),
            ("version", env!("CARGO_PKG_VERSION")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Registration {
            client,
            registration: ServiceRegistration {
                id: id.to_string(),
                name: name.to_string(),
                address: String::new(),
                port,
                tags: Vec::new(),
                meta,
                check: Some(ServiceCheck {
                    target: CheckTarget::Http(format!(
                        "{}/healthz",
                        admin_url.trim_end_matches('/')
                    )),
                    interval: Duration::from_secs(10),
                    timeout: Some(Duration::from_secs(2)),
                    deregister_critical_after: Some(Duration::from_secs(3600)),
                    initial_status: Some("passing".to_string()),
                }),
            },
        }
    }
}

#[async_trait]
impl BackgroundService for Registration {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let id = &self.registration.id;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match self.client.agent_service_register(&self.registration).await {
                Ok(()) => {
                    tracing::info!(service_id = %id, "registered in Consul");
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(service_id = %id, "cannot register in Consul, retrying in {delay:?}: {e}");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Registered: wait for shutdown, then leave the catalog so maintctl stops expecting us.
        let _ = shutdown.changed().await;
        match self.client.agent_service_deregister(id).await {
            Ok(()) => tracing::info!(service_id = %id, "deregistered from Consul"),
            Err(e) => tracing::warn!(service_id = %id, "cannot deregister from Consul: {e}"),
        }
    }
}
