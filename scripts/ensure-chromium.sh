#!/usr/bin/env bash
# Makes sure a headless Chromium is available for the report's browser test
# (tests/api/report.rs): $CHROMIUM, /usr/bin/chromium, or Debian's chromium package installed
# (as root directly, or through sudo). Running it again does nothing more.
set -euo pipefail
say() { echo "ensure-chromium: $*" >&2; }

if [ -n "${CHROMIUM:-}" ] && [ -x "$CHROMIUM" ]; then exit 0; fi
if [ -x /usr/bin/chromium ] || [ -x /usr/bin/chromium-browser ]; then exit 0; fi

if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
  as_root() { sudo "$@"; }
else
  say "no Chromium, and installing Debian's chromium package needs root; install it, or set CHROMIUM to a Chromium binary"
  exit 1
fi
say "installing Debian's chromium package (headless browser for the report test)"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
