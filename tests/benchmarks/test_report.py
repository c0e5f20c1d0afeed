"""benchmarks.report on tiny fake results: quality markdown with every interval and both plots, seeds and sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.output import ranks_file
from benchmarks.protocol import ProtocolRun
from benchmarks.report import at_steps, best_peer_section, equal_steps_section, recall_curves, tie_rule, write_report
from benchmarks.schema import METHODS, QUALITY_KS, shape_results
from benchmarks.targets import add_intervals
from recsys.metrics import metrics_from_ranks

PROTOCOLS = ("time_split", "leave_last_out")


def fake_result(tmp_path: Path) -> Path:
    """A result JSON + ranks file shaped like benchmarks.quality's, from random ranks of 120 examples by 30 users."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    runs: dict[str, ProtocolRun] = {}
    for protocol in PROTOCOLS:
        run = ProtocolRun(groups=groups)
        run.ranks = {m: rng.integers(0, 300, size=len(groups)).astype(np.float64) for m in METHODS}
        run.metrics = {m: metrics_from_ranks(r, QUALITY_KS) for m, r in run.ranks.items()}
        runs[protocol] = run
    result = shape_results({p: r.metrics for p, r in runs.items()})
    comparisons = add_intervals(result, runs, METHODS)
    epochs = [{"epoch": e, "step": 10 * e, "recall@100": 0.1 + 0.01 * e, "loss": 1.0} for e in (1, 2, 3)]
    grid = {"chosen": {"learning_rate": 0.2}, "grid": {"learning_rate": [0.1, 0.2]}, "epoch_cap": 40, "patience": 3}
    losses = {m: {"best_epoch": 3, "epochs_run": 3, "epochs": epochs, **grid} for m in METHODS[:4]}
    split = {"validation_start": "2020-01-01", "test_start": "2020-01-15", "min_ts": "2019-01-01", "max_ts": "2020-02"}
    result["meta"] = {
        "dataset": "fake",
        "command": "python -m benchmarks.quality --dataset ml-100k --json x.json",
        "comparisons": comparisons,
        "protocols": {
            p: {
                "losses": losses,
                "pipeline": {"config": {"test_days": 14, "max_history": 50}, "split": split},
                "ease": {"chosen": {"lambda": 250.0}, "grid": {"lambda": [10.0, 250.0]}},
            }
            for p in PROTOCOLS
        },
    }
    path = tmp_path / "quality_fake.json"
    path.write_text(json.dumps(result))
    arrays = {f"{p}/{m}": r.ranks[m] for p, r in runs.items() for m in r.ranks}
    arrays |= {f"groups/{p}": groups for p in PROTOCOLS}
    np.savez_compressed(ranks_file(path), **arrays)
    return path


def test_report_writes_markdown_with_every_method_and_intervals_and_both_plots(tmp_path):
    written = write_report(fake_result(tmp_path))
    md = (tmp_path / "quality_fake.md").read_text()
    assert written[0] == tmp_path / "quality_fake.md"
    for method in METHODS:
        assert f"| {method} |" in md
    columns = ("R@10", "R@20", "R@50", "R@100", "NDCG@10", "NDCG@20", "MAP")
    assert " | ".join(f"{c} [95% CI]" for c in columns) in md
    assert "| 120 / 30 |" in md and "lambda=250.0" in md and "lambda ∈ {10.0, 250.0}" in md
    chosen = "| learning_rate=0.2, best epoch 3 of 3 |"
    two_tower = f"{chosen} learning_rate ∈ {{0.1, 0.2}}; epochs ≤ 40, early stopping (patience 3) |"
    assert md.count(two_tower) == 2 * 4
    for other in ("full", "loguniform", "inbatch", "ease", "als", "itemknn", "bpr", "popularity"):
        assert f"| topk_random vs {other} | recall@100 |" in md
    assert "p (Holm)" in md and "significant (Holm)" in md and "No multiple-comparison correction" not in md
    holm_rows = [line for line in md.splitlines() if line.startswith("| topk_random vs ")]
    assert len(holm_rows) == 2 * 8 * 4 and all(line.count("|") == 9 for line in holm_rows)
    assert tie_rule() and tie_rule() in md
    assert "python -m benchmarks.report --json" in md
    assert "python -m benchmarks.quality --dataset ml-100k --json x.json" in md
    assert "unfiltered: watched videos ranked" in md  # no meta.exclude_history: a run from before the as-served default
    for protocol in PROTOCOLS:
        for name in (f"quality_fake_recall_curve_{protocol}.png", f"quality_fake_training_{protocol}.png"):
            assert (tmp_path / name).stat().st_size > 1000
            assert tmp_path / name in written


