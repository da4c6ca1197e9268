//! TLS to upstream pools: the CA bundle and client certificate a pool names, read and checked
//! once at start into the objects Pingora's rustls connector takes; the peer a request or a
//! health check connects with; a health check that is a TLS handshake; and the reason a
//! handshake failed, in words, for the log.
//!
//! Pingora builds the handshake per new connection from the peer: the CA list (else the system
//! roots its connector loaded at start), the SNI, which is also the name verified, the client
//! certificate, and whether to verify at all. Nothing here reads a file after start.
//!
//! The files are read with the same PEM parser and key checks as the listeners' certificates
//! ([`crate::tls::load`]), but not with that function: it requires DNS names in the certificate,
//! which a client certificate may not have, and keeps the key as a signer, where Pingora takes
//! the key's bytes.

use crate::tls::{certified_key, pem_error, private_key, unexpired, PairProblem};
use async_trait::async_trait;
use pingora::connectors::TransportConnector;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use pingora::ErrorType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// How a pool's servers are spoken to over TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The name sent (SNI) and verified in the servers' certificates.
    pub sni: String,
    /// Whether the servers' certificates are verified (chain and name).
    pub verify: bool,
    /// The CAs of `ca_file`; `None`: the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// The client certificate chain and key of `client_cert` and `client_key`.
    pub client: Option<Arc<CertKey>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca_certificates", &self.ca.as_ref().map(|ca| ca.len()))
            .field("client", &self.client.as_ref().map(|c| c.to_string()))
            .finish()
    }
}

impl UpstreamTls {
    /// The peer for a server at `addr`; connections are shared only between peers of the same
    /// `group` (a pool's CA is not part of Pingora's connection-reuse key, so two pools with
    /// the same server and name but different CAs must not share them).
    pub fn peer(&self, addr: SocketAddr, group: u64) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = group;
        peer
    }
}

/// Reads the CA bundle `path`: every PEM certificate in it, each one rustls takes as a trust
/// anchor. The message of an error starts with what is wrong with the file.
///
/// # Errors
/// The file cannot be read, holds no certificate, or one does not parse or cannot be trusted.
pub fn read_ca_file(path: &Path) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let ders = certificates(&pem)?;
    let mut roots = RootCertStore::empty();
    for (i, der) in ders.iter().enumerate() {
        // Pingora adds each CA to a root store per connection: refuse here what it would refuse.
        roots
            .add(der.clone())
            .map_err(|e| format!("certificate {} cannot be used as a CA ({e})", i + 1))?;
    }
    Ok(ders
        .iter()
        .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
        .collect::<Vec<_>>()
        .into())
}

/// Which of a client certificate's two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPart {
    /// `client_cert`, the PEM chain.
    Cert,
    /// `client_key`, the PEM key.
    Key,
}

/// Reads the client certificate chain `cert` and its key `key` at time `now`: the chain
/// parses, its first certificate has not expired, the key is one TLS can sign with and is that
/// certificate's.
///
/// # Errors
/// The file the problem is in, with the problem.
pub fn read_client_pair(
    cert: &Path,
    key: &Path,
    now: OffsetDateTime,
) -> Result<Arc<CertKey>, (ClientPart, String)> {
    let cert_error = |message: String| (ClientPart::Cert, message);
    let key_error = |message: String| (ClientPart::Key, message);

    let pem = std::fs::read(cert).map_err(|e| cert_error(format!("cannot read it: {e}")))?;
    let chain = certificates(&pem).map_err(cert_error)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        cert_error(format!(
            "certificate 1 is not a valid X.509 certificate: {e}"
        ))
    })?;
    unexpired(leaf.validity().not_after.to_datetime(), now).map_err(cert_error)?;

    let der = private_key(key).map_err(key_error)?;
    // Pingora keeps the key as bytes and reads its kind back from them per connection.
    let raw = der.secret_der().to_vec();
    let again = PrivateKeyDer::try_from(raw.as_slice())
        .map_err(|e| key_error(format!("is not a key the TLS client can read back: {e}")))?;
    certified_key(chain.clone(), &again, cert).map_err(|problem| match problem {
        PairProblem::Cert(message) => cert_error(message),
        PairProblem::Key(message) => key_error(message),
    })?;
    let chain = chain.iter().map(|der| der.to_vec()).collect();
    Ok(Arc::new(CertKey::new(chain, raw)))
}

