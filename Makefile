# The two quick-start commands are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= out/demo
STAMP := $(VENV)/.installed
# requirements.lock: exact versions (Linux x86_64, CPython 3.11) of every extra but gpu; `make lock` regenerates it.
LOCK := requirements.lock
LOCK_EXTRAS := cpu spark train serve bench dev
UV_VERSION ?= 0.13.9

.PHONY: install lock demo test test-fast lint format bench-pipeline bench-quality bench-quality-history bench-softmax \
	bench-train-step bench-results-index clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the lock after a change to pyproject.toml's dependencies. Versions already in the lock are kept where
# they still fit; `make lock UPGRADE=1` moves everything to the newest allowed versions.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS)) --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) \
		-q -o $(LOCK)

# The whole pipeline ending in a running service (Ctrl-C stops it); `recsys demo --help` lists the sizes.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/recsys demo --out $(DEMO_DIR) $(DEMO_ARGS)

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
	$(BIN)/python -m benchmarks.pipeline --events 10000000 --json benchmarks/results/pipeline/pipeline.json

# The quality results of the current defaults (~3 h on a 2-core box, one at a time), evaluated as served (watched
# videos hidden). The committed JSONs were measured unfiltered: benchmarks/results/README.md has their commands.
bench-quality: install
	$(BIN)/python -m benchmarks.quality --dataset ml-100k --json benchmarks/results/quality/quality_ml100k.json
	$(BIN)/python -m benchmarks.seeds --dataset ml-100k --seeds 1,2,3 --json benchmarks/results/seeds/seeds_ml100k.json
	$(BIN)/python -m benchmarks.quality --dataset synthetic --videos 10000 --users 10000 --events 500000 \
		--protocols time_split --json benchmarks/results/quality/quality_synthetic.json
	$(BIN)/python -m benchmarks.seeds --dataset synthetic --seeds 1,2 --variants full,loguniform,topk_random \
		--json benchmarks/results/seeds/seeds_synthetic.json
	$(BIN)/python -m benchmarks.sweep --dataset ml-100k --loss full \
		--point '{"hidden": [256], "video_input_dim": 64, "learning_rate": 0.2}' \
		--point '{"hidden": [1024, 512, 256], "video_input_dim": 64, "learning_rate": 0.2}' \
		--point '{"hidden": [], "video_input_dim": 64, "learning_rate": 0.2}' \
		--point '{"hidden": [], "video_input_dim": 128, "learning_rate": 0.2}' \
		--point '{"hidden": [], "video_input_dim": 128}' --json benchmarks/results/sweep/sweep_ml100k_tower.json

# Earlier configurations kept beside the defaults for comparison (the one-hidden-layer tower on ML-100K, the
# 6-epoch synthetic run with 20 examples per user, the log-uniform tail with both).
bench-quality-history: install
	$(BIN)/python -m benchmarks.quality --no-exclude-history --dataset ml-100k --hidden 256 --video-input-dim 64 \
		--json benchmarks/results/history/quality/quality_ml100k_1layer.json
	$(BIN)/python -m benchmarks.quality --no-exclude-history --dataset ml-100k --hidden 256 --video-input-dim 64 --tail-sampler loguniform \
		--json benchmarks/results/history/quality/quality_ml100k_1layer_tail_loguniform.json
	$(BIN)/python -m benchmarks.seeds --no-exclude-history --dataset ml-100k --hidden 256 --video-input-dim 64 --learning-rate 0.2 \
		--seeds 1,2,3 --json benchmarks/results/history/seeds/seeds_ml100k_1layer.json
	$(BIN)/python -m benchmarks.quality --no-exclude-history --dataset synthetic --videos 10000 --users 10000 --events 500000 --epochs 6 \
		--max-examples-per-user 20 --learning-rates 0.2,0.4 --protocols time_split \
		--json benchmarks/results/history/quality/quality_synthetic_6ep.json
	$(BIN)/python -m benchmarks.quality --no-exclude-history --dataset synthetic --videos 10000 --users 10000 --events 500000 --epochs 6 \
		--max-examples-per-user 20 --learning-rates 0.2,0.4 --protocols time_split --tail-sampler loguniform \
		--json benchmarks/results/history/quality/quality_synthetic_6ep_tail_loguniform.json

bench-softmax: install
	$(BIN)/python -m benchmarks.softmax_scaling --json benchmarks/results/softmax_scaling/softmax_scaling.json

# The training job's own step (real tower) at 10k / 100k / 1M videos, every loss side by side (~15 min).
bench-train-step: install
	$(BIN)/python -m benchmarks.train_step --json benchmarks/results/train_step/train_step.json

# benchmarks/results/README.md: every committed result, its command and headline numbers, from the JSON files.
bench-results-index: install
	$(BIN)/python -m benchmarks.results_readme

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
