//! Pre-flight: everything a run needs is checked before it touches anything (a leader, the
//! proxies, every box it will act on and the Consul token's right to switch its node
//! maintenance), and every problem is reported at once.
//!
//! Consul 1.8 has no endpoint that answers "may this token do that", and a token cannot read
//! its own policies' rules without `acl:read`; so the right is tried with a write that Consul
//! checks the right for first and that then changes nothing. The token's other rights are met
//! before anything changes anyway: the lock (`session:write`, `key:write` on the prefix) is
//! taken before pre-flight, and the gate key is the first thing a run writes.

use crate::config::{BoxAccess, BoxSettings, Environment};
use crate::plan::Plan;
use crate::proxies::{self, Proxy};
use crate::remote;
use drawbridge_core::consul::{Client, Error, NODE_MAINTENANCE_CHECK};
use std::path::Path;
use std::time::Duration;

/// Checks everything a run needs before it touches anything; returns the proxies.
pub(super) async fn preflight(
    env: &Environment,
    consul: &Client,
    http: &reqwest::Client,
    plan: &Plan,
) -> Result<Vec<Proxy>, Vec<String>> {
    let mut problems = Vec::new();
    match consul.status_leader().await {
        Ok(leader) if !leader.is_empty() => {}
        Ok(_) => problems.push(format!("Consul at {} has no leader", env.consul)),
        Err(e) => return Err(vec![e.to_string()]),
    }
    let proxies = match proxies::discover(env, consul).await {
        Ok(list) if list.is_empty() => {
            problems.push(
                "no proxy found: none is registered in Consul (or listed in proxy_admin_urls)"
                    .to_string(),
            );
            list
        }
        Ok(list) => list,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    for proxy in &proxies {
        if let Err(e) = proxies::status(http, env, proxy).await {
            problems.push(format!("proxy unreachable: {e}"));
        }
    }
    let targets: std::collections::HashSet<&str> = plan
        .steps
        .iter()
        .flat_map(|s| s.targets.iter().map(String::as_str))
        .collect();
    // Every box at once: an operator waits for the slowest, not for the sum.
    let mut checks = tokio::task::JoinSet::new();
    for b in env
        .boxes
        .iter()
        .filter(|b| targets.contains(b.name.as_str()))
    {
        let (b, http) = (b.clone(), http.clone());
        let (ssh_config, token, timeout) = (
            env.ssh_config.clone(),
            env.consul_token.clone(),
            env.step_timeout,
        );
        checks.spawn(async move {
            reach(&b, &http, ssh_config.as_deref(), token.clone(), timeout)
                .await
                .map_err(|e| format!("box unreachable: {e}"))?;
            may_switch_maintenance(&b, token).await
        });
    }
    let mut box_problems: Vec<String> = Vec::new();
    while let Some(checked) = checks.join_next().await {
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => box_problems.push(e),
            Err(e) => box_problems.push(format!("a box check ended abnormally: {e}")),
        }
    }
    box_problems.sort();
    problems.extend(box_problems);
    if problems.is_empty() {
        Ok(proxies)
    } else {
        Err(problems)
    }
}

/// Whether `token` may switch node maintenance on `b` (`node:write`), when `b` is switched
/// through its Consul agent: the agent is asked to set the state it has, which it checks the
/// right for first and then leaves as it is (a node already in maintenance keeps its reason).
/// A box switched over ssh uses that box's own Consul token: nothing to try from here.
///
/// The state is read just before, as the step itself does; without `node:read` the read shows
/// no maintenance, but such a token has no `node:write` either and the request is refused. A
/// change someone else makes on that node between the two calls would be undone.
async fn may_switch_maintenance(b: &BoxSettings, token: Option<String>) -> Result<(), String> {
    let BoxAccess::ConsulAgent(agent) = &b.access else {
        return Ok(());
    };
    let cannot_check = |e: Error| {
        format!(
            "{}: cannot check the Consul token's right to switch node maintenance: {e}",
            b.name
        )
    };
    let client = Client::new(agent, token).map_err(cannot_check)?;
    let on = client
        .agent_checks()
        .await
        .map_err(cannot_check)?
        .contains_key(NODE_MAINTENANCE_CHECK);
    match client.agent_node_maintenance(on, "").await {
        Ok(()) => Ok(()),
        Err(e @ Error::AclDenied { .. }) => Err(format!(
            "{}: the Consul token may not switch node maintenance of node {} (node:write is \
             needed): {e}",
            b.name, b.node
        )),
        Err(e) => Err(cannot_check(e)),
    }
}

/// Whether `b` answers: its Consul agent is the node the inventory names, or its check runs.
async fn reach(
    b: &BoxSettings,
    http: &reqwest::Client,
    ssh_config: Option<&Path>,
    token: Option<String>,
    timeout: Duration,
) -> Result<(), String> {
    match &b.access {
        BoxAccess::ConsulAgent(agent) => {
            let client = Client::new(agent, token).map_err(|e| format!("{}: {e}", b.name))?;
            match client.agent_self().await {
                Ok(me) if me.node_name == b.node => Ok(()),
                Ok(me) => Err(format!(
                    "{}: the agent at {agent} is node {:?}, the config says {:?}",
                    b.name, me.node_name, b.node
                )),
                Err(e) => Err(format!("{}: {e}", b.name)),
            }
        }
        _ => remote::check(http, ssh_config, b, "pre-flight", timeout)
            .await
            .map(|_| ()),
    }
}
