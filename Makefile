# Each target bootstraps its own virtualenv (.venv) on first use, from $(PYTHON).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
USERS  ?= 1000

.PHONY: help run test lint fmt bench plan clean FORCE

## help: these targets, from their `## target:` lines (needs no virtualenv)
help:
	@sed -n 's/^## \([a-z]*\): /\1|/p' $(MAKEFILE_LIST) | sed 's/\$$\$$/$$/g' | awk -F'|' '{printf "  make %-6s %s\n", $$1, $$2}'

# The interpreter .venv is built from, as "path version": another PYTHON rebuilds .venv.
PYTHON_ID := $(shell $(PYTHON) -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])' 2>/dev/null)
ifneq ($(PYTHON_ID),$(shell cat $(VENV)/.python 2>/dev/null))
$(STAMP): FORCE
endif

$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON_ID)" || { echo "make: PYTHON=$(PYTHON) does not run; give a Python 3.11-3.13 (PYTHON=python3.12)" >&2; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	echo "$(PYTHON_ID)" > $(VENV)/.python
	touch $@

## run: the function on 127.0.0.1:$${PORT:-8080}, on an embedded PostgreSQL seeded with USERS (1000) users
run: $(STAMP)
	SEED_USERS=$(USERS) $(BIN)/python -m devtools.devdb run

## test: the whole suite against a real PostgreSQL (TEST_DATABASE_URL, Docker, or embedded)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Recipes below that take arguments are silent (@): make would print them, secrets included.

## bench: the benchmark of BENCHMARKS.md (~10 min), with the seed's Next.js route when Node.js is installed
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	@command -v wrk >/dev/null || echo "bench: wrk is not installed; the figures of BENCHMARKS.md use it: apt-get install -y wrk"
	@command -v npm >/dev/null || echo "bench: node/npm not found: the seed's route (Next.js) will be left out; install Node.js 20.9+"
	@$(BIN)/python -m bench.run $(BENCH_ARGS)

## plan: safe --max-instances/--concurrency/THREADS (PLAN_DATABASE_URL=... reads a server; or PLAN_ARGS="--max-connections 25")
plan: $(STAMP)
	@$(BIN)/python -m devtools.plan $(PLAN_ARGS)

## lint: ruff, as CI runs it
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## fmt: ruff's fixes and formatting, applied
fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## clean: remove .venv, .devdb and the caches
clean:
	rm -rf $(VENV) .devdb .pytest_cache .ruff_cache
