#!/usr/bin/env bash
# Local PostgreSQL for development and tests, from Debian's packages.
#
#   scripts/postgres.sh start   install (when absent), initdb under .services/postgres, start
#   scripts/postgres.sh stop    stop the server this script started (by its pid file)
#   scripts/postgres.sh status
#
# The server listens on 127.0.0.1:${PGPORT:-5432} only and is reachable as
# postgresql://postgres:postgres@127.0.0.1:5432/postgres (RECONCILE_TEST_PG_URL overrides it
# for the tests). A second `start` reuses a server that already answers on that port.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGPORT=${PGPORT:-5432}
DATA="$ROOT/.services/postgres/data"
LOG="$ROOT/.services/postgres/postgres.log"

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && echo "$d"
}

ensure_installed() {
  if [ -z "$(pg_bin)" ]; then
    echo "postgres: installing Debian's postgresql package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
}

as_postgres() {
  # initdb and postgres refuse to run as root; Debian's package creates the `postgres` user.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

answers() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; }

start() {
  ensure_installed
  local bin; bin=$(pg_bin)
  if answers; then
    echo "postgres: already running on 127.0.0.1:$PGPORT (reused)"
    return 0
  fi
  mkdir -p "$(dirname "$DATA")"
  [ "$(id -u)" = 0 ] && chown postgres: "$(dirname "$DATA")"
  if [ ! -s "$DATA/PG_VERSION" ]; then
    local pw; pw=$(mktemp); echo postgres > "$pw"; chmod 644 "$pw"
    as_postgres "$bin/initdb" -D "$DATA" -U postgres --pwfile="$pw" -A scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pw"
  fi
  # Tuned for tests and benchmarks on a small machine: durability traded for speed.
  as_postgres "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=/tmp \
     -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
     -c max_connections=200 -c shared_buffers=512MB -c work_mem=64MB" >/dev/null
  echo "postgres: started on 127.0.0.1:$PGPORT (data $DATA, log $LOG)"
}

stop() {
  local bin; bin=$(pg_bin || true)
  if [ -n "$bin" ] && [ -f "$DATA/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null && echo "postgres: stopped"
  else
    echo "postgres: not started by us, nothing to stop"
  fi
}

status() {
  if [ -n "$(pg_bin)" ] && answers; then echo "postgres: up on 127.0.0.1:$PGPORT"; else echo "postgres: down"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
