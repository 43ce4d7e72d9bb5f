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
	$(BIN)/pip install -q -e '.[dev,ray,onnx,hf,s3]'
	touch $(BIN)/curate

.PHONY: setup browser demo test test-fast lint clean-demo
setup: $(BIN)/curate

# tests/test_report.py renders the HTML report in headless Chromium; tests/test_review_browser.py drives the review
# desk with Selenium through chromedriver. Install Debian's packages when they are missing and apt-get is there (as
# root, or through sudo without a password); anywhere else those tests skip.
browser:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	  command -v chromedriver >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"; }; \
	  command -v apt-get >/dev/null 2>&1 && export DEBIAN_FRONTEND=noninteractive && \
	  { $$SUDO apt-get install -y -q chromium chromium-driver || \
	    { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }; }; \
	} || echo "chromium / chromium-driver not installed: the browser tests will skip"

# The whole chain in pipelines/demo.toml; run it again and every step is cached (`make clean-demo` starts over).
demo: setup
	$(BIN)/curate run pipelines/demo.toml -w $(DEMO_WS)

test: setup browser
	$(BIN)/ruff check curate tests bench scripts
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check curate tests bench scripts

clean-demo:
	rm -rf $(DEMO_WS)
