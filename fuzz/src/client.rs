//! The client address behind `X-Forwarded-For`, and the chain the proxy passes upstream.
//!
//! Input layout: a flags byte; the TCP peer (4 or 16 bytes); up to 7 trusted proxy networks
//! (a prefix byte, then 4 or 16 bytes); the rest is the `X-Forwarded-For` header lines, one per
//! `\n`-separated part. Flag bit 0: the peer is IPv6; bit 4: the peer is the first network's
//! address (so trusted); bits 1-3: the number of networks.

use super::input::Input;
use drawbridge::facts::{self, forwarded_for_chain};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `facts::client_ip` and `facts::forwarded_for_chain` on a fuzzed peer, trust list and header.
///
/// Checks:
/// * from an untrusted peer, the answer is the peer, whatever the header says;
/// * any other answer is an entry of the header with only trusted addresses (or blanks) to
///   its right, and is itself untrusted unless every entry is trusted;
/// * the answer is the documented rule's, computed here from the flat list of entries (bytes that
///   are not UTF-8 make only their own entry garbage);
/// * the chain sent upstream holds every line and then the peer, and an upstream that trusts
///   this proxy and the same networks reads the same client from it.
pub fn client_ip(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut peer = address(&mut input, flags & 1 == 1);
    let mut trusted = Vec::new();
    for _ in 0..(flags >> 1) & 7 {
        let prefix = input.u8();
        let net = if prefix & 0x80 == 0 {
            let addr = Ipv4Addr::from(<[u8; 4]>::try_from(padded(input.bytes(4), 4)).unwrap());
            IpNet::V4(Ipv4Net::new(addr, prefix % 33).expect("prefix within 0..=32"))
        } else {
            let addr = Ipv6Addr::from(<[u8; 16]>::try_from(padded(input.bytes(16), 16)).unwrap());
            IpNet::V6(Ipv6Net::new(addr, (prefix & 0x7f) % 129).expect("prefix within 0..=128"))
        };
        trusted.push(net);
    }
    if flags & 0x10 != 0 {
        if let Some(first) = trusted.first() {
            peer = first.addr();
        }
    }
    let lines: Vec<&[u8]> = input.rest().split(|&b| b == b'\n').collect();

    let got = facts::client_ip(peer, lines.iter().copied(), &trusted);
    let canonical_peer = peer.to_canonical();
    let peer_trusted = facts::is_in(canonical_peer, &trusted);
    if !peer_trusted {
        assert_eq!(
            got,
            Some(canonical_peer),
            "an untrusted peer's header was used"
        );
    }
    assert_eq!(got, documented_rule(canonical_peer, &lines, &trusted));
    if let Some(client) = got.filter(|&c| c != canonical_peer) {
        let entries = entries(&lines);
        let at = entries
            .iter()
            .rposition(|e| *e == Entry::Addr(client))
            .expect("the client is one of the entries");
        for right in &entries[at + 1..] {
            match right {
                Entry::Addr(addr) => assert!(facts::is_in(*addr, &trusted), "{addr} is untrusted"),
                Entry::Blank => {}
                Entry::Garbage => panic!("garbage right of the client"),
            }
        }
        let all_trusted = entries.iter().all(|e| match e {
            Entry::Blank => true,
            Entry::Addr(a) => facts::is_in(*a, &trusted),
            Entry::Garbage => false,
        });
        assert!(!facts::is_in(client, &trusted) || all_trusted);
    }

    check_chain(peer, &lines, &trusted, got);
}

/// What an upstream behind this proxy sees: the chain is every non-blank line, trimmed, and the
/// peer; read with this proxy trusted, it gives the client this proxy found.
fn check_chain(peer: IpAddr, lines: &[&[u8]], trusted: &[IpNet], got: Option<IpAddr>) {
    let chain = forwarded_for_chain(lines.iter().copied(), Some(peer)).expect("the peer at least");
    let mut expected: Vec<u8> = Vec::new();
    for line in lines
        .iter()
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
    {
        expected.extend_from_slice(line);
        expected.extend_from_slice(b", ");
    }
    expected.extend_from_slice(peer.to_string().as_bytes());
    assert_eq!(chain, expected);
    assert_eq!(
        forwarded_for_chain(lines.iter().copied(), None).is_none(),
        lines.iter().all(|l| l.trim_ascii().is_empty())
    );

    // Only comparable when the proxy's own address is not also written in the header.
    let this_proxy = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xd8b, 0, 0, 0, 0, 0x1));
    if peer.to_canonical() == this_proxy || entries(lines).contains(&Entry::Addr(this_proxy)) {
        return;
    }
    let mut upstream_trusts = trusted.to_vec();
    upstream_trusts.push(IpNet::from(this_proxy));
    let upstream = facts::client_ip(this_proxy, [chain.as_slice()].into_iter(), &upstream_trusts);
    assert_eq!(
        upstream, got,
        "the upstream reads another client from {chain:?}"
    );
}

/// The rule as the README states it, over the header's entries in order: from an untrusted peer,
/// the peer; else the rightmost entry that is not a trusted proxy, or the leftmost when all are;
/// unknown (`None`) when an entry reached on the way is not an address.
fn documented_rule(peer: IpAddr, lines: &[&[u8]], trusted: &[IpNet]) -> Option<IpAddr> {
    if !facts::is_in(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    for entry in entries(lines).into_iter().rev() {
        match entry {
            Entry::Blank => {}
            Entry::Garbage => return None,
            Entry::Addr(addr) if !facts::is_in(addr, trusted) => return Some(addr),
            Entry::Addr(addr) => client = addr,
        }
    }
    Some(client)
}

/// One comma-separated part of an `X-Forwarded-For` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Nothing but white space: skipped.
    Blank,
    /// An address, bare or with a port; IPv4-mapped IPv6 read as IPv4.
    Addr(IpAddr),
    /// Anything else, bytes that are not UTF-8 among them.
    Garbage,
}

/// Every entry of the header, line after line, in order.
fn entries(lines: &[&[u8]]) -> Vec<Entry> {
    lines
        .iter()
        .flat_map(|line| line.split(|&b| b == b','))
        .map(|raw| match std::str::from_utf8(raw).map(str::trim) {
            Ok("") => Entry::Blank,
            Ok(text) => text
                .parse::<IpAddr>()
                .ok()
                .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
                .map_or(Entry::Garbage, |ip| Entry::Addr(ip.to_canonical())),
            Err(_) => Entry::Garbage,
        })
        .collect()
}

fn address(input: &mut Input, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(<[u8; 16]>::try_from(padded(input.bytes(16), 16)).unwrap())
    } else {
        IpAddr::from(<[u8; 4]>::try_from(padded(input.bytes(4), 4)).unwrap())
    }
}

fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(len, 0);
    v
}
