//! The certificates being served and the state of each entry's files: read again on SIGHUP
//! (all) or when a file changed (that entry), a new set published whole for the next
//! handshakes; a read that fails keeps the entry's previous certificate and is reported (log
//! line naming the file, `/status`, `drawbridge_tls_reload_errors_total`).

use super::load::{load, Fingerprint, Loaded};
use super::resolver::{CertSet, SniResolver};
use crate::config::TlsSettings;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use drawbridge_core::status::{CertificateStatus, TlsStatus};
use drawbridge_core::timestamp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// One `[[tls.certificates]]` entry and what is known of its files.
#[derive(Debug)]
struct Entry {
    cert: PathBuf,
    key: PathBuf,
    serving: Loaded,
    /// When `serving` was read.
    loaded_at: OffsetDateTime,
    /// The files (`cert`, `key`) as they were just before the last read.
    seen: [Option<Fingerprint>; 2],
    last_read_at: OffsetDateTime,
    /// Why the last read was refused, if it was.
    last_error: Option<String>,
}

impl Entry {
    /// The expiry gauge's labels of the certificate being served.
    fn gauge_labels(&self) -> [String; 2] {
        [
            self.cert.display().to_string(),
            self.serving.names.join(","),
        ]
    }
}

/// What one reload did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// Entries whose files were read and are now served.
    pub read: usize,
    /// Entries whose files were read and refused (their previous certificate is still served).
    pub refused: usize,
}

/// The TLS listeners' certificates.
pub struct Certificates {
    listen: Vec<SocketAddr>,
    entries: Mutex<Entries>,
    served: Arc<ArcSwap<CertSet>>,
    metrics: Arc<Metrics>,
}

/// The `[[tls.certificates]]` entries, and which one is the default.
struct Entries {
    list: Vec<Entry>,
    default: usize,
}

impl Entries {
    /// The entries of `settings`, as read by its check; each one's expiry gauge set.
    fn of(settings: &TlsSettings, metrics: &Metrics) -> Entries {
        let now = OffsetDateTime::now_utc();
        let list: Vec<Entry> = settings
            .certificates
            .iter()
            .map(|c| Entry {
                cert: c.cert.clone(),
                key: c.key.clone(),
                serving: c.loaded.clone(),
                loaded_at: now,
                seen: c.seen,
                last_read_at: now,
                last_error: None,
            })
            .collect();
        for entry in &list {
            let labels = entry.gauge_labels();
            metrics
                .tls_certificate_expiry
                .with_label_values(&[labels[0].as_str(), labels[1].as_str()])
                .set(entry.serving.not_after.unix_timestamp() as f64);
        }
        Entries {
            list,
            default: settings.default,
        }
    }

    /// The set the entries' certificates make.
    fn set(&self) -> CertSet {
        let list: Vec<_> = self
            .list
            .iter()
            .map(|e| (e.serving.names.as_slice(), e.serving.certified.clone()))
            .collect();
        CertSet::build(&list, self.default).0
    }
}

impl Certificates {
    /// The certificates `settings` read at start, served on `listen`.
    ///
    /// # Panics
    /// When `settings` has no certificate (the config check refuses a TLS listener without one).
    pub fn new(settings: &TlsSettings, listen: &[SocketAddr], metrics: Arc<Metrics>) -> Self {
        let entries = Entries::of(settings, &metrics);
        Certificates {
            listen: listen.to_vec(),
            served: Arc::new(ArcSwap::from_pointee(entries.set())),
            entries: Mutex::new(entries),
            metrics,
        }
    }

    /// Serves the entries of `settings` (read and checked by a reread of the config file) in
    /// place of the ones served: the list of `[[tls.certificates]]` changed.
    ///
    /// # Panics
    /// When `settings` has no certificate (the caller keeps the list served then).
    pub fn replace(&self, settings: &TlsSettings) {
        assert!(
            !settings.certificates.is_empty(),
            "an empty certificate list is never served"
        );
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for entry in &entries.list {
            let labels = entry.gauge_labels();
            let _ = self
                .metrics
                .tls_certificate_expiry
                .remove_label_values(&[labels[0].as_str(), labels[1].as_str()]);
        }
        *entries = Entries::of(settings, &self.metrics);
        self.served.store(Arc::new(entries.set()));
        tracing::info!(
            certificates = entries.list.len(),
            "the certificate list of the config file is served; new handshakes get it"
        );
    }

