# What scripts/bench.sh and scripts/fleet-bench.sh share, sourced by both with their arguments
# after they set `bench` (the binary, built into target/release) and `log_name` (the prefix of
# their messages): the project root as working folder, `log`, cargo on PATH, `--help` answered
# by the bench binary itself, Consul installed (its path in `consul_bin`), `build_release`, and
# `install_oha` (oha from crates.io into the git-ignored .tools/cargo, its path in `oha_bin`).

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { echo "$log_name: $*" >&2; }

# Some environments start without rustup's default location on PATH.
if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

# The bench's own help needs nothing installed beyond the build.
for arg in "$@"; do
  if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
    cargo build --release -q -p drawbridge-benches --bin "$bench"
    exec "target/release/$bench" --help
  fi
done

scripts/setup.sh
consul_bin="$(scripts/setup.sh --print-consul)"

# The proxy and the benches, in release mode.
build_release() {
  log "cargo build --release -p drawbridge -p drawbridge-benches"
  cargo build --release -p drawbridge -p drawbridge-benches >&2
}

# oha from crates.io into the git-ignored .tools/cargo, reused on later runs.
install_oha() {
  oha_bin="$root/.tools/cargo/bin/oha"
  if [ ! -x "$oha_bin" ]; then
    log "cargo install oha into .tools/cargo (once; a few minutes)"
    CARGO_TARGET_DIR="$root/.tools/cargo/build" cargo install oha --locked --root "$root/.tools/cargo" >&2
    rm -rf "$root/.tools/cargo/build"
  fi
}
