#!/usr/bin/env bash
# Local MariaDB for development and tests, from Debian's packages.
#
#   scripts/mariadb.sh start   install (when absent), mariadb-install-db under .services/mariadb, start
#   scripts/mariadb.sh stop    stop the server this script started (by its pid file)
#   scripts/mariadb.sh status
#
# The server listens on 127.0.0.1:${MARIADB_PORT:-3306} only, with its socket, pid file, log and
# data in ${MARIADB_HOME_DIR:-.services/mariadb}; it is never the system service (no
# /etc/mysql config is read). It is reachable as mysql://reconcile:reconcile@127.0.0.1:3306/mysql
# (RECONCILE_TEST_MYSQL_URL overrides it for the tests); `reconcile` may create and drop
# databases. A second `start` reuses a server that already answers on that port.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${MARIADB_PORT:-3306}
HOME_DIR=${MARIADB_HOME_DIR:-"$ROOT/.services/mariadb"}
DATA="$HOME_DIR/data"
SOCK="$HOME_DIR/mariadb.sock"
PIDFILE="$HOME_DIR/mariadb.pid"
LOG="$HOME_DIR/mariadb.log"

server_bin() { command -v mariadbd || command -v mysqld || true; }

ensure_installed() {
  [ -n "$(server_bin)" ] && command -v mariadb-admin >/dev/null && return 0
  echo "mariadb: installing Debian's mariadb-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The package would start the system service on 3306 (with /etc/mysql's settings and without
  # our user) wherever no policy-rc.d forbids it; forbid it for the install, as Docker images do.
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$guard"; chmod 755 "$guard"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq mariadb-server >/dev/null
  if [ -n "$guard" ]; then rm -f "$guard"; trap - EXIT; fi
}

# The server runs as the `mysql` user that Debian's package creates (mariadbd refuses root).
owner() { if [ "$(id -u)" = 0 ]; then echo mysql; else id -un; fi; }
# mariadb-install-db gives root@localhost, and the account named by --user, unix-socket login:
# whoever runs this script administers the server through its socket, with no password.
admin_user() { if [ "$(id -u)" = 0 ]; then echo root; else id -un; fi; }

answers() {
  # ping exits 0 whenever a server answers, even one that refuses us (someone else's server);
  # as our own user it leaves no "access denied" in our server's log.
  mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PORT" --connect-timeout=2 \
    -u reconcile -preconcile ping >/dev/null 2>&1
}

ours() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

sql() { mariadb --no-defaults --socket="$SOCK" -u "$(admin_user)" -e "$1"; }

start() {
  ensure_installed
  if answers; then
    if ours; then echo "mariadb: already running (pid $(cat "$PIDFILE"), 127.0.0.1:$PORT; reused)"
    else echo "mariadb: something already answers on 127.0.0.1:$PORT (reused, not ours to stop)"; fi
    return 0
  fi
  mkdir -p "$HOME_DIR"
  [ "$(id -u)" = 0 ] && chown "$(owner):" "$HOME_DIR"
  if [ ! -d "$DATA/mysql" ]; then
    mariadb-install-db --no-defaults --user="$(owner)" --datadir="$DATA" \
      --auth-root-authentication-method=socket --skip-test-db > "$HOME_DIR/install.log" 2>&1 \
      || { cat "$HOME_DIR/install.log" >&2; return 1; }
  fi
  # Like many production servers: utf8mb4 with Debian's default collation (case-insensitive,
  # PAD SPACE: reconcile must not let it order or match keys), and a time zone that is not UTC
  # (reconcile must read TIMESTAMP columns in UTC whatever the server's zone). Tuned for tests
  # and benchmarks on a small machine: durability traded for speed.
  # setsid: the server outlives this shell and make; the pid file is what `stop` kills.
  setsid nohup "$(server_bin)" --no-defaults --user="$(owner)" --datadir="$DATA" \
    --bind-address=127.0.0.1 --port="$PORT" --socket="$SOCK" --pid-file="$PIDFILE" \
    --log-error="$LOG" --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci --default-time-zone=+02:00 \
    --max-connections=200 --innodb-buffer-pool-size=512M --innodb-flush-log-at-trx-commit=0 \
    --innodb-doublewrite=0 --sync-binlog=0 > /dev/null 2>&1 < /dev/null &
  local launcher=$!
  for _ in $(seq 1 120); do
    if [ -S "$SOCK" ] && mariadb-admin --no-defaults --socket="$SOCK" -u "$(admin_user)" ping \
      >/dev/null 2>&1; then
      sql "CREATE USER IF NOT EXISTS 'reconcile'@'%' IDENTIFIED BY 'reconcile';
           GRANT ALL PRIVILEGES ON *.* TO 'reconcile'@'%';"
      echo "mariadb: started on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), data $DATA, log $LOG)"
      return 0
    fi
    if ! kill -0 "$launcher" 2>/dev/null; then
      echo "mariadb: the server exited while starting; see $LOG" >&2
      tail -n 20 "$LOG" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  echo "mariadb: not ready after 60 s; see $LOG" >&2; return 1
}

stop() {
  if ours; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid"  # SIGTERM: a clean InnoDB shutdown
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"; echo "mariadb: stopped"
  else
    echo "mariadb: not started by us, nothing to stop"
  fi
}

status() {
  if ours && answers; then echo "mariadb: up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
  elif command -v mariadb-admin >/dev/null && answers; then
    echo "mariadb: something else answers on 127.0.0.1:$PORT"
  else echo "mariadb: down"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