def test_recall_curves_mean_matches_the_metric_and_band_contains_it():
    rng = np.random.default_rng(1)
    ranks = rng.integers(0, 200, size=400).astype(np.float64)
    groups = np.repeat(np.arange(100), 4)
    mean, low, high = recall_curves(ranks, groups, replicates=200)
    assert mean.shape == low.shape == high.shape == (100,)
    assert mean[99] == pytest.approx(metrics_from_ranks(ranks)["recall@100"])
    assert mean[9] == pytest.approx(metrics_from_ranks(ranks)["recall@10"])
    assert np.all(low <= mean + 1e-12) and np.all(mean <= high + 1e-12) and np.all(np.diff(mean) >= 0)


def test_planted_ground_truth_section_only_when_the_json_has_topic_shares(tmp_path):
    path = fake_result(tmp_path)
    write_report(path)
    assert "Planted ground truth" not in (tmp_path / "quality_fake.md").read_text()
    result = json.loads(path.read_text())
    for protocol in PROTOCOLS:
        result["meta"]["protocols"][protocol]["topic_share@100"] = {"topk_random": 0.61, "popularity": 0.2}
    result["meta"]["protocols"]["leave_last_out"]["topic_share@100"]["ease"] = 0.55
    path.write_text(json.dumps(result))
    write_report(path)
    md = (tmp_path / "quality_fake.md").read_text()
    assert "## Planted ground truth" in md
    assert "| topk_random | 0.610 | 0.610 |" in md and "| ease | — | 0.550 |" in md


def test_budget_mode_result_without_epoch_histories_gets_a_report_and_no_training_plot(tmp_path):
    path = fake_result(tmp_path)
    result = json.loads(path.read_text())
    for protocol in PROTOCOLS:  # what --budget-seconds writes: steps and a fractional epoch count per loss
        result["meta"]["protocols"][protocol]["losses"] = {
            m: {"steps": 383, "epochs": 0.752, "train_s": 90.0} for m in METHODS[:4]
        }
    path.write_text(json.dumps(result))
    written = write_report(path)
    assert written and all(p.exists() for p in written)
    assert not any("training" in p.name for p in written)


def test_at_steps_interpolates_inside_the_measured_steps_only():
    curve = [{"steps": 100, "recall@100": 0.1}, {"steps": 300, "recall@100": 0.3}]
    assert at_steps(curve, 200) == pytest.approx(0.2)
    assert at_steps(curve, 100) == pytest.approx(0.1)
    assert at_steps(curve, 50) is None and at_steps(curve, 301) is None
    assert at_steps([], 100) is None


