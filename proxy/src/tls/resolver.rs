//! Choosing the certificate of a handshake by the name the client sent (SNI): an exact name
//! first, then a wildcard covering exactly one more label, then the default certificate (for
//! clients that send no name, an IP address, or a name no certificate has).

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates served, by name; replaced whole when a file is reloaded.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`: `*.example.com` is under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

/// A name claimed by two entries: the earlier one serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub name: String,
    /// The entry whose claim is ignored, and the one that serves the name.
    pub entry: usize,
    pub served_by: usize,
}

impl CertSet {
    /// The set of `entries` (each certificate with its names, in config order), with
    /// `entries[default]` for clients whose name matches none. A name claimed twice goes to the
    /// earlier entry; the later claims are returned.
    ///
    /// # Panics
    /// When `default` is not an index of `entries` (the config always has one).
    pub fn build(
        entries: &[(&[String], Arc<CertifiedKey>)],
        default: usize,
    ) -> (Self, Vec<Shadowed>) {
        let mut exact: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        let mut wildcard: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        let mut owners: HashMap<&str, usize> = HashMap::new();
        let mut shadowed = Vec::new();
        for (i, (names, certified)) in entries.iter().enumerate() {
            for name in names.iter() {
                if let Some(&served_by) = owners.get(name.as_str()) {
                    if served_by != i {
                        shadowed.push(Shadowed {
                            name: name.clone(),
                            entry: i,
                            served_by,
                        });
                    }
                    continue;
                }
                owners.insert(name, i);
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), certified.clone()),
                    None => exact.insert(name.clone(), certified.clone()),
                };
            }
        }
        let set = CertSet {
            exact,
            wildcard,
            default: entries[default].1.clone(),
        };
        (set, shadowed)
    }

    /// The certificate for a client that sent `server_name` (already a valid DNS name when
    /// rustls passes it on; compared without case and without a final dot).
    pub fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sent) = server_name else {
            return &self.default;
        };
        let trimmed = sent.strip_suffix('.').unwrap_or(sent);
        let lower;
        let name = if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = trimmed.to_ascii_lowercase();
            lower.as_str()
        } else {
            trimmed
        };
        if let Some(certified) = self.exact.get(name) {
            return certified;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// The handshake's certificate resolver: reads the set in force at each handshake, so a reload
/// takes effect for the next handshake and never touches connections already open.
#[derive(Debug)]
pub struct SniResolver(pub Arc<ArcSwap<CertSet>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(client_hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::sign::{Signer, SigningKey};
    use rustls::{SignatureAlgorithm, SignatureScheme};

    /// A key that never signs: the resolver only hands certificates out.
    #[derive(Debug)]
    struct NoKey;

    impl SigningKey for NoKey {
        fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
            None
        }

        fn algorithm(&self) -> SignatureAlgorithm {
            SignatureAlgorithm::ECDSA
        }
    }

    fn certificate(tag: u8) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![tag])],
            Arc::new(NoKey),
        ))
    }

    fn tag(certified: &CertifiedKey) -> u8 {
        certified.cert[0].as_ref()[0]
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    /// Entry 0: `a.test`; 1: `b.test` and `*.b.test`; 2: `*.w.test` and `a.test` again.
    fn set(default: usize) -> (CertSet, Vec<Shadowed>) {
        let a = names(&["a.test"]);
        let b = names(&["b.test", "*.b.test"]);
        let w = names(&["*.w.test", "a.test"]);
        CertSet::build(
            &[
                (a.as_slice(), certificate(0)),
                (b.as_slice(), certificate(1)),
                (w.as_slice(), certificate(2)),
            ],
            default,
        )
    }

    #[test]
    fn exact_names_pick_their_certificate_without_case_or_final_dot() {
        let (set, _) = set(0);
        assert_eq!(tag(set.pick(Some("a.test"))), 0);
        assert_eq!(tag(set.pick(Some("b.test"))), 1);
        assert_eq!(tag(set.pick(Some("B.Test."))), 1);
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let (set, _) = set(0);
        assert_eq!(tag(set.pick(Some("x.w.test"))), 2);
        assert_eq!(tag(set.pick(Some("X.W.TEST"))), 2);
        assert_eq!(tag(set.pick(Some("x.b.test"))), 1);
        // Not the parent itself, not two labels down.
        assert_eq!(tag(set.pick(Some("w.test"))), 0);
        assert_eq!(tag(set.pick(Some("y.x.w.test"))), 0);
    }

    #[test]
    fn no_name_or_an_unknown_one_gets_the_default() {
        for default in [0, 1, 2] {
            let (set, _) = set(default);
            assert_eq!(usize::from(tag(set.pick(None))), default);
            assert_eq!(usize::from(tag(set.pick(Some("other.test")))), default);
            assert_eq!(usize::from(tag(set.pick(Some("test")))), default);
        }
    }

    #[test]
    fn a_name_claimed_twice_goes_to_the_earlier_entry() {
        let (set, shadowed) = set(1);
        assert_eq!(tag(set.pick(Some("a.test"))), 0);
        assert_eq!(
            shadowed,
            [Shadowed {
                name: "a.test".into(),
                entry: 2,
                served_by: 0
            }]
        );
    }

    #[test]
    fn the_resolver_serves_the_set_in_force_at_each_handshake() {
        let (first, _) = set(0);
        let swap = Arc::new(ArcSwap::from_pointee(first));
        let resolver = SniResolver(swap.clone());
        assert_eq!(tag(resolver.0.load().pick(Some("a.test"))), 0);
        let a = names(&["a.test"]);
        let (second, _) = CertSet::build(&[(a.as_slice(), certificate(9))], 0);
        swap.store(Arc::new(second));
        assert_eq!(tag(resolver.0.load().pick(Some("a.test"))), 9);
    }
}
