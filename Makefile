# Baton. `make help` lists the targets. Only python3 and make are needed to start:
# every target installs what it is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
VENV   := .venv
STAMP  := $(VENV)/.synced
PYTEST_ARGS ?=

.PHONY: help install broker postgres chromium run run-cluster stop reset test test-unit fuzz lint fmt bench chaos clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv with every service, the CLI and the dev tools

broker: ## Install Mosquitto when possible (else nats-server's MQTT listener is used)
	@bash deploy/local/install-broker.sh

postgres: ## Install the PostgreSQL server when missing (the tests and the bench start their own)
	@bash deploy/local/install-postgres.sh

chromium: ## Install Debian's Chromium when missing (the console's browser tests drive it)
	@bash deploy/local/install-chromium.sh

run: install broker ## Start NATS, MQTT, the four services and the simulator (Ctrl-C stops)
	$(VENV)/bin/baton dev run

run-cluster: install broker postgres ## The replicated topology on this machine: PostgreSQL, 3 NATS nodes, 2 of each service
	$(VENV)/bin/baton dev run --cluster

stop: ## Stop what `make run` or `make run-cluster` started
	@if [ -x $(VENV)/bin/baton ]; then $(VENV)/bin/baton dev stop; else echo "Nothing to stop."; fi

reset: install ## Delete ./var (all local data); refused while the stack runs
	$(VENV)/bin/baton dev reset

# The unit tests are CPU-bound and share nothing: both cores (pytest-xdist). The integration
# and end-to-end tests mostly wait on their own servers: two files at a time (a file's stack
# stays with one worker; each worker takes ports from its own range, tests/conftest.py).
# The chaos runs load both cores themselves and time recoveries: alone, last.
test: install broker postgres chromium lint ## Lint, then run every test (unit, integration, end-to-end, chaos)
	$(VENV)/bin/pytest -n 2 tests/unit $(PYTEST_ARGS)
	$(VENV)/bin/pytest -n 2 --dist loadfile --ignore=tests/unit --ignore=tests/chaos $(PYTEST_ARGS)
	$(VENV)/bin/pytest tests/chaos $(PYTEST_ARGS)

test-unit: install ## Run the unit tests only
	$(VENV)/bin/pytest -n 2 tests/unit $(PYTEST_ARGS)

fuzz: install broker ## The fuzz stages of make test, long: HTTP, MQTT wire and NATS (see docs/operations.md)
	BATON_FUZZ_CASES=$${BATON_FUZZ_CASES:-20000} \
	BATON_FUZZ_MESSAGES=$${BATON_FUZZ_MESSAGES:-100000} \
	BATON_FUZZ_EXAMPLES=$${BATON_FUZZ_EXAMPLES:-5000} \
	BATON_NATS_FUZZ_CASES=$${BATON_NATS_FUZZ_CASES:-2500} \
	$(VENV)/bin/pytest -m fuzz $(PYTEST_ARGS)

bench: install broker postgres ## Floors, max sustained rate, latency, cost, growth (BENCH_ARGS=--quick: 2 min)
	$(VENV)/bin/python -m tests.benchmarks.commands $(BENCH_ARGS)

chaos: install broker ## 300 s of load while every part is killed; checks the record (docs/operations.md)
	$(VENV)/bin/python -m tests.chaos $(CHAOS_ARGS)

lint: install ## ruff and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/*/src services/*/src tests

fmt: install ## Format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Remove the environments and ./var (all local data)
	rm -rf $(VENV) $(TOOLS) var .pytest_cache .mypy_cache .ruff_cache
