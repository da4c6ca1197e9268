//! The steps of `maintctl roll` for one api_ui box: drain it (node maintenance on, then every
//! proxy sends it nothing and has nothing in flight to it), replace or upgrade it with the
//! inventory's command or call, wait until its Consul checks pass for `healthy_for` at a
//! stretch, smoke-test it directly, and undrain it (node maintenance off, then every proxy sends
//! to it again, healthy). Each waits within its own deadline and says what was still waited for.

use crate::config::{BoxSettings, RollAction, RollSettings};
use crate::output::Outcome;
use crate::remote::{self, BoxState};
use crate::steps::{count, wait_until, Context, TargetError, TargetResult, POLL_EVERY};
use crate::traffic::{edge_problems, target, unhealthy, Way};
use std::time::{Duration, Instant};

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

    /// How long one target of a step of `kind` may take in all: its action and its waits.
    pub(crate) fn target_deadline(&self, kind: &crate::plan::StepKind) -> Duration {
        use crate::plan::StepKind;
        let roll = self.env.roll.as_ref();
        let wait = match (kind, roll) {
            (StepKind::Replace, Some(r)) => r.timeout,
            (StepKind::Healthy, Some(r)) => r.healthy_timeout,
            _ => self.env.step_timeout,
        };
        wait + self.env.verify_timeout
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
                    Err(TargetError::Failed(format!(
                        "POST {url} answered {}{again}",
                        answer.status()
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
            let problems = unhealthy(&self.consul, &[b])
                .await
                .map_err(TargetError::Failed)?;
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
            .await?
            .map(|(node, _)| node.address);
        let url = fill(template, b, address.as_deref());
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
