# The two quick-start commands are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= out/demo
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format bench-pipeline clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[spark,train,serve,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/recsys generate --out $(DEMO_DIR)/data --users 5000 --videos 20000 --events 400000
	$(BIN)/recsys pipeline --events $(DEMO_DIR)/data --out $(DEMO_DIR)/examples
	@echo "demo: examples and report under $(DEMO_DIR)/examples (report.json)"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-pipeline: install
	$(BIN)/python benchmarks/pipeline.py --events 10000000 --json benchmarks/results/pipeline.json

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