    /// The handshake's certificate resolver, following every reload.
    pub fn resolver(&self) -> Arc<SniResolver> {
        Arc::new(SniResolver(self.served.clone()))
    }

    /// Reads the files again: every entry's when `all` (SIGHUP), else only those of entries
    /// whose cert or key file changed since it was last read. Publishes the new set when an
    /// entry's read is served.
    pub fn reload(&self, all: bool) -> Reloaded {
        let now = OffsetDateTime::now_utc();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = Reloaded::default();
        for entry in entries.list.iter_mut() {
            let seen = [Fingerprint::of(&entry.cert), Fingerprint::of(&entry.key)];
            if !all && seen == entry.seen {
                continue;
            }
            entry.seen = seen;
            entry.last_read_at = now;
            match load(&entry.cert, &entry.key, now) {
                Ok(loaded) => {
                    let old = entry.gauge_labels();
                    entry.serving = loaded;
                    entry.loaded_at = now;
                    entry.last_error = None;
                    let new = entry.gauge_labels();
                    if old != new {
                        let _ = self
                            .metrics
                            .tls_certificate_expiry
                            .remove_label_values(&[old[0].as_str(), old[1].as_str()]);
                    }
                    self.metrics
                        .tls_certificate_expiry
                        .with_label_values(&[new[0].as_str(), new[1].as_str()])
                        .set(entry.serving.not_after.unix_timestamp() as f64);
                    tracing::info!(
                        cert = %entry.cert.display(),
                        names = %new[1],
                        not_after = %timestamp::seconds(entry.serving.not_after),
                        "TLS certificate read; new handshakes get it"
                    );
                    for warning in entry.serving.warnings(now) {
                        tracing::warn!(cert = %entry.cert.display(), "{warning}");
                    }
                    done.read += 1;
                }
                Err(e) => {
                    self.metrics.tls_reload_errors.inc();
                    tracing::error!(
                        cert = %entry.cert.display(),
                        key = %entry.key.display(),
                        "TLS certificate not reloaded, the one read at {} is still served: {e}",
                        timestamp::seconds(entry.loaded_at)
                    );
                    entry.last_error = Some(e.to_string());
                    done.refused += 1;
                }
            }
        }
        if done.read > 0 {
            self.served.store(Arc::new(entries.set()));
        }
        done
    }

