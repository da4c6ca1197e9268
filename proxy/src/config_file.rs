//! The config file read again on SIGHUP (`systemctl reload`). The list of `[[tls.certificates]]`
//! is applied live (entries added, removed, moved, the default changed); every other change
//! waits for the zero-downtime restart (SIGUSR2), and is reported so: a log line naming the
//! sections, `/status` (`config.restart_needed`) and `drawbridge_config_restart_needed`. A file
//! that does not pass the check changes nothing and is reported with its problems.

use crate::config::{Config, TlsSettings};
use crate::metrics::Metrics;
use drawbridge_core::status::ConfigStatus;
use drawbridge_core::timestamp;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// The config file and what the process serves of it.
pub struct ConfigFile {
    path: PathBuf,
    state: Mutex<FileState>,
    metrics: Arc<Metrics>,
}

struct FileState {
    /// The sections as served: as read at start, with the certificate lists applied since.
    serving: toml::Table,
    status: ConfigStatus,
}

/// The keys a zero-downtime restart cannot change: the listening sockets handed over, and the
/// upgrade socket they are handed over on.
const HANDED_OVER: [(&str, &str); 4] = [
    ("server", "listen"),
    ("server", "tls_listen"),
    ("server", "upgrade_sock"),
    ("admin", "listen"),
];

/// The key of the certificate list in `[tls]`.
const CERTIFICATES: &str = "certificates";

impl ConfigFile {
    /// `sections`: the file's sections as read at start.
    pub fn new(path: PathBuf, sections: toml::Table, metrics: Arc<Metrics>) -> Self {
        let status = ConfigStatus {
            file: path.display().to_string(),
            reread_at: None,
            last_error: None,
            restart_needed: Vec::new(),
        };
        ConfigFile {
            path,
            state: Mutex::new(FileState {
                serving: sections,
                status,
            }),
            metrics,
        }
    }

    /// Reads the file again. Returns the certificate settings to serve when the list of
    /// `[[tls.certificates]]` changed and `certificates_live` (the proxy has TLS listeners);
    /// without them, such a change waits for the restart too.
    pub fn reread(&self, certificates_live: bool) -> Option<TlsSettings> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.status.reread_at = Some(timestamp::full(OffsetDateTime::now_utc()));
        let reread = match Config::reread(&self.path) {
            Ok(reread) => reread,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!("SIGHUP: the config file is not applied, nothing changed: {e}");
                state.status.last_error = Some(e.to_string());
                return None;
            }
        };
        state.status.last_error = None;
        let new_certificates = certificates_of(&reread.sections);
        // An empty list (TLS taken out of the file) cannot be served: it waits for the restart,
        // which stops the TLS listeners too.
        let apply = certificates_live
            && !reread.tls.certificates.is_empty()
            && certificates_of(&state.serving) != new_certificates;
        if apply {
            set_certificates(&mut state.serving, new_certificates);
        }
        let restart_needed = changed_sections(&state.serving, &reread.sections);
        self.metrics
            .config_reloads
            .with_label_values(&["read"])
            .inc();
        self.metrics
            .config_restart_needed
            .set(i64::from(!restart_needed.is_empty()));
        if restart_needed.is_empty() {
            tracing::info!(
                certificates_applied = apply,
                "SIGHUP: the config file was read again"
            );
        } else {
            tracing::warn!(
                certificates_applied = apply,
                "SIGHUP: the config file was read again; changes in [{}] apply at the next \
                 restart (SIGUSR2, without dropping a connection)",
                restart_needed.join(", ")
            );
        }
        state.status.restart_needed = restart_needed;
        apply.then_some(reread.tls)
    }

    /// Whether a zero-downtime restart can take the file as it is now: it passes its check,
    /// and names the listeners and the upgrade socket this process has (a restart hands over
    /// the sockets it has, and waits on the upgrade socket it knows).
    ///
    /// # Errors
    /// What stands in the way, and what to do instead.
    pub fn check_for_restart(&self) -> Result<(), String> {
        let reread = Config::reread(&self.path)
            .map_err(|e| format!("the config file does not pass its check: {e}"))?;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<String> = HANDED_OVER
            .iter()
            .filter(|(section, key)| {
                let value = |t: &toml::Table| t.get(*section).and_then(|s| s.get(*key)).cloned();
                value(&state.serving) != value(&reread.sections)
            })
            .map(|(section, key)| format!("{section}.{key}"))
            .collect();
        if changed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} changed in the config file: a zero-downtime restart hands over the \
                 sockets this process has; use `systemctl restart drawbridge`, or put them back",
                changed.join(", ")
            ))
        }
    }

    /// What `/status` shows of the file.
    pub fn status(&self) -> ConfigStatus {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.status.clone()
    }
}

fn certificates_of(sections: &toml::Table) -> Option<&toml::Value> {
    sections.get("tls")?.get(CERTIFICATES)
}

fn set_certificates(sections: &mut toml::Table, certificates: Option<&toml::Value>) {
    let tls = sections
        .entry("tls")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(tls) = tls {
        match certificates {
            Some(list) => tls.insert(CERTIFICATES.to_string(), list.clone()),
            None => tls.remove(CERTIFICATES),
        };
    }
}

/// The top-level sections that differ between `serving` and `read`, sorted; an empty section
/// and no section are the same (every key has its default).
fn changed_sections(serving: &toml::Table, read: &toml::Table) -> Vec<String> {
    let empty = toml::Value::Table(toml::Table::new());
    let mut names: Vec<&String> = serving.keys().chain(read.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| serving.get(*name).unwrap_or(&empty) != read.get(*name).unwrap_or(&empty))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_sections_that_differ_are_named() {
        let serving = table("[server]\nthreads = 2\n[limits]\nmax_headers = 100\n[admin]\n");
        let read =
            table("[server]\nthreads = 4\n[limits]\nmax_headers = 100\n[pools.a]\nservers = []\n");
        assert_eq!(changed_sections(&serving, &read), ["pools", "server"]);
        assert!(changed_sections(&serving, &serving).is_empty());
    }

    #[test]
    fn a_new_certificate_list_replaces_the_served_one_only() {
        let mut serving = table("[tls]\nhttp2 = true\n[[tls.certificates]]\ncert = \"/a.pem\"\n");
        let read = table(
            "[tls]\nhttp2 = false\n[[tls.certificates]]\ncert = \"/a.pem\"\n[[tls.certificates]]\ncert = \"/b.pem\"\n",
        );
        set_certificates(&mut serving, certificates_of(&read));
        assert_eq!(certificates_of(&serving), certificates_of(&read));
        // The other keys of [tls] still differ: they wait for the restart.
        assert_eq!(changed_sections(&serving, &read), ["tls"]);
        set_certificates(&mut serving, None);
        assert_eq!(certificates_of(&serving), None);
    }
}
