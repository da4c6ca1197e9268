//! The end-to-end tests, one module per theme; each test starts its own processes.

// The Consul client against real agents.
mod consul_client;
// The 3-server Consul cluster: restarts, leader loss and re-election.
mod consul_cluster;
// Admin and ACL hardening: admin tokens, Consul ACLs for the proxy and maintctl, no leaked secret.
mod consul_acl;
// The sshd and service fixtures themselves.
mod fixtures_smoke;
// /healthz, /status, /metrics and the admin token.
mod proxy_admin;
// Passing a closed gate: trusted addresses, tokens, exempt paths.
mod proxy_bypass;
// Forged bypass tokens, key rotation, and a table of client-address spoofing attempts.
mod proxy_attacks;
// HTTP/2 by ALPN and h2c: every answer, requests in flight across a switch and SIGTERM, limits.
mod proxy_h2;
// HTTP/2 abuse: rapid reset, CONTINUATION and SETTINGS floods, malformed requests.
mod proxy_h2_abuse;
// What reaches the upstream (no token, one X-Forwarded-For, no forged headers) and 502/504 answers.
mod proxy_hygiene;
// Request smuggling: ambiguous HTTP/1 framing refused with 400 and the connection closed.
mod proxy_smuggling;
// --check and refused configs.
mod proxy_config;
// Connection caps, the request-header deadline and the keep-alive timeout.
mod proxy_limits;
// Slowloris and a connection flood, with legitimate traffic measured beside them.
mod proxy_siege;
// The size limits at volume, and clients that take a large answer slowly or not at all.
mod proxy_limits_volume;
// Upstreams that close, reset, hang or never read.
mod proxy_upstream_faults;
// TLS to upstream pools: name and CA, refused certificates, client certificates, health checks.
mod proxy_upstream_tls;
// In-flight requests, SIGTERM, registration.
mod proxy_lifecycle;
// A three-server cluster: no step back through server restarts, failover, idle staleness.
mod proxy_cluster;
// Consul down: last state kept, restart from the state file.
mod proxy_outage;
// A state file that cannot be used, or none, while Consul is down: fail closed.
mod proxy_state_file;
// Health checks and Consul-service pools.
mod proxy_pools;
// Flipping the gate and what clients see.
mod proxy_switch;
// HTTPS: certificates by SNI, TLS versions, answers over TLS, live reload on SIGHUP and file change.
mod proxy_tls;
// Malformed values at the key change nothing.
mod proxy_values;
// Maintenance windows: the well-known list, the calendar feed, the announcement and the banner.
mod proxy_windows;
// Index anomalies and key churn through an index relay: resets, pacing, the last value served.
mod proxy_index;
// maintctl down and up on a whole fleet; status, history, bypass, probe.
mod maintctl_cycle;
// maintctl refusing to act: plan and dry run, a held lock, pre-flight.
mod maintctl_guards;
// maintctl SIGKILLed mid-step, then resumed.
mod maintctl_kill;
// Notices of the windows by email and webhook: preview, skip list, retries, journal, down warns.
mod maintctl_notices;
// maintctl when a gate write's answer is lost (500 or timeout) although Consul applied it.
mod maintctl_ambiguous;
// maintctl run twice, two at once, an environment down by hand, JSON from every subcommand.
mod maintctl_rerun;
// maintctl with part of the fleet failing: a lost box, a failed smoke test, undo of a partial down.
mod maintctl_partial;
// maintctl drain and undrain: a box out of the traffic and back without dropping a request.
mod maintctl_drain;
// A route split between two pools by the split document: canary share, stickiness, blue-green.
mod proxy_split;
// maintctl canary: a route moved to a new pool step by step, judged, promoted or rolled back.
mod maintctl_canary;
// maintctl roll: the api_ui boxes replaced a batch at a time, a failed batch, a kill, resume.
mod maintctl_roll;
// maintctl schedule, windows, reschedule and cancel: the maintenance windows in Consul.
mod maintctl_windows;
// The shipped alert rules and dashboard: promtool checks and rule tests, metric names a proxy exports.
mod monitoring;
// The Debian package: built, installed with dpkg, its files, users, units, man pages, purged.
mod package;
