#!/usr/bin/env bash
# The fleet bench: gate propagation and correctness to a fleet of Drawbridge proxies on a real
# three-server Consul cluster (production Raft timing), through switches, leader kills and follower
# restarts, once per consul.consistency mode. Installs Consul (scripts/setup.sh), builds in release
# mode, then runs drawbridge-fleet with every argument passed through. Tables go to stdout;
# results.json and summary.md to benches/runs/<date>-fleet-<N>/. Method: benches/fleet/README.md.
#
#   scripts/fleet-bench.sh            100 proxies, 50 switches, 6 disruptions, default then stale
#   scripts/fleet-bench.sh --proxies 10 --switches 10 --disruptions 2    a quick check
#   scripts/fleet-bench.sh --help     the options (any of them can be passed here)
set -euo pipefail

bench=drawbridge-fleet
log_name=fleet-bench
source "$(dirname "$0")/bench-prelude.sh" "$@"
export CONSUL_BIN="$consul_bin"
build_release

# Every process the bench starts is owned by a guard and a watchdog (killed with the bench, and
# after 10 minutes at the latest); this is the outer bound of the whole run.
export DRAWBRIDGE_BIN="$root/target/release/drawbridge"
exec timeout --kill-after=30s 40m target/release/drawbridge-fleet "$@"
