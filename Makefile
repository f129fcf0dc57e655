# One target per everyday action. Each creates .venv on first use and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# the CPU build of PyTorch (a plain `torch` requirement may pull a multi-GB CUDA build)
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test edge-check lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	@touch $@

# the whole pipeline on the embedded database under .twotower/demo; serves until Ctrl-C (a second run reuses it)
DEMO_ENV := TWOTOWER_DATA_DIR=.twotower/demo
demo: $(STAMP)
	$(DEMO_ENV) $(BIN)/twotower demo

# onnxruntime-node for the JavaScript parity test, pinned by js/package-lock.json (skipped without npm)
JS := $(VENV)/js
$(JS)/.installed: js/package.json js/package-lock.json | $(STAMP)
	@if command -v npm >/dev/null 2>&1; then mkdir -p $(JS) && cp js/package.json js/package-lock.json $(JS)/ \
		&& cd $(JS) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch .installed; \
	else echo "npm not found: the JavaScript parity test will be skipped"; fi

# the Supabase Edge Functions: format, lint, type check and their Deno tests (the npm packages pinned by deno.lock);
# tests/edge/ then serves them beside the Python API
DENO := $(CURDIR)/$(BIN)/deno
edge-check: $(STAMP)
	cd supabase/functions && $(DENO) fmt --check && $(DENO) lint && $(DENO) check --frozen . \
		&& $(DENO) test --frozen --allow-env --allow-read --allow-net=127.0.0.1 tests/

test: $(STAMP) $(JS)/.installed edge-check
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench
	cd supabase/functions && $(DENO) fmt

bench: $(STAMP)
	@mkdir -p bench/results
	@set -e; for script in bench/[!_]*.py; do echo "== $$script"; \
		TWOTOWER_BENCH_DATA_DIR=.twotower/bench $(BIN)/python $$script; done
	$(BIN)/python bench/_summary.py

clean:
	rm -rf $(VENV) .twotower .pytest_cache .mypy_cache .ruff_cache
