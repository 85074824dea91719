# Two entry points for a newcomer on Debian 12 (as root):
#   make run    bring up the gateway on this machine (demo IMAP server if none is configured)
#               GATEWAYS=2 make run: two gateway hosts sharing their limits and caches in Redis
#   make test   install everything and run every check: ruff, mypy --strict, pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test deps venv lint typecheck unit bench clean

deps:
	./scripts/install-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: deps $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

run: venv
	$(BIN)/python -m devstack.run

bench: venv
	$(BIN)/python -m bench.auth_bench

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
