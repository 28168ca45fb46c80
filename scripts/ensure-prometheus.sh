#!/usr/bin/env bash
# Makes sure Prometheus is available for the test that has a real Prometheus scrape the service
# (tests/api/observability.rs): $PROMETHEUS, /usr/bin/prometheus, or Debian's prometheus package
# installed (as root directly, or through sudo). Nothing is started here; the test runs its own
# Prometheus on loopback and stops it. Running it again does nothing more.
set -euo pipefail
say() { echo "ensure-prometheus: $*" >&2; }

if [ -n "${PROMETHEUS:-}" ] && [ -x "$PROMETHEUS" ]; then exit 0; fi
if [ -x /usr/bin/prometheus ]; then exit 0; fi

if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
  as_root() { sudo "$@"; }
else
  say "no Prometheus, and installing Debian's prometheus package needs root; install it, or set PROMETHEUS to a prometheus binary"
  exit 1
fi
say "installing Debian's prometheus package (scraped by a test on loopback)"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
