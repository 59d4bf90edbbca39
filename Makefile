# Two commands on a fresh machine: `make run` (the daemon on working defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench chromium demo FORCE

# Strict editable mode: a link tree under build/ that mypy and IDEs follow (the default mode's
# import hook hides the monitor/ -> lookout.monitor mapping from them). A new module needs the
# tree rebuilt, so the stamps depend on the list of package files (rewritten only when it
# changes: folder times would change with every __pycache__ Python writes).
# The client (lookout-llm-client, client/) installs the same way, from its folder: never by name,
# which an index would answer. The daemon does not depend on it; the tests and mypy use it.
MODULES := $(VENV)/.package-files
EDITABLE := --config-settings editable_mode=strict

$(MODULES): FORCE
	@mkdir -p $(VENV)
	@find core monitor detectors alerts client/lookout_client -not -path '*/__pycache__*' \
	  -type f | sort > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@

FORCE:

# The distribution was called `lookout` before lookout-llm: in a venv made then, its editable
# link would shadow the new one, so it goes first.
$(STAMP): pyproject.toml client/pyproject.toml $(MODULES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip uninstall --quiet --yes lookout 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[dev]' $(EDITABLE)
	$(BIN)/pip install --quiet -e './client[langchain]' $(EDITABLE)
	touch $(STAMP)

# The tests cover the sentence-transformers, onnx and postgres extras too (the store's tests run
# on SQLite and on the PostgreSQL that .ci/run starts); torch is pinned there (2.13.0
# is a local CPU build on our machines); the onnx test blocks torch in its own process, as a
# user without it would run. `make run` stays without them.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,sentence-transformers,onnx,postgres]' $(EDITABLE)
	touch $(TEST_STAMP)

run: $(STAMP)
	$(BIN)/lookout run $(ARGS)

demo: $(STAMP)
	$(BIN)/lookout demo $(ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p lookout -p lookout_client
	$(BIN)/mypy

test: lint chromium
	$(BIN)/pytest

# The dashboard's browser test uses Debian's Chromium; install it when missing and allowed.
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null); } \
	  || { echo "the dashboard test needs Chromium: sudo apt-get install chromium" >&2; exit 1; }

bench: $(STAMP)
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/ingest.py
