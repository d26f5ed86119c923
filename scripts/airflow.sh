#!/usr/bin/env bash
# The local Airflow of `make airflow`, on ports you choose.
#
#   scripts/airflow.sh [standalone]     `airflow standalone` with dags/ and the specs folder, and
#                                       the drift dashboard (`reconcile serve`) beside it
#   scripts/airflow.sh ARGS...          any other airflow command with the same settings,
#                                       e.g. `scripts/airflow.sh dags list`
#   scripts/airflow.sh env              print the settings as `export` lines
#
# Airflow listens on three TCP ports; each one moves with one variable:
#
#   AIRFLOW_PORT              (8080)  API server and UI. Task runners call its execution API,
#                                     so the API base URL and the execution API URL move with it.
#   AIRFLOW_WORKER_LOG_PORT   (8793)  the scheduler's log server (running tasks' logs for the UI)
#   AIRFLOW_TRIGGER_LOG_PORT  (8794)  the triggerer's log server
#
# Moving only the API port ([api] port) is not enough: the task runners would still call
# http://localhost:8080/execution/, get "connection refused" (or talk to another Airflow) and
# be killed. Two Airflows side by side need all three ports apart.
#
# Also read: AIRFLOW_HOME (default .airflow/), RECONCILE_SPECS_DIR (default specs/),
# RECONCILE_STORE_URL (default a SQLite file in AIRFLOW_HOME). The metadata DB is Airflow's
# default, a SQLite file in AIRFLOW_HOME.
#
# The dashboard listens on 127.0.0.1:RECONCILE_DASHBOARD_PORT (8765) over the same store and
# specs (log: AIRFLOW_HOME/dashboard.log) and stops with Airflow; the plugin in dags/plugins/
# links to it from Airflow's menu (RECONCILE_DASHBOARD_URL, derived from the port).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${RECONCILE_VENV_BIN:-$ROOT/.venv/bin}

port=${AIRFLOW_PORT:-8080}
worker_log_port=${AIRFLOW_WORKER_LOG_PORT:-8793}
trigger_log_port=${AIRFLOW_TRIGGER_LOG_PORT:-8794}
dashboard_port=${RECONCILE_DASHBOARD_PORT:-8765}
for p in "$port" "$worker_log_port" "$trigger_log_port" "$dashboard_port"; do
  [[ $p =~ ^[0-9]+$ ]] && ((10#$p > 0 && 10#$p < 65536)) || {
    echo "airflow.sh: not a port: '$p'" >&2
    exit 2
  }
done

export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/.airflow}
export AIRFLOW__CORE__DAGS_FOLDER=${AIRFLOW__CORE__DAGS_FOLDER:-$ROOT/dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=${AIRFLOW__CORE__LOAD_EXAMPLES:-False}
export AIRFLOW__CORE__PLUGINS_FOLDER=${AIRFLOW__CORE__PLUGINS_FOLDER:-$ROOT/dags/plugins}
# Derived from the ports above on purpose (not `${VAR:-...}`): a stale value left in the shell
# would send the task runners to the wrong place, which is the failure this script exists for.
export AIRFLOW__API__PORT=$port
export AIRFLOW__API__BASE_URL=http://localhost:$port
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://localhost:$port/execution/
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$worker_log_port
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$trigger_log_port
export RECONCILE_SPECS_DIR=${RECONCILE_SPECS_DIR:-$ROOT/specs}
export RECONCILE_STORE_URL=${RECONCILE_STORE_URL:-sqlite:///$AIRFLOW_HOME/reconcile-store.db}
export RECONCILE_DASHBOARD_URL=${RECONCILE_DASHBOARD_URL:-http://127.0.0.1:$dashboard_port}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PATH=$BIN:$PATH

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "${1:-standalone}" in
  env)
    for v in AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES \
      AIRFLOW__CORE__PLUGINS_FOLDER RECONCILE_DASHBOARD_URL AIRFLOW__API__PORT \
      AIRFLOW__API__BASE_URL AIRFLOW__CORE__EXECUTION_API_SERVER_URL \
      AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT \
      RECONCILE_SPECS_DIR RECONCILE_STORE_URL PYTHONPATH; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done
    ;;
  standalone)
    busy=0
    for pv in "$port:AIRFLOW_PORT" "$worker_log_port:AIRFLOW_WORKER_LOG_PORT" \
      "$trigger_log_port:AIRFLOW_TRIGGER_LOG_PORT" "$dashboard_port:RECONCILE_DASHBOARD_PORT"; do
      if in_use "${pv%%:*}"; then
        echo "airflow.sh: port ${pv%%:*} is in use (another Airflow?): set ${pv#*:} to a free port" >&2
        busy=1
      fi
    done
    ((busy == 0)) || exit 1
    mkdir -p "$AIRFLOW_HOME"
    echo "airflow.sh: UI and API on $AIRFLOW__API__BASE_URL, log servers on" \
      "$worker_log_port and $trigger_log_port, AIRFLOW_HOME=$AIRFLOW_HOME" >&2
    # The dashboard needs the store to exist (it refuses a SQLite file that is not there, which
    # is usually a typo): create and migrate it, as the first DAG run would.
    "$BIN/python" -c 'import os; from reconcile.store import AuditStore; AuditStore(os.environ["RECONCILE_STORE_URL"]).migrate()'
    "$BIN/reconcile" serve --port "$dashboard_port" >"$AIRFLOW_HOME/dashboard.log" 2>&1 &
    dashboard=$!
    trap 'kill "$dashboard" 2>/dev/null || true; wait "$dashboard" 2>/dev/null || true' EXIT
    echo "airflow.sh: drift dashboard on $RECONCILE_DASHBOARD_URL (log $AIRFLOW_HOME/dashboard.log)" >&2
    "$BIN/airflow" standalone
    ;;
  *)
    mkdir -p "$AIRFLOW_HOME"
    exec "$BIN/airflow" "$@"
    ;;
esac
