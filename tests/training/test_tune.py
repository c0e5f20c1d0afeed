"""`recsys tune`: a validation-only grid search whose chosen run is the one best on validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import ModelConfig, TrainConfig
from recsys.errors import InputError
from training.tune import TUNING_FILE, default_axes, tune


def test_tune_keeps_the_best_validation_point_and_records_the_search(synthetic_examples: Path, tmp_path: Path) -> None:
    model = ModelConfig(hidden=[32], embedding_dim=16, video_input_dim=16, token_input_dim=4, category_dim=2)
    cfg = TrainConfig(loss="loguniform", optimizer="adagrad", batch_size=256, epochs=2, patience=1)
    axes = {"learning_rate": (0.005, 0.4), "history_pooling": ("mean",)}  # Adagrad step sizes
    out = tmp_path / "tuned"
    result = tune(synthetic_examples, out, model, cfg, axes, keep_all=True)
    record = json.loads((out / TUNING_FILE).read_text())
    assert record == json.loads(json.dumps(result.record))
    scores = [p["validation"]["recall@100"] for p in record["points"]]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert record["chosen"] == record["points"][best]["params"] and result.run == out / f"point-{best}"
    assert record["chosen_validation"]["recall@100"] == max(scores)
    # The search tells a step size that learns from one that barely moves (whether a model beats popularity is
    # test_train's question; this one is whether the choice follows validation).
    assert max(scores) > 2 * min(scores) and record["validation_popularity"]["recall@100"] > 0
    assert record["points_run"] == 2 and (out / "tuning.png").stat().st_size > 0
    assert all((out / p["run"] / "video_embeddings.npy").exists() for p in record["points"])  # keep_all kept both
    assert record["grid"] == {"learning_rate": [0.005, 0.4], "history_pooling": ["mean"]}
    with pytest.raises(InputError, match="already holds runs"):
        tune(synthetic_examples, out, model, cfg, axes)


def test_default_axes_start_at_the_configured_point() -> None:
    axes = default_axes(ModelConfig(hidden=[64, 32]), TrainConfig(learning_rate=0.2))
    assert axes == {"learning_rate": (0.2, 0.1, 0.4), "hidden": ([64, 32], [])}
    linear = default_axes(ModelConfig(hidden=[]), TrainConfig(learning_rate=0.2))
    assert linear["hidden"] == ([], ModelConfig().hidden)


def _recsys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsys", *args], capture_output=True, text=True, timeout=600)


def test_the_command_honours_the_budget_and_refuses_a_bad_grid(synthetic_examples: Path, tmp_path: Path) -> None:
    common = ["tune", "--examples", str(synthetic_examples), "--loss", "loguniform", "--epochs", "1", "--quiet"]
    small = ["--set", "hidden=[16]", "--set", "embedding_dim=8", "--set", "batch_size=512"]
    out = tmp_path / "budget"
    done = _recsys(*common, *small, "--out", str(out), "--grid", "learning_rate=0.4,0.2,0.1", "--budget-minutes", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / TUNING_FILE).read_text())
    assert record["points_run"] == 1  # the first point always runs; a spent budget starts no other
    assert [("skipped" in p) for p in record["points"]] == [False, True, True]
    assert record["chosen"] == {"learning_rate": 0.4} and (out / "point-0" / "report.json").exists()
    assert f"recsys export --run {out / 'point-0'}" in done.stdout
    bad = _recsys(*common, "--out", str(tmp_path / "bad"), "--grid", "pooling=mean,recency")
    assert bad.returncode == 2 and "not a ModelConfig or TrainConfig field" in bad.stderr
    assert not (tmp_path / "bad").exists()
