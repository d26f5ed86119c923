# The whole interface of the project. `make help` lists the targets.
#   make demo      the main job on the embedded default (SQLite + embedded event log; no services)
#   make test      venv + PostgreSQL + MariaDB + Kafka + lint + the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RECONCILE_TEST_PG_URL ?= postgresql://postgres:postgres@127.0.0.1:5432/postgres
export RECONCILE_TEST_MYSQL_URL ?= mysql://reconcile:reconcile@127.0.0.1:3306/mysql
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092

.PHONY: help venv debs demo test unit integration lint services services-down services-status lock bench clean airflow

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

venv: $(STAMP)  ## create .venv and install the project with its pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "reconcile needs Python 3.11+")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[airflow,dev]'
	$(BIN)/python -m pip check
	@touch $@

debs:  ## install Debian's chromium and prometheus (promtool) when absent: the dashboard's tests drive them
	scripts/debs.sh

demo: $(STAMP)  ## run the inventory-desync story on the embedded default (no services needed)
	$(BIN)/reconcile demo

services:  ## start local PostgreSQL, MariaDB and Kafka (idempotent: reuses what runs)
	scripts/postgres.sh start
	scripts/mariadb.sh start
	scripts/kafka.sh start

services-down:  ## stop the services that `make services` started (by pid)
	-scripts/kafka.sh stop
	-scripts/mariadb.sh stop
	-scripts/postgres.sh stop

services-status:  ## show whether the local services are up
	-scripts/postgres.sh status
	-scripts/mariadb.sh status
	-scripts/kafka.sh status

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check reconcile tests dags checks bench
	$(BIN)/ruff format --check reconcile tests dags checks bench
	$(BIN)/mypy

unit: $(STAMP) debs  ## the unit tests alone (no services)
	$(BIN)/pytest -m "not integration and not airflow" -q

integration: $(STAMP) services  ## the tests against real PostgreSQL, MariaDB and Kafka
	$(BIN)/pytest -m "integration or airflow" -q

test: $(STAMP) debs services lint  ## set up everything and run the whole suite
	$(BIN)/reconcile check-schemas checks/schemas --format table
	promtool test rules docker/prometheus/alerts.test.yml
	$(BIN)/pytest -q

lock:  ## re-resolve the dependencies in a scratch venv and rewrite constraints.txt
	rm -rf .cache/lock-venv && $(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/pip install -q --upgrade pip
	.cache/lock-venv/bin/pip install -q -e '.[airflow,dev]'
	{ sed -n '1,3p' constraints.txt; .cache/lock-venv/bin/pip freeze --exclude-editable; } > constraints.new && mv constraints.new constraints.txt

bench: $(STAMP) services  ## run the benchmarks (see bench/README.md)
	$(BIN)/python bench/run.py

# Airflow opens three ports: AIRFLOW_PORT (API and UI, default 8080; tasks call its execution API),
# AIRFLOW_WORKER_LOG_PORT (8793) and AIRFLOW_TRIGGER_LOG_PORT (8794), its log servers; the dashboard
# beside it listens on RECONCILE_DASHBOARD_PORT (8765). Set them in the environment or on the command
# line; scripts/airflow.sh derives every Airflow setting from them.
airflow: $(STAMP) services  ## a local Airflow (standalone) with dags/ and specs/, and the dashboard beside it
	AIRFLOW_PORT=$(AIRFLOW_PORT) AIRFLOW_WORKER_LOG_PORT=$(AIRFLOW_WORKER_LOG_PORT) \
	AIRFLOW_TRIGGER_LOG_PORT=$(AIRFLOW_TRIGGER_LOG_PORT) RECONCILE_DASHBOARD_PORT=$(RECONCILE_DASHBOARD_PORT) \
	scripts/airflow.sh standalone

clean:  ## remove caches and local state (not .venv or the services' data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache gx-docs reconcile-store.db
