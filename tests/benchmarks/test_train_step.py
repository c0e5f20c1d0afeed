"""The trainer-step benchmark runs the training job's own step for every variant and reports where time goes."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import train_step


@pytest.mark.slow
def test_train_step_benchmark_times_every_variant(tmp_path, monkeypatch):
    out = tmp_path / "train_step.json"
    argv = ["--sizes", "3000", "--users", "400", "--events", "40000", "--batch", "64", "--steps", "4"]
    argv += ["--warmup", "2", "--refresh-every", "3", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["train_step", *argv])
    train_step.main()
    result = json.loads(out.read_text())
    assert set(result["step_s"]) == set(train_step.VARIANTS)
    assert all(result["step_s"][v]["3000"] > 0 for v in train_step.VARIANTS)
    topk = result["detail"]["topk_random@3000"]
    sync = result["detail"]["topk_random_no_prefetch@3000"]
    assert topk["steps"] == 4 and topk["prefetched_steps"] > 0 and sync["prefetched_steps"] == 0
    assert len(topk["refreshes"]) >= 2  # the build, then a refresh inside the timed steps
    assert {"train_step", "rescore"} <= set(topk["profile_s"]) and "search" in sync["profile_s"]
    # At least one row per example's head, at most every id of the batch's heads (64 examples x K 32).
    assert 1 <= topk["head_distinct_rows"] <= 64 * 32
    assert result["over_loguniform"]["3000"]["loguniform"] == 1.0
