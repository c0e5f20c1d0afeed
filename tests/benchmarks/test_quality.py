"""benchmarks.quality's --defaults and --skip-bpr: the no-flag configs, the refused options, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import quality
from benchmarks.quality import DEFAULTS_NOTE, TOWER_OPTIONS, grid_note, parse_args, two_tower_configs
from recsys.config import ModelConfig, TrainConfig

BASE = ["--json", "q.json"]
# One value per option --defaults refuses (every flag of TOWER_OPTIONS).
REFUSED = {
    "--hidden": "256",
    "--video-input-dim": "32",
    "--history-pooling": "mean",
    "--learning-rates": "0.1",
    "--grid": "learning_rate=0.1,0.2",
    "--set": "embedding_dim=32",
    "--epochs": "3",
    "--tail-sampler": "uniform",
}


def test_defaults_train_the_no_flag_configs_with_the_default_loss_alone() -> None:
    args = parse_args([*BASE, "--defaults"])
    assert args.losses == (TrainConfig().loss,)
    model_cfg, train_cfg, axes = two_tower_configs(args, "events")
    assert model_cfg == ModelConfig() and axes == {}
    assert train_cfg == TrainConfig(eval_exclude_history=True)  # what the as-served protocol validates with
    assert grid_note(args, "events") == DEFAULTS_NOTE and "Not tuned on this log" in DEFAULTS_NOTE
    unfiltered = parse_args([*BASE, "--defaults", "--no-exclude-history"])
    assert two_tower_configs(unfiltered, "movielens")[1] == TrainConfig(eval_exclude_history=False)
    assert parse_args([*BASE, "--defaults", "--losses", "full,inbatch"]).losses == ("full", "inbatch")
    assert parse_args(BASE).losses == ("full", "loguniform", "inbatch", "topk_random")  # no --defaults: all four


@pytest.mark.parametrize("flag", sorted(TOWER_OPTIONS))
def test_defaults_refuse_every_option_that_changes_the_tower(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(REFUSED) == set(TOWER_OPTIONS)
    parse_args([*BASE, flag, REFUSED[flag]])  # accepted without --defaults
    with pytest.raises(SystemExit) as refused:
        parse_args([*BASE, "--defaults", flag, REFUSED[flag]])
    assert refused.value.code == 2
    assert flag in capsys.readouterr().err.strip().splitlines()[-1]


def test_defaults_refuse_depth_zero_and_budget_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([*BASE, "--defaults", "--hidden", ""])  # '' is depth 0, still a change
    assert "--hidden" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args([*BASE, "--dataset", "synthetic", "--budget-seconds", "10", "--defaults"])
    assert "main-mode" in capsys.readouterr().err


def test_skip_bpr_is_off_unless_asked() -> None:
    assert parse_args(BASE).skip_bpr is False
    assert parse_args([*BASE, "--skip-bpr"]).skip_bpr is True


def short_defaults(**values: Any) -> TrainConfig:
    """TrainConfig() with a 2-epoch cap, so that the end-to-end run below ends in seconds on a tiny log."""
    return TrainConfig(**{"epochs": 2, "batch_size": 256, **values})


@pytest.mark.slow
def test_a_defaults_run_without_bpr_reports_recall_at_20_and_the_best_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quality, "TrainConfig", short_defaults)
    out = tmp_path / "q.json"
    quality.main(
        [
            *("--dataset", "synthetic", "--videos", "150", "--users", "60", "--events", "1500"),
            *("--protocols", "leave_last_out", "--defaults", "--skip-bpr", "--hide", "earlier"),
            *("--workdir", str(tmp_path / "work"), "--json", str(out)),
        ]
    )
    result = json.loads(out.read_text())
    meta = result["meta"]
    tower = meta["hyperparameters"]["two_tower"]
    assert meta["two_tower_config"] == "defaults" and meta["bpr_note"] is None
    assert tower["grid"] == {} and tower["losses"] == ["topk_random"] and tower["grid_note"] == DEFAULTS_NOTE
    assert tower["model"] == ModelConfig().model_dump(mode="json")
    assert tower["train"] == short_defaults(eval_exclude_history=True).model_dump(mode="json", exclude={"loss"})
    assert [p["params"] for p in meta["protocols"]["leave_last_out"]["losses"]["topk_random"]["points"]] == [{}]
    scores = result["leave_last_out"]
    assert list(scores) == ["topk_random", "popularity", "als", "ease", "itemknn"]
    for entry in scores.values():
        assert {"recall@20", "ndcg@20", "recall@20_ci", "ndcg@20_ci"} <= set(entry)
    assert "recall@20" in meta["comparisons"]["leave_last_out"]["topk_random vs itemknn"]
    md = (tmp_path / "q.md").read_text()
    assert "## Against the best peer" in md and "| R@20 [95% CI] |" in md and "Not tuned on this log" in md
