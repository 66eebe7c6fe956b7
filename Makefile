# The two set-up commands of the README: `make up` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test test-postgres install bench lint clean postgres-programs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the project (same resolution as pip, measured: the same 180 packages) in 23 s where pip took 71 s
# on a fresh machine; --compile-bytecode as pip does, since PYTHONDONTWRITEBYTECODE may keep every process from
# caching what it compiles. It honours SSL_CERT_FILE, as pip honours PIP_CERT.
$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet 'uv>=0.9,<1'

PIP := $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode

$(STAMP): pyproject.toml | $(BIN)/uv
	$(PIP) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start Dagster webserver (:3000), Dagster daemon and the API (:8000) on embedded defaults.
up: $(STAMP)
	exec $(BIN)/rime up

## PostgreSQL's server programs, which the postgres tests run (pytest-postgresql's executor starts a throwaway
## server with pg_ctl): Debian's package, installed here, before the suite, when pg_ctl is missing.
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl) $(shell command -v pg_ctl))

postgres-programs:
ifeq ($(PG_CTL),)
	@[ "$$(id -u)" = 0 ] || { echo "the postgres tests need PostgreSQL's pg_ctl: sudo apt-get install postgresql"; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
endif

## Install what the tests need and run the whole suite.
test: $(STAMP) postgres-programs
	$(BIN)/python -m pytest

## The whole suite with PostgreSQL under the shared fixtures: Rime's store and Dagster's storage (dagster-postgres)
## in a throwaway server's databases (tests/conftest.py, RIME_TEST_BACKEND).
test-postgres: $(STAMP) postgres-programs
	RIME_TEST_BACKEND=postgresql $(BIN)/python -m pytest

## Run every benchmark (installs the `bench` extra: dlt, the connector sync peer).
bench: $(STAMP)
	$(PIP) -e '.[dev,bench]'
	$(BIN)/python bench/projects_pagination.py
	$(BIN)/python bench/connector_sync.py
	$(BIN)/python bench/dbt_load.py
	$(BIN)/python bench/run_latency.py
	$(BIN)/python bench/code_location_load.py
	$(BIN)/python bench/definitions_churn.py

lint: $(STAMP)
	$(BIN)/ruff check api_shim rime_dagster rime_client tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy api_shim rime_dagster rime_client

clean:
	rm -rf $(VENV) .rime
