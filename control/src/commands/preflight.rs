//! Pre-flight: everything a run needs is checked before it touches anything (a leader, the
//! proxies, every box it will act on), and every problem is reported at once.

use crate::config::{BoxAccess, BoxSettings, Environment};
use crate::plan::Plan;
use crate::proxies::{self, Proxy};
use crate::remote;
use drawbridge_core::consul::Client;
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
        checks.spawn(async move { reach(&b, &http, ssh_config.as_deref(), token, timeout).await });
    }
    let mut unreachable: Vec<String> = Vec::new();
    while let Some(checked) = checks.join_next().await {
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => unreachable.push(format!("box unreachable: {e}")),
            Err(e) => unreachable.push(format!("a box check ended abnormally: {e}")),
        }
    }
    unreachable.sort();
    problems.extend(unreachable);
    if problems.is_empty() {
        Ok(proxies)
    } else {
        Err(problems)
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
