//! A Consul server that enforces ACLs (`default_policy = "deny"`), and what the ACL tests do with
//! it through Consul 1.8's ACL API: policies (`/v1/acl/policy`), tokens (`/v1/acl/token`) and
//! their revocation. Each token's secret is written to a file of its own, and the processes under
//! test get the file, never the secret, so no secret reaches a command line. Also: `maintctl` on
//! an inventory the test writes itself (with a token file), and the search for leaked secrets.
//!
//! ```ignore
//! let consul = AclConsul::start(&dir).await;
//! consul.policy("gate-read", r#"key "drawbridge/t/gate" { policy = "read" }"#).await;
//! let token = consul.token(&dir, "proxy", &["gate-read"]).await;
//! // the proxy gets CONSUL_HTTP_TOKEN_FILE=token.file; later:
//! consul.revoke(&token).await;
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drawbridge_core::consul::Client;
use rand::Rng;
use serde_json::{json, Value};

use crate::consul::ConsulServer;
use crate::maintctl::{maintctl_bin, run_to_end, MaintctlOutput, OPERATOR, RUN_DEADLINE};
use crate::process::TestDir;

/// How long an agent caches what a token may do (`acl.token_ttl`): a revoked token is refused
/// by an agent at most this long after the revocation (a server resolves tokens itself, at once).
pub const TOKEN_TTL: Duration = Duration::from_secs(2);

/// A single-node Consul server with ACLs enforced and every request without a token denied
/// (`default_policy = "deny"`), bootstrapped with a management token of the test's own
/// (`acl.tokens.master`, the name Consul 1.8 uses), which is also the agent's own token.
#[derive(Debug)]
pub struct AclConsul {
    pub server: ConsulServer,
    management: String,
    http: reqwest::Client,
}

/// A token Consul issued (or, from [`AclConsul::unknown_token`], one it never did), with the
/// file its secret is in.
#[derive(Debug, Clone)]
pub struct AclToken {
    /// The token's public id, which revokes it.
    pub accessor_id: String,
    pub secret: String,
    /// A file holding only the secret (mode 0600).
    pub file: PathBuf,
}

impl AclConsul {
    /// Starts the server in `dir` with ACLs on and waits until it is ready (its node registered
    /// with the management token, so ACLs are bootstrapped).
    ///
    /// # Panics
    /// As [`ConsulServer::start_with_config`].
    pub async fn start(dir: &TestDir) -> AclConsul {
        let management = random_uuid();
        let config = format!(
            r#"
acl {{
  enabled = true
  default_policy = "deny"
  down_policy = "extend-cache"
  enable_token_persistence = false
  token_ttl = "{}s"
  tokens {{
    master = "{management}"
    agent = "{management}"
  }}
}}
"#,
            TOKEN_TTL.as_secs()
        );
        let server = ConsulServer::start_with_config(dir, &config, &management).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client");
        AclConsul {
            server,
            management,
            http,
        }
    }

    /// A client with the management token (it may do anything).
    pub fn client(&self) -> Client {
        self.server.client()
    }

    /// The management token's secret, for the search for leaked secrets.
    pub fn management_secret(&self) -> &str {
        &self.management
    }

    /// Creates policy `name` with `rules` (HCL, e.g. `key "k" { policy = "read" }`).
    ///
    /// # Panics
    /// When Consul refuses it.
    pub async fn policy(&self, name: &str, rules: &str) {
        self.call(
            reqwest::Method::PUT,
            "/v1/acl/policy",
            Some(json!({"Name": name, "Rules": rules})),
        )
        .await;
    }

    /// Creates a token with `policies` (by name), its secret written to `<dir>/<name>.token`.
    ///
    /// # Panics
    /// When Consul refuses it, or the file cannot be written.
    pub async fn token(&self, dir: &TestDir, name: &str, policies: &[&str]) -> AclToken {
        let policies: Vec<Value> = policies.iter().map(|p| json!({"Name": p})).collect();
        let created = self
            .call(
                reqwest::Method::PUT,
                "/v1/acl/token",
                Some(json!({"Description": name, "Policies": policies})),
            )
            .await;
        let field = |f: &str| {
            created[f]
                .as_str()
                .unwrap_or_else(|| panic!("no {f} in the created token {name}"))
                .to_owned()
        };
        AclToken::in_file(dir, name, field("AccessorID"), field("SecretID"))
    }

