#!/usr/bin/env bash
# Runs every benchmark at a small scale so that they keep working (CI runs this; it asserts no
# timing). For real figures see docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
base="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
db="${base%/*}/caselog_bench_smoke"
cargo build --locked -p caselog-cli -p caselog-bench
# Wherever cargo puts its builds (CARGO_TARGET_DIR, .cargo/config.toml), not a guess.
bin="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug"
psql "$base" -qc "DROP DATABASE IF EXISTS caselog_bench_smoke" 2>/dev/null || true
"$bin/caselog" generate --years 1 --cases-per-day 4 --seed 5 --load --database-url "$db" >/dev/null
"$bin/caselog-bench" --database-url "$db" suite --seconds 1 --batches 4 --queries 5 \
    --clients 1,4 --keep-up-rate 200
"$bin/caselog-bench" --database-url "$db" feed --seconds 1 --latency-seconds 2 --rate 200 \
    --latency-writers 4
