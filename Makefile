# bgrscrpt_ioc — everything a newcomer needs, from nothing.
#   make run    the IOC on the embedded default configuration (scripts/, var/)
#   make test   the whole test suite (installs procServ and Chromium when root)
#   make unit   the unit tests alone (about a minute; no system packages needed)
#   make demo   a whole simulated instrument on this machine (Ctrl-C stops it)
#   make bench  measure, and write BENCHMARKS.md
#   make lint   ruff and mypy

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Keep Channel Access on loopback unless the caller says otherwise.
export EPICS_CA_AUTO_ADDR_LIST ?= NO
export EPICS_CA_ADDR_LIST ?= 127.0.0.1

.PHONY: run demo test unit bench lint system-deps clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed as $(PYTHON)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m bgrscrpt_ioc --config-dir scripts --var-dir var

# The demo runs without procServ too (it says what is missing), so no system-deps here.
# DEMO_ARGS go to `python -m demo` (see `python -m demo --help`).
demo: $(VENV)/.installed
	$(PY) -m demo $(DEMO_ARGS)

system-deps:
	@bash .ci/system-deps

# Two workers; worksteal so the slow integration tests spread over both.
test: $(VENV)/.installed system-deps
	$(PY) -m pytest -n 2 --dist worksteal

unit: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist worksteal tests/unit

bench: $(VENV)/.installed system-deps
	$(PY) -m bench

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
