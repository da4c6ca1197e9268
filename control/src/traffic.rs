//! Boxes in and out of the proxies' traffic, as Consul and every proxy's `/status` show it: a
//! box's service instances, whether its Consul checks pass, and whether each proxy still sends
//! to it (or has requests in flight to it) or sends to it again. `drain`, `undrain` and the
//! steps of `roll` wait on these.

use crate::config::{BoxSettings, Environment};
use crate::output::Output;
use crate::proxies::{self, Proxy};
use crate::remote::BoxState;
use crate::steps::count;
use drawbridge_core::consul::{CheckStatus, Client};
use drawbridge_core::status::PoolStatus;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// Which way the boxes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Drain,
    Undrain,
}

impl Way {
    pub fn as_str(self) -> &'static str {
        match self {
            Way::Drain => "drain",
            Way::Undrain => "undrain",
        }
    }

    /// The box state node maintenance is switched to.
    pub fn want(self) -> BoxState {
        match self {
            Way::Drain => BoxState::Stopped,
            Way::Undrain => BoxState::Running,
        }
    }
}

/// One box to move, with its node's address and the service instances registered on it.
pub struct Target<'a> {
    pub settings: &'a BoxSettings,
    node_ip: Option<IpAddr>,
    instances: Vec<Instance>,
}

/// A service instance of a box, as the proxies list it (`ip:port`).
pub struct Instance {
    service: String,
    addr: SocketAddr,
}

/// Box `b` with its node's address and the service instances registered on it, as the
/// proxies list them; an instance whose address is not an IP is noted and left out (no proxy
/// pool takes it either).
pub async fn target<'a>(
    consul: &Client,
    b: &'a BoxSettings,
    out: Output,
) -> Result<Target<'a>, String> {
    let (node, entries) = consul
        .catalog_node_services(&b.node)
        .await
        .map_err(|e| format!("{}: reading the services of node {}: {e}", b.name, b.node))?
        .ok_or_else(|| format!("{}: Consul knows no node {}", b.name, b.node))?;
    let mut instances = Vec::new();
    for entry in entries {
        let text = format!("{}:{}", entry.address(), entry.service.port);
        match text.parse::<SocketAddr>() {
            Ok(addr) => instances.push(Instance {
                service: entry.service.service.clone(),
                addr,
            }),
            Err(_) => out.note(&format!(
                "{}: instance {} of {} is at {text:?}, not an ip:port; no proxy pool sends to it",
                b.name, entry.service.id, entry.service.service
            )),
        }
    }
    Ok(Target {
        settings: b,
        node_ip: node.address.parse().ok(),
        instances,
    })
}

