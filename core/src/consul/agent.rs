//! Endpoints that act on the agent called, not on the cluster: who the agent is, node and
//! service maintenance, service (de)registration and the agent's local checks.
//!
//! NOTE: maintenance must be sent to the agent of the node it is for (the box's own agent
//! address): Consul has no endpoint to put another node into maintenance.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, escape_segment, Client, Error, HealthCheck, Request};

/// Who the agent is: node, datacenter and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSelf {
    /// The node name (`-node`).
    pub node_name: String,
    /// The node id.
    pub node_id: String,
    /// The datacenter.
    pub datacenter: String,
    /// The LAN address other agents reach it at (the advertise address).
    pub address: String,
    /// Whether it is a server.
    pub server: bool,
    /// The Consul version, e.g. `1.8.7`.
    pub version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireSelf {
    config: WireSelfConfig,
    #[serde(default)]
    member: Option<WireMember>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireSelfConfig {
    datacenter: String,
    node_name: String,
    #[serde(rename = "NodeID", default)]
    node_id: String,
    #[serde(default)]
    server: bool,
    #[serde(default)]
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireMember {
    #[serde(default)]
    addr: String,
}

/// What a service check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckTarget {
    /// An HTTP GET of this URL; 2xx is passing, 429 warning, anything else critical.
    Http(String),
    /// A TCP connect to this `host:port`.
    Tcp(String),
}

/// A check registered along with a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCheck {
    /// What it probes.
    pub target: CheckTarget,
    /// How often.
    pub interval: Duration,
    /// How long one probe may take; `None` for Consul's 10 s.
    pub timeout: Option<Duration>,
    /// Deregister the service after the check has been critical this long.
    pub deregister_critical_after: Option<Duration>,
    /// The state before the first probe (`passing`, `warning`, `critical`); `None` means
    /// critical, Consul's default.
    pub initial_status: Option<String>,
}

/// A service instance to register with the agent called.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRegistration {
    /// The instance id, unique on the agent; defaults to `name` in Consul when empty.
    pub id: String,
    /// The service name.
    pub name: String,
    /// The address; empty means the node's address.
    pub address: String,
    /// The port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: HashMap<String, String>,
    /// An optional health check.
    pub check: Option<ServiceCheck>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireRegistration<'a> {
    #[serde(rename = "ID", skip_serializing_if = "str::is_empty")]
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    address: &'a str,
    port: u16,
    tags: &'a [String],
    meta: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<WireCheck<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireCheck<'a> {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<&'a str>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<&'a str>,
    interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deregister_critical_service_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
}

impl<'a> WireRegistration<'a> {
    fn from(reg: &'a ServiceRegistration) -> WireRegistration<'a> {
        WireRegistration {
            id: &reg.id,
            name: &reg.name,
            address: &reg.address,
            port: reg.port,
            tags: &reg.tags,
            meta: &reg.meta,
            check: reg.check.as_ref().map(|c| WireCheck {
                http: match &c.target {
                    CheckTarget::Http(url) => Some(url),
                    CheckTarget::Tcp(_) => None,
                },
                tcp: match &c.target {
                    CheckTarget::Tcp(addr) => Some(addr),
                    CheckTarget::Http(_) => None,
                },
                interval: duration::format(c.interval),
                timeout: c.timeout.map(duration::format),
                deregister_critical_service_after: c
                    .deregister_critical_after
                    .map(duration::format),
                status: c.initial_status.as_deref(),
            }),
        }
    }
}

impl Client {
    /// Describes the agent called: node name, datacenter, address.
    ///
    /// # Errors
    /// Transport, ACL (`agent:read`) and decode failures.
    pub async fn agent_self(&self) -> Result<AgentSelf, Error> {
        let what = "agent self";
        let answer = self
            .call_ok(Request::get(what, "/v1/agent/self".into()))
            .await?;
        let wire: WireSelf = self.json(what, &answer)?;
        Ok(AgentSelf {
            node_name: wire.config.node_name,
            node_id: wire.config.node_id,
            datacenter: wire.config.datacenter,
            address: wire.member.map(|m| m.addr).unwrap_or_default(),
            server: wire.config.server,
            version: wire.config.version,
        })
    }

