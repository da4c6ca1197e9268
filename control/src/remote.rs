//! Reaching boxes: commands over the system's OpenSSH client (so the operator's `~/.ssh/config`,
//! agent, known hosts and jump hosts apply, host-key checking on), HTTP calls, and each box's
//! Consul agent. A box's state is read the LSB way: a check that exits 0 means running, 3 means
//! stopped, anything else is an error.

use crate::config::{BoxAccess, BoxSettings};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What a box's check says, and what a step wants a box to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxState {
    /// Serving: services running, jobs enabled, node not in maintenance.
    Running,
    /// Stopped: services stopped, jobs disabled, node in maintenance.
    Stopped,
}

/// The output of a remote command.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub code: Option<i32>,
    pub output: String,
}

/// Quotes a value for a POSIX shell.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Runs `command` on `destination` with ssh, within `timeout`; `MAINTCTL_REASON` is set for it.
///
/// # Errors
/// The ssh client cannot be started or the command does not finish in time.
pub async fn ssh(
    ssh_config: Option<&Path>,
    destination: &str,
    command: &str,
    reason: &str,
    timeout: Duration,
) -> Result<CommandOutput, String> {
    let mut cmd = tokio::process::Command::new("ssh");
    if let Some(config) = ssh_config {
        cmd.arg("-F").arg(config);
    }
    cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-T"])
        .arg(destination)
        .arg("--")
        .arg(format!(
            "MAINTCTL_REASON={} sh -c {}",
            shell_quote(reason),
            shell_quote(command)
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run ssh (is the OpenSSH client installed?): {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("ssh {destination}: `{command}` did not finish within {timeout:?}"))?
        .map_err(|e| format!("ssh {destination}: {e}"))?;
    let mut output = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !err.is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(&err);
    }
    // ssh itself exits 255 when it cannot reach or log in to the box.
    if out.status.code() == Some(255) {
        return Err(format!("ssh {destination}: cannot reach the box: {output}"));
    }
    Ok(CommandOutput {
        code: out.status.code(),
        output,
    })
}

/// Reads a box's state through its check (command or URL).
///
/// # Errors
/// The box cannot be reached, or the check answers neither running nor stopped.
pub async fn check(
    http: &reqwest::Client,
    ssh_config: Option<&Path>,
    b: &BoxSettings,
    reason: &str,
    timeout: Duration,
) -> Result<BoxState, String> {
    match &b.access {
        BoxAccess::Ssh {
            destination, check, ..
        } => {
            let out = ssh(ssh_config, destination, check, reason, timeout).await?;
            match out.code {
                Some(0) => Ok(BoxState::Running),
                Some(3) => Ok(BoxState::Stopped),
                code => Err(format!(
                    "{}: check `{check}` exited {} (0 = running, 3 = stopped): {}",
                    b.name,
                    code.map_or("by signal".to_string(), |c| c.to_string()),
                    out.output
                )),
            }
        }
        BoxAccess::Http { check_url, .. } => {
            let resp = http
                .get(check_url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| format!("{}: GET {check_url}: {e}", b.name))?;
            match resp.status().as_u16() {
                200 => Ok(BoxState::Running),
                503 => Ok(BoxState::Stopped),
                code => Err(format!(
                    "{}: GET {check_url} answered {code} (200 = running, 503 = stopped)",
                    b.name
                )),
            }
        }
        BoxAccess::ConsulAgent(_) => Err(format!(
            "{}: a Consul-agent box has no check command",
            b.name
        )),
    }
}

/// Runs a box's stop or start action.
///
/// # Errors
/// The box cannot be reached or the action fails (non-zero exit, non-2xx answer).
pub async fn act(
    http: &reqwest::Client,
    ssh_config: Option<&Path>,
    b: &BoxSettings,
    start: bool,
    reason: &str,
    timeout: Duration,
) -> Result<String, String> {
    match &b.access {
        BoxAccess::Ssh {
            destination,
            stop,
            start: start_cmd,
            ..
        } => {
            let command = if start { start_cmd } else { stop };
            let out = ssh(ssh_config, destination, command, reason, timeout).await?;
            if out.code == Some(0) {
                Ok(out.output)
            } else {
                Err(format!(
                    "{}: `{command}` exited {}: {}",
                    b.name,
                    out.code.map_or("by signal".to_string(), |c| c.to_string()),
                    out.output
                ))
            }
        }
        BoxAccess::Http {
            stop_url,
            start_url,
            ..
        } => {
            let url = if start { start_url } else { stop_url };
            let resp = http
                .post(url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| format!("{}: POST {url}: {e}", b.name))?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("{}: POST {url} answered {status}: {body}", b.name))
            }
        }
        BoxAccess::ConsulAgent(_) => Err(format!(
            "{}: a Consul-agent box has no stop/start commands",
            b.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