/// What keeps the boxes from being put back: every Consul check of their nodes that does not
/// pass, node maintenance aside (a drained box has it); a node Consul does not know.
pub async fn unhealthy(consul: &Client, boxes: &[&BoxSettings]) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    for b in boxes {
        let checks = consul
            .health_node(&b.node)
            .await
            .map_err(|e| format!("{}: reading the checks of node {}: {e}", b.name, b.node))?;
        if checks.is_empty() {
            problems.push(format!("{}: Consul knows no node {}", b.name, b.node));
        }
        for check in checks.iter().filter(|c| !c.is_node_maintenance()) {
            if check.status == CheckStatus::Passing {
                continue;
            }
            let of = if check.service_name.is_empty() {
                String::new()
            } else {
                format!(" of service {}", check.service_name)
            };
            let said = [check.output.trim(), check.notes.trim()]
                .into_iter()
                .find(|said| !said.is_empty())
                .map(|said| format!(": {}", said.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            problems.push(format!(
                "{}: check {}{of} is {}{said}",
                b.name,
                check.check_id,
                check.status.as_str()
            ));
        }
    }
    Ok(problems)
}

/// What the proxies were seen doing with the targets.
pub struct Seen {
    /// What every proxy still does otherwise than the way wants: for a drain, a pool that
    /// still sends to an instance or has requests in flight to it; for an undrain, a pool that
    /// follows an instance's service and does not send to it, healthy. A proxy that cannot be
    /// read is a problem too: what it does is unknown.
    pub problems: Vec<String>,
    /// For an undrain, the pairs of a proxy's pool and an instance it sends to.
    pub sending: usize,
}

pub async fn edge_problems(
    http: &reqwest::Client,
    env: &Environment,
    proxies: &[Proxy],
    targets: &[Target<'_>],
    way: Way,
) -> Seen {
    let mut seen = Seen {
        problems: Vec::new(),
        sending: 0,
    };
    for proxy in proxies {
        let pools = match proxies::status(http, env, proxy).await {
            // A proxy that predates the split (released together with `in_pool`) drops a
            // server from /status while requests to it are in flight: it cannot confirm a drain.
            Ok(report) if report.split.is_none() && way == Way::Drain => {
                seen.problems.push(format!(
                    "{}: too old to report the requests in flight to a server that left its pool; upgrade it",
                    proxy.name
                ));
                continue;
            }
            Ok(report) => report.pools,
            Err(e) => {
                seen.problems.push(e);
                continue;
            }
        };
        match way {
            Way::Drain => seen
                .problems
                .extend(still_sending(&proxy.name, &pools, targets)),
            Way::Undrain => {
                let (problems, sending) = not_sending(&proxy.name, &pools, targets);
                seen.problems.extend(problems);
                seen.sending += sending;
            }
        }
    }
    seen
}

/// The box of `targets` a server at `address` belongs to: one of its instances, or any port
/// of its node's address.
fn box_at<'a>(targets: &'a [Target<'_>], address: &str) -> Option<&'a str> {
    let addr: SocketAddr = address.parse().ok()?;
    targets
        .iter()
        .find(|t| t.node_ip == Some(addr.ip()) || t.instances.iter().any(|i| i.addr == addr))
        .map(|t| t.settings.name.as_str())
}

/// A proxy's pools that still send to an instance of the drained boxes, or have requests in
/// flight to one.
fn still_sending(proxy: &str, pools: &[PoolStatus], targets: &[Target<'_>]) -> Vec<String> {
    let mut problems = Vec::new();
    for pool in pools {
        for server in &pool.servers {
            let Some(name) = box_at(targets, &server.address) else {
                continue;
            };
            if server.in_pool {
                let hint = if pool.source == "static" {
                    " (a pool of static servers does not follow Consul maintenance: take the server out of its `servers`)"
                } else {
                    ""
                };
                problems.push(format!(
                    "{proxy}: pool {} still sends new requests to {name} ({}){hint}",
                    pool.name, server.address
                ));
            }
            if server.in_flight > 0 {
                problems.push(format!(
                    "{proxy}: {} still in flight to {name} ({}) in pool {}",
                    count(server.in_flight as usize, "request", "requests"),
                    server.address,
                    pool.name
                ));
            }
        }
    }
    problems
}

/// The instances of the undrained boxes a proxy's pools follow (by Consul service) and do not
/// send to, healthy; and how many pairs of a pool and an instance it does send to.
fn not_sending(proxy: &str, pools: &[PoolStatus], targets: &[Target<'_>]) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut sending = 0;
    for pool in pools {
        let Some(service) = pool.source.strip_prefix("consul:") else {
            continue;
        };
        let serving: BTreeSet<SocketAddr> = pool
            .servers
            .iter()
            .filter(|s| s.in_pool && s.healthy)
            .filter_map(|s| s.address.parse().ok())
            .collect();
        for target in targets {
            for instance in target.instances.iter().filter(|i| i.service == service) {
                if serving.contains(&instance.addr) {
                    sending += 1;
                } else {
                    problems.push(format!(
                        "{proxy}: pool {} does not send to {} ({}) yet",
                        pool.name, target.settings.name, instance.addr
                    ));
                }
            }
        }
    }
    (problems, sending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BoxAccess, Role};
    use drawbridge_core::status::ServerStatus;

    fn api1() -> BoxSettings {
        BoxSettings {
            name: "api1".to_string(),
            role: Role::ApiUi,
            node: "api1".to_string(),
            access: BoxAccess::ConsulAgent("http://10.0.1.10:8500".to_string()),
            ssh: None,
        }
    }

    fn target(b: &BoxSettings) -> Target<'_> {
        Target {
            settings: b,
            node_ip: Some("10.0.1.10".parse().unwrap()),
            instances: vec![Instance {
                service: "api".to_string(),
                addr: "10.0.1.10:8080".parse().unwrap(),
            }],
        }
    }

    fn pool(name: &str, source: &str, servers: &[(&str, bool, bool, u64)]) -> PoolStatus {
        PoolStatus {
            name: name.to_string(),
            source: source.to_string(),
            servers: servers
                .iter()
                .map(|&(address, in_pool, healthy, in_flight)| ServerStatus {
                    address: address.to_string(),
                    healthy,
                    in_flight,
                    in_pool,
                })
                .collect(),
        }
    }

    #[test]
    fn a_drain_waits_for_every_pool_that_sends_or_has_requests_in_flight() {
        let b = api1();
        let targets = [target(&b)];
        let pools = [
            pool(
                "api",
                "consul:api",
                &[
                    ("10.0.1.10:8080", false, false, 2),
                    ("10.0.1.11:8080", true, true, 5),
                ],
            ),
            // Another port of the box's address, in a pool of fixed servers.
            pool("admin", "static", &[("10.0.1.10:9000", true, true, 0)]),
        ];
        assert_eq!(
            still_sending("edge1", &pools, &targets),
            [
                "edge1: 2 requests still in flight to api1 (10.0.1.10:8080) in pool api",
                "edge1: pool admin still sends new requests to api1 (10.0.1.10:9000) (a pool of static servers does not follow Consul maintenance: take the server out of its `servers`)",
            ]
        );
        let idle = [pool(
            "api",
            "consul:api",
            &[("10.0.1.11:8080", true, true, 5)],
        )];
        assert!(still_sending("edge1", &idle, &targets).is_empty());
    }

    #[test]
    fn an_undrain_waits_until_every_pool_of_the_service_sends_to_the_box_healthy() {
        let b = api1();
        let targets = [target(&b)];
        let unhealthy = [pool(
            "api",
            "consul:api",
            &[("10.0.1.10:8080", true, false, 0)],
        )];
        let (problems, sending) = not_sending("edge1", &unhealthy, &targets);
        assert_eq!(
            problems,
            ["edge1: pool api does not send to api1 (10.0.1.10:8080) yet"]
        );
        assert_eq!(sending, 0);
        let other_service = [pool("web", "consul:web", &[])];
        assert_eq!(not_sending("edge1", &other_service, &targets), (vec![], 0));
        let serving = [pool(
            "api",
            "consul:api",
            &[("10.0.1.10:8080", true, true, 0)],
        )];
        assert_eq!(not_sending("edge1", &serving, &targets), (vec![], 1));
    }
}
