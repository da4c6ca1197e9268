//! The steps of `maintctl roll` for one api_ui box: drain it (node maintenance on, then every
//! proxy sends it nothing and has nothing in flight to it), replace or upgrade it with the
//! inventory's command or call, wait until its Consul checks pass for `healthy_for` at a
//! stretch, smoke-test it directly, and undrain it (node maintenance off, then every proxy sends
//! to it again, healthy). Each waits within its own deadline and says what was still waited for.

use crate::config::{BoxSettings, Role, RollAction, RollSettings};
use crate::output::Outcome;
use crate::remote::{self, BoxState};
use crate::steps::{count, wait_until, Context, TargetError, TargetResult, POLL_EVERY};
use crate::traffic::{edge_problems, target, unhealthy, Way};
use drawbridge_core::consul::{CheckStatus, HealthCheck};
use std::time::{Duration, Instant};

/// Whether a box with these Consul checks and this many service instances takes traffic: out
/// of node maintenance, some check there and every one passing, and a service to send to.
fn serving(checks: &[HealthCheck], instances: usize) -> bool {
    instances > 0
        && !checks.is_empty()
        && checks
            .iter()
            .all(|c| !c.is_node_maintenance() && c.status == CheckStatus::Passing)
}

/// `template` with `{box}`, `{node}` and, when known, `{address}` of box `b` filled in.
fn fill(template: &str, b: &BoxSettings, address: Option<&str>) -> String {
    let filled = template
        .replace("{box}", &b.name)
        .replace("{node}", &b.node);
    match address {
        Some(address) => filled.replace("{address}", address),
        None => filled,
    }
}

impl Context {
    fn roll_settings(&self) -> Result<&RollSettings, TargetError> {
        self.env.roll.as_ref().ok_or_else(|| {
            TargetError::Failed(format!(
                "environment {} no longer has a [roll] table in the configuration",
                self.env.name
            ))
        })
    }

    /// How long one target of a step of `kind` may take in all: its action and its waits, so
    /// that a step's own wait runs out first and says what it waited for.
    pub(crate) fn target_deadline(&self, kind: &crate::plan::StepKind) -> Duration {
        use crate::plan::StepKind;
        let (step, verify) = (self.env.step_timeout, self.env.verify_timeout);
        let roll = self.env.roll.as_ref();
        match (kind, roll) {
            (StepKind::Replace, Some(r)) => r.timeout + verify,
            (StepKind::Healthy, Some(r)) => r.healthy_timeout + verify,
            // Node maintenance (over ssh: a check, the action and checks until verify_timeout),
            // then the proxies within step_timeout.
            (StepKind::Drain | StepKind::Undrain, _) => 3 * step + 2 * verify,
            _ => step + verify,
        }
    }

    /// Whether box `b` takes traffic now, as Consul shows it.
    async fn in_traffic(&self, b: &BoxSettings) -> Result<bool, String> {
        let checks = self
            .consul
            .health_node(&b.node)
            .await
            .map_err(|e| format!("{}: reading the checks of node {}: {e}", b.name, b.node))?;
        Ok(serving(&checks, self.services_on(b).await?))
    }

    /// How many service instances Consul has registered on box `b`'s node.
    async fn services_on(&self, b: &BoxSettings) -> Result<usize, String> {
        Ok(self
            .consul
            .catalog_node_services(&b.node)
            .await
            .map_err(|e| format!("{}: reading the services of node {}: {e}", b.name, b.node))?
            .map_or(0, |(_, entries)| entries.len()))
    }

    /// Before a batch is drained: some other api_ui box must stay in the traffic (out of node
    /// maintenance, healthy, with a service), else the roll would take the whole API down.
    pub(crate) async fn keeps_one_serving(&self, draining: &[String]) -> Result<(), String> {
        let others = self
            .env
            .boxes
            .iter()
            .filter(|b| b.role == Role::ApiUi && !draining.contains(&b.name));
        for b in others {
            if self.in_traffic(b).await? {
                return Ok(());
            }
        }
        Err(format!(
            "draining {} would leave no api_ui box in the traffic (every other one is drained or failing a check): nothing was changed",
            draining.join(", ")
        ))
    }