    /// Puts the node of the agent called into maintenance (or takes it out); idempotent and
    /// persistent across agent restarts, with no expiry.
    ///
    /// It shows as the critical check [`super::NODE_MAINTENANCE_CHECK`] with `reason` as notes,
    /// and the node leaves `passing` health queries once the agent has synced it.
    ///
    /// # Errors
    /// Transport and ACL (`node:write`) failures.
    pub async fn agent_node_maintenance(&self, enable: bool, reason: &str) -> Result<(), Error> {
        let what = format!("agent node maintenance {}", on_off(enable));
        self.put_maintenance(&what, "/v1/agent/maintenance".into(), enable, reason)
            .await
    }

    /// Puts one service of the agent called into maintenance (or takes it out).
    ///
    /// It shows as the critical check `_service_maintenance:<service_id>`.
    ///
    /// # Errors
    /// [`Error::Status`] 404 when the agent has no such service; transport and ACL
    /// (`service:write`) failures.
    pub async fn agent_service_maintenance(
        &self,
        service_id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), Error> {
        let what = format!("agent service maintenance {} {service_id}", on_off(enable));
        let path = format!(
            "/v1/agent/service/maintenance/{}",
            escape_segment(service_id)
        );
        self.put_maintenance(&what, path, enable, reason).await
    }

    /// The call both maintenance endpoints share: `enable`, and `reason` unless empty.
    async fn put_maintenance(
        &self,
        what: &str,
        path: String,
        enable: bool,
        reason: &str,
    ) -> Result<(), Error> {
        let mut req = Request::put(what, path);
        req.query
            .pair("enable", if enable { "true" } else { "false" });
        if !reason.is_empty() {
            req.query.pair("reason", reason);
        }
        self.call_ok(req).await?;
        Ok(())
    }

    /// Registers (or replaces) a service instance on the agent called.
    ///
    /// # Errors
    /// [`Error::Status`] 400 when Consul refuses the definition; transport and ACL failures.
    pub async fn agent_service_register(&self, reg: &ServiceRegistration) -> Result<(), Error> {
        let what = format!("agent service register {}", reg.id_or_name());
        let body = serde_json::to_vec(&WireRegistration::from(reg))
            .map_err(|e| self.decode_error(&what, e))?;
        self.call_ok(Request::put(&what, "/v1/agent/service/register".into()).body(body))
            .await?;
        Ok(())
    }

    /// Removes a service instance from the agent called (Consul 1.8.7 answers 200 for an
    /// unknown id too).
    ///
    /// # Errors
    /// Transport and ACL failures.
    pub async fn agent_service_deregister(&self, service_id: &str) -> Result<(), Error> {
        let what = format!("agent service deregister {service_id}");
        let path = format!(
            "/v1/agent/service/deregister/{}",
            escape_segment(service_id)
        );
        self.call_ok(Request::put(&what, path)).await?;
        Ok(())
    }

    /// The checks the agent called runs locally, by check id (maintenance checks included).
    ///
    /// # Errors
    /// Transport, ACL and decode failures.
    pub async fn agent_checks(&self) -> Result<HashMap<String, HealthCheck>, Error> {
        let what = "agent checks";
        let answer = self
            .call_ok(Request::get(what, "/v1/agent/checks".into()))
            .await?;
        let checks: Option<HashMap<String, HealthCheck>> = self.json(what, &answer)?;
        Ok(checks.unwrap_or_default())
    }
}

impl ServiceRegistration {
    fn id_or_name(&self) -> &str {
        if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        }
    }
}

fn on_off(enable: bool) -> &'static str {
    if enable {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_body_has_consul_field_names() {
        let reg = ServiceRegistration {
            id: "web-1".into(),
            name: "web".into(),
            port: 8080,
            tags: vec!["edge".into()],
            check: Some(ServiceCheck {
                target: CheckTarget::Http("http://127.0.0.2:8080/health".into()),
                interval: Duration::from_secs(1),
                timeout: None,
                deregister_critical_after: Some(Duration::from_secs(60)),
                initial_status: Some("passing".into()),
            }),
            ..ServiceRegistration::default()
        };
        let json = serde_json::to_value(WireRegistration::from(&reg)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ID": "web-1", "Name": "web", "Port": 8080, "Tags": ["edge"], "Meta": {},
                "Check": {"HTTP": "http://127.0.0.2:8080/health", "Interval": "1s",
                          "DeregisterCriticalServiceAfter": "60s", "Status": "passing"}
            })
        );
    }
}
