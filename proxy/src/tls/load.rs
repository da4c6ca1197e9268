//! Reading one certificate entry: a PEM chain and its PEM key, checked before anything serves
//! them (the chain parses, the key is one rustls can sign with and belongs to the first
//! certificate, the certificate has not expired and names at least one DNS name).

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

/// How close to its expiry a certificate is warned about when it is read.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A certificate chain with its key, ready to serve, and what `/status` shows of it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The chain and the key, as the handshake takes them.
    pub certified: Arc<CertifiedKey>,
    /// The DNS names of the first certificate's subjectAltName, in lower case, in the
    /// certificate's order; wildcards as `*.example.com`.
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Which of an entry's two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The certificate chain file (`cert`).
    Cert,
    /// The private key file (`key`).
    Key,
}

impl Part {
    /// The config key of the file, in a `[[tls.certificates]]` entry.
    pub fn key_name(self) -> &'static str {
        match self {
            Part::Cert => "cert",
            Part::Key => "key",
        }
    }
}

/// Why an entry's files cannot be served; the message starts with the file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub part: Part,
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for LoadError {}

/// The time of a file's last change and what identifies its content enough to see it replaced:
/// a rename over it (a new inode) or a write in place (a new time or length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Fingerprint {
    /// The fingerprint of the file `path` names now (following symbolic links, so a link
    /// pointed at a new file counts as a change); `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Fingerprint {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

/// Reads and checks the chain in `cert` and the key in `key`, at time `now`.
///
/// # Errors
/// A file that cannot be read or holds no usable PEM, a key rustls cannot use or that is not the
/// first certificate's, a certificate that has expired or names no DNS name.
pub fn load(cert: &Path, key: &Path, now: OffsetDateTime) -> Result<Loaded, LoadError> {
    let cert_error = |message: String| LoadError {
        part: Part::Cert,
        file: cert.to_path_buf(),
        message,
    };
    let key_error = |message: String| LoadError {
        part: Part::Key,
        file: key.to_path_buf(),
        message,
    };

    let pem = std::fs::read(cert).map_err(|e| cert_error(format!("cannot read it: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("is not valid PEM: {}", pem_error(&e))))?;
    if chain.is_empty() {
        return Err(cert_error(
            "holds no \"BEGIN CERTIFICATE\" block".to_string(),
        ));
    }
    for (i, der) in chain.iter().enumerate().skip(1) {
        if let Err(e) = x509_parser::parse_x509_certificate(der) {
            return Err(cert_error(format!(
                "certificate {} of the chain is not a valid X.509 certificate: {e}",
                i + 1
            )));
        }
    }
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        cert_error(format!(
            "the first certificate is not a valid X.509 certificate: {e}"
        ))
    })?;
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    unexpired(not_after, now).map_err(cert_error)?;
    let names = dns_names(&leaf).map_err(cert_error)?;

    let der = private_key(key).map_err(key_error)?;
    let certified = certified_key(chain, &der, cert).map_err(|problem| match problem {
        PairProblem::Cert(message) => cert_error(message),
        PairProblem::Key(message) => key_error(message),
    })?;
    Ok(Loaded {
        certified: Arc::new(certified),
        names,
        not_before,
        not_after,
    })
}

/// Fails when a certificate valid until `not_after` has expired at `now`.
pub(crate) fn unexpired(not_after: OffsetDateTime, now: OffsetDateTime) -> Result<(), String> {
    if not_after <= now {
        return Err(format!(
            "the certificate expired at {}",
            drawbridge_core::timestamp::seconds(not_after)
        ));
    }
    Ok(())
}

/// The unencrypted private key in the PEM file `path`.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no unencrypted private key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
             or \"BEGIN EC PRIVATE KEY\"); encrypted keys are not supported"
                .to_string()
        }
        other => format!("is not valid PEM: {}", pem_error(&other)),
    })
}

/// A problem of a certificate chain with its key, and the file it is in.
pub(crate) enum PairProblem {
    Cert(String),
    Key(String),
}

/// `chain` (read from `cert`) with `key`: a key TLS can sign with, and the first certificate's.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
    cert: &Path,
) -> Result<CertifiedKey, PairProblem> {
    let signing = any_supported_type(key).map_err(|e| {
        PairProblem::Key(format!(
            "is not a key TLS can sign with (RSA, ECDSA P-256 or P-384, Ed25519): {e}"
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(PairProblem::Key(
            format!("is not the key of the certificate in {}", cert.display()),
        )),
        Err(e) => Err(PairProblem::Cert(format!("cannot be used: {e}"))),
    }
}

/// A PEM error in words (the parser's own message shows the marker lines as byte lists).
pub(crate) fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "the {:?} block has no END line",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "the line {:?} does not start a block",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    }
}

impl Loaded {
    /// What is worth a warning about a certificate that can be served at `now`: it is not valid
    /// yet, or it expires within [`EXPIRY_WARNING`].
    pub fn warnings(&self, now: OffsetDateTime) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.not_before > now {
            warnings.push(format!(
                "the certificate is not valid before {}: clients will refuse it until then",
                drawbridge_core::timestamp::seconds(self.not_before)
            ));
        }
        let left = self.not_after - now;
        if left < EXPIRY_WARNING {
            warnings.push(format!(
                "the certificate expires at {}, in {} hours",
                drawbridge_core::timestamp::seconds(self.not_after),
                left.whole_hours()
            ));
        }
        warnings
    }
}