    /// Waits within `within` until every proxy does with box `b` what `way` wants; the detail
    /// of a timeout lists what each proxy still did.
    async fn wait_for_proxies(
        &self,
        b: &BoxSettings,
        way: Way,
        within: Duration,
    ) -> Result<usize, TargetError> {
        let target = target(&self.consul, b, self.out)
            .await
            .map_err(TargetError::Failed)?;
        let targets = [target];
        let sending = std::sync::atomic::AtomicUsize::new(0);
        wait_until(within, || async {
            let seen = edge_problems(&self.http, &self.env, &self.proxies, &targets, way).await;
            if seen.problems.is_empty() {
                sending.store(seen.sending, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            } else {
                Err(seen.problems.join("; "))
            }
        })
        .await
        .map_err(|still| {
            TargetError::VerifyTimeout(format!(
                "not every proxy {} within {within:?}: {still}",
                match way {
                    Way::Drain => "let go of it",
                    Way::Undrain => "sent to it again",
                }
            ))
        })?;
        Ok(sending.into_inner())
    }

    /// Node maintenance on, then no proxy sends to the box or has a request in flight to it.
    pub(crate) async fn drain_box(&self, b: &BoxSettings, resumed: bool) -> TargetResult {
        let (outcome, said) = self.node_maintenance(b, BoxState::Stopped, resumed).await?;
        self.wait_for_proxies(b, Way::Drain, self.env.step_timeout)
            .await?;
        Ok((
            outcome,
            format!(
                "{said}; {} send it nothing and have nothing in flight to it",
                count(self.proxies.len(), "proxy", "proxies")
            ),
        ))
    }

    /// The inventory's command over the box's ssh, or its call; a resumed target is acted on
    /// again (whether it ran before is not known), so the action must bear a repeat.
    pub(crate) async fn replace_box(&self, b: &BoxSettings, resumed: bool) -> TargetResult {
        let roll = self.roll_settings()?;
        let again = if resumed {
            " (again: an earlier run may have started it)"
        } else {
            ""
        };
        match &roll.action {
            RollAction::Command(command) => {
                let Some(destination) = &b.ssh else {
                    return Err(TargetError::Failed(format!(
                        "box {} has no `ssh` destination to run the roll command on",
                        b.name
                    )));
                };
                let ran = remote::ssh(
                    self.env.ssh_config.as_deref(),
                    destination,
                    command,
                    &self.reason,
                    roll.timeout,
                )
                .await
                .map_err(TargetError::Failed)?;
                let said = ran.output.lines().last().unwrap_or_default().to_string();
                match ran.code {
                    Some(0) => Ok((Outcome::Done, format!("`{command}` done{again}: {said}"))),
                    code => Err(TargetError::Failed(format!(
                        "`{command}` on {destination} exited {}{again}: {}",
                        code.map_or("by a signal".to_string(), |c| c.to_string()),
                        ran.output
                    ))),
                }
            }
            RollAction::Url(template) => {
                let url = fill(template, b, None);
                let body = serde_json::json!({
                    "environment": self.env.name,
                    "box": b.name,
                    "node": b.node,
                    "run": self.run_id,
                    "by": self.by,
                    "reason": self.reason,
                });
                let answer = self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .timeout(roll.timeout)
                    .send()
                    .await
                    .map_err(|e| TargetError::Failed(format!("POST {url}{again}: {e}")))?;
                if answer.status().is_success() {
                    Ok((
                        Outcome::Done,
                        format!("POST {url} -> {}{again}", answer.status()),
                    ))
                } else {
                    let status = answer.status();
                    let body = answer.text().await.unwrap_or_default();
                    let said: String = body.trim().chars().take(200).collect();
                    Err(TargetError::Failed(format!(
                        "POST {url} answered {status}{again}: {said}"
                    )))
                }
            }
        }
    }

    /// Every Consul check of the box passes (node maintenance aside), without a break for
    /// `healthy_for`, within `healthy_timeout`.
    pub(crate) async fn healthy_box(&self, b: &BoxSettings) -> TargetResult {
        let roll = self.roll_settings()?;
        let deadline = Instant::now() + roll.healthy_timeout;
        let mut passing_since: Option<Instant> = None;
        loop {
            let mut problems = unhealthy(&self.consul, &[b])
                .await
                .map_err(TargetError::Failed)?;
            let instances = self.services_on(b).await.map_err(TargetError::Failed)?;
            if instances == 0 {
                problems.push(format!("no service is registered on node {} (yet)", b.node));
            }
            let now = Instant::now();
            if problems.is_empty() {
                let since = *passing_since.get_or_insert(now);
                if now - since >= roll.healthy_for {
                    return Ok((
                        Outcome::Done,
                        format!(
                            "every Consul check of node {} passed for {:?}",
                            b.node, roll.healthy_for
                        ),
                    ));
                }
            } else {
                passing_since = None;
            }
            if now >= deadline {
                let still = if problems.is_empty() {
                    format!(
                        "its checks had passed only since {:?}",
                        passing_since.map(|s| now - s).unwrap_or_default()
                    )
                } else {
                    problems.join("; ")
                };
                return Err(TargetError::VerifyTimeout(format!(
                    "not healthy for {:?} within {:?} (it stays drained): {still}",
                    roll.healthy_for, roll.healthy_timeout
                )));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The inventory's smoke URL for the box: a 2xx answer, with the expected text when set.
    pub(crate) async fn smoke_box(&self, b: &BoxSettings) -> TargetResult {
        let roll = self.roll_settings()?;
        let Some(template) = &roll.smoke_url else {
            return Ok((
                Outcome::Skipped,
                "no smoke_url in the [roll] table".to_string(),
            ));
        };
        let address = self
            .consul
            .catalog_node_services(&b.node)
            .await
            .map_err(|e| {
                TargetError::Failed(format!("reading node {} for its address: {e}", b.node))
            })?
            .map(|(node, _)| node.address)
            .ok_or_else(|| {
                TargetError::Failed(format!(
                    "Consul knows no node {}: no address for smoke_url",
                    b.node
                ))
            })?;
        let url = fill(template, b, Some(&address));
        let failed = |why: String| Err(TargetError::Failed(format!("GET {url}: {why}")));
        let answer = match self
            .http
            .get(&url)
            .timeout(self.env.step_timeout)
            .send()
            .await
        {
            Ok(answer) => answer,
            Err(e) => return failed(e.to_string()),
        };
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            return failed(format!("answered {status}"));
        }
        if let Some(expected) = roll.smoke_expect_body.as_deref() {
            if !body.contains(expected) {
                return failed(format!("the answer does not contain {expected:?}"));
            }
        }
        Ok((Outcome::Done, format!("GET {url} -> {status}")))
    }

    /// Node maintenance off, then every proxy whose pools follow a service of the box sends to
    /// it, healthy.
    pub(crate) async fn undrain_box(&self, b: &BoxSettings, resumed: bool) -> TargetResult {
        let (outcome, said) = self.node_maintenance(b, BoxState::Running, resumed).await?;
        let sending = self
            .wait_for_proxies(b, Way::Undrain, self.env.step_timeout)
            .await?;
        if sending == 0 {
            return Err(TargetError::Failed(format!(
                "{said}, but no pool of the proxies follows a Consul service of {}: nothing shows it back in the traffic",
                b.name
            )));
        }
        Ok((
            outcome,
            format!(
                "{said}; the proxies send to it ({} of a pool and an instance)",
                count(sending, "pair", "pairs")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BoxAccess, Role};

    fn check(id: &str, status: CheckStatus) -> HealthCheck {
        serde_json::from_value(serde_json::json!({
            "CheckID": id,
            "Status": status.as_str(),
            "ServiceID": if id.starts_with("service:") { "api-1" } else { "" },
        }))
        .unwrap()
    }

    #[test]
    fn a_box_serves_only_out_of_maintenance_all_checks_passing_with_a_service() {
        let passing = [
            check("serfHealth", CheckStatus::Passing),
            check("service:api-1", CheckStatus::Passing),
        ];
        assert!(serving(&passing, 1));
        assert!(!serving(&passing, 0), "no service to send to");
        assert!(!serving(&[], 1), "no check at all: an unknown node");
        let mut drained = passing.to_vec();
        drained.push(check(
            drawbridge_core::consul::NODE_MAINTENANCE_CHECK,
            CheckStatus::Critical,
        ));
        assert!(!serving(&drained, 1));
        let failing = [
            check("serfHealth", CheckStatus::Passing),
            check("service:api-1", CheckStatus::Critical),
        ];
        assert!(!serving(&failing, 1));
    }

    #[test]
    fn templates_name_the_box_its_node_and_address() {
        let b = BoxSettings {
            name: "api1".to_string(),
            role: Role::ApiUi,
            node: "node-a".to_string(),
            access: BoxAccess::ConsulAgent("http://10.0.1.10:8500".to_string()),
            ssh: None,
        };
        assert_eq!(
            fill("https://deploy/{box}/{node}", &b, None),
            "https://deploy/api1/node-a"
        );
        assert_eq!(
            fill("http://{address}:8080/healthz", &b, Some("10.0.1.10")),
            "http://10.0.1.10:8080/healthz"
        );
    }
}
