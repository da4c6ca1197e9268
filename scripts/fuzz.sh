#!/usr/bin/env bash
# The long fuzzing run: libFuzzer (cargo-fuzz) on the parsers that read what others write, each
# target in turn, from its seed corpus in fuzz/corpus/<target>. New inputs go to the git-ignored
# fuzz/work/<target> (kept for later runs), crashes to fuzz/artifacts/<target>. Installs cargo-fuzz
# from crates.io into the git-ignored .tools/cargo when it is not on PATH (once; a few minutes).
# Uses a nightly toolchain with AddressSanitizer when rustup has one, else the stable one without
# a sanitizer.
#
#   scripts/fuzz.sh                    every target, 600 s each (the documented long run)
#   scripts/fuzz.sh TARGET [SECONDS]   one target (default 600 s)
#   scripts/fuzz.sh all SECONDS        every target, SECONDS each
#   scripts/fuzz.sh --list             the targets
#
# Limits as the reliability plan asks: 256 MiB of memory and 1 s per input. Exits non-zero when a
# target crashed, ran out of memory or time; the input is in fuzz/artifacts/<target>, and after
# the fix it belongs in fuzz/corpus/<target> so the test suite replays it from then on.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

targets=(gate_doc bypass_token proxy_config client_ip state_file maintctl_config)

log() { echo "fuzz: $*" >&2; }

target="${1:-all}"
seconds="${2:-600}"
case "$target" in
  --list)
    printf '%s\n' "${targets[@]}"
    exit 0
    ;;
  -h | --help)
    sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  all) run=("${targets[@]}") ;;
  *)
    if [[ ! " ${targets[*]} " =~ " $target " ]]; then
      log "unknown target $target; one of: ${targets[*]}"
      exit 2
    fi
    run=("$target")
    ;;
esac
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  log "SECONDS must be a whole number of seconds, not $seconds"
  exit 2
fi

if ! command -v cargo-fuzz >/dev/null; then
  export PATH="$root/.tools/cargo/bin:$PATH"
fi
if ! command -v cargo-fuzz >/dev/null; then
  log "cargo install cargo-fuzz into .tools/cargo (once; a few minutes)"
  CARGO_TARGET_DIR="$root/.tools/cargo/build" cargo install cargo-fuzz --locked --root "$root/.tools/cargo" >&2
  rm -rf "$root/.tools/cargo/build"
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
  sanitizer=address
else
  # Without a sanitizer cargo-fuzz passes only stable flags (the coverage instrumentation), so
  # the stable toolchain builds the targets; memory errors then go unseen, panics and hangs not.
  toolchain=()
  sanitizer=none
fi
log "toolchain: $(cargo "${toolchain[@]}" --version), sanitizer: $sanitizer"

# A panic's backtrace is symbolised in the fuzzed process, and for a binary of this size that
# takes more than the memory limit: libFuzzer would report an out-of-memory and keep no input.
# The panic message names the check; rerun the saved input with RUST_BACKTRACE=1 for the rest.
export RUST_BACKTRACE=0
# AddressSanitizer keeps freed memory in quarantine to catch use-after-free, 256 MiB of it by
# default, which alone reaches the memory limit (the config targets allocate a lot per input);
# a smaller quarantine keeps the limit about the code's own memory.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=64"

failed=()
for t in "${run[@]}"; do
  mkdir -p "fuzz/work/$t"
  log "$t: ${seconds}s"
  # The working corpus comes first: libFuzzer writes new inputs to the first folder only, so
  # the seed corpus stays as committed.
  if ! cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$t" \
    "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -dict="fuzz/dict/$t.dict" \
    -max_total_time="$seconds" \
    -rss_limit_mb=256 \
    -timeout=1 \
    -print_final_stats=1; then
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "FAILED: ${failed[*]} (a build error above, or the input in fuzz/artifacts/<target>)"
  exit 1
fi
log "no crash, timeout or out-of-memory in ${run[*]}"
