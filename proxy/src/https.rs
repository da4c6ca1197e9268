//! HTTPS beside TLS itself: the plain listeners' redirect to HTTPS (`server.https_redirect`:
//! 308, path and query kept, to the TLS listener's port) and `Strict-Transport-Security` on
//! answers over TLS (`tls.hsts`). A plain request for an ACME HTTP-01 challenge or for one of
//! the proxy's own maintenance documents (`/.well-known/maintenance`, its calendar and banner)
//! is served where it came: a certificate authority fetches the first over HTTP, and partners
//! poll the others with whatever client they have.

use crate::decide::WellKnown;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::Result;

/// Where a certificate authority fetches an ACME HTTP-01 challenge: one token after it.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Whether a plain request for `path` is served where it came: the maintenance document, or an
/// ACME challenge (one base64url token, so that no `..` reaches another path through it).
fn served_plain(path: &str) -> bool {
    WellKnown::of(path).is_some()
        || path.strip_prefix(ACME_CHALLENGE).is_some_and(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What the edge does for HTTPS.
#[derive(Debug, Clone, Default)]
pub struct HttpsSettings {
    /// Plain requests are redirected to HTTPS on this port.
    pub redirect_port: Option<u16>,
    /// The `Strict-Transport-Security` value of every answer over TLS.
    pub hsts: Option<HeaderValue>,
}

/// Where a plain request for `target` (path and query) with host `host` is sent: `https://`,
/// the host without its port, `:port` unless 443, then `target`. `None` when the request is
/// served where it came: its path is an ACME challenge or the maintenance document, or it names
/// no usable host (none, or one with characters a host cannot have: the redirect must not
/// point elsewhere).
pub fn redirect_location(
    host: Option<&str>,
    path: &str,
    target: &str,
    port: u16,
) -> Option<String> {
    if served_plain(path) {
        return None;
    }
    let name = host_name(host?)?;
    let mut location = String::with_capacity(name.len() + target.len() + 16);
    location.push_str("https://");
    location.push_str(name);
    if port != 443 {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(if target.starts_with('/') { target } else { "/" });
    Some(location)
}

/// The name of a `Host` value without its port: a DNS name, an IPv4 address, or an IPv6
/// address in brackets. Anything else (userinfo, a path, spaces) is no host.
fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let inner = &host[1..end];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        &host[..=end]
    } else {
        let name = match host.split_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        name
    };
    (!name.is_empty()).then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The redirect answer: 308 (the method and body are kept by the client) to `location`, cached
/// by nobody (turning `https_redirect` off must take effect at once).
///
/// # Errors
/// Only if `location` is not a header value, which [`redirect_location`]'s output rules out.
pub fn redirect(location: &str) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build_no_case(308, Some(3))?;
    h.insert_header(header::LOCATION, location)?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    h.insert_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, target: &str, port: u16) -> Option<String> {
        let path = target.split('?').next().unwrap_or_default();
        redirect_location(host, path, target, port)
    }

    #[test]
    fn a_plain_request_goes_to_the_same_host_path_and_query_over_https() {
        assert_eq!(
            location(Some("shop.example:8080"), "/a/b?x=1&y=%20", 443).as_deref(),
            Some("https://shop.example/a/b?x=1&y=%20")
        );
        assert_eq!(
            location(Some("shop.example"), "/", 8443).as_deref(),
            Some("https://shop.example:8443/")
        );
        assert_eq!(
            location(Some("[2001:db8::1]:80"), "/x", 443).as_deref(),
            Some("https://[2001:db8::1]/x")
        );
        assert_eq!(
            location(Some("192.0.2.7"), "/x", 443).as_deref(),
            Some("https://192.0.2.7/x")
        );
    }

    #[test]
    fn acme_challenges_and_the_maintenance_document_are_served_plain() {
        for target in [
            "/.well-known/acme-challenge/tok3n_A-z",
            "/.well-known/maintenance",
            "/.well-known/maintenance?x",
            "/.well-known/maintenance.ics",
            "/.well-known/maintenance/banner",
        ] {
            assert_eq!(
                location(Some("shop.example"), target, 443),
                None,
                "{target}"
            );
        }
        for elsewhere in [
            "/.well-known/other",
            "/.well-known/maintenanceX",
            "/.well-known/maintenance/x",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../../account",
            "/.well-known/acme-challenge/a/b",
        ] {
            assert!(
                location(Some("shop.example"), elsewhere, 443).is_some(),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn a_host_that_could_point_elsewhere_is_not_redirected_to() {
        for host in [
            "",
            "evil.example/path",
            "user@evil.example",
            "a b",
            "shop.example:http",
            "shop.example:123456",
            "[::1",
            "[::1]x",
            "[]",
            "[zz::1]",
        ] {
            assert_eq!(location(Some(host), "/", 443), None, "{host:?}");
        }
        assert_eq!(location(None, "/", 443), None);
        // A target that is not origin-form still lands on the root of the host.
        assert_eq!(
            location(Some("shop.example"), "*", 443).as_deref(),
            Some("https://shop.example/")
        );
    }
}
