#!/usr/bin/env bash
# The load bench: Drawbridge against HAProxy, nginx and a bare Pingora pass-through, on loopback, in
# one interleaved run. Installs what is missing (scripts/setup.sh for Consul; haproxy, nginx, wrk
# and openssl from Debian; oha from crates.io into the git-ignored .tools/cargo, reused on later
# runs), builds in release mode, then runs the orchestrator. Tables go to stdout; the results, raw
# data and setup notes to benches/runs/<date>-<machine>/. Method: benches/load/README.md.
#
#   scripts/bench.sh            the full run (about 22 minutes)
#   scripts/bench.sh --quick    a smoke run with short measurements (a few minutes)
#   scripts/bench.sh --figures tls   the TLS figure alone (handshakes, HTTPS over HTTP/1.1 and HTTP/2)
#   scripts/bench.sh --help     the orchestrator's options (any of them can be passed here)
set -euo pipefail

bench=drawbridge-bench
log_name=bench
source "$(dirname "$0")/bench-prelude.sh" "$@"

missing=()
for tool in haproxy nginx wrk openssl; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "installing ${missing[*]} needs root; run as root or: apt-get install ${missing[*]}"
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

install_oha

build_release

# The orchestrator bounds itself (a watchdog kills the run past --deadline-minutes); this is the
# outer bound in case the watchdog itself cannot run.
exec timeout --kill-after=30s 90m target/release/drawbridge-bench --rounds 3 \
  --consul "$consul_bin" --oha "$oha_bin" "$@"
