# Everything installs into .venv/ in this directory; FFmpeg comes from Debian's package if missing,
# and so do Chromium and Node for the browser tests (tests/ui: playwright-core and hls.js, never a browser download).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UI_STAMP := tests/ui/node_modules/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# medians of three alternating rounds (about 40 min here); `make bench BENCH_ARGS=` for one round
BENCH_ARGS ?= --repeats 3

.PHONY: demo test test-fast lint dev bench ffmpeg browser packager cluster-services cluster cluster-down install clean

ffmpeg:
	@if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! fc-list 2>/dev/null | grep -q .; then \
		echo "Installing FFmpeg and a font (Debian packages)..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg fonts-dejavu-core fontconfig >/dev/null; \
	fi
	@ffmpeg -hide_banner -version | head -1

browser:
	@# Only what is missing: a Node.js from elsewhere (NodeSource's, with its own npm) conflicts with Debian's npm
	@missing="$$(command -v chromium >/dev/null || echo chromium) $$(command -v npm >/dev/null || echo nodejs npm)"; \
	if [ -n "$$(echo $$missing)" ]; then \
		echo "Installing $$missing(Debian packages) for the browser test..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(MAKE) --no-print-directory $(UI_STAMP)

# Shaka Packager for CMAF packaging (hls.segment_type: cmaf): its static Linux binary from the npm
# package, pinned, into .venv/shaka (where mpegflow looks for it; or set MPEGFLOW_PACKAGER).
SHAKA_VERSION := 3.4.2
SHAKA_STAMP := $(VENV)/shaka/.installed-$(SHAKA_VERSION)
packager: browser $(SHAKA_STAMP)

$(SHAKA_STAMP): $(STAMP)
	npm install --prefix $(VENV)/shaka --no-save --no-audit --no-fund --loglevel=error shaka-packager@$(SHAKA_VERSION)
	touch $@

# The cluster's broker, instance database and its connection pool (docs/cluster.md): Debian's
# servers, started by `mpegflow cluster up` (and tests/test_cluster.py) as plain processes, never
# as system services.
cluster-services:
	@if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! test -x /usr/sbin/pgbouncer; then \
		echo "Installing Redis, PostgreSQL and PgBouncer (Debian packages) for the cluster..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server postgresql pgbouncer >/dev/null; \
	fi

$(UI_STAMP): tests/ui/package.json tests/ui/package-lock.json
	cd tests/ui && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The instance config (resources/dagster.yaml) names its own directory, so it is written here, and
# rewritten while it is still ours (first line), e.g. after the project moved; a user's own is kept.
install: ffmpeg $(STAMP)
	@mkdir -p "$(DAGSTER_HOME)"
	@if [ ! -f "$(DAGSTER_HOME)/dagster.yaml" ] || head -1 "$(DAGSTER_HOME)/dagster.yaml" | grep -q '^# mpegflow:'; then \
		sed 's|@DAGSTER_HOME@|$(abspath $(DAGSTER_HOME))|' resources/dagster.yaml > "$(DAGSTER_HOME)/dagster.yaml"; \
	fi

demo: install
	$(BIN)/mpegflow sample build/demo --name sample --duration 12
	$(BIN)/mpegflow run build/demo/sample.mp4 --out build/demo/delivery

# Two test files at a time (pytest-xdist): most tests wait on Dagster's Python rather than on
# FFmpeg, so this halves the wall on two cores; loadfile keeps a file's fixtures (one cluster) together.
test: lint browser packager cluster-services
	$(BIN)/pytest -q -n 2 --dist loadfile

# ruff (lint and format, line length 100) and pyright, as configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

# no pipeline runs and nothing slow (markers in pyproject.toml): under a minute here
test-fast: install
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not pipeline and not slow"

# The UI, and beside it the server of the pictures it shows (previews.url); Ctrl-C stops both.
# `dagster dev` stays in the foreground: started in the background by a shell it ignores SIGINT,
# and then SIGTERM too, and outlives `make dev`.
dev: install
	@$(BIN)/mpegflow previews & previews=$$!; \
	trap 'kill $$previews 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster dev -w workspace.yaml

# Postgres, Redis, a moto S3 server, CLUSTER_WORKERS Celery workers, the daemon and the UI, as
# processes on 127.0.0.1 with their data under .cluster/; `make cluster-down` stops them all.
CLUSTER_WORKERS ?= 2
cluster: install cluster-services
	$(BIN)/mpegflow cluster up --workers $(CLUSTER_WORKERS)

cluster-down:
	$(BIN)/mpegflow cluster down

bench: install
	$(BIN)/python bench/ladder.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .mpegflow .dagster_home
