#!/usr/bin/env bash
# Builds the Debian package `drawbridge` (both binaries, the maintenance page, example and default
# configs, the systemd units, man pages and completions) with cargo-deb, from
# [package.metadata.deb] in proxy/Cargo.toml and the maintainer scripts in packaging/debian/.
# Prints the path of the .deb as its last line on stdout; everything else goes to stderr.
#
#   scripts/package.sh          a release build (fat LTO: several minutes), into target/debian/
#   scripts/package.sh --dev    the debug binaries as the last build left them (the test suite's
#                               `cargo build --workspace --bins`; nothing is built, so binaries the
#                               running tests use are never replaced), stripped and quickly
#                               compressed, into target/debian/dev/: for tests, not for machines
#
# The binaries write their own man pages and completions (DRAWBRIDGE_GENERATE_DOCS) into docs/ beside them,
# where the manifest takes them from. cargo-deb is installed once, at a pinned version, into the
# git-ignored .tools/cargo.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

log() { echo "package: $*" >&2; }

# Some environments start without rustup's default location on PATH.
if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

dev=0
case "${1:-}" in
  "") ;;
  --dev) dev=1 ;;
  *)
    echo "usage: scripts/package.sh [--dev]" >&2
    exit 2
    ;;
esac

cargo_deb_version="3.8.0"
cargo_deb="$root/.tools/cargo/bin/cargo-deb"
if [ "$("$cargo_deb" --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
  log "cargo install cargo-deb $cargo_deb_version into .tools/cargo (once; a few minutes)"
  CARGO_TARGET_DIR="$root/.tools/cargo/build" \
    cargo install cargo-deb --version "$cargo_deb_version" --locked --force --root "$root/.tools/cargo" >&2
  rm -rf "$root/.tools/cargo/build"
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
if [ "$dev" = 1 ]; then
  profile_dir="$target_dir/debug"
  for bin in drawbridge maintctl; do
    if [ ! -x "$profile_dir/$bin" ]; then
      echo "package: $profile_dir/$bin is missing: run \`cargo build --workspace --bins\` first" >&2
      exit 1
    fi
  done
  # cargo-deb warns that the dev profile is for tests only, which is what this is for.
  deb_args=(--profile dev --strip --fast --output "$target_dir/debian/dev")
else
  log "cargo build --release -p drawbridge -p maintctl"
  cargo build --release -p drawbridge -p maintctl >&2
  profile_dir="$target_dir/release"
  # The release profile keeps line tables for profiling (`debug = 1`); the package does not.
  deb_args=(--strip)
fi

# Man pages (gzipped, as Debian ships them) and completions, written by the binaries themselves
# from their clap definitions.
docs="$profile_dir/docs"
rm -rf "$docs"
mkdir -p "$docs"
for bin in drawbridge maintctl; do
  DRAWBRIDGE_GENERATE_DOCS="$docs" "$profile_dir/$bin"
done
gzip -9n "$docs"/*.1

log "cargo-deb -p drawbridge --no-build ${deb_args[*]}"
deb="$("$cargo_deb" -p drawbridge --no-build "${deb_args[@]}" | tail -n 1)"
if [ ! -f "$deb" ]; then
  echo "package: cargo-deb did not name a package file (got: ${deb:-nothing})" >&2
  exit 1
fi
echo "$deb"