/// The certificates of a PEM text, each a valid X.509 certificate (Pingora parses them and
/// would panic on one that is not); at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM: {}", pem_error(&e)))?;
    if ders.is_empty() {
        return Err("holds no \"BEGIN CERTIFICATE\" block".to_string());
    }
    for (i, der) in ders.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(der) {
            return Err(format!(
                "certificate {} is not a valid X.509 certificate: {e}",
                i + 1
            ));
        }
    }
    Ok(ders)
}

/// A health check that completes a TLS handshake with the server, as requests do (name, CAs,
/// client certificate), and sends nothing: the `tcp` check of a TLS pool.
pub struct TlsHandshakeCheck {
    peer: HttpPeer,
    connector: TransportConnector,
}

impl TlsHandshakeCheck {
    /// A check connecting like `peer` (its address is replaced by each server's).
    pub fn new(peer: HttpPeer) -> TlsHandshakeCheck {
        TlsHandshakeCheck {
            peer,
            connector: TransportConnector::new(None),
        }
    }
}

#[async_trait]
impl HealthCheck for TlsHandshakeCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let mut peer = self.peer.clone();
        peer._address = target.addr.clone();
        // A new connection each time: a pooled one would prove nothing about the handshake.
        self.connector.new_stream(&peer).await.map(drop)
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

/// Why a connection to a TLS server failed, in words, when it failed in the handshake; `None`
/// for other errors (refused, timed out), which say so themselves.
///
/// Pingora's rustls connector gives the rustls error as text, the innermost cause in the
/// error's context (`TLS connect() failed: … cause: <rustls error>, SNI: <name>`): the reasons
/// are read from there.
pub fn handshake_failure(e: &pingora::Error) -> Option<String> {
    if !matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    ) {
        return None;
    }
    let context = e.context.as_ref().map_or("", |c| c.as_str());
    let cause = context
        .rsplit_once(", SNI: ")
        .map_or(context, |(cause, _)| cause);
    let cause = cause
        .rsplit_once("cause: ")
        .map_or(cause, |(_, cause)| cause);
    let cause = cause
        .strip_prefix("TLS connect() failed: ")
        .unwrap_or(cause)
        .trim();
    Some(if cause.is_empty() {
        format!("TLS handshake failed ({})", e.etype().as_str())
    } else {
        describe(cause)
    })
}

