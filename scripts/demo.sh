#!/usr/bin/env bash
# The one demo command: a Consul dev agent, two origins and drawbridge in front of them, on loopback.
#
#   scripts/demo.sh        then open http://127.0.0.1:8080/ and flip the gate with the curl lines it prints
#
# Starts (and on Ctrl-C stops, by PID) everything it needs: consul on 127.0.0.1:8500, the "ui" origin
# on 127.0.0.1:3001 (HTML), the "api" origin on 127.0.0.1:3002 (JSON), drawbridge on 127.0.0.1:8080
# and, with a certificate for "localhost" it makes at start, HTTPS (HTTP/2 and HTTP/1.1) on
# 127.0.0.1:8443, with its admin listener on 127.0.0.1:9180 (config/demo.toml, plus the TLS listener).
# Logs and the certificate go to /tmp/drawbridge-demo/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

run_dir=/tmp/drawbridge-demo
key=drawbridge/demo/gate
ports=(8080 8443 8500 9180 3001 3002)

if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

say() { echo "demo: $*" >&2; }
die() {
  echo "demo: $*" >&2
  exit 1
}

# A port is taken when something listens on it (any address) or answers on 127.0.0.1.
port_taken() {
  local port=$1
  if command -v ss >/dev/null; then
    ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && return 0
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

for port in "${ports[@]}"; do
  if port_taken "$port"; then
    die "port $port is already in use; the demo needs 8080, 8443, 8500, 9180, 3001 and 3002 free (see: ss -ltnp 'sport = :$port')"
  fi
done

say "setup: scripts/setup.sh"
scripts/setup.sh
consul_bin="$(scripts/setup.sh --print-consul)"

say "building: cargo build --release -p drawbridge -p maintctl -p drawbridge-tests --bins"
cargo build --release -p drawbridge -p maintctl -p drawbridge-tests --bins

target_dir="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$run_dir"
consul_data="$(mktemp -d "${TMPDIR:-/tmp}/drawbridge-demo-consul.XXXXXX")"

pids=()
names=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "stopping ${names[$i]} (pid ${pids[$i]})"
      kill -TERM "${pids[$i]}" 2>/dev/null || true
    fi
  done
  # Give each a few seconds to drain, then make sure.
  local deadline=$((SECONDS + 8))
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    while kill -0 "${pids[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
    kill -KILL "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  rm -rf "$consul_data"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOGFILE CMD...: runs CMD in the background with its output in LOGFILE.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 </dev/null &
  pids+=("$!")
  names+=("$name")
  say "started $name (pid $!), log $log"
}

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds, or fails with the log tail.
wait_for() {
  local name=$1 secs=$2 log=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: $name not ready after ${secs}s; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  say "$name is ready"
}

consul_leader() {
  local leader
  leader="$(curl -fsS --max-time 2 http://127.0.0.1:8500/v1/status/leader)"
  [ -n "$leader" ] && [ "$leader" != '""' ]
}

start consul "$run_dir/consul.log" \
  "$consul_bin" agent -dev -node demo-box -bind 127.0.0.1 -client 127.0.0.1 -http-port 8500 -data-dir "$consul_data"
wait_for consul 30 "$run_dir/consul.log" consul_leader

origin="$target_dir/release/demo-origin"
start "ui origin" "$run_dir/origin-ui.log" "$origin" --name ui --listen 127.0.0.1:3001 --kind page
start "api origin" "$run_dir/origin-api.log" "$origin" --name api --listen 127.0.0.1:3002 --kind api
wait_for "ui origin" 10 "$run_dir/origin-ui.log" curl -fsS --max-time 2 http://127.0.0.1:3001/healthz
wait_for "api origin" 10 "$run_dir/origin-api.log" curl -fsS --max-time 2 http://127.0.0.1:3002/healthz

# HTTPS: a self-signed certificate for localhost (ECDSA P-256, valid 30 days), made now, and the
# demo config with a TLS listener serving it.
tls_dir="$run_dir/tls"
mkdir -p "$tls_dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$tls_dir/localhost.key" -out "$tls_dir/localhost.pem" 2>"$run_dir/openssl.log" ||
  die "openssl could not make the demo certificate: $(cat "$run_dir/openssl.log")"
config="$run_dir/demo.toml"
sed 's|^listen = \["127.0.0.1:8080"\]$|&\ntls_listen = ["127.0.0.1:8443"]|' config/demo.toml >"$config"
grep -q '^tls_listen' "$config" || die "config/demo.toml has no 'listen = [\"127.0.0.1:8080\"]' line to add HTTPS beside"
cat >>"$config" <<EOT

