# One command to set up and run the demo, one to set up and run the tests (README "Quick start").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_WS := data/demo-workspace

$(BIN)/curate: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned resolve would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/curate

.PHONY: setup demo test test-fast lint clean-demo
setup: $(BIN)/curate

demo: setup
	rm -rf $(DEMO_WS)
	$(BIN)/curate ingest data/sample/images -w $(DEMO_WS)
	$(BIN)/curate dedupe -w $(DEMO_WS)
	$(BIN)/curate split -w $(DEMO_WS)
	$(BIN)/curate normalize -w $(DEMO_WS)
	$(BIN)/curate show -w $(DEMO_WS)
	$(BIN)/curate export -w $(DEMO_WS)
	$(BIN)/curate log -w $(DEMO_WS)

test: setup
	$(BIN)/ruff check curate tests bench scripts
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check curate tests bench scripts

clean-demo:
	rm -rf $(DEMO_WS)
