//! What the gate needs to know about a request, pulled from its header once: the client address
//! (with the X-Forwarded-For trust rules), the bypass token, and whether the client wants JSON.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

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
        let line = std::str::from_utf8(line).ok()?;
        for entry in line.rsplit(',') {
            let entry = entry.trim();
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

/// The value of cookie `name` in the request's `Cookie` header lines, if any.
pub fn cookie_value<'a>(
    cookie_lines: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a str> {
    for line in cookie_lines {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        for pair in line.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=') {
                if key == name {
                    return Some(value.trim_matches('"'));
                }
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