    /// A token Consul never issued (Consul answers "ACL not found"), in `<dir>/<name>.token`.
    pub fn unknown_token(dir: &TestDir, name: &str) -> AclToken {
        AclToken::in_file(dir, name, String::new(), random_uuid())
    }

    /// Deletes `token`: from now on Consul answers "ACL not found" to it.
    ///
    /// # Panics
    /// When Consul refuses.
    pub async fn revoke(&self, token: &AclToken) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/acl/token/{}", token.accessor_id),
            None,
        )
        .await;
    }

    /// One call to the ACL API with the management token; its JSON answer.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.server.http_addr());
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Consul-Token", &self.management);
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let answer = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
    }
}

impl AclToken {
    fn in_file(dir: &TestDir, name: &str, accessor_id: String, secret: String) -> AclToken {
        let file = dir.join(format!("{name}.token"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", file.display()));
        writeln!(f, "{secret}").unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        AclToken {
            accessor_id,
            secret,
            file,
        }
    }
}

/// A random UUID (version 4 layout), the form Consul gives token secrets.
pub fn random_uuid() -> String {
    let n: u128 = rand::rng().random();
    let hex = format!(
        "{:032x}",
        (n & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Every `*.log` file directly in `dir` (the processes' output, and maintctl's runs), as
/// `(file name, content)`.
///
/// # Panics
/// When the directory cannot be read.
pub fn logs_in(dir: &Path) -> Vec<(String, String)> {
    let mut logs: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .map(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let bytes = std::fs::read(&path).unwrap_or_default();
            (
                name.into_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect();
    logs.sort();
    logs
}

/// The command line and the environment of process `pid`, NULs as spaces, as
/// `(what, text)` for [`secret_hits`].
pub fn process_texts(name: &str, pid: u32) -> Vec<(String, String)> {
    ["cmdline", "environ"]
        .iter()
        .map(|what| {
            let path = format!("/proc/{pid}/{what}");
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
            (
                format!("{name} {path}"),
                String::from_utf8_lossy(&bytes).replace('\0', " "),
            )
        })
        .collect()
}

/// Where each of `secrets` appears in `texts` (`(where, text)` pairs): `"<where> holds <the
/// secret's first 4 characters>…"` per hit, never the secret itself.
pub fn secret_hits(texts: &[(String, String)], secrets: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for (place, text) in texts {
        for secret in secrets {
            assert!(
                secret.len() >= 16,
                "a secret this short would match by chance"
            );
            if text.contains(secret) {
                hits.push(format!("{place} holds {}…", &secret[..4]));
            }
        }
    }
    hits
}

/// Runs `maintctl --config <config> <args>` to completion within [`RUN_DEADLINE`], with no
/// Consul variables or HTTP proxies of the developer's and `USER` = [`OPERATOR`]; its output is
/// kept in `dir` as `maintctl-acl-NN.log`.
///
/// # Panics
/// When it cannot be started or does not exit in time.
pub async fn run_maintctl(dir: &TestDir, config: &Path, args: &[&str]) -> MaintctlOutput {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let mut cmd = std::process::Command::new(maintctl_bin());
    cmd.arg("--config").arg(config).args(args);
    for var in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "MAINTCTL_CONFIG",
        "SUDO_USER",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("USER", OPERATOR).stdin(Stdio::null());
    let output = run_to_end(cmd, args, RUN_DEADLINE).await;
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let _ = std::fs::write(
        dir.join(format!("maintctl-acl-{n:02}.log")),
        output.to_string(),
    );
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_have_the_version_4_layout() {
        let id = random_uuid();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!("89ab".contains(&parts[3][..1]), "{id}");
        assert_ne!(random_uuid(), id);
    }

    #[test]
    fn a_secret_hit_names_the_place_not_the_secret() {
        let secret = "0123456789abcdef-secret";
        let texts = vec![
            ("a.log".to_owned(), format!("token={secret}")),
            ("b.log".to_owned(), "nothing".to_owned()),
        ];
        assert_eq!(secret_hits(&texts, &[secret]), ["a.log holds 0123…"]);
    }
}
