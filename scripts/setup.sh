#!/usr/bin/env bash
# Installs what building and testing Drawbridge needs on a Debian bookworm machine, when it is missing:
# cmake (Pingora's zlib-ng build), OpenSSH server and client (the boxes of the maintctl tests), the
# openssl command (certificates for the TLS tests), the Consul agent, and promtool. Consul is not in bookworm, so it is fetched from the bullseye suite of the same Debian
# archive this machine already uses, unpacked into .tools/consul (git-ignored) and reused on later runs.
# promtool (it checks and tests the alert rules in config/prometheus) comes with bookworm's own
# prometheus package, which is downloaded and unpacked into .tools/prometheus, never installed
# (installing it would start a Prometheus server).
#
#   scripts/setup.sh            install what is missing
#   scripts/setup.sh --print-consul   print the path of the consul binary (after installing it)
#   scripts/setup.sh --print-promtool print the path of the promtool binary (after installing it)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
consul_bin="$tools/consul/usr/bin/consul"
consul_suite="bullseye"
promtool_bin="$tools/prometheus/usr/bin/promtool"

log() { [ "${quiet:-0}" = 1 ] || echo "setup: $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: installing $1 needs root; run as root or install it yourself: apt-get install $1" >&2
    exit 1
  fi
}

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  need_root "${missing[*]}"
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >&2
    apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# The Debian archive URI this machine's apt configuration uses for its own release, so that no host
# name is written here: the first configured 'deb' source whose suite is the bare codename.
debian_archive_uri() {
  local codename
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' 2>/dev/null |
    awk -v c="$codename" '$2 == c && $3 == "deb" { print $1; exit }'
}

install_consul() {
  if [ -x "$consul_bin" ]; then
    return 0
  fi
  need_root consul
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >&2
    apt_updated=1
  fi
  local uri
  uri="$(debian_archive_uri)"
  if [ -z "$uri" ]; then
    echo "setup: no Debian archive found in the apt configuration (apt-get indextargets); cannot fetch consul" >&2
    exit 1
  fi
  log "fetching consul from the $consul_suite suite of the configured Debian archive"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $consul_suite main" >"$work/sources.list"
  local opts=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=$work/parts"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache::Archives=$work/archives"
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
  )
  apt-get "${opts[@]}" update -qq >&2
  (cd "$work" && apt-get "${opts[@]}" download consul >&2)
  local deb
  deb="$(ls "$work"/consul_*.deb | head -n 1)"
  rm -rf "$tools/consul"
  mkdir -p "$tools/consul"
  dpkg -x "$deb" "$tools/consul"
  "$consul_bin" version | head -n 1 >&2
}

# promtool, from bookworm's prometheus package (already in the apt configuration): downloaded, not
# installed, and unpacked into .tools/prometheus. The package lists are updated only when the
# download fails without it.
install_promtool() {
  if [ -x "$promtool_bin" ]; then
    return 0
  fi
  log "fetching promtool from the prometheus package of the configured Debian archive"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  if ! (cd "$work" && apt-get download prometheus >&2); then
    if [ "$(id -u)" != 0 ]; then
      echo "setup: fetching promtool needs 'apt-get update', which needs root; run as root or set PROMTOOL_BIN" >&2
      rm -rf "$work"
      exit 1
    fi
    if [ "$apt_updated" = 0 ]; then
      log "apt-get update"
      apt-get update -qq >&2
      apt_updated=1
    fi
    (cd "$work" && apt-get download prometheus >&2)
  fi
  local deb
  deb="$(ls "$work"/prometheus_*.deb | head -n 1)"
  rm -rf "$tools/prometheus"
  mkdir -p "$tools/prometheus"
  dpkg -x "$deb" "$tools/prometheus"
  "$promtool_bin" --version 2>&1 | head -n 1 >&2
}

case "${1:-}" in
  --print-consul)
    quiet=1
    install_consul
    echo "$consul_bin"
    exit 0
    ;;
  --print-promtool)
    quiet=1
    install_promtool
    echo "$promtool_bin"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: scripts/setup.sh [--print-consul | --print-promtool]" >&2
    exit 2
    ;;
esac

command -v cmake >/dev/null || apt_install cmake
apt_install openssh-server openssh-client
# The TLS tests make their certificates and test protocol versions with the openssl command.
command -v openssl >/dev/null || apt_install openssl
# The HTTP/2 abuse test writes its frames with Python's h2 library (hyper-h2); the notice tests
# run a real SMTP server (aiosmtpd).
apt_install python3-h2 python3-aiosmtpd
# The package test checks the installed units (systemd-analyze) and renders the man pages (man).
apt_install systemd man-db
install_consul
install_promtool
log "ready"
