#!/usr/bin/env bash
# The fault campaign (caselog-bench faults): writers keep a ledger while the server and a
# PostgreSQL instance of the campaign's own are killed and restarted, then the log is checked
# against the ledger. Short by default (about 30 s, what CI runs); `--full` for the whole
# campaign (a few minutes). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
base="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
mode=--short
if [ "${1:-}" = "--full" ]; then mode=; shift; fi
cargo build --locked -p caselog-cli -p caselog-bench
bin="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug"
# The campaign starts its own PostgreSQL with initdb when it can; this database is its fallback.
exec timeout 900 "$bin/caselog-bench" --database-url "${base%/*}/caselog_faults" faults $mode "$@"
