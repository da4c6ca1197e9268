//! Several Consul addresses behind one follower: reads go to one of them at a time, and a failure
//! that says "this one cannot serve now" moves every later read to the next one.
//!
//! A proxy is best given its host's local client agent first (Consul's advice: the agent keeps
//! track of the servers itself), then servers or other agents as fallbacks.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Client, Error};

/// Clients for a list of agent addresses, and which one is read from now.
#[derive(Debug)]
pub struct Failover {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Failover {
    /// Clients for `addresses`, in order, each sending `token`; the first one is read first.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] for an empty list or an address [`Client::new`] refuses.
    pub fn new(addresses: &[String], token: Option<String>) -> Result<Failover, Error> {
        if addresses.is_empty() {
            return Err(Error::InvalidAddress {
                address: String::new(),
                reason: "give at least one consul agent address".into(),
            });
        }
        let clients = addresses
            .iter()
            .map(|a| Client::new(a, token.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Failover {
            clients,
            current: AtomicUsize::new(0),
        })
    }

    /// The client to read from now, with its place in the list (give it back to
    /// [`Failover::move_on`] after a failed read).
    pub fn current(&self) -> (usize, &Client) {
        let at = self.current.load(Ordering::Relaxed) % self.clients.len();
        (at, &self.clients[at])
    }

    /// The first address's client: the one a proxy registers itself with (its own agent).
    pub fn first(&self) -> &Client {
        &self.clients[0]
    }

    /// Every address, normalized, in the configured order.
    pub fn addresses(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|c| c.address().to_owned())
            .collect()
    }

    /// After `error` from the client at `from`: moves to the next address when the error says
    /// this address cannot serve now (no connection, no answer in time, a broken connection, an
    /// agent without servers, too many connections) and there is another. An answer about the
    /// cluster (no leader, a 5xx while the servers elect one) or the request (ACL, decode) would
    /// be the same elsewhere. Returns whether reads now go elsewhere (another follower that
    /// failed on the same address may have moved first).
    pub fn move_on(&self, from: usize, error: &Error) -> bool {
        let cannot_serve = matches!(
            error,
            Error::Unreachable { .. }
                | Error::Timeout { .. }
                | Error::Transport { .. }
                | Error::NoServers { .. }
                | Error::TooManyConnections { .. }
        );
        if self.clients.len() < 2 || !cannot_serve {
            return false;
        }
        let next = (from + 1) % self.clients.len();
        match self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => true,
            Err(now) => now % self.clients.len() != from,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: u16) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 8500 + i))
            .collect()
    }

    fn unreachable_at(address: &str) -> Error {
        Error::Timeout {
            what: "kv get k".into(),
            address: address.into(),
            timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn moves_round_the_list_on_unavailable_errors() {
        let f = Failover::new(&addresses(3), None).unwrap();
        assert_eq!(f.current().1.address(), "http://127.0.0.1:8500");
        let seen: Vec<String> = (0..4)
            .map(|_| {
                let (at, client) = f.current();
                assert!(f.move_on(at, &unreachable_at(client.address())));
                f.current().1.address().to_owned()
            })
            .collect();
        assert_eq!(
            seen,
            [
                "http://127.0.0.1:8501",
                "http://127.0.0.1:8502",
                "http://127.0.0.1:8500",
                "http://127.0.0.1:8501"
            ]
        );
        assert_eq!(f.first().address(), "http://127.0.0.1:8500");
    }

    #[test]
    fn two_followers_failing_on_one_address_move_once() {
        let f = Failover::new(&addresses(3), None).unwrap();
        let error = unreachable_at("http://127.0.0.1:8500");
        assert!(f.move_on(0, &error));
        assert!(f.move_on(0, &error), "the second follower is elsewhere too");
        assert_eq!(f.current().0, 1);
    }

    #[test]
    fn stays_on_errors_another_address_would_give_too() {
        let f = Failover::new(&addresses(2), None).unwrap();
        let address = "http://127.0.0.1:8500".to_string();
        let what = "kv get k".to_string();
        let same_everywhere = [
            Error::AclDenied {
                what: what.clone(),
                address: address.clone(),
                body: "Permission denied".into(),
            },
            Error::NoLeader {
                what: what.clone(),
                address: address.clone(),
            },
            // A follower forwarding to a leader that just died.
            Error::Status {
                what,
                address,
                code: 500,
                body: "rpc error getting client: failed to get conn".into(),
            },
        ];
        for error in &same_everywhere {
            assert!(!f.move_on(0, error), "{error}");
        }
        assert_eq!(f.current().0, 0);
    }

    #[test]
    fn one_address_has_nowhere_to_go_and_none_is_refused() {
        let f = Failover::new(&addresses(1), None).unwrap();
        assert!(!f.move_on(0, &unreachable_at("http://127.0.0.1:8500")));
        assert_eq!(f.addresses().len(), 1);
        let err = Failover::new(&[], None).unwrap_err();
        assert!(err.to_string().contains("at least one"), "{err}");
    }
}