/// The DNS names of a certificate's subjectAltName, in lower case: exact names, and wildcards
/// whose `*` is the whole first label. The common name is not used, as clients do not use it.
fn dns_names(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("its subjectAltName extension does not parse: {e}"))?;
    let mut names = Vec::new();
    for general in san.iter().flat_map(|san| &san.value.general_names) {
        let GeneralName::DNSName(raw) = general else {
            continue;
        };
        let name = raw.trim_end_matches('.').to_ascii_lowercase();
        if is_dns_name(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(
            "the certificate names no DNS name in its subjectAltName (the common name is not used)"
                .to_string(),
        );
    }
    Ok(names)
}

/// Whether `name` is a host name, or a wildcard `*.` followed by one with at least two labels
/// (`*.com` would cover a whole top-level domain, which no CA issues).
fn is_dns_name(name: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(rest) => rest.contains('.') && DnsName::try_from(rest).is_ok(),
        None => DnsName::try_from(name).is_ok(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/tls/testdata")
            .join(name)
    }

    /// 2030-01-01T00:00:00Z: the test certificates are valid from 2026 to 2126.
    pub(crate) fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
    }

    fn load_pair(cert: &str, key: &str) -> Result<Loaded, LoadError> {
        load(&testdata(cert), &testdata(key), now())
    }

    #[test]
    fn a_chain_and_its_key_load_with_their_names_in_lower_case() {
        let one = load_pair("one.pem", "one.key").unwrap();
        assert_eq!(one.names, ["one.example.test", "*.wild.example.test"]);
        assert_eq!(one.certified.cert.len(), 2, "the chain keeps its CA");
        let two = load_pair("two.pem", "two.key").unwrap();
        assert_eq!(two.names, ["two.example.test", "one.example.test"]);
        let rsa = load_pair("rsa.pem", "rsa.key").unwrap();
        assert_eq!(rsa.names, ["rsa.example.test"]);
        assert!(rsa.warnings(now()).is_empty());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_on_the_key() {
        let err = load_pair("one.pem", "two.key").unwrap_err();
        assert_eq!(err.part, Part::Key);
        assert!(
            err.to_string().ends_with(&format!(
                "two.key: is not the key of the certificate in {}",
                testdata("one.pem").display()
            )),
            "{err}"
        );
        let err = load_pair("rsa.pem", "one.key").unwrap_err();
        assert_eq!(err.part, Part::Key, "{err}");
    }

    #[test]
    fn files_without_the_expected_blocks_are_refused_on_their_key() {
        let err = load_pair("one.key", "one.key").unwrap_err();
        assert_eq!(err.part, Part::Cert);
        assert!(err.message.contains("no \"BEGIN CERTIFICATE\""), "{err}");
        let err = load_pair("one.pem", "one.pem").unwrap_err();
        assert_eq!(err.part, Part::Key);
        assert!(err.message.contains("no unencrypted private key"), "{err}");
        let err = load_pair("missing.pem", "one.key").unwrap_err();
        assert_eq!(err.part, Part::Cert);
        assert!(err.message.starts_with("cannot read it:"), "{err}");
        let err = load_pair("one.pem", "missing.key").unwrap_err();
        assert_eq!(err.part, Part::Key);
    }

    #[test]
    fn broken_pem_is_refused_in_words() {
        let dir = std::env::temp_dir().join(format!("drawbridge-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cut.pem");
        let pem = std::fs::read_to_string(testdata("two.pem")).unwrap();
        std::fs::write(&cert, &pem[..pem.len() / 2]).unwrap();
        let err = load(&cert, &testdata("two.key"), now()).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(err.part, Part::Cert);
        assert_eq!(
            err.message,
            "is not valid PEM: the \"CERTIFICATE\" block has no END line"
        );
    }

    #[test]
    fn a_certificate_without_dns_names_is_refused() {
        let err = load_pair("nosan.pem", "nosan.key").unwrap_err();
        assert_eq!(err.part, Part::Cert);
        assert!(err.message.contains("names no DNS name"), "{err}");
    }

    #[test]
    fn expired_certificates_are_refused_and_expiring_ones_warned_about() {
        let one = load_pair("one.pem", "one.key").unwrap();
        let after = one.not_after + time::Duration::seconds(1);
        let err = load(&testdata("one.pem"), &testdata("one.key"), after).unwrap_err();
        assert_eq!(err.part, Part::Cert);
        assert!(
            err.message.starts_with("the certificate expired at 21"),
            "{err}"
        );
        let soon = one.not_after - time::Duration::days(3);
        let warnings = one.warnings(soon);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("in 72 hours"), "{warnings:?}");
        let early = one.not_before - time::Duration::hours(1);
        assert!(one.warnings(early)[0].contains("not valid before"));
    }

    #[test]
    fn only_host_names_and_whole_label_wildcards_are_names() {
        for name in ["a.test", "*.a.test", "x-1.a.test"] {
            assert!(is_dns_name(name), "{name}");
        }
        for name in [
            "*.test",
            "a*.b.test",
            "*.*.b.test",
            "",
            "*",
            "a b.test",
            "127.0.0.1",
        ] {
            assert!(!is_dns_name(name), "{name}");
        }
    }
}
