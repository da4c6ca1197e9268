//! The TLS handshakes of the TLS listeners, done by the gatehouse rather than by Pingora's
//! listener: Pingora gives each handshake a fixed 60 s and logs every failed one as an error,
//! before any cap has counted the connection. Here the connection holds its place under the
//! caps from the accept, the handshake is held to `limits.header_timeout`, and a failed or late
//! one is counted and logged once a second like any refusal.

use anyhow::Context;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::listeners::ALPN;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use std::net::SocketAddr;
use std::sync::Arc;

use super::SniResolver;

/// The handshakes of the connections accepted on the TLS listeners.
pub struct TlsAcceptor {
    acceptor: Acceptor,
    /// The TLS listeners; Pingora sees them as plain TCP ones.
    listen: Vec<SocketAddr>,
}

impl TlsAcceptor {
    /// Handshakes with the certificates of `resolver`, TLS 1.2 and 1.3 (Pingora's rustls
    /// acceptor offers no others), and `h2` (when `http2`) then `http/1.1` in ALPN, for the
    /// connections accepted on `listen`.
    ///
    /// # Errors
    /// When Pingora's TLS settings cannot be made.
    pub fn new(
        resolver: Arc<SniResolver>,
        http2: bool,
        listen: Vec<SocketAddr>,
    ) -> anyhow::Result<TlsAcceptor> {
        // No file paths: with a resolver set, `build()` reads no file (the path-based set-up
        // would panic there on a bad file; ours were read and checked with the config).
        let mut settings = TlsSettings::intermediate("", "")
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("TLS listener settings")?;
        settings.set_cert_resolver(resolver);
        settings.set_alpn(if http2 { ALPN::H2H1 } else { ALPN::H1 });
        Ok(TlsAcceptor {
            acceptor: settings.build(),
            listen,
        })
    }

    /// Whether `stream` was accepted on a TLS listener (by the address it was accepted on).
    pub fn serves(&self, stream: &Stream) -> bool {
        let Some(local) = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
        else {
            return false;
        };
        self.listen.iter().any(|listen| {
            listen.port() == local.port()
                && (listen.ip().is_unspecified() || listen.ip() == local.ip().to_canonical())
        })
    }

    /// The TLS handshake on `stream`, a plain TCP connection.
    ///
    /// # Errors
    /// When the handshake fails, or `stream` is not a TCP connection.
    pub async fn handshake(&self, stream: Stream) -> pingora::Result<Stream> {
        let tcp = stream.into_any().downcast::<TcpStream>().map_err(|_| {
            pingora::Error::explain(
                pingora::ErrorType::InternalError,
                "a TLS listener gave a connection that is not plain TCP",
            )
        })?;
        let tls = self.acceptor.tls_handshake(*tcp).await?;
        Ok(Box::new(tls))
    }
}