    /// What `/status` shows of the TLS listeners.
    pub fn status(&self) -> TlsStatus {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        TlsStatus {
            listen: self.listen.iter().map(ToString::to_string).collect(),
            certificates: entries
                .list
                .iter()
                .enumerate()
                .map(|(i, e)| CertificateStatus {
                    cert: e.cert.display().to_string(),
                    key: e.key.display().to_string(),
                    default: i == entries.default,
                    names: e.serving.names.clone(),
                    not_before: timestamp::full(e.serving.not_before),
                    not_after: timestamp::full(e.serving.not_after),
                    loaded_at: timestamp::full(e.loaded_at),
                    last_read_at: timestamp::full(e.last_read_at),
                    last_error: e.last_error.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::tests::testdata;
    use super::*;
    use crate::config::CertificateSettings;
    use std::path::Path;
    use std::time::Duration;

    /// `one` and `two` copied into a fresh folder (so they can be changed), entry 1 the default.
    fn scene(dir: &Path) -> (Certificates, Arc<Metrics>) {
        std::fs::create_dir_all(dir).unwrap();
        let mut certificates = Vec::new();
        for name in ["one", "two"] {
            let cert = dir.join(format!("{name}.pem"));
            let key = dir.join(format!("{name}.key"));
            std::fs::copy(testdata(&format!("{name}.pem")), &cert).unwrap();
            std::fs::copy(testdata(&format!("{name}.key")), &key).unwrap();
            let loaded = load(&cert, &key, OffsetDateTime::now_utc()).unwrap();
            certificates.push(CertificateSettings {
                seen: [Fingerprint::of(&cert), Fingerprint::of(&key)],
                cert,
                key,
                loaded,
            });
        }
        let settings = TlsSettings {
            certificates,
            default: 1,
            watch_interval: Duration::from_secs(1),
            http2: true,
            hsts: None,
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        let listen = ["127.0.0.1:8443".parse().unwrap()];
        (
            Certificates::new(&settings, &listen, metrics.clone()),
            metrics,
        )
    }

    fn temp(test: &str) -> PathBuf {
        std::env::temp_dir().join(format!("drawbridge-tls-{test}-{}", std::process::id()))
    }

    fn names_served(certs: &Certificates, sni: &str) -> Vec<String> {
        let served = certs.served.load();
        let certified = served.pick(Some(sni));
        let entries = certs.entries.lock().unwrap();
        entries
            .list
            .iter()
            .find(|e| Arc::ptr_eq(&e.serving.certified, certified))
            .map(|e| e.serving.names.clone())
            .unwrap_or_default()
    }

    #[test]
    fn nothing_changed_reads_nothing_and_sighup_reads_everything() {
        let dir = temp("unchanged");
        let (certs, _) = scene(&dir);
        assert_eq!(certs.reload(false), Reloaded::default());
        assert_eq!(
            certs.reload(true),
            Reloaded {
                read: 2,
                refused: 0
            }
        );
        let status = certs.status();
        assert_eq!(status.listen, ["127.0.0.1:8443"]);
        assert!(status.certificates[1].default && !status.certificates[0].default);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_file_is_served_to_new_handshakes() {
        let dir = temp("changed");
        let (certs, metrics) = scene(&dir);
        assert_eq!(
            names_served(&certs, "rsa.example.test"),
            names_served(&certs, "two.example.test")
        );
        // Entry 0 becomes the RSA certificate.
        std::fs::copy(testdata("rsa.pem"), dir.join("one.pem")).unwrap();
        std::fs::copy(testdata("rsa.key"), dir.join("one.key")).unwrap();
        assert_eq!(
            certs.reload(false),
            Reloaded {
                read: 1,
                refused: 0
            }
        );
        assert_eq!(
            names_served(&certs, "rsa.example.test"),
            ["rsa.example.test"]
        );
        // `one.example.test` was shadowed by entry 0; now entry 1 serves it.
        assert_eq!(
            names_served(&certs, "one.example.test"),
            ["two.example.test", "one.example.test"]
        );
        let text = metrics.render();
        assert!(!text.contains("*.wild.example.test"), "{text}");
        assert!(text.contains("names=\"rsa.example.test\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_keeps_the_previous_certificate_and_is_reported() {
        let dir = temp("bad");
        let (certs, metrics) = scene(&dir);
        std::fs::write(dir.join("one.pem"), "not a certificate\n").unwrap();
        assert_eq!(
            certs.reload(false),
            Reloaded {
                read: 0,
                refused: 1
            }
        );
        assert_eq!(
            names_served(&certs, "one.example.test"),
            ["one.example.test", "*.wild.example.test"]
        );
        let status = certs.status();
        let error = status.certificates[0].last_error.clone().unwrap();
        assert!(
            error.contains("one.pem: holds no \"BEGIN CERTIFICATE\""),
            "{error}"
        );
        assert_eq!(
            status.certificates[0].names,
            ["one.example.test", "*.wild.example.test"]
        );
        assert_eq!(metrics.tls_reload_errors.get(), 1);
        // Unchanged since, so not read (nor counted) again; a fixed file clears the error.
        assert_eq!(certs.reload(false), Reloaded::default());
        std::fs::copy(testdata("one.pem"), dir.join("one.pem")).unwrap();
        assert_eq!(certs.reload(false).read, 1);
        assert_eq!(certs.status().certificates[0].last_error, None);
        assert_eq!(metrics.tls_reload_errors.get(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
