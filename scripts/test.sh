#!/usr/bin/env bash
# Runs the whole test suite against a real PostgreSQL (started if none answers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
# The report's test loads it in a real headless browser; a real Prometheus scrapes the service.
scripts/ensure-test-tools.sh
# #[sqlx::test] connects here and creates a fresh database per test.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
exec cargo test --workspace --locked "$@"
