//! Certificates for the TLS tests, made by the test itself with `rcgen`: a certificate
//! authority per test ([`TestCa`]) and the certificates it issues ([`Issued`]), written as PEM
//! files the way an operator's would be.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, as files, with the DER of the certificate (what a client sees).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

/// A certificate authority made for one test, in its folder (ECDSA P-256, valid 30 days).
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), what clients trust.
    pub cert: PathBuf,
}

/// How long every certificate of these tests is valid from now.
const VALID_FOR: Duration = Duration::days(30);

/// Parameters valid from a minute ago for [`VALID_FOR`], with the common name `name`.
fn params(names: &[&str], name: &str) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names)
        .unwrap_or_else(|e| panic!("certificate names for {name}: {e}"));
    params.distinguished_name.push(DnType::CommonName, name);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + VALID_FOR;
    params
}

/// A new ECDSA P-256 key.
fn new_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("an ECDSA P-256 key is made")
}

impl TestCa {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> TestCa {
        TestCa::named(dir, "drawbridge-e2e-ca")
    }

    /// A new CA in `dir` with the common name `name`: a CA that shares no name with another is
    /// unknown to a client trusting only that other (one with the same name is found, and its
    /// signature does not match).
    pub fn named(dir: &Path, name: &str) -> TestCa {
        let mut ca = params(&[], name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = new_key();
        let cert = ca.self_signed(&key).expect("the CA certificate is signed");
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        TestCa {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(ca, key),
            cert: path,
        }
    }

    /// Issues `<stem>.pem` and `<stem>.key` for DNS `names`, with common name `stem` (what
    /// `openssl s_client` shows as `subject=CN = <stem>`).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let key = new_key();
        let cert = params(names, stem)
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("certificate {stem} is signed: {e}"));
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}
