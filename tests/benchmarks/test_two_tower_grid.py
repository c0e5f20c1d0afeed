"""The two-tower grid of the quality benchmark: points, config overrides and the validation-only choice (tiny data)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.schema import METRIC_KEYS
from benchmarks.two_tower import apply_point, grid_points, parse_grid, parse_overrides, tune_loss
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


def test_grid_points_cover_every_combination_in_a_stable_order() -> None:
    points = grid_points({"learning_rate": (0.1, 0.4), "embedding_dim": (16, 32, 64)})
    assert len(points) == 6
    assert points[0] == {"learning_rate": 0.1, "embedding_dim": 16}
    assert points[-1] == {"learning_rate": 0.4, "embedding_dim": 64}
    assert grid_points({"learning_rate": (0.2,)}) == [{"learning_rate": 0.2}]


def test_apply_point_routes_each_key_to_its_config_and_rejects_unknown_keys() -> None:
    model, train = apply_point(ModelConfig(), TrainConfig(), {"learning_rate": 0.7, "embedding_dim": 16, "top_k": 8})
    assert (model.embedding_dim, train.learning_rate, train.top_k) == (16, 0.7, 8)
    assert train.batch_size == TrainConfig().batch_size  # everything else untouched
    with pytest.raises(KeyError, match="no_such_knob"):
        apply_point(ModelConfig(), TrainConfig(), {"no_such_knob": 1})
    with pytest.raises(ValueError):  # values are validated like any config
        apply_point(ModelConfig(), TrainConfig(), {"learning_rate": -1.0})


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
    assert sorted(p.name for p in runs.iterdir()) == [run_dir.name]  # the other run was removed
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


def test_parse_overrides_reads_json_values_and_refuses_unknown_fields() -> None:
    parsed = parse_overrides(["exclude_history_from_head=true", "embedding_dim=128", "tail_sampler=loguniform"])
    assert parsed == {"exclude_history_from_head": True, "embedding_dim": 128, "tail_sampler": "loguniform"}
    model, train = apply_point(ModelConfig(), TrainConfig(), parsed)
    assert (model.embedding_dim, train.exclude_history_from_head, train.tail_sampler) == (128, True, "loguniform")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_overrides(["embedding_dim"])
    with pytest.raises(ValueError, match="not a ModelConfig or TrainConfig field"):
        parse_overrides(["no_such_knob=1"])


def test_parse_grid_reads_each_axis_and_its_values() -> None:
    axes = parse_grid(["history_pooling=mean,recency", "learning_rate=0.1, 0.2"])
    assert axes == {"history_pooling": ("mean", "recency"), "learning_rate": (0.1, 0.2)}
    assert [p["history_pooling"] for p in grid_points(axes)] == ["mean", "mean", "recency", "recency"]
    with pytest.raises(ValueError, match="no values"):
        parse_grid(["learning_rate="])
    with pytest.raises(ValueError, match="not a ModelConfig or TrainConfig field"):
        parse_grid(["pooling=mean"])
