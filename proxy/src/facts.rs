//! What the gate reads from a request: `RequestFacts`, a view of its header. Method, path and host
//! are read at once; the client address (with the X-Forwarded-For trust rules, resolved for every
//! request: the log and `X-Real-IP` carry it), the bypass token, the `Accept` preference and the
//! CORS headers only when asked.
//! Also the readers behind what the upstream receives: the bypass cookie found and cut out of
//! `Cookie` lines ([`has_cookie`], [`without_cookie`]), and the one `X-Forwarded-For` line that
//! joins every line the request carried ([`forwarded_for_chain`]).

use crate::config::{BypassSettings, CorsPolicy};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use ipnet::IpNet;
use pingora::http::RequestHeader;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// Where the client chain is read from and recorded (a constant, so no request parses the name).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the gate looks at in a request.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The URI's host, or else the `Host` header's.
    pub host: Option<&'a str>,
    /// The TCP peer; `None` when the client is not on TCP/IP.
    peer: Option<IpAddr>,
    headers: &'a HeaderMap,
}

/// A bypass token and where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub value: &'a str,
    /// Read from the cookie, because the request has no token header.
    pub in_cookie: bool,
}

impl<'a> RequestFacts<'a> {
    /// The facts of `req`, from the TCP peer `peer`.
    pub fn from_request(req: &'a RequestHeader, peer: Option<IpAddr>) -> RequestFacts<'a> {
        let headers = &req.headers;
        RequestFacts {
            method: &req.method,
            path: req.uri.path(),
            host: req
                .uri
                .host()
                .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok())),
            peer,
            headers,
        }
    }

    /// The client's address by the X-Forwarded-For trust rules ([`client_ip`]); `None` when it
    /// cannot be known.
    pub fn client_ip(&self, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
        self.peer.and_then(|peer| {
            client_ip(
                peer,
                self.headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(HeaderValue::as_bytes),
                trusted_proxies,
            )
        })
    }

    /// The bypass token: from the token header, or else from the cookie.
    pub fn token(&self, bypass: &BypassSettings) -> Option<Token<'a>> {
        if let Some(header) = self.headers.get(&bypass.header) {
            if let Ok(value) = header.to_str() {
                return Some(Token {
                    value,
                    in_cookie: false,
                });
            }
        }
        let cookies = self.headers.get_all(header::COOKIE).iter();
        cookie_value(cookies.map(HeaderValue::as_bytes), &bypass.cookie).map(|value| Token {
            value,
            in_cookie: true,
        })
    }

    /// Whether the client prefers JSON to HTML ([`prefers_json`]).
    pub fn prefers_json(&self) -> bool {
        prefers_json(self.headers.get(header::ACCEPT).map(HeaderValue::as_bytes))
    }

    /// The `Origin` header, which answers with CORS headers echo when the policy allows it.
    pub fn origin(&self) -> Option<&'a HeaderValue> {
        self.headers.get(header::ORIGIN)
    }

    /// Whether this is a CORS preflight: OPTIONS with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn is_preflight(&self) -> bool {
        *self.method == Method::OPTIONS
            && self.headers.contains_key(header::ORIGIN)
            && self
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// What a preflight asks to use: `Access-Control-Request-Method` and
    /// `Access-Control-Request-Headers`.
    pub fn preflight_asks(&self) -> (Option<&'a HeaderValue>, Option<&'a HeaderValue>) {
        (
            self.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD),
            self.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        )
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
///
/// `forwarded_for` yields the header lines in order. `None` means the client cannot be known (a
/// trusted proxy sent an entry that is not an address), and such a request gets no address-based
/// bypass.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !is_in(peer, trusted_proxies) {
        return Some(peer);
    }
    let mut client = peer;
    for line in forwarded_for.rev() {
        // Entry by entry: bytes that are not UTF-8 are garbage like any other, and only where
        // the walk reaches them (left of the client they are never read).
        for entry in line.rsplit(|&b| b == b',') {
            let entry = std::str::from_utf8(entry).ok()?.trim();
            if entry.is_empty() {
                continue;
            }
            client = parse_forwarded_addr(entry)?.to_canonical();
            if !is_in(client, trusted_proxies) {
                return Some(client);
            }
        }
    }
    Some(client)
}