/// The words for a rustls handshake error as rustls writes it.
fn describe(cause: &str) -> String {
    if let Some(cert) = cause.strip_prefix("invalid peer certificate: ") {
        return match cert {
            "UnknownIssuer" => "TLS certificate not trusted (unknown issuer)".to_string(),
            "BadSignature" => "TLS certificate not trusted (bad signature)".to_string(),
            "Revoked" => "TLS certificate revoked".to_string(),
            _ if cert.starts_with("certificate not valid for name") => {
                let names = cert.split_once("; ").map_or(cert, |(_, names)| names);
                // rustls writes each name as `DnsName("a.example")`.
                let names = names.replace("DnsName(\"", "").replace("\")", "");
                format!("TLS certificate not valid for the name ({names})")
            }
            _ if cert == "Expired" || cert.starts_with("certificate expired") => {
                "TLS certificate expired".to_string()
            }
            _ if cert == "NotValidYet" || cert.starts_with("certificate not valid yet") => {
                "TLS certificate not valid yet".to_string()
            }
            other => format!("TLS certificate refused ({other})"),
        };
    }
    if let Some(alert) = cause.strip_prefix("received fatal alert: ") {
        return match alert {
            "CertificateRequired" => {
                "the server requires a client certificate (TLS alert CertificateRequired)"
                    .to_string()
            }
            "BadCertificate" | "UnknownCA" | "CertificateUnknown" | "AccessDenied" => {
                format!("the server refused the client certificate (TLS alert {alert})")
            }
            other => format!("the server ended the TLS handshake (TLS alert {other})"),
        };
    }
    format!("TLS handshake failed ({cause})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CertificateError, Error as RustlsError};
    use std::path::PathBuf;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/tls/testdata")
            .join(name)
    }

    /// The error Pingora's rustls connector returns for `error` in the handshake: tokio-rustls
    /// gives it as an I/O error, the TLS stream wraps that, and the connector writes the whole
    /// into its context.
    fn connect_error(error: RustlsError) -> Box<pingora::Error> {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        let stream =
            pingora::Error::because(ErrorType::TLSHandshakeFailure, "tls connect error", io);
        pingora::Error::explain(
            ErrorType::TLSHandshakeFailure,
            format!("TLS connect() failed: {stream}, SNI: api.internal"),
        )
    }

    #[test]
    fn handshake_failures_are_told_in_words() {
        let cases = [
            (
                RustlsError::InvalidCertificate(CertificateError::UnknownIssuer),
                "TLS certificate not trusted (unknown issuer)",
            ),
            (
                RustlsError::InvalidCertificate(CertificateError::BadSignature),
                "TLS certificate not trusted (bad signature)",
            ),
            (
                RustlsError::InvalidCertificate(CertificateError::Expired),
                "TLS certificate expired",
            ),
            (
                RustlsError::InvalidCertificate(CertificateError::UnhandledCriticalExtension),
                "TLS certificate refused (UnhandledCriticalExtension)",
            ),
            (
                RustlsError::AlertReceived(rustls::AlertDescription::CertificateRequired),
                "the server requires a client certificate (TLS alert CertificateRequired)",
            ),
            (
                RustlsError::AlertReceived(rustls::AlertDescription::UnknownCA),
                "the server refused the client certificate (TLS alert UnknownCA)",
            ),
            (
                RustlsError::NoCertificatesPresented,
                "TLS handshake failed (peer sent no certificates)",
            ),
        ];
        for (error, words) in cases {
            assert_eq!(
                handshake_failure(&connect_error(error)).as_deref(),
                Some(words)
            );
        }
        let refused = pingora::Error::explain(ErrorType::ConnectRefused, "refused");
        assert_eq!(handshake_failure(&refused), None);
        let setup = pingora::Error::explain(ErrorType::InvalidCert, "per-peer CA list is empty");
        assert_eq!(
            handshake_failure(&setup).as_deref(),
            Some("TLS handshake failed (per-peer CA list is empty)")
        );
    }

    #[test]
    fn a_name_mismatch_says_which_names_the_certificate_has() {
        let mismatch = CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("api.internal").unwrap(),
            presented: vec!["DnsName(\"other.internal\")".to_string()],
        };
        assert_eq!(
            handshake_failure(&connect_error(RustlsError::InvalidCertificate(mismatch))).as_deref(),
            Some("TLS certificate not valid for the name (certificate is only valid for other.internal)")
        );
    }

    #[test]
    fn a_ca_bundle_and_a_client_pair_load_into_what_the_connector_takes() {
        let ca = read_ca_file(&testdata("one.pem")).unwrap();
        assert_eq!(ca.len(), 2, "the leaf and its CA");
        let now = OffsetDateTime::now_utc();
        for (cert, key) in [
            ("one.pem", "one.key"),
            ("two.pem", "two.key"),
            ("rsa.pem", "rsa.key"),
        ] {
            let pair = read_client_pair(&testdata(cert), &testdata(key), now).unwrap();
            // What the connector does with the key on each connection must not fail.
            assert!(
                PrivateKeyDer::try_from(pair.key().clone()).is_ok(),
                "{cert}"
            );
        }
        let tls = UpstreamTls {
            sni: "api.internal".to_string(),
            verify: true,
            ca: Some(ca),
            client: None,
        };
        let addr = SocketAddr::Inet("127.0.0.1:4443".parse().unwrap());
        let peer = tls.peer(addr, 7);
        assert!(peer.is_tls());
        assert_eq!(peer.sni, "api.internal");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.group_key, 7);
    }
}
