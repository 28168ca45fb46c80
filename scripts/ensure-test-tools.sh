#!/usr/bin/env bash
# Makes sure the programs some tests drive are present: a headless Chromium (the report's
# browser test, tests/api/report.rs), Prometheus with promtool (tests/api/observability.rs,
# which starts its own Prometheus on loopback and stops it), and Python 3 with venv
# (scripts/check-deploy.sh, run by tests/api/deploy.rs, installs its tools into a virtualenv). Each is taken from $CHROMIUM or
# $PROMETHEUS, or /usr/bin; otherwise Debian's package is installed (as root directly, or
# through sudo). Running it again does nothing more.
set -euo pipefail
say() { echo "ensure-test-tools: $*" >&2; }
executable() { [ -n "$1" ] && [ -x "$1" ]; }

needed=()
executable "${CHROMIUM:-}" || [ -x /usr/bin/chromium ] || [ -x /usr/bin/chromium-browser ] || needed+=(chromium)
executable "${PROMETHEUS:-}" || [ -x /usr/bin/prometheus ] || needed+=(prometheus)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || needed+=(python3 python3-venv)
[ "${#needed[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
  as_root() { sudo "$@"; }
else
  say "missing ${needed[*]}, and installing Debian's packages needs root: install them, or set CHROMIUM / PROMETHEUS"
  exit 1
fi
say "installing Debian's ${needed[*]} for the tests"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