/// An X-Forwarded-For entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Whether `ip` lies in one of `nets`.
pub fn is_in(ip: IpAddr, nets: &[IpNet]) -> bool {
    nets.iter().any(|net| net.contains(&ip))
}

/// One `;`-separated part of a `Cookie` line as name and value, ASCII white space trimmed
/// around both and around the `=` (the one reading both [`cookie_value`] and
/// [`without_cookie`] use, so that a cookie the proxy reads is a cookie it removes).
fn cookie_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = pair.iter().position(|&b| b == b'=')?;
    Some((pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()))
}

/// The value of cookie `name` in the request's `Cookie` header lines, if any.
pub fn cookie_value<'a>(
    cookie_lines: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a str> {
    cookie_lines
        .flat_map(|line| line.split(|&b| b == b';'))
        .filter_map(cookie_pair)
        .find(|(key, _)| *key == name.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .map(|value| value.trim_matches('"'))
}

/// Whether `pair` (one `;`-separated part of a `Cookie` line) is cookie `name`.
fn is_cookie(pair: &[u8], name: &[u8]) -> bool {
    cookie_pair(pair).is_some_and(|(key, _)| key == name)
}

/// Whether cookie `name` is in any of the request's `Cookie` lines. Reads bytes, so a line that
/// is not UTF-8 is searched too.
pub fn has_cookie<'a>(mut cookie_lines: impl Iterator<Item = &'a [u8]>, name: &str) -> bool {
    cookie_lines.any(|line| {
        line.split(|&b| b == b';')
            .any(|p| is_cookie(p, name.as_bytes()))
    })
}

/// `Cookie` line `line` without cookie `name`: the other pairs byte for byte, in order, joined
/// by `"; "`. `None` when the line does not carry `name` (keep it as it is); an empty value when
/// nothing else remains (drop the line).
pub fn without_cookie(line: &[u8], name: &str) -> Option<Vec<u8>> {
    let pairs = || line.split(|&b| b == b';');
    if !pairs().any(|p| is_cookie(p, name.as_bytes())) {
        return None;
    }
    let mut kept = Vec::with_capacity(line.len());
    for pair in pairs() {
        let pair = pair.trim_ascii();
        if pair.is_empty() || is_cookie(pair, name.as_bytes()) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    Some(kept)
}

/// The one `X-Forwarded-For` line to send upstream: every line of the request in order,
/// comma-joined (a second line, as a load balancer may add, is part of the chain, not to be
/// lost), then `peer`, the address the request came from. `None` when there is nothing to send.
pub fn forwarded_for_chain<'a>(
    forwarded_for: impl Iterator<Item = &'a [u8]>,
    peer: Option<IpAddr>,
) -> Option<Vec<u8>> {
    let mut chain = Vec::new();
    for line in forwarded_for {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(line);
    }
    if let Some(peer) = peer {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        // An address prints as ASCII; writing to a Vec cannot fail.
        let _ = write!(chain, "{peer}");
    }
    (!chain.is_empty()).then_some(chain)
}

/// Whether an `Accept` header prefers JSON over HTML: a JSON type (`application/json`,
/// `application/problem+json`, `*/*+json`) with a higher quality than any HTML type, or the same
/// quality and listed first. Wildcards count for neither.
pub fn prefers_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return false;
    };
    let mut best_json: Option<(f32, usize)> = None;
    let mut best_html: Option<(f32, usize)> = None;
    for (position, range) in accept.split(',').enumerate() {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if quality <= 0.0 {
            continue;
        }
        let slot = if media == "application/json" || media.ends_with("+json") {
            &mut best_json
        } else if media == "text/html" || media == "application/xhtml+xml" {
            &mut best_html
        } else {
            continue;
        };
        if slot.is_none_or(|(q, _)| quality > q) {
            *slot = Some((quality, position));
        }
    }
    match (best_json, best_html) {
        (Some(_), None) => true,
        (Some((jq, jp)), Some((hq, hp))) => jq > hq || (jq == hq && jp < hp),
        _ => false,
    }
}

