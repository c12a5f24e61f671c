# tunesmith developer entry points.  `make demo` and `make test` work on a fresh clone:
# each creates .venv, installs the pinned dependencies (torch==2.13.0 is a CPU wheel on the
# CI disk) plus the two data packages with --no-deps, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunesmith-installed
UI_STAMP := $(VENV)/.tunesmith-ui-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint test-fast test-slow test-runtime test-ui ui bench bench-quick bench-classify bench-dpo bench-gpu bench-gpu-dry clean

$(STAMP): pyproject.toml requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,qlora]'
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tunesmith sft

# the default suite: style (ruff), the import layers and cycles (import-linter), then every test not marked slow
test: lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

# the tests alone, without the style checks
test-fast: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# the exported GGUF in real llama.cpp: token ids, greedy replies, llama-server's chat template, quantized files.
# Not in `make test` or CI: the first run builds llama-server/llama-quantize/llama-tokenize from the llama-cpp-python
# source package (about 30 minutes on 2 cores) into $(LLAMA_CPP) unless they are on PATH.
LLAMA_CPP ?= $(or $(TUNESMITH_HOME),$(HOME)/.cache/tunesmith)/llama.cpp
test-runtime: install
	@command -v llama-server >/dev/null && command -v llama-quantize >/dev/null || PYTHON=$(BIN)/python scripts/build-llama-cpp.sh $(LLAMA_CPP)
	PATH="$$PATH:$(LLAMA_CPP)/bin" TUNESMITH_RUNTIME_REPORT=$${TUNESMITH_RUNTIME_REPORT:-runtime-check.json} \
		$(BIN)/python -m pytest -q -s -m runtime tests/export/test_llama_cpp.py

# the web page's extra (gradio) plus selenium, for `tunesmith ui` and its browser tests
$(UI_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test-ui]'
	touch $(UI_STAMP)

# the page's tests with gradio installed, and the page driven by headless Chromium (Debian's chromium and
# chromium-driver, installed when missing); screenshots of each tab go to test-artifacts/ui/
test-ui: $(UI_STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }
	TUNESMITH_REQUIRE_UI=1 $(BIN)/python -m pytest -q -m "ui or not slow" tests/use/test_ui_*.py

# serve the page on http://127.0.0.1:7860 with this folder as the workspace root
ui: $(UI_STAMP)
	$(BIN)/tunesmith ui

bench: install
	$(BIN)/python bench/bench_sft.py --mode full

bench-quick: install
	$(BIN)/python bench/bench_sft.py --mode quick

# tunesmith classify against a plain transformers Trainer (docs/classify.md, Speed)
bench-classify: install
	$(BIN)/python bench/bench_sft.py --mode classify

# tunesmith dpo against plain TRL DPOTrainer (docs/performance-dpo.md)
bench-dpo: install
	$(BIN)/python bench/bench_sft.py --mode dpo

# the GPU check (bench/gpu/README.md): on a GPU machine with the wheels in .whl/; the dry run on any CPU
bench-gpu:
	bash bench/gpu/run.sh runs/gpu

bench-gpu-dry: install
	bash bench/gpu/run.sh runs/gpu-dry --dry-run

clean:
	rm -rf $(VENV) runs .pytest_cache test-artifacts
