//! The one port allocator of the e2e harness: free loopback ports, never handed out twice in
//! one test run.
//!
//! Ports are drawn at random below the kernel's ephemeral range (read from
//! `/proc/sys/net/ipv4/ip_local_port_range`), then checked by binding TCP and UDP on the
//! address they are for. Ports from `bind(:0)` would come from the ephemeral range, where the
//! kernel also picks the source ports of outgoing connections: between our check and the
//! child's own bind, a test's HTTP client could take the port. Consul's serf and DNS ports need
//! UDP as well, hence the UDP check.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// Lowest port drawn; below are well-known and commonly configured ports.
const LOW: u16 = 20_000;

fn issued() -> &'static Mutex<HashSet<u16>> {
    static ISSUED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    ISSUED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The exclusive upper bound of drawn ports: the start of the ephemeral range, if sane.
fn high() -> u16 {
    static HIGH: OnceLock<u16> = OnceLock::new();
    *HIGH.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .filter(|&low| low > LOW + 2_000)
            .unwrap_or(32_768)
    })
}

/// A free TCP port on 127.0.0.1 (also free for UDP).
///
/// # Panics
/// When no free port is found after many tries (the machine is out of ports).
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A free port on `ip` (a 127.0.0.x address), free for both TCP and UDP and not handed out
/// before in this process.
///
/// # Panics
/// When no free port is found after many tries.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(LOW..high());
        let mut issued = issued().lock().unwrap_or_else(|e| e.into_inner());
        if issued.contains(&port) {
            continue;
        }
        let addr = SocketAddrV4::new(ip, port);
        let tcp = TcpListener::bind(addr);
        let udp = UdpSocket::bind(addr);
        if tcp.is_ok() && udp.is_ok() {
            issued.insert(port);
            return port;
        }
    }
    panic!("no free port on {ip} after 1000 tries")
}

/// The ports one Consul agent listens on (gRPC is disabled with `-grpc-port -1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsulPorts {
    /// The HTTP API (`-http-port`).
    pub http: u16,
    /// Serf LAN gossip, TCP and UDP (`-serf-lan-port`).
    pub serf_lan: u16,
    /// Serf WAN gossip, TCP and UDP (`-serf-wan-port`).
    pub serf_wan: u16,
    /// Server RPC (`-server-port`).
    pub server: u16,
    /// DNS, TCP and UDP (`-dns-port`).
    pub dns: u16,
}

impl ConsulPorts {
    /// Five fresh ports on `ip`.
    pub fn allocate(ip: Ipv4Addr) -> ConsulPorts {
        ConsulPorts {
            http: free_port_on(ip),
            serf_lan: free_port_on(ip),
            serf_wan: free_port_on(ip),
            server: free_port_on(ip),
            dns: free_port_on(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            assert!(seen.insert(free_port()));
        }
        let p = free_port_on(Ipv4Addr::new(127, 0, 0, 2));
        assert!(!seen.contains(&p));
        assert!((LOW..high()).contains(&p));
    }
}
