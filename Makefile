# Two commands do all the set-up on a fresh Debian machine:
#   make run    start the local exchange and the daemon (no API keys, no internet)
#   make test   run the test suite against a real redis-server and SQLite
# Both are idempotent: the virtualenv is rebuilt only when requirements.txt changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PM2    := node_modules/.bin/pm2

.PHONY: bench-quick bench-micro run test lint bench exchange system-deps venv pm2 clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is required (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

# redis-server, postgresql (the durable store of cluster mode, and its tests), prometheus (its
# server and promtool, for the monitoring tests) and chromium (the status page's browser test)
# come from Debian's packages; installed only when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing (Debian packages)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing:$$missing: run 'sudo apt-get install -y$$missing'"; exit 1; \
		fi; }

# PM2 (npm) supervises the daemon in production; the tests start it for real.
pm2: $(PM2)

$(PM2): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
		else \
			echo "npm is missing: run 'sudo apt-get install -y nodejs npm'"; exit 1; \
		fi; }
	npm ci --no-audit --no-fund --silent
	touch $(PM2)

test: venv system-deps pm2 lint
	$(PY) -m pytest -n 2 --dist loadfile

# ruff (lint and import order) and mypy (types of sidecar/): part of `make test`, so CI runs them.
lint: venv
	$(VENV)/bin/ruff check sidecar tests bench scripts
	$(VENV)/bin/mypy

run: venv system-deps
	scripts/run-local.sh

exchange: venv
	$(PY) -m sidecar.exchange --always-open

bench: venv system-deps
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) -m bench.pipeline
	$(PY) -m bench.features
	$(PY) -m bench.quotes --symbols 5000 --seconds 60
	$(PY) -m bench.soak --symbols 5000 --minutes 10 --scaling 100,1000,20000,50000 --seconds 60

# One benchmark per stage at 5,000 symbols, compared with the previous saved run (not part of CI).
bench-micro: venv system-deps
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave --benchmark-compare \
		-W ignore::pytest_benchmark.logger.PytestBenchmarkWarning -p no:cacheprovider

bench-quick: venv system-deps
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) -m bench.soak --quick

clean:
	rm -rf $(VENV) var .pytest_cache node_modules
