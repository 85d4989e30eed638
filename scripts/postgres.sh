#!/usr/bin/env bash
# Starts PostgreSQL on 127.0.0.1:5432 for the tests and for local runs, and
# makes the role `sagaflow` (password `sagaflow`, may create databases) and the
# database `sagaflow`. Installs Debian's postgresql if it is missing.
# Prints the URL; the tests read it from SAGAFLOW_TEST_POSTGRES and make a
# fresh database each.
set -euo pipefail

# Only the URL goes to stdout (callers capture it); everything else to stderr.
exec 3>&1 1>&2

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  echo "== installing postgresql (Debian package)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends postgresql >/dev/null 3>&- \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends postgresql >/dev/null 3>&-; }
fi

version="$(ls /etc/postgresql | sort -n | tail -1)"
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  # fd 3 closed: the server must not hold the caller's capture open
  $sudo pg_ctlcluster "$version" main start 3>&-
fi

as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sudo -u postgres sh -c "$*"; fi
}
for _ in $(seq 1 50); do
  if as_postgres "psql -qtAc 'SELECT 1'" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
as_postgres "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = 'sagaflow'\"" | grep -q 1 \
  || as_postgres "psql -qc \"CREATE ROLE sagaflow LOGIN PASSWORD 'sagaflow' CREATEDB\""
as_postgres "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'sagaflow'\"" | grep -q 1 \
  || as_postgres "psql -qc 'CREATE DATABASE sagaflow OWNER sagaflow'"

# test databases left by earlier runs (each test makes its own, named after its process)
for db in $(as_postgres "psql -qtAc \"SELECT datname FROM pg_database WHERE datname LIKE 'sagaflow\\_t%'\"" ); do
  as_postgres "psql -qc 'DROP DATABASE IF EXISTS $db WITH (FORCE)'" >/dev/null
done

echo "postgres://sagaflow:sagaflow@127.0.0.1:5432/sagaflow" >&3