def test_budget_report_reads_every_loss_at_the_estimators_steps(tmp_path):
    path = fake_result(tmp_path)
    result = json.loads(path.read_text())
    curves = {  # loguniform twice as fast per second, equal per step: the table must show a lead of 0 at equal steps
        "topk_random": [
            {"seconds": 10.0, "steps": 100, "recall@100": 0.2},
            {"seconds": 20.0, "steps": 200, "recall@100": 0.3},
        ],
        "loguniform": [
            {"seconds": 10.0, "steps": 200, "recall@100": 0.3},
            {"seconds": 20.0, "steps": 400, "recall@100": 0.4},
        ],
    }
    for protocol in PROTOCOLS:
        result["meta"]["protocols"][protocol]["losses"] = {
            m: {"steps": c[-1]["steps"], "train_s": 20.0, "curve": c} for m, c in curves.items()
        }
    result["meta"]["protocols"]["time_split"]["curve_split"] = "validation"
    path.write_text(json.dumps(result))
    written = write_report(path)
    md = (tmp_path / "quality_fake.md").read_text()
    assert "## Equal steps" in md and "### time split (validation recall@100" in md
    assert "| 100 | 10.0 | 0.2000 | — |" in md  # loguniform's curve starts at 200 steps
    assert "| 200 | 20.0 | 0.3000 | 0.3000 (+0.0000) |" in md
    assert any(p.name.endswith("_budget_curve_time_split.png") for p in written)
    assert equal_steps_section({"meta": {"protocols": {}}, "time_split": {}}) == []


def test_best_peer_section_holds_the_two_tower_to_the_best_peer_per_metric(tmp_path):
    path = fake_result(tmp_path)
    result = json.loads(path.read_text())
    section = best_peer_section(result)
    assert section[0] == "## Against the best peer"
    rows = [line for line in section if line.startswith("| leave-last-out |")]
    assert [row.split(" | ")[1] for row in rows] == ["recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20"]
    entries = result["leave_last_out"]
    for row in rows:
        metric = row.split(" | ")[1]
        best = max(("als", "ease", "itemknn"), key=lambda m: entries[m][metric])
        pair = result["meta"]["comparisons"]["leave_last_out"][f"topk_random vs {best}"][metric]
        label = {"als": "ALS", "ease": "EASE", "itemknn": "item-kNN"}[best]
        assert f"| {entries['topk_random'][metric]:.4f} | {label} {entries[best][metric]:.4f} |" in row
        assert f"{pair['mean_diff']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}]" in row
        assert row.endswith("| yes |" if pair["low"] > 0 or pair["high"] < 0 else "| no |")
    write_report(path)
    md = (tmp_path / "quality_fake.md").read_text()
    assert "## Against the best peer" in md and md.index("## Against the best peer") < md.index("## time split")
    assert "## Published figures" not in md  # not an Amazon log


def test_an_older_result_without_recall_at_20_keeps_its_columns_and_gets_no_peer_section(tmp_path):
    path = fake_result(tmp_path)
    result = json.loads(path.read_text())
    for protocol in PROTOCOLS:
        for entry in result[protocol].values():
            for key in ("recall@20", "ndcg@20", "recall@20_ci", "ndcg@20_ci"):
                del entry[key]
    path.write_text(json.dumps(result))
    write_report(path)
    md = (tmp_path / "quality_fake.md").read_text()
    assert "| method | R@10 [95% CI] | R@50 [95% CI] | R@100 [95% CI] | NDCG@10 [95% CI] | MAP [95% CI] |" in md
    assert "R@20" not in md and "NDCG@20" not in md
    assert best_peer_section(result) == [] and "Against the best peer" not in md


def test_a_defaults_run_shows_no_grid_and_its_planned_epochs(tmp_path):
    path = fake_result(tmp_path)
    result = json.loads(path.read_text())
    epochs = [{"epoch": e, "step": 10 * e, "recall@100": 0.1, "loss": 1.0} for e in (1, 2, 3)]
    plan = {"epochs": 100, "patience": 5}
    defaults = {"chosen": {}, "grid": {}, "epoch_cap": None, "patience": 2, "schedule": plan, "epochs": epochs}
    result["meta"]["protocols"]["leave_last_out"]["losses"]["topk_random"] = {
        "best_epoch": 3,
        "epochs_run": 3,
        **defaults,
    }
    path.write_text(json.dumps(result))
    write_report(path)
    md = (tmp_path / "quality_fake.md").read_text()
    assert "| best epoch 3 of 3 | no grid (one point); epochs ≤ 100 (planned), early stopping (patience 5) |" in md
