# Every command a developer or CI runs. `make test` is what CI runs (.ci/run).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := contracts runtime services/dispatcher services/callback-gateway services/expirer services/notifier cli
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))
PYTEST := $(BIN)/python -m pytest

.PHONY: help venv run test test-unit test-integration test-e2e lint fmt bench bench-quick wrk h2load clean

## help: list the targets below with what each does
.DEFAULT_GOAL := venv
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## venv: create .venv with every package installed editable, at the pinned versions
venv: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt bench/requirements.txt $(PYPROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements-dev.txt -r bench/requirements.txt \
		$(foreach p,$(PACKAGES),-e ./$(p)) -e './runtime[embedded,testing]'
	touch $(STAMP)

## run: start the whole system on embedded PostgreSQL and Kafka and run one demo task
run: $(STAMP)
	$(BIN)/webhook-tasks up --demo

## test: every test, unit to end-to-end
test: $(STAMP)
	$(PYTEST)

## test-unit: the tests that need no PostgreSQL, Kafka or processes
test-unit: $(STAMP)
	$(PYTEST) -m "not integration and not e2e"

## test-integration: the tests on real PostgreSQL and Kafka
test-integration: $(STAMP)
	$(PYTEST) -m integration

## test-e2e: the whole system through real processes
test-e2e: $(STAMP)
	$(PYTEST) -m e2e

## bench: measure the system against ceilings taken in the same run (ARGS=--quick: under a minute)
bench: $(STAMP) wrk h2load
	$(BIN)/python -m bench $(ARGS)

## bench-quick: the benchmarks' smoke run
bench-quick: $(STAMP) wrk h2load
	$(BIN)/python -m bench --quick $(ARGS)

# The gateway rows load the servers with wrk when it is installed (else with the in-repo
# Python client, which caps the figures): install it where we can, never fail without it.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing wrk for the gateway benchmark"; \
			apt-get install -y -qq wrk >/dev/null 2>&1 \
				|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; } \
				|| true; \
		fi; \
		command -v wrk >/dev/null 2>&1 \
			|| echo "wrk is not installed (apt-get install wrk): the gateway rows use the in-repo Python load generator"; \
	}

# The gateway's latency rows offer a fixed rate with h2load (package nghttp2-client) when it
# is installed (else with the in-repo Python client, which cannot hold 2,000/s here).
h2load:
	@command -v h2load >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing h2load (nghttp2-client) for the gateway benchmark"; \
			apt-get install -y -qq nghttp2-client >/dev/null 2>&1 \
				|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nghttp2-client >/dev/null 2>&1; } \
				|| true; \
		fi; \
		command -v h2load >/dev/null 2>&1 \
			|| echo "h2load is not installed (apt-get install nghttp2-client): the gateway latency rows use the in-repo Python open-loop client"; \
	}

## lint: ruff (format check and lint) and mypy (sources, bench and tests)
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy contracts/src runtime/src services/*/src cli/src bench \
		contracts/tests runtime/tests services/*/tests cli/tests tests

## fmt: format and fix with ruff
fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## clean: remove .venv
clean:
	rm -rf $(VENV)
