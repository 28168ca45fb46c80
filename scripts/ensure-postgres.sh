#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:${PGPORT:-5432}, and says what it does.
#
# - One already answers there: nothing is done.
# - Otherwise, as needed: installs Debian's postgresql package, starts the existing cluster, or
#   creates one on that port and starts it. Installing, creating and starting need root: the
#   script runs them directly as root, through sudo where it is available, and otherwise says
#   what to run and stops.
# - Only a cluster created by this run gets a password for the postgres role ("postgres", so
#   that the URLs in README.md work over TCP). An existing cluster's passwords are never
#   changed: point DATABASE_URL at credentials that work for it.
# Running it again does nothing more.
set -euo pipefail
port="${PGPORT:-5432}"

say() { echo "ensure-postgres: $*" >&2; }

answers() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h 127.0.0.1 -p "$1"
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Runs a command as root: directly, or through sudo; without either, explains and stops.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    say "this step needs root and there is no sudo: $*"
    say "run this script as root, or start PostgreSQL on 127.0.0.1:$port yourself and set DATABASE_URL"
    exit 1
  fi
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  else
    as_root runuser -u postgres -- "$@"
  fi
}

wait_for() {
  for _ in $(seq 1 30); do
    answers "$1" && return 0
    sleep 1
  done
  return 1
}

if answers "$port"; then
  exit 0
fi

installed_now=false
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  say "no PostgreSQL server is installed: installing Debian's postgresql package"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
  installed_now=true
fi

version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
cluster_port="$(pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')"
created_now=false
if [ -z "$cluster_port" ]; then
  say "creating PostgreSQL $version cluster 'main' on port $port"
  as_root pg_createcluster "$version" main --port "$port" >/dev/null
  cluster_port="$port"
  created_now=true
elif $installed_now; then
  # Debian's package creates (and may start) a cluster as it installs.
  created_now=true
fi

if ! answers "$cluster_port"; then
  say "starting PostgreSQL $version cluster 'main' (port $cluster_port)"
  status=0
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || status=$?
  # 2: the cluster is already running (e.g. started by the package's installation).
  if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
    say "pg_ctlcluster could not start the cluster (exit status $status); see /var/log/postgresql/"
    exit 1
  fi
fi
if ! wait_for "$cluster_port"; then
  say "PostgreSQL $version did not answer on 127.0.0.1:$cluster_port within 30 s; see /var/log/postgresql/"
  exit 1
fi

if $created_now; then
  as_postgres psql -q -p "$cluster_port" -c "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null
  say "the new cluster's postgres role has the password 'postgres' (for local development only)"
fi

if [ "$cluster_port" != "$port" ]; then
  say "PostgreSQL $version runs on port $cluster_port (its cluster's setting), not $port:"
  say "set PGPORT=$cluster_port and a DATABASE_URL with :$cluster_port, e.g."
  say "  DATABASE_URL=postgres://postgres:<password>@127.0.0.1:$cluster_port/postgres"
  exit 1
fi
say "PostgreSQL $version answers on 127.0.0.1:$port"