[[tls.certificates]]
cert = "$tls_dir/localhost.pem"
key = "$tls_dir/localhost.key"
EOT

start drawbridge "$run_dir/drawbridge.log" "$target_dir/release/drawbridge" --config "$config"
wait_for drawbridge 30 "$run_dir/drawbridge.log" curl -fsS --max-time 2 http://127.0.0.1:9180/healthz

until_ts="$(date -u -d '+30 minutes' +%Y-%m-%dT%H:%M:%SZ)"

maintctl=("$target_dir/release/maintctl" --config config/maintctl.demo.toml)
token="$("${maintctl[@]}" --output json bypass --env demo --ttl 1h | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"

# A maintenance window announced ahead: tomorrow 19:00-20:00 UTC.
window_start="$(date -u -d 'tomorrow 19:00' +%Y-%m-%dT%H:%M:%SZ)"
window_end="$(date -u -d 'tomorrow 20:00' +%Y-%m-%dT%H:%M:%SZ)"
"${maintctl[@]}" schedule --env demo --start "$window_start" --end "$window_end" \
  --reason "demo: database upgrade" --message "The API answers 503 meanwhile." >"$run_dir/schedule.log"

cat <<EOT

Drawbridge demo is up. Try:
  http://127.0.0.1:8080/             the UI (ui origin, HTML)
  http://127.0.0.1:8080/api/orders   the API (api origin, JSON)
  http://127.0.0.1:8080/.well-known/maintenance          the gate state and the window scheduled
  http://127.0.0.1:8080/.well-known/maintenance.ics      the windows as a calendar feed
  http://127.0.0.1:8080/.well-known/maintenance/banner   the banner fragment of the window announced
  (API answers carry X-Drawbridge-Announcement: curl -i http://127.0.0.1:8080/api/orders)
  https://localhost:8443/            the same over HTTPS (HTTP/2); the certificate is self-signed:
    curl -i --cacert $tls_dir/localhost.pem https://localhost:8443/api/orders
  http://127.0.0.1:9180/status       admin: gate state, Consul watch, pools
  http://127.0.0.1:9180/metrics      admin: Prometheus metrics
  http://127.0.0.1:8500/ui/          Consul

Maintenance on:
  curl -X PUT --data '{"mode":"maintenance","reason":"demo","until":"$until_ts"}' http://127.0.0.1:8500/v1/kv/$key

Read-only (GET passes, writes get 503):
  curl -X PUT --data '{"mode":"read_only","reason":"demo"}' http://127.0.0.1:8500/v1/kv/$key

Maintenance off:
  curl -X DELETE http://127.0.0.1:8500/v1/kv/$key

Then:
  curl -i http://127.0.0.1:8080/
  curl -i http://127.0.0.1:8080/api/orders

The whole procedure, one command each way (maintctl, with config/maintctl.demo.toml):
  $target_dir/release/maintctl --config config/maintctl.demo.toml down --env demo --reason "demo upgrade" --until 30m
  $target_dir/release/maintctl --config config/maintctl.demo.toml status --env demo
  $target_dir/release/maintctl --config config/maintctl.demo.toml up --env demo
  $target_dir/release/maintctl --config config/maintctl.demo.toml history --env demo
  $target_dir/release/maintctl --config config/maintctl.demo.toml windows --env demo

Pass the closed gate as an operator (token from \`maintctl bypass --env demo\`, valid 1 h):
  curl -i -H 'X-Drawbridge-Bypass: $token' http://127.0.0.1:8080/

Logs: $run_dir/{consul,origin-ui,origin-api,drawbridge}.log
Press Ctrl-C to stop everything.
EOT

# Wait for Ctrl-C; if one of the processes dies on its own, say which and stop the rest.
while true; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "demo: ${names[$i]} (pid ${pids[$i]}) exited; last lines of its log:" >&2
      case "${names[$i]}" in
        consul) tail -n 20 "$run_dir/consul.log" >&2 || true ;;
        "ui origin") tail -n 20 "$run_dir/origin-ui.log" >&2 || true ;;
        "api origin") tail -n 20 "$run_dir/origin-api.log" >&2 || true ;;
        drawbridge) tail -n 20 "$run_dir/drawbridge.log" >&2 || true ;;
      esac
      exit 1
    fi
  done
  sleep 1
done
