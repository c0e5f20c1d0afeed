"""The two-tower side of the quality benchmark: its grid tuning (training.tune underneath), towers and flags."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.schema import METRIC_KEYS
from benchmarks.two_tower import tune_loss
from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig, ModelConfig, PipelineConfig, TrainConfig


@pytest.fixture(scope="module")
def tiny_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Examples from a 300-user, 400-video synthetic log through the real pipeline."""
    root = tmp_path_factory.mktemp("grid")
    generate(GeneratorConfig(users=300, videos=400, events=20_000, topics=8, seed=5), root / "log", progress=False)
    run_pipeline(
        resolve_inputs(root / "log"),
        root / "examples",
        PipelineConfig(max_examples_per_user=20, test_days=5, validation_days=5, workers=1),
        progress=False,
    )
    return root / "examples"


def test_tune_loss_keeps_the_point_with_the_best_validation_recall(tiny_examples: Path, tmp_path: Path) -> None:
    model = ModelConfig(hidden=[32], embedding_dim=16, video_input_dim=8, token_input_dim=4, category_dim=2)
    train = TrainConfig(loss="full", batch_size=128, epochs=3, patience=1)
    axes = {"learning_rate": (0.001, 0.5)}
    runs = tmp_path / "runs"
    run_dir, entry, report = tune_loss(tiny_examples, runs, model, train, axes, SimpleNamespace(progress=False))
    scores = [p["validation"]["recall@100"] for p in entry["points"]]
    assert [p["params"] for p in entry["points"]] == [{"learning_rate": 0.001}, {"learning_rate": 0.5}]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties keep the earlier point
    assert entry["chosen"] == entry["points"][best]["params"]
    assert run_dir == runs / f"point-{best}"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [run_dir.name]  # the other run was removed
    assert (runs / "tuning.json").exists()  # the record `recsys tune` writes too
    assert entry["validation_best"]["recall@100"] == max(scores)
    assert entry["chosen_validation"] == {k: report["epochs"][report["best_epoch"] - 1][k] for k in METRIC_KEYS}
    assert entry["best_epoch"] == report["best_epoch"] == entry["points"][best]["best_epoch"]
    assert entry["grid"] == {"learning_rate": [0.001, 0.5]}
    assert (entry["epoch_cap"], entry["patience"]) == (3, 1)
    assert all(1 <= p["best_epoch"] <= p["epochs_run"] <= 3 for p in entry["points"])


def test_tower_widths_parses_depth_zero_and_refuses_junk() -> None:
    from benchmarks.quality import parse_args
    from benchmarks.two_tower import with_tower
    from recsys.config import parse_widths

    assert parse_widths("") == []
    assert parse_widths("512, 256") == [512, 256]
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_widths("256,wide")
    with pytest.raises(SystemExit):
        parse_args(["--json", "x.json", "--hidden", "256,wide"])
    cfg = with_tower(ModelConfig(hidden=[256]), [], None)
    assert cfg.hidden == [] and cfg.video_input_dim == ModelConfig().video_input_dim


def test_default_towers_and_the_example_cap_flag() -> None:
    from benchmarks.datasets import pipeline_config
    from benchmarks.quality import parse_args
    from benchmarks.two_tower import TOWER_NOTE, model_configs

    # The towers TOWER_NOTE's validation sweep chose: depth 0 for MovieLens, one hidden layer for synthetic.
    ml, _ = model_configs("movielens", None, budget=False)
    syn, syn_train = model_configs("synthetic", None, budget=False)
    assert (ml.hidden, ml.video_input_dim) == ([], 128) and syn.hidden == [256]
    assert "depth 0" in TOWER_NOTE and syn_train.epochs == 20
    # Both time splits train on up to 200 examples per user, so the two-tower sees what ALS/BPR/EASE see.
    assert pipeline_config("synthetic", "time_split").max_examples_per_user == 200
    assert parse_args(["--json", "x.json"]).pipeline == {}
    assert parse_args(["--json", "x.json", "--max-examples-per-user", "20"]).pipeline == {"max_examples_per_user": 20}
    with pytest.raises(SystemExit):
        parse_args(["--json", "x.json", "--max-examples-per-user", "0"])
