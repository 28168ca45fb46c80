#!/usr/bin/env bash
# Runs every benchmark at a small scale so that they keep working (CI runs this; it asserts no
# timing). For real figures see docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
base="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
db="${base%/*}/caselog_bench_smoke"
cargo build --locked -p caselog-server -p caselog-bench
psql "$base" -qc "DROP DATABASE IF EXISTS caselog_bench_smoke" 2>/dev/null || true
target/debug/caselog generate --years 1 --cases-per-day 4 --seed 5 --load --database-url "$db" >/dev/null
target/debug/caselog-bench --database-url "$db" suite --seconds 1 --batches 4 --queries 5 \
    --clients 1,4 --keep-up-rate 200
target/debug/caselog-bench --database-url "$db" feed --seconds 1 --latency-seconds 2 --rate 200 \
    --latency-writers 4
