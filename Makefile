# Set-up on a fresh machine: `make train` (venv + install + train on the synthetic default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install train test test-all bench lint clean

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes; the stamp keeps `make test` from reinstalling every time.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

train: install
	$(PY) scripts/train.py $(ARGS)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) scripts/benchmark.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check src scripts tests
	$(VENV)/bin/ruff format --check src scripts tests

clean:
	rm -rf outputs multirun .pytest_cache
