//! maintctl: takes a whole service down for planned maintenance and brings it back, one command
//! each way, with proof at each step.
//!
//! # Layout
//! * `config`: the inventory file: environments, their Consul, proxies, public URLs, smoke
//!   tests, boxes by role and extra steps.
//! * `plan`: the procedure as data (steps and targets; the undo of a partial `down`).
//! * `runner`: the run loop: every target journalled, stops at step boundaries.
//! * `steps`: check, act, verify per step kind; `gate_write`: gate writes whose answer was lost.
//! * `journal`, `lock`: the run's record and the one-run-per-environment lock, in Consul.
//! * `survey`: the environment as seen from outside (status, and the end of every run).
//! * `remote`, `proxies`: reaching boxes (ssh, HTTP, Consul agents) and the edge.
//! * `probe`: keeps requesting URLs and reports every unexpected answer (`maintctl probe`).
//! * `split_metrics`: each side of a split route as the proxies' `/metrics` count it, for
//!   `maintctl canary`.
//! * `notices`: the maintenance windows told to partners and tenants (email, webhooks).
//! * `commands`, `output`: the subcommands and how they report.

pub mod commands;
pub mod config;
pub mod estimate;
mod gate_write;
pub mod journal;
pub mod lock;
pub mod notices;
pub mod output;
pub mod plan;
pub mod probe;
pub mod proxies;
pub mod remote;
mod roll_steps;
pub mod runner;
pub mod split_metrics;
pub mod steps;
pub mod survey;
pub mod traffic;
pub mod when;
