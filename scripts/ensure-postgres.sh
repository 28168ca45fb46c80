#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:${PGPORT:-5432}. If none does, installs
# PostgreSQL from Debian's packages when it is missing, starts a cluster, and gives the postgres
# role the password "postgres" so that the URLs in README.md work over TCP.
set -euo pipefail
port="${PGPORT:-5432}"

ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "$port"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ready; then
  exit 0
fi
# pg_isready itself may be missing while a server still answers: try a TCP connect.
if ! command -v pg_isready >/dev/null 2>&1 && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "ensure-postgres: installing PostgreSQL from Debian's packages" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! as_root pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  as_root pg_createcluster "$version" main --port "$port" >/dev/null
fi
echo "ensure-postgres: starting PostgreSQL $version on port $port" >&2
as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main start

for _ in $(seq 1 30); do
  ready && break
  sleep 1
done
ready || { echo "ensure-postgres: PostgreSQL did not start" >&2; exit 1; }
as_root su postgres -c "psql -q -p $port -c \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null
