#!/usr/bin/env bash
# The one test command: everything CI checks, in CI's order, stopping at the first failure.
#
#   scripts/test.sh                  everything
#   scripts/test.sh --e2e FILTER     only the end-to-end tests matching FILTER (e.g. proxy_cluster),
#                                    for the long runs whose sizes come from the environment
#
# Stages: setup (cmake, openssh, Consul), fmt, clippy, build the binaries, then the whole test
# suite: unit tests (every shipped config among them), CLI contract tests, and the end-to-end
# tests with real Consul agents, sshd boxes, upstreams and the built binaries.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# CI runs with a bare environment; rustup's default location is not always on PATH there.
if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

e2e_filter=""
case "${1:-}" in
  "") ;;
  --e2e)
    e2e_filter="${2:?--e2e needs a test name filter, e.g. proxy_cluster}"
    ;;
  *)
    echo "usage: scripts/test.sh [--e2e FILTER]" >&2
    exit 2
    ;;
esac

started=$SECONDS
stage() {
  echo
  echo "==> [$((SECONDS - started))s] $*"
}

stage "setup: scripts/setup.sh"
scripts/setup.sh
CONSUL_BIN="$(scripts/setup.sh --print-consul)"
export CONSUL_BIN
echo "consul: $CONSUL_BIN ($("$CONSUL_BIN" version | head -n 1))"

if [ -n "$e2e_filter" ]; then
  stage "build: cargo build --workspace --bins"
  cargo build --workspace --bins
  stage "test: cargo test -p drawbridge-tests --test e2e $e2e_filter"
  cargo test -p drawbridge-tests --test e2e "$e2e_filter" -- --nocapture
  stage "the end-to-end tests matching $e2e_filter passed in $((SECONDS - started))s"
  exit 0
fi

stage "format: cargo fmt --all -- --check"
cargo fmt --all -- --check

stage "lint: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

stage "build: cargo build --workspace --bins"
cargo build --workspace --bins

stage "test: cargo test --workspace"
cargo test --workspace

stage "all checks passed in $((SECONDS - started))s"
