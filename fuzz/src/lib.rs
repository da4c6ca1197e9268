//! The bodies of the fuzz targets: each takes the fuzzer's bytes, feeds them to one parser and
//! checks what its answer promises beyond "no panic". The targets in `fuzz_targets/` call these;
//! so does the test suite, which replays the seed corpus and mutations of it ([`replay`]) on a
//! stable toolchain without libFuzzer.
//!
//! # Layout
//! * `gate`: the gate document ([`gate_doc`]) and the proxy's state file ([`state_file`]).
//! * `bypass`: the bypass token parser and verifier ([`bypass_token`]).
//! * `configs`: the proxy's config loader ([`proxy_config`]) and maintctl's ([`maintctl_config`]).
//! * `client`: the client address behind X-Forwarded-For ([`client_ip`]).
//! * `input`: reads structured values out of the fuzzer's bytes.
//! * `replay`: the corpus replay with deterministic mutations, for the test suite.

mod bypass;
mod client;
mod configs;
mod gate;
mod input;
pub mod replay;

pub use bypass::bypass_token;
pub use client::client_ip;
pub use configs::{maintctl_config, proxy_config};
pub use gate::{gate_doc, state_file};

/// A target's body: one input in, a panic when a check fails.
pub type Body = fn(&[u8]);

/// Every target: its name (the folder of its corpus and its dictionary) and its body.
pub const TARGETS: [(&str, Body); 6] = [
    ("gate_doc", gate_doc),
    ("bypass_token", bypass_token),
    ("proxy_config", proxy_config),
    ("client_ip", client_ip),
    ("state_file", state_file),
    ("maintctl_config", maintctl_config),
];
