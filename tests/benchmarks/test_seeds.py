"""The seed-spread benchmark's statistics and variant configs (no training: the paired gaps on known series)."""

from __future__ import annotations

import math

import pytest

from benchmarks.report import seeds_summary, seeds_table
from benchmarks.seeds import LOGTAIL, paired_gap, spread, summarise_seeds, variant_config
from recsys.config import TrainConfig


def test_variant_config_sets_loss_and_tail() -> None:
    base = TrainConfig(seed=3)
    logtail = variant_config(base, LOGTAIL)
    assert (logtail.loss, logtail.tail_sampler, logtail.seed) == ("topk_random", "loguniform", 3)
    full = variant_config(logtail, "full")
    assert (full.loss, full.tail_sampler) == ("full", "uniform")
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "softmax")


def test_spread_uses_the_sample_standard_deviation() -> None:
    s = spread([0.40, 0.44, 0.42])
    assert s["mean"] == pytest.approx(0.42)
    assert s["sd"] == pytest.approx(0.02)  # ddof=1: sqrt((0.02² + 0.02² + 0) / 2)
    assert (s["min"], s["max"]) == (0.40, 0.44)
    assert spread([0.5])["sd"] is None


def test_paired_gap_pairs_seed_with_seed() -> None:
    # Both series vary a lot across seeds, but a is always exactly 10% above b: the paired interval is a point.
    g = paired_gap([0.33, 0.55, 0.44], [0.30, 0.50, 0.40])
    assert g["relative"] == pytest.approx([0.1, 0.1, 0.1])
    assert g["ci95_low"] == pytest.approx(0.1) and g["ci95_high"] == pytest.approx(0.1)
    # Gaps of -1% and +3%: mean +1%, half-width t(0.975, 1) * sd / sqrt(2) with sd = 2.828%.
    g = paired_gap([0.99, 1.03], [1.0, 1.0])
    half = 12.7062 * math.sqrt(0.0008) / math.sqrt(2)
    assert g["mean"] == pytest.approx(0.01)
    assert g["ci95_low"] == pytest.approx(0.01 - half, rel=1e-4)
    with pytest.raises(ValueError):
        paired_gap([0.1, 0.2], [0.1])


def test_summary_pairs_each_topk_variant_with_the_others_once() -> None:
    def run(r100: float) -> dict[str, dict[str, float]]:
        metrics = {k: r100 for k in ("recall@10", "recall@50", "recall@100", "ndcg@10", "map")}
        return {"test": metrics, "validation": metrics}

    results = {
        "full": [run(0.46), run(0.45)],
        "topk_random": [run(0.44), run(0.45)],
        LOGTAIL: [run(0.46), run(0.44)],
    }
    summary = summarise_seeds(results)
    assert set(summary["gaps"]) == {"topk_random vs full", f"{LOGTAIL} vs full", f"{LOGTAIL} vs topk_random"}
    assert summary["gaps"]["topk_random vs full"]["relative"] == pytest.approx([0.44 / 0.46 - 1, 0.0])
    assert summary["variants"]["full"]["recall@100"]["mean"] == pytest.approx(0.455)
    table = seeds_table(summary, [1, 2])
    assert "| topk_random vs full | -4.3%, +0.0% |" in table
    words = "\n".join(seeds_summary(summary))
    assert "Highest mean test Recall@100 over the seeds: full (0.4550)" in words
    assert "- topk_random against full: ahead in 0 of 2 seeds, mean gap -2.2%" in words
