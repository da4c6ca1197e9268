#!/usr/bin/env bash
# The changes bench: `maintctl roll` of four API boxes, then a canary 5 -> 25 -> 50 -> 100 % and its
# rollback, under load through two Drawbridge proxies, on loopback with real Consul agents. Installs
# Consul (scripts/setup.sh) and oha (crates.io, into .tools/cargo), builds in release mode, then runs
# drawbridge-changes with every argument passed through. Exits 1 when a request failed or was
# answered other than 200. Tables go to stdout; results.json and summary.md to
# benches/runs/<date>-changes/. Method: benches/changes/README.md.
#
#   scripts/changes-bench.sh            300 req/s to each proxy, 100 req/s of many clients, 5 s holds
#   scripts/changes-bench.sh --help     the options (any of them can be passed here)
set -euo pipefail

bench=drawbridge-changes
log_name=changes-bench
source "$(dirname "$0")/bench-prelude.sh" "$@"
export CONSUL_BIN="$consul_bin"
install_oha
build_release
log "cargo build --release -p maintctl"
cargo build --release -p maintctl >&2

# Every process the bench starts is owned by a guard with a bounded lifetime; this is the outer
# bound of the whole run.
export DRAWBRIDGE_BIN="$root/target/release/drawbridge"
export MAINTCTL_BIN="$root/target/release/maintctl"
exec timeout --kill-after=30s 20m target/release/drawbridge-changes --oha "$oha_bin" "$@"
