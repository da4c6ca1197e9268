//! Health reads: the instances of a service (blocking capable, optionally passing only), the
//! checks of a node, the service instances a node runs (from the catalog), and the current raft
//! leader.

use std::collections::HashMap;

use serde::Deserialize;

use super::{escape_segment, Client, Error, QueryMeta, QueryOptions, Request};

/// The state of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum CheckStatus {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical` (maintenance checks are always critical).
    Critical,
    /// Any other value Consul may send.
    Other(String),
}

impl CheckStatus {
    /// As Consul writes it.
    pub fn as_str(&self) -> &str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
            CheckStatus::Other(s) => s,
        }
    }
}

impl From<String> for CheckStatus {
    fn from(s: String) -> CheckStatus {
        match s.as_str() {
            "passing" => CheckStatus::Passing,
            "warning" => CheckStatus::Warning,
            "critical" => CheckStatus::Critical,
            _ => CheckStatus::Other(s),
        }
    }
}

/// One health check of a node or service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// The node it runs on.
    #[serde(default)]
    pub node: String,
    /// Its id, e.g. `serfHealth`, [`super::NODE_MAINTENANCE_CHECK`] or `service:web-1`.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Its display name.
    #[serde(default)]
    pub name: String,
    /// Its state.
    pub status: CheckStatus,
    /// Notes; for maintenance checks, the reason given.
    #[serde(default)]
    pub notes: String,
    /// The last output of the check.
    #[serde(default)]
    pub output: String,
    /// The service it belongs to; empty for node checks.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// The name of that service; empty for node checks.
    #[serde(default)]
    pub service_name: String,
}

impl HealthCheck {
    /// Whether this is the node maintenance check.
    pub fn is_node_maintenance(&self) -> bool {
        self.check_id == super::NODE_MAINTENANCE_CHECK
    }

    /// The service id, when this is a service maintenance check.
    pub fn service_maintenance_of(&self) -> Option<&str> {
        self.check_id
            .strip_prefix(super::SERVICE_MAINTENANCE_CHECK_PREFIX)
    }
}

/// The node part of a [`ServiceEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceNode {
    /// The node name.
    pub node: String,
    /// The node address.
    #[serde(default)]
    pub address: String,
    /// The datacenter.
    #[serde(default)]
    pub datacenter: String,
}

/// The service part of a [`ServiceEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceInstance {
    /// The instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    pub service: String,
    /// The instance address; empty means the node address.
    #[serde(default)]
    pub address: String,
    /// The port.
    #[serde(default)]
    pub port: u16,
    /// Tags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: HashMap<String, String>,
}

/// One instance of a service with its node and all checks that apply to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node.
    pub node: ServiceNode,
    /// The instance.
    pub service: ServiceInstance,
    /// The node's and the instance's checks.
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The address to reach the instance: the service address, else the node address.
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Client {
    /// Lists the instances of service `name` with their checks; only those whose checks all
    /// pass when `passing_only`. Blocks when `q.index > 0`.
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures. An unknown service is an empty list.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
        q: &QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), Error> {
        let what = format!("health service {name}");
        let mut req = Request::get(
            &what,
            format!("/v1/health/service/{}", escape_segment(name)),
        )
        .options(q);
        if passing_only {
            req.query.flag("passing");
        }
        let answer = self.call_ok(req).await?;
        let entries: Option<Vec<ServiceEntry>> = self.json(&what, &answer)?;
        Ok((
            entries.unwrap_or_default(),
            self.query_meta(&what, &answer)?,
        ))
    }

    /// Lists the checks of node `node` as the catalog has them (node maintenance included).
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures. An unknown node is an empty list.
    pub async fn health_node(&self, node: &str) -> Result<Vec<HealthCheck>, Error> {
        let what = format!("health node {node}");
        let req = Request::get(&what, format!("/v1/health/node/{}", escape_segment(node)));
        let answer = self.call_ok(req).await?;
        let checks: Option<Vec<HealthCheck>> = self.json(&what, &answer)?;
        Ok(checks.unwrap_or_default())
    }

    /// Node `node` and the service instances registered on it, whatever their health, each
    /// with the node (so [`ServiceEntry::address`] applies) and no checks; `None` for a node
    /// the catalog does not know.
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures.
    pub async fn catalog_node_services(
        &self,
        node: &str,
    ) -> Result<Option<(ServiceNode, Vec<ServiceEntry>)>, Error> {
        /// `/v1/catalog/node/:node`: the node and its instances by id (`null` for an unknown
        /// node).
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct CatalogNode {
            node: ServiceNode,
            #[serde(default, deserialize_with = "null_as_default")]
            services: HashMap<String, ServiceInstance>,
        }
        let what = format!("catalog node {node}");
        let req = Request::get(&what, format!("/v1/catalog/node/{}", escape_segment(node)));
        let answer = self.call_ok(req).await?;
        let Some(found): Option<CatalogNode> = self.json(&what, &answer)? else {
            return Ok(None);
        };
        let mut entries: Vec<ServiceEntry> = found
            .services
            .into_values()
            .map(|service| ServiceEntry {
                node: found.node.clone(),
                service,
                checks: Vec::new(),
            })
            .collect();
        entries.sort_by(|a, b| a.service.id.cmp(&b.service.id));
        Ok(Some((found.node, entries)))
    }

    /// The raft leader's address (`host:port`); empty while there is none.
    ///
    /// # Errors
    /// Transport and decode failures.
    pub async fn status_leader(&self) -> Result<String, Error> {
        let what = "status leader";
        let answer = self
            .call_ok(Request::get(what, "/v1/status/leader".into()))
            .await?;
        self.json(what, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_entry_decodes_with_null_meta_and_tags() {
        let json = r#"[{"Node":{"ID":"x","Node":"api1","Address":"127.0.0.2","Datacenter":"dc1"},
            "Service":{"ID":"web-1","Service":"web","Tags":null,"Address":"","Meta":null,
            "Port":8080},"Checks":[{"Node":"api1","CheckID":"_node_maintenance",
            "Name":"Node Maintenance Mode","Status":"critical","Notes":"db migration",
            "Output":"","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"maintenance"},
            {"Node":"api1","CheckID":"_service_maintenance:web-1","Status":"mystery"}]}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).unwrap();
        let e = &entries[0];
        assert_eq!(e.address(), "127.0.0.2");
        assert_eq!(e.service.port, 8080);
        assert!(e.service.tags.is_empty() && e.service.meta.is_empty());
        assert!(e.checks[0].is_node_maintenance());
        assert_eq!(e.checks[0].status, CheckStatus::Critical);
        assert_eq!(e.checks[1].service_maintenance_of(), Some("web-1"));
        assert_eq!(e.checks[1].status, CheckStatus::Other("mystery".into()));
    }
}
