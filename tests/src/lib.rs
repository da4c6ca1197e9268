//! The end-to-end test harness: real processes on loopback, each owned by a guard that kills it
//! by PID, with ports from one allocator and waits with deadlines instead of sleeps.
//!
//! # Layout
//! * `ports`, `process`, `eventually`: ports, process guards and test folders, waiting.
//! * `consul`: a Consul server and one client agent per "box" on its own loopback address;
//!   a 3-server cluster for leader elections and server restarts; `consul_acl`: a server that
//!   enforces ACLs, with policies, tokens in files, and the search for leaked secrets.
//! * `load`: legitimate traffic at a fixed rate beside an attack, and what it saw.
//! * `upstream`: real HTTP upstreams; `proxy`: the `drawbridge` binary with a config builder;
//!   `raw_http`: one HTTP/1.1 connection driven by hand; `http_thread`: the server thread both
//!   the upstreams and the fault relay run on.
//! * `tls_ca`: a certificate authority per test and the certificates it issues.
//! * `sshd`, `services`: boxes reached over a real sshd, with worker and job processes.
//! * `notice_sinks`: a real SMTP server (aiosmtpd: STARTTLS, a password) and a webhook server,
//!   recording the notices maintctl sends.
//! * `fault_relay`: a forwarder in front of Consul that fails chosen writes after applying them,
//!   and answers chosen reads like a server that is behind.
//! * `promtool`: Prometheus' rule checker, for the shipped alert rules.

pub mod consul;
pub mod consul_acl;
pub mod eventually;
pub mod fault_relay;
pub mod http_thread;
pub mod load;
pub mod maintctl;
pub mod notice_sinks;
pub mod ports;
pub mod process;
pub mod promtool;
pub mod proxy;
pub mod raw_http;
pub mod services;
pub mod sshd;
pub mod tls_ca;
pub mod upstream;