/// The request's origin when the CORS policy allows it.
pub fn allowed_origin<'a>(
    policy: &CorsPolicy,
    origin: Option<&'a HeaderValue>,
) -> Option<&'a HeaderValue> {
    let origin = origin?;
    match policy {
        CorsPolicy::None => None,
        CorsPolicy::AnyOrigin => Some(origin),
        CorsPolicy::Origins(list) => {
            let text = origin.to_str().ok()?;
            list.iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(text))
                .then_some(origin)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use drawbridge_core::bypass;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(peer: &str, xff: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        client_ip(ip(peer), xff.iter().map(|l| l.as_bytes()), &nets(trusted))
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_ignored() {
        assert_eq!(
            resolve("203.0.113.9", &["10.0.0.1"], &[]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            resolve("203.0.113.9", &["10.0.0.1"], &["10.0.0.0/8"]),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let trusted = ["10.0.0.0/8"];
        // A client that writes its own X-Forwarded-For cannot choose what we believe.
        assert_eq!(
            resolve("10.0.0.2", &["192.168.1.1, 198.51.100.7"], &trusted),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve(
                "10.0.0.2",
                &["192.168.1.1", "198.51.100.7, 10.0.0.5"],
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve("10.0.0.2", &["198.51.100.7:4711"], &trusted),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve("10.0.0.2", &["[2001:db8::1]:443"], &trusted),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(resolve("10.0.0.2", &[], &trusted), Some(ip("10.0.0.2")));
        assert_eq!(
            resolve("10.0.0.2", &["10.0.0.9"], &trusted),
            Some(ip("10.0.0.9"))
        );
    }

    #[test]
    fn garbage_from_a_trusted_proxy_leaves_the_client_unknown() {
        assert_eq!(
            resolve("10.0.0.2", &["1.2.3.4, nonsense"], &["10.0.0.0/8"]),
            None
        );
        assert_eq!(resolve("10.0.0.2", &["unknown"], &["10.0.0.0/8"]), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_garbage_where_the_walk_reaches_them() {
        let trusted = nets(&["10.0.0.0/8"]);
        let resolve = |lines: &[&[u8]]| client_ip(ip("10.0.0.2"), lines.iter().copied(), &trusted);
        assert_eq!(resolve(&[b"\xff, 198.51.100.7"]), Some(ip("198.51.100.7")));
        assert_eq!(
            resolve(&[b"\xff", b"198.51.100.7"]),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(resolve(&[b"198.51.100.7\xff"]), None);
        assert_eq!(resolve(&[b"198.51.100.7, \xff"]), None);
        assert_eq!(resolve(&[b"198.51.100.7, 10.0.0.5\xff"]), None);
    }

    #[test]
    fn mapped_ipv6_addresses_are_compared_as_ipv4() {
        assert_eq!(
            resolve("::ffff:10.0.0.2", &["::ffff:198.51.100.7"], &["10.0.0.0/8"]),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn cookies_are_found_among_others() {
        let lines: Vec<&[u8]> = vec![b"a=1; drawbridge_bypass=tok.en; b=2"];
        assert_eq!(
            cookie_value(lines.into_iter(), "drawbridge_bypass"),
            Some("tok.en")
        );
        let lines: Vec<&[u8]> = vec![b"xdrawbridge_bypass=1"];
        assert_eq!(cookie_value(lines.into_iter(), "drawbridge_bypass"), None);
    }

    #[test]
    fn only_the_bypass_cookie_is_cut_out_of_a_line() {
        let cut = |line: &str| {
            without_cookie(line.as_bytes(), "drawbridge_bypass")
                .map(|kept| String::from_utf8(kept).unwrap())
        };
        assert_eq!(
            cut("a=1; drawbridge_bypass=tok.en; b=\"x y\""),
            Some("a=1; b=\"x y\"".into())
        );
        assert_eq!(cut("drawbridge_bypass=t"), Some(String::new()));
        assert_eq!(
            cut(" drawbridge_bypass=t ;drawbridge_bypass=u"),
            Some(String::new())
        );
        assert_eq!(cut("drawbridge_bypass=; a=1"), Some("a=1".into()));
        // Lines without our cookie stay as they are, names that only look alike included.
        assert_eq!(cut("a=1;b=2"), None);
        assert_eq!(cut("xdrawbridge_bypass=1; drawbridge_bypass_x=2"), None);
        assert_eq!(cut("drawbridge_bypass"), None);
    }

    #[test]
    fn a_cookie_the_proxy_reads_is_a_cookie_it_removes() {
        // Every form: the token read from it (or not), and the line cut (or not) alike.
        for (line, read) in [
            ("drawbridge_bypass =tok", Some("tok")),
            ("a=1;\tdrawbridge_bypass= tok ", Some("tok")),
            ("a=1;\u{a0}drawbridge_bypass=tok", None),
            ("drawbridge_bypass\u{a0}=tok", None),
            ("a=\"x\"; drawbridge_bypass=\"tok\"", Some("tok")),
        ] {
            let lines = [line.as_bytes()];
            assert_eq!(
                cookie_value(lines.into_iter(), "drawbridge_bypass"),
                read,
                "{line:?}"
            );
            let cut = without_cookie(line.as_bytes(), "drawbridge_bypass");
            assert_eq!(cut.is_some(), read.is_some(), "{line:?}");
            assert_eq!(
                has_cookie(lines.into_iter(), "drawbridge_bypass"),
                read.is_some(),
                "{line:?}"
            );
        }
    }

    #[test]
    fn the_bypass_cookie_is_found_in_any_line_even_one_that_is_not_utf8() {
        let lines: [&[u8]; 2] = [b"a=\xff", b"b=2; drawbridge_bypass=t"];
        assert!(has_cookie(lines.into_iter(), "drawbridge_bypass"));
        let lines: [&[u8]; 2] = [b"a=\xff; drawbridge_bypass=t", b"b=2"];
        assert!(has_cookie(lines.into_iter(), "drawbridge_bypass"));
        assert!(!has_cookie([&b"a=1"[..]].into_iter(), "drawbridge_bypass"));
        assert!(!has_cookie(std::iter::empty(), "drawbridge_bypass"));
    }

    #[test]
    fn every_forwarded_for_line_is_joined_before_the_peer() {
        let chain = |lines: &[&str], peer: Option<&str>| {
            forwarded_for_chain(lines.iter().map(|l| l.as_bytes()), peer.map(ip))
                .map(|c| String::from_utf8(c).unwrap())
        };
        assert_eq!(
            chain(&["203.0.113.9", "198.51.100.7"], Some("10.0.0.2")),
            Some("203.0.113.9, 198.51.100.7, 10.0.0.2".into())
        );
        assert_eq!(
            chain(&["203.0.113.9, 192.0.2.1", " ", "198.51.100.7"], None),
            Some("203.0.113.9, 192.0.2.1, 198.51.100.7".into())
        );
        assert_eq!(chain(&[], Some("::1")), Some("::1".into()));
        assert_eq!(chain(&[], None), None);
    }

    #[test]
    fn the_client_is_resolved_over_every_forwarded_for_line() {
        // The load balancer (trusted) appended its view in a second line; both lines count.
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            resolve("10.0.0.2", &["203.0.113.9", "198.51.100.7"], &trusted),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve("10.0.0.2", &["203.0.113.9", "10.0.0.7"], &trusted),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn json_is_chosen_only_when_preferred() {
        for (accept, json) in [
            (None, false),
            (Some("text/html,application/xhtml+xml,*/*;q=0.8"), false),
            (Some("application/json"), true),
            (Some("application/problem+json"), true),
            (Some("*/*"), false),
            (Some("text/html;q=0.5, application/json"), true),
            (Some("application/json;q=0.1, text/html"), false),
            (Some("application/json, text/html"), true),
            (Some("text/html, application/json"), false),
            (Some("application/json;q=0"), false),
        ] {
            assert_eq!(prefers_json(accept.map(str::as_bytes)), json, "{accept:?}");
        }
    }

    /// Bypass settings with the default header and cookie, 10.9.0.0/16 trusted, and no keys.
    pub(crate) fn bypass() -> BypassSettings {
        BypassSettings {
            trusted_cidrs: nets(&["10.9.0.0/16"]),
            trusted_proxies: vec![],
            header: HeaderName::from_static(bypass::DEFAULT_HEADER),
            cookie: bypass::DEFAULT_COOKIE.into(),
            environment: "test".into(),
            max_ttl: std::time::Duration::from_secs(3600),
            keyring: None,
        }
    }

    /// A request `method` `path` with these header lines.
    pub(crate) fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn the_host_comes_from_the_uri_or_else_the_header() {
        let req = request(Method::GET, "/a", &[("host", "shop.test:8080")]);
        let facts = RequestFacts::from_request(&req, None);
        assert_eq!((facts.host, facts.path), (Some("shop.test:8080"), "/a"));
        let mut req = request(Method::GET, "/b", &[("host", "shop.test")]);
        req.set_uri("http://api.test/b".parse().unwrap());
        assert_eq!(
            RequestFacts::from_request(&req, None).host,
            Some("api.test")
        );
    }

    #[test]
    fn the_token_header_wins_over_the_cookie() {
        let cookie = ("cookie", "a=1; drawbridge_bypass=from-cookie");
        let both = request(
            Method::GET,
            "/",
            &[("x-drawbridge-bypass", "from-header"), cookie],
        );
        assert_eq!(
            RequestFacts::from_request(&both, None).token(&bypass()),
            Some(Token {
                value: "from-header",
                in_cookie: false
            })
        );
        let only_cookie = request(Method::GET, "/", &[cookie]);
        assert_eq!(
            RequestFacts::from_request(&only_cookie, None).token(&bypass()),
            Some(Token {
                value: "from-cookie",
                in_cookie: true
            })
        );
        let none = request(Method::GET, "/", &[]);
        assert_eq!(
            RequestFacts::from_request(&none, None).token(&bypass()),
            None
        );
    }

    #[test]
    fn a_preflight_needs_options_origin_and_a_requested_method() {
        let asks = [
            ("origin", "https://a.test"),
            ("access-control-request-method", "POST"),
        ];
        let is_preflight = |method, headers| {
            RequestFacts::from_request(&request(method, "/", headers), None).is_preflight()
        };
        assert!(is_preflight(Method::OPTIONS, &asks));
        assert!(!is_preflight(Method::GET, &asks));
        assert!(!is_preflight(Method::OPTIONS, &asks[..1]));
    }

    #[test]
    fn origins_are_allowed_by_the_policy() {
        let origin = HeaderValue::from_static("https://Partner.test");
        let listed = CorsPolicy::Origins(vec!["https://partner.test".into()]);
        assert_eq!(allowed_origin(&listed, Some(&origin)), Some(&origin));
        assert_eq!(
            allowed_origin(&CorsPolicy::AnyOrigin, Some(&origin)),
            Some(&origin)
        );
        assert_eq!(allowed_origin(&CorsPolicy::None, Some(&origin)), None);
        let other = HeaderValue::from_static("https://evil.test");
        assert_eq!(allowed_origin(&listed, Some(&other)), None);
        assert_eq!(allowed_origin(&CorsPolicy::AnyOrigin, None), None);
    }
}
