"""benchmarks.paired: methods of two quality runs compared per example, only when both ranked the same examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.output import ranks_file
from benchmarks.paired import main, paired


def _run(path: Path, ranks: dict[str, np.ndarray], groups: np.ndarray) -> Path:
    """A quality result JSON and its ranks file for protocol time_split."""
    path.write_text("{}")
    arrays = {f"time_split/{m}": r for m, r in ranks.items()} | {"groups/time_split": groups}
    np.savez(ranks_file(path), **arrays)
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    popularity = rng.integers(1, 500, groups.size).astype(np.float64)
    strong = rng.integers(1, 40, groups.size).astype(np.float64)  # ranks well inside the top 100
    weak = rng.integers(50, 400, groups.size).astype(np.float64)
    new = _run(tmp_path / "new.json", {"topk_random": strong, "popularity": popularity}, groups)
    old = _run(tmp_path / "old.json", {"ease": weak, "popularity": popularity}, groups)
    return new, old, popularity


def test_paired_compares_across_runs_on_the_same_examples(runs: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    new, old, _ = runs
    out = tmp_path / "paired.json"
    main(["--a", f"{new}:topk_random", "--b", f"{old}:ease", "--json", str(out)])
    result = json.loads(out.read_text())
    r = result["topk_random (new) vs ease (old)"]["recall@100"]
    assert r["mean_diff"] > 0.5 and r["low"] > 0  # every strong rank is a hit, about two thirds of the weak ones miss
    assert "benchmarks.paired" in result["command"]


def test_paired_refuses_runs_of_other_examples(runs: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    new, _, popularity = runs
    shuffled = popularity[::-1].copy()
    other = _run(tmp_path / "other.json", {"ease": popularity, "popularity": shuffled}, np.repeat(np.arange(60), 4))
    with pytest.raises(ValueError, match="same time_split test examples"):
        paired((new, "topk_random"), [(other, "ease")], "time_split")
