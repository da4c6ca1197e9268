//! The contract `drawbridge` (the edge proxy) and `maintctl` (the control CLI) share.
//!
//! Whatever one binary writes and the other reads lives here, so the two cannot drift apart.
//!
//! # Layout
//! * `gate`: the gate document, the JSON value at the Consul key that switches the edge.
//! * `split`: the split document, which sends part of a route's clients to a second pool.
//! * `status`: the report the proxy serves on its admin `/status` and `maintctl` reads.
//! * `bypass`: the signed bypass token that lets operators through a closed gate.
//! * `consul`: a thin client for exactly the Consul endpoints both binaries use.
//! * `settings`: how both config files are checked (problems with their keys, durations, secrets).
//! * `timestamp`: RFC 3339 timestamps, to the precision their reader needs.
//! * `cli_docs`: the version string, man pages and shell completions of both binaries.
//!
//! # Glossary
//! * *gate*: the switch in front of a service; *mode*: `normal`, `maintenance` or `read_only`.
//! * *gate document*: the JSON at the key; *gate state*: the validated form a proxy serves from.
//! * *bypass*: a request that passes a closed gate (trusted address or valid token).
//! * *box*: a host `maintctl` acts on; *step*: one action of the take-down or restore procedure.

pub mod bypass;
pub mod cli_docs;
pub mod consul;
pub mod gate;
pub mod settings;
pub mod split;
pub mod status;
pub mod timestamp;
pub mod windows;

/// Installs ring as the process's TLS crypto provider, once: every rustls user in either binary
/// (Pingora, reqwest for HTTPS) then uses the same one, and none has to pick one at random.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is what this asks for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
