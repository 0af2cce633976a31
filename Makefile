# TokenBill: `make run` serves the demo, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench install system-deps migrate clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "TokenBill needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	touch $(STAMP)

install: $(STAMP)

# Debian packages the test suite needs (Chromium for the browser tests, docker-compose to
# validate docker-compose.yml). Installs them when missing; fails loudly when it cannot.
system-deps:
	@bash scripts/system-deps.sh

migrate: install
	$(PY) manage.py migrate --noinput

run: install
	@$(PY) scripts/run.py

# The linter runs first: an undefined name or an unused import fails the run before the suite starts.
lint: install
	$(VENV)/bin/ruff check .

test: install system-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not browser" -x $(PYTEST_ARGS)

bench: install
	@bash bench/run.sh

clean:
	rm -rf $(VENV) data
