//! Helpers both binaries' config files are checked with: every problem is collected with the key
//! it is about (so all are reported at once), durations are written like "30s", secrets come
//! inline or from a file, and bypass keys are read the same way for the signer and the verifier.

use crate::bypass::{BypassKey, Keyring};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every problem found in a config file, each with the key it is about.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.file.display())?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads a config file, parses its TOML into the file's raw form `F`, and checks that with
/// `check`, which notes problems instead of stopping at the first.
///
/// # Errors
/// The file cannot be read, is not TOML of the expected shape, or `check` noted problems.
pub fn load_config<F: DeserializeOwned, T>(
    path: &Path,
    check: impl FnOnce(F, &mut Problems) -> T,
) -> Result<T, ConfigError> {
    parse_config(path, &read_config(path)?, check)
}

/// The text of a config file.
///
/// # Errors
/// The file cannot be read, as a [`ConfigError`] that names it.
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![format!("cannot read the file: {e}")],
    })
}

/// As [`load_config`], from the file's text.
///
/// # Errors
/// As [`load_config`].
pub fn parse_config<F: DeserializeOwned, T>(
    path: &Path,
    text: &str,
    check: impl FnOnce(F, &mut Problems) -> T,
) -> Result<T, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let file: F = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
    let mut problems = Problems::default();
    let checked = check(file, &mut problems);
    problems.into_result(checked).map_err(fail)
}

/// The problems found in a config file, each as `key: what is wrong`.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

/// A `[[…keys]]` entry of a config file: a bypass signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBypassKey {
    pub id: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

impl Problems {
    /// Notes a problem with `key`.
    pub fn add(&mut self, key: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    /// Whether a problem about `key` was noted already.
    pub fn mentions(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.starts_with(key))
    }

    /// `value` when no problem was noted, else every problem.
    ///
    /// # Errors
    /// The list of problems, when there is at least one.
    pub fn into_result<T>(self, value: T) -> Result<T, Vec<String>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// A duration such as "500ms", "30s", "5m"; `default` when absent or (with a problem noted)
    /// when it does not parse.
    pub fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) => d,
                Err(e) => {
                    self.add(
                        key,
                        format!("{text:?} is not a duration like \"30s\" ({e})"),
                    );
                    default
                }
            },
        }
    }

    /// A secret given inline or in a file (trimmed); both at once is a problem.
    pub fn secret(
        &mut self,
        key: &str,
        inline: Option<String>,
        file: Option<&Path>,
    ) -> Option<String> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.add(key, "set either the value or the `_file`, not both");
                None
            }
            (Some(value), None) => Some(value),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_string()),
                Err(e) => {
                    self.add(key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// The Consul ACL token: from the file's `token`/`token_file`, else `CONSUL_HTTP_TOKEN`, else
    /// the file named by `CONSUL_HTTP_TOKEN_FILE`, as the consul CLI does.
    pub fn consul_token(
        &mut self,
        key: &str,
        inline: Option<String>,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        if let Some(token) = self.secret(key, inline, file) {
            return Some(token);
        }
        if let Some(token) = env("CONSUL_HTTP_TOKEN").filter(|t| !t.is_empty()) {
            return Some(token);
        }
        let path = env("CONSUL_HTTP_TOKEN_FILE")?;
        self.secret("CONSUL_HTTP_TOKEN_FILE", None, Some(Path::new(&path)))
    }

    /// The keyring of `[[<key>]]` entries; `None` when there are none (or they have problems).
    pub fn keyring(&mut self, key: &str, entries: Vec<FileBypassKey>) -> Option<Keyring> {
        let mut keys = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let field = format!("{key}[{i}]");
            let secret_key = format!("{field}.secret");
            let Some(secret) = self.secret(&secret_key, entry.secret, entry.secret_file.as_deref())
            else {
                if !self.mentions(&secret_key) {
                    self.add(&secret_key, "set `secret` or `secret_file`");
                }
                continue;
            };
            match BypassKey::new(&entry.id, secret.as_bytes()) {
                Ok(k) => keys.push(k),
                Err(e) => self.add(&field, e),
            }
        }
        if keys.is_empty() {
            return None;
        }
        Keyring::new(keys).map_err(|e| self.add(key, e)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_collected_with_their_keys() {
        let mut p = Problems::default();
        assert_eq!(
            p.duration("a.wait", Some("5m"), Duration::ZERO),
            Duration::from_secs(300)
        );
        p.duration("a.wait", Some("soon"), Duration::ZERO);
        p.secret("a.token", Some("x".into()), Some(Path::new("/f")));
        let all = p.into_result(()).unwrap_err();
        assert!(
            all[0].starts_with("a.wait: \"soon\" is not a duration"),
            "{all:?}"
        );
        assert!(all[1].starts_with("a.token: set either"), "{all:?}");
    }

    #[test]
    fn consul_token_falls_back_to_the_environment() {
        let mut p = Problems::default();
        let env = |name: &str| (name == "CONSUL_HTTP_TOKEN").then(|| "from-env".to_string());
        assert_eq!(
            p.consul_token("c.token", None, None, &env).as_deref(),
            Some("from-env")
        );
        assert_eq!(
            p.consul_token("c.token", Some("inline".into()), None, &env)
                .as_deref(),
            Some("inline")
        );
    }

    #[test]
    fn keyring_reports_each_bad_key() {
        let mut p = Problems::default();
        let keys = vec![
            FileBypassKey {
                id: "k1".into(),
                secret: Some("s".repeat(32)),
                secret_file: None,
            },
            FileBypassKey {
                id: "k2".into(),
                secret: Some("short".into()),
                secret_file: None,
            },
            FileBypassKey {
                id: "k3".into(),
                secret: None,
                secret_file: None,
            },
        ];
        p.keyring("bypass.keys", keys);
        let all = p.into_result(()).unwrap_err().join("\n");
        assert!(
            all.contains("bypass.keys[1]: bypass key `k2` secret has 5 bytes"),
            "{all}"
        );
        assert!(
            all.contains("bypass.keys[2].secret: set `secret` or `secret_file`"),
            "{all}"
        );
    }
}
