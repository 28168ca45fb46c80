#!/usr/bin/env bash
# Runs the caselog service on 127.0.0.1:50051 against a local PostgreSQL (started if none answers),
# accepting the static development tokens of deploy/dev-tokens.json (local use only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/caselog}"
scripts/caselog migrate
exec scripts/caselog serve --dev-tokens deploy/dev-tokens.json --allow-dev-tokens "$@"
