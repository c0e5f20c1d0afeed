"""Config points and grids: FIELD=VALUE overrides and FIELD=V1,V2 axes over ModelConfig and TrainConfig fields.

One parser for every command that takes them (`recsys tune`, the quality benchmark's --set / --grid), so a point
means the same thing wherever it is written down.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from recsys.config import ModelConfig, TrainConfig, with_overrides

__all__ = ["apply_point", "config_value", "grid_points", "parse_grid", "parse_overrides"]


def grid_points(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's axes as a {field: value} dict, in a stable order."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def config_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, booleans, lists), else the bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _field_and_text(item: str, option: str, form: str) -> tuple[str, str]:
    """Split FIELD=TEXT and check that FIELD is a ModelConfig or TrainConfig field."""
    field, sep, text = item.partition("=")
    field = field.strip()
    if not sep or not field:
        raise ValueError(f"{option} {item!r}: expected {form}")
    if field not in ModelConfig.model_fields and field not in TrainConfig.model_fields:
        raise ValueError(f"{option} {field}: not a ModelConfig or TrainConfig field")
    return field, text


def parse_overrides(items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """FIELD=VALUE strings (VALUE as JSON, else the bare string) as a {field: value} dict of config fields."""
    out: dict[str, Any] = {}
    for item in items:
        field, text = _field_and_text(item, option, "FIELD=VALUE")
        out[field] = config_value(text)
    return out


def _split_values(text: str) -> list[str]:
    """Split V1,V2,... at the commas outside brackets, so a list value such as [1024,512,256] stays whole."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_grid(items: Sequence[str], option: str = "--grid") -> dict[str, tuple[Any, ...]]:
    """FIELD=V1,V2,... strings as grid axes {field: (values...)}, each value read like parse_overrides'."""
    out: dict[str, tuple[Any, ...]] = {}
    for item in items:
        field, text = _field_and_text(item, option, "FIELD=V1,V2,...")
        values = tuple(config_value(v) for v in _split_values(text))
        if not values:
            raise ValueError(f"{option} {field}: no values")
        out[field] = values
    return out


def apply_point(
    model_cfg: ModelConfig, train_cfg: TrainConfig, point: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs with one grid point's values (each key a ModelConfig or TrainConfig field)."""
    unknown = set(point) - set(ModelConfig.model_fields) - set(TrainConfig.model_fields)
    if unknown:
        raise KeyError(f"grid keys {sorted(unknown)} are neither ModelConfig nor TrainConfig fields")
    model_values = {k: v for k, v in point.items() if k in ModelConfig.model_fields}
    train_values = {k: v for k, v in point.items() if k in TrainConfig.model_fields}
    return with_overrides(model_cfg, **model_values), with_overrides(train_cfg, **train_values)
