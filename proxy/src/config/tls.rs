//! `[tls]`: the certificates the TLS listeners (`server.tls_listen`) serve, each a PEM chain and
//! its PEM key, chosen by the name the client sends; and how often their files are looked at
//! for a change.
//!
//! Every file is read and checked here, so a bad one is refused at start (and by `--check`)
//! with its key named, never found by the listener: the chain parses, the key is the first
//! certificate's, the certificate has not expired and names at least one DNS name. A
//! certificate that is not valid yet or expires within 14 days is a warning.

use crate::tls::{CertSet, Fingerprint, Loaded};
use drawbridge_core::settings::Problems;
use http::HeaderValue;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    #[serde(default)]
    certificates: Vec<FileCertificate>,
    watch_interval: Option<String>,
    http2: Option<bool>,
    hsts: Option<String>,
}

/// A `[[tls.certificates]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertificate {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    default: bool,
}

/// The certificates, read and checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// In config order; empty when there is no TLS listener.
    pub certificates: Vec<CertificateSettings>,
    /// The index in `certificates` of the one served to clients whose name matches none: the
    /// entry with `default = true`, else the first.
    pub default: usize,
    /// How often the files are looked at for a change.
    pub watch_interval: Duration,
    /// ALPN offers `h2` before `http/1.1`: clients that can speak HTTP/2 do.
    pub http2: bool,
    /// `Strict-Transport-Security` on every answer over TLS.
    pub hsts: Option<HeaderValue>,
}

/// One `[[tls.certificates]]` entry, with what was read from its files.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The chain and key as read at start.
    pub loaded: Loaded,
    /// The files as they were just before that read (`cert`, `key`): a change from these is
    /// read again.
    pub seen: [Option<Fingerprint>; 2],
}

