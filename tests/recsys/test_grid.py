"""Config points and grids: FIELD=VALUE overrides, FIELD=V1,V2 axes, and where each key lands."""

from __future__ import annotations

import pytest

from recsys.config import ModelConfig, TrainConfig
from recsys.grid import apply_point, grid_points, parse_grid, parse_overrides


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
    # Commas inside a list value do not split it: a tower-shape axis.
    assert parse_grid(["hidden=[],[1024, 512,256],[256]"]) == {"hidden": ([], [1024, 512, 256], [256])}
    with pytest.raises(ValueError, match="no values"):
        parse_grid(["learning_rate="])
    with pytest.raises(ValueError, match="not a ModelConfig or TrainConfig field"):
        parse_grid(["pooling=mean"])
