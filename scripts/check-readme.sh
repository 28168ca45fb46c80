#!/usr/bin/env bash
# Runs README.md's quick start as a new user would: starts the service with `scripts/run.sh`
# (on a database of its own, dropped afterwards), then runs every command of the README's code
# blocks marked ```sh quickstart, in order, and fails on the first that fails. Installs buf from
# the npm registry when it is not on the PATH. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
base="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
database="caselog_readme_check"
say() { echo "check-readme: $*" >&2; }

if ! command -v buf >/dev/null 2>&1; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/caselog-tools"
  if [ ! -x "$tools/node_modules/.bin/buf" ]; then
    say "installing buf from the npm registry into $tools"
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund --prefix "$tools" @bufbuild/buf@1 >/dev/null
  fi
  export PATH="$tools/node_modules/.bin:$PATH"
fi

if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then
  say "something already listens on 127.0.0.1:50051, where the README's service runs: stop it first"
  exit 1
fi
PGOPTIONS="-c client_min_messages=warning" psql "$base" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null
log="$(mktemp)"
DATABASE_URL="${base%/*}/$database" scripts/run.sh >"$log" 2>&1 &
service=$!
cleanup() {
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  psql "$base" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT

# scripts/run.sh builds first: allow for a release build on a small machine.
for _ in $(seq 1 1800); do
  (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && break
  kill -0 "$service" 2>/dev/null || { cat "$log" >&2; say "scripts/run.sh stopped"; exit 1; }
  sleep 1
done
(exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null || { cat "$log" >&2; say "the service did not listen"; exit 1; }

blocks="$(awk '/^```sh quickstart$/ {inside=1; next} /^```$/ {if (inside) print "\x1e"; inside=0; next} inside {print}' README.md)"
[ -n "$blocks" ] || { say "README.md has no \`\`\`sh quickstart blocks"; exit 1; }
count=0
while IFS= read -r -d $'\x1e' block; do
  block="${block#$'\n'}"
  [ -n "${block//[[:space:]]/}" ] || continue
  count=$((count + 1))
  say "block $count:"
  echo "$block" | sed 's/^/    /' >&2
  bash -euo pipefail -c "$block"
done <<<"$blocks"
say "all $count quick-start blocks ran"