/// Checks `[tls]` against the TLS listeners, reading every certificate and key file at `now`.
pub(super) fn check_tls(
    t: FileTls,
    tls_listen: &[SocketAddr],
    now: OffsetDateTime,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> TlsSettings {
    let watch_interval = p.duration(
        "tls.watch_interval",
        t.watch_interval.as_deref(),
        Duration::from_secs(5),
    );
    if watch_interval < Duration::from_secs(1) || watch_interval > Duration::from_secs(3600) {
        p.add("tls.watch_interval", "must be between \"1s\" and \"1h\"");
    }
    let http2 = t.http2.unwrap_or(true);
    let hsts = t.hsts.as_deref().and_then(|value| check_hsts(value, p));
    if tls_listen.is_empty() {
        if hsts.is_some() {
            p.add(
                "tls.hsts",
                "is sent on answers over TLS, and there is no TLS listener: set server.tls_listen",
            );
        }
        if !t.certificates.is_empty() {
            p.add(
                "server.tls_listen",
                "[[tls.certificates]] are set but no TLS listener serves them: add an \"ip:port\" \
                 here or remove them",
            );
        }
        return TlsSettings {
            certificates: Vec::new(),
            default: 0,
            watch_interval,
            http2,
            hsts,
        };
    }
    if t.certificates.is_empty() {
        p.add(
            "tls.certificates",
            "server.tls_listen needs at least one certificate: add a [[tls.certificates]] entry \
             with `cert` and `key`",
        );
    }

    let mut default = None;
    let mut certificates = Vec::new();
    // The config index of each entry read.
    let mut indexes = Vec::new();
    for (i, entry) in t.certificates.into_iter().enumerate() {
        let key = |part: &str| format!("tls.certificates[{i}].{part}");
        if entry.default {
            match default {
                None => default = Some(i),
                Some(first) => p.add(
                    key("default"),
                    format!(
                        "only one certificate is the default, and tls.certificates[{first}] is"
                    ),
                ),
            }
        }
        let mut absolute = true;
        for (part, path) in [("cert", &entry.cert), ("key", &entry.key)] {
            if !path.is_absolute() {
                p.add(
                    key(part),
                    format!("{} must be an absolute path", path.display()),
                );
                absolute = false;
            }
        }
        if !absolute {
            continue;
        }
        let seen = [Fingerprint::of(&entry.cert), Fingerprint::of(&entry.key)];
        match crate::tls::load(&entry.cert, &entry.key, now) {
            Ok(loaded) => {
                for warning in loaded.warnings(now) {
                    warnings.push(format!(
                        "{}: {}: {warning}",
                        key("cert"),
                        entry.cert.display()
                    ));
                }
                certificates.push(CertificateSettings {
                    cert: entry.cert,
                    key: entry.key,
                    loaded,
                    seen,
                });
                indexes.push(i);
            }
            Err(e) => p.add(key(e.part.key_name()), e),
        }
    }
    let default = default
        .and_then(|i| indexes.iter().position(|&read| read == i))
        .unwrap_or(0);
    if !certificates.is_empty() {
        let entries: Vec<_> = certificates
            .iter()
            .map(|c| (c.loaded.names.as_slice(), c.loaded.certified.clone()))
            .collect();
        let (_, shadowed) = CertSet::build(&entries, default);
        for s in shadowed {
            warnings.push(format!(
                "tls.certificates[{}].cert: the name {:?} is also in tls.certificates[{}], which serves it",
                indexes[s.entry], s.name, indexes[s.served_by]
            ));
        }
    }
    TlsSettings {
        certificates,
        default,
        watch_interval,
        http2,
        hsts,
    }
}

/// A `Strict-Transport-Security` value: `max-age=<seconds>`, then `includeSubDomains` and
/// `preload` if wanted, separated by `;`.
pub(super) fn check_hsts(value: &str, p: &mut Problems) -> Option<HeaderValue> {
    let mut parts = value.split(';').map(str::trim);
    let max_age = parts
        .next()
        .and_then(|first| first.strip_prefix("max-age="));
    let valid = max_age.is_some_and(|secs| {
        !secs.is_empty() && secs.len() <= 10 && secs.bytes().all(|b| b.is_ascii_digit())
    }) && parts.all(|part| {
        part.eq_ignore_ascii_case("includeSubDomains") || part.eq_ignore_ascii_case("preload")
    });
    if !valid {
        p.add(
            "tls.hsts",
            format!(
                "{value:?} is not a Strict-Transport-Security value: write \"max-age=<seconds>\", then \"; includeSubDomains\" and \"; preload\" if wanted"
            ),
        );
        return None;
    }
    HeaderValue::from_str(value).ok()
}

#[cfg(test)]
mod tests {
    use super::super::{check, Config, Machine};
    use super::*;
    use drawbridge_core::settings::parse_config;
    use std::path::Path;

    /// The test certificates: `one` (one.example.test, *.wild.example.test; PKCS#8 key),
    /// `two` (two.example.test, one.example.test; SEC1 key), valid 2026 to 2126.
    fn testdata(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/tls/testdata")
            .join(name)
            .display()
            .to_string()
    }

    const MACHINE: Machine = Machine {
        host_name: || "testhost".to_string(),
        resolve: |_| None,
    };

    /// A config with `listen` and `tls_listen` (TOML arrays) and `tls` appended.
    fn config(listen: &str, tls_listen: &str, tls: &str) -> String {
        format!(
            r#"
            [server]
            listen = {listen}
            tls_listen = {tls_listen}
            pid_file = "/tmp/db.pid"
            upgrade_sock = "/tmp/db.sock"
            state_file = "/tmp/db-state.json"
            [consul]
            key = "drawbridge/test/gate"
            [pools.ui]
            servers = ["127.0.0.1:3000"]
            [[routes]]
            name = "ui"
            kind = "page"
            pool = "ui"
            {tls}
            "#
        )
    }

    fn entry(cert: &str, key: &str, default: bool) -> String {
        format!(
            "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\ndefault = {default}\n",
            testdata(cert),
            testdata(key)
        )
    }

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        parse_config(Path::new("test.toml"), text, |file, p| {
            check(file, p, &|_| None).finish(&MACHINE, p)
        })
        .map_err(|e| e.problems)
    }

    #[test]
    fn certificates_are_read_with_their_names_and_the_default() {
        let tls = format!(
            "{}{}",
            entry("one.pem", "one.key", false),
            entry("two.pem", "two.key", true)
        );
        let c = parse(&config(
            r#"["127.0.0.1:8080"]"#,
            r#"["127.0.0.1:8443"]"#,
            &tls,
        ))
        .unwrap();
        assert_eq!(c.server.tls_listen, ["127.0.0.1:8443".parse().unwrap()]);
        assert_eq!(c.tls.default, 1);
        assert_eq!(c.tls.watch_interval, Duration::from_secs(5));
        assert_eq!(
            c.tls.certificates[0].loaded.names,
            ["one.example.test", "*.wild.example.test"]
        );
        assert!(c.tls.certificates[1].seen.iter().all(Option::is_some));
        // Both name one.example.test: the first entry serves it.
        assert_eq!(
            c.warnings,
            [
                "tls.certificates[1].cert: the name \"one.example.test\" is also in \
              tls.certificates[0], which serves it"
            ]
        );
    }

    #[test]
    fn a_proxy_may_listen_on_tls_only_and_takes_its_service_id_from_it() {
        let c = parse(&config(
            "[]",
            r#"["127.0.0.1:8443"]"#,
            &entry("one.pem", "one.key", false),
        ))
        .unwrap();
        assert_eq!(c.tls.default, 0, "the first is the default");
        assert_eq!(c.consul.service_id, "drawbridge-testhost-8443");
        let err = parse(&config("[]", "[]", "")).unwrap_err();
        assert_eq!(
            err,
            ["server.listen: at least one \"ip:port\" listener is required (here or in server.tls_listen)"]
        );
    }

    #[test]
    fn listeners_and_certificates_go_together() {
        let err = parse(&config(
            r#"["127.0.0.1:8080"]"#,
            r#"["127.0.0.1:8443", "127.0.0.1:8080", "localhost:443"]"#,
            "",
        ))
        .unwrap_err();
        assert_eq!(
            err,
            [
                "server.tls_listen[1]: 127.0.0.1:8080 is also in server.listen: a port serves plain HTTP or TLS, not both",
                "server.tls_listen[2]: \"localhost:443\" is not an \"ip:port\" address",
                "tls.certificates: server.tls_listen needs at least one certificate: add a \
                 [[tls.certificates]] entry with `cert` and `key`",
            ]
        );
        let err = parse(&config(
            r#"["127.0.0.1:8080"]"#,
            "[]",
            &entry("one.pem", "one.key", false),
        ))
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].starts_with("server.tls_listen: [[tls.certificates]] are set"),
            "{err:?}"
        );
    }

    #[test]
    fn each_bad_file_is_refused_with_its_key() {
        let tls = format!(
            "{}{}{}{}[[tls.certificates]]\ncert = \"one.pem\"\nkey = {:?}\n[tls]\nwatch_interval = \"0s\"\n",
            entry("missing.pem", "one.key", false),
            entry("one.pem", "two.key", true),
            entry("one.key", "one.key", true),
            entry("two.pem", "one.pem", false),
            testdata("one.key"),
        );
        let err = parse(&config(
            r#"["127.0.0.1:8080"]"#,
            r#"["127.0.0.1:8443"]"#,
            &tls,
        ))
        .unwrap_err();
        let expected = [
            "tls.watch_interval: must be between \"1s\" and \"1h\"".to_string(),
            format!(
                "tls.certificates[0].cert: {}: cannot read it: ",
                testdata("missing.pem")
            ),
            format!(
                "tls.certificates[1].key: {}: is not the key of the certificate in {}",
                testdata("two.key"),
                testdata("one.pem")
            ),
            "tls.certificates[2].default: only one certificate is the default, and \
             tls.certificates[1] is"
                .to_string(),
            format!(
                "tls.certificates[2].cert: {}: holds no \"BEGIN CERTIFICATE\" block",
                testdata("one.key")
            ),
            format!(
                "tls.certificates[3].key: {}: holds no unencrypted private key",
                testdata("one.pem")
            ),
            "tls.certificates[4].cert: one.pem must be an absolute path".to_string(),
        ];
        assert_eq!(err.len(), expected.len(), "{err:#?}");
        for (got, want) in err.iter().zip(&expected) {
            assert!(
                got.starts_with(want.as_str()),
                "{got}\n  does not start with\n{want}"
            );
        }
    }

    /// `[tls]` with `one` checked at `now`.
    fn check_one_at(now: OffsetDateTime) -> (Vec<String>, Vec<String>) {
        let file = FileTls {
            certificates: vec![FileCertificate {
                cert: testdata("one.pem").into(),
                key: testdata("one.key").into(),
                default: false,
            }],
            ..FileTls::default()
        };
        let mut p = Problems::default();
        let mut warnings = Vec::new();
        let listen = ["127.0.0.1:8443".parse().unwrap()];
        check_tls(file, &listen, now, &mut p, &mut warnings);
        (p.into_result(()).err().unwrap_or_default(), warnings)
    }

    #[test]
    fn an_expired_certificate_is_refused_and_one_expiring_soon_is_a_warning() {
        let not_after = crate::tls::load(
            Path::new(&testdata("one.pem")),
            Path::new(&testdata("one.key")),
            OffsetDateTime::now_utc(),
        )
        .unwrap()
        .not_after;
        let (problems, _) = check_one_at(not_after + time::Duration::days(1));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(&format!(
                "tls.certificates[0].cert: {}: the certificate expired at 2126-",
                testdata("one.pem")
            )),
            "{problems:?}"
        );
        let (problems, warnings) = check_one_at(not_after - time::Duration::days(2));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("tls.certificates[0].cert: ")
                && warnings[0].ends_with("in 48 hours"),
            "{warnings:?}"
        );
    }
}
