//! The test's HTTP client ([`test_client`]), its HTTPS variant ([`tls_test_client`]), and
//! reading its answers' headers ([`header`], [`retry_after`]).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Timeout of one request from the test client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A reqwest client for the tests: no redirects, no proxy, bounded, optionally bound to a
/// local address (e.g. 127.0.0.2, to be an untrusted client).
pub fn test_client(local_address: Option<IpAddr>) -> reqwest::Client {
    bounded_client()
        .local_address(local_address)
        .build()
        .expect("a client with these settings always builds")
}

/// As [`test_client`] from 127.0.0.1, speaking HTTP/2 from its first byte (h2c with prior
/// knowledge), as to a listener with `server.h2c`.
pub fn h2c_test_client() -> reqwest::Client {
    bounded_client()
        .http2_prior_knowledge()
        .build()
        .expect("a client with these settings always builds")
}

fn bounded_client() -> reqwest::ClientBuilder {
    // reqwest builds its TLS settings even for a plain client.
    drawbridge_core::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
}

/// An HTTPS client for the tests, as [`test_client`] from 127.0.0.1, that trusts only the CA
/// certificate in the PEM file `ca`, reaches each `(host, address)` of `hosts` at that address
/// (so the host name is the name it sends in SNI), offers `h2` and `http/1.1` in ALPN, and keeps the TLS details of each answer
/// (`reqwest::tls::TlsInfo` in its extensions: the certificate the server presented).
///
/// # Panics
/// When `ca` cannot be read or is not a PEM certificate.
pub fn tls_test_client(ca: &Path, hosts: &[(&str, SocketAddr)]) -> reqwest::Client {
    tls_client_builder(ca, hosts)
        .build()
        .expect("a client with these settings always builds")
}

/// As [`tls_test_client`], offering only `http/1.1` in ALPN.
pub fn tls_test_client_http1(ca: &Path, hosts: &[(&str, SocketAddr)]) -> reqwest::Client {
    tls_client_builder(ca, hosts)
        .http1_only()
        .build()
        .expect("a client with these settings always builds")
}

fn tls_client_builder(ca: &Path, hosts: &[(&str, SocketAddr)]) -> reqwest::ClientBuilder {
    drawbridge_core::install_crypto_provider();
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", ca.display()));
    let ca = reqwest::Certificate::from_pem(&pem)
        .unwrap_or_else(|e| panic!("{} is not a PEM certificate: {e}", ca.display()));
    let mut builder = bounded_client().tls_certs_only([ca]).tls_info(true);
    for (host, addr) in hosts {
        builder = builder.resolve(host, *addr);
    }
    builder
}

/// The value of header `name` of `answer` as text, if present.
pub fn header(answer: &reqwest::Response, name: &str) -> Option<String> {
    answer
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The `Retry-After` of `answer` in seconds.
///
/// # Panics
/// When it is missing or not a number of seconds.
pub fn retry_after(answer: &reqwest::Response) -> u64 {
    let value = header(answer, "retry-after").expect("the answer has Retry-After");
    value
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After {value:?} is not seconds: {e}"))
}
