"""Budget mode: every sampled loss trains for the same wall-clock and records quality against training seconds."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import quality

BUDGET = 10.0


@pytest.mark.slow
def test_budget_mode_records_a_recall_curve_per_loss(tmp_path, monkeypatch):
    out = tmp_path / "budget.json"
    argv = ["--dataset", "synthetic", "--videos", "3000", "--users", "400", "--events", "40000"]
    # 10 s: the first step traces the graph, and on a loaded 2-core box that alone can pass a 6 s budget's marks.
    argv += ["--budget-seconds", str(BUDGET), "--curve-points", "3", "--losses", "loguniform,topk_random"]
    argv += ["--protocols", "time_split", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["quality", *argv])
    quality.main()
    result = json.loads(out.read_text())
    assert result["meta"]["protocols"]["time_split"]["curve_split"] == "validation"  # test is scored once, at the end
    losses = result["meta"]["protocols"]["time_split"]["losses"]
    for loss in ("loguniform", "topk_random"):
        curve = losses[loss]["curve"]
        assert len(curve) == 3
        seconds = [p["seconds"] for p in curve]
        assert seconds == sorted(seconds) and seconds[-1] >= BUDGET * 2 / 3  # the last point is near the budget
        assert all(0.0 <= p["recall@100"] <= 1.0 and 0.0 <= p["topic_share@100"] <= 1.0 for p in curve)
        assert curve[-1]["steps"] <= losses[loss]["steps"]
        assert losses[loss]["train_s"] < BUDGET + 5.0  # the curve's evaluation time is not charged to training
    assert (tmp_path / "budget_budget_curve_time_split.png").stat().st_size > 0
