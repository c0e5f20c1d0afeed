"""The quality benchmark's hiding rules: the whole earlier history against the example's capped history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.protocol import earlier_watches
from benchmarks.quality import main as quality_main
from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig, PipelineConfig
from recsys.schemas import TIMESTAMP
from training.data import ExampleSet

MAX_HISTORY = 4


@pytest.fixture(scope="module")
def short_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, ExampleSet]:
    """A small synthetic log and its leave-last-out examples with histories capped well below users' watch counts."""
    root = tmp_path_factory.mktemp("hide")
    generate(GeneratorConfig(users=60, videos=150, events=3_000, topics=4, seed=3), root / "log", progress=False)
    inputs = resolve_inputs(root / "log")
    run_pipeline(
        inputs,
        root / "examples",
        PipelineConfig(split="leave_last_out", max_history=MAX_HISTORY, workers=1),
        progress=False,
    )
    return pq.read_table(inputs.events), ExampleSet.open(root / "examples")


def test_earlier_watches_hold_every_earlier_watch_and_nothing_later(
    short_history: tuple[pa.Table, ExampleSet],
) -> None:
    events, data = short_history
    test = data.read("test")
    hidden = earlier_watches(events, data.features, test)
    assert hidden.shape[0] == test.num_rows
    ts = events["ts"].cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    items = data.features.videos.lookup(events["video_id"]).to_numpy()
    users = events["user_id"].to_numpy(zero_copy_only=False)
    label_ts = test["label_ts"].cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    longer = 0
    for i, (user, t) in enumerate(zip(test["user_id"].to_pylist(), label_ts, strict=True)):
        mine = (users == user) & (ts < t) & (items != 0)
        expected = set(items[mine].tolist())
        got = hidden[i][hidden[i] >= 0]
        assert len(got) == len(set(got.tolist()))  # each video once
        assert set(got.tolist()) == expected
        history = set(test["history"][i].as_py())
        assert history <= expected  # the example's own history is part of what the stricter rule hides
        longer += len(expected) > len(history)
    assert longer > test.num_rows // 2  # the rule differs from the capped history on this data


def test_earlier_watches_of_an_unknown_user_hide_nothing(short_history: tuple[pa.Table, ExampleSet]) -> None:
    events, data = short_history
    test = data.read("test").slice(0, 2)
    stranger = test.set_column(0, "user_id", pa.array(["no-such-user", test["user_id"][1].as_py()]))
    hidden = earlier_watches(events, data.features, stranger)
    assert not (hidden[0] >= 0).any()
    assert (hidden[1] >= 0).any()
    assert np.array_equal(hidden[1], earlier_watches(events, data.features, test)[1][: hidden.shape[1]])


def _quality_meta(tmp_path: Path, max_history: int) -> dict[str, Any]:
    """benchmarks.quality on a tiny synthetic log, leave-last-out, whole earlier history hidden; the protocol's meta."""
    out = tmp_path / f"h{max_history}"
    argv = [
        *("--dataset", "synthetic", "--videos", "150", "--users", "60", "--events", "1500"),
        *("--protocols", "leave_last_out", "--losses", "loguniform", "--skip-baselines", "--epochs", "2"),
        *("--learning-rates", "0.3", "--max-history", str(max_history), "--exclude-history", "--hide", "earlier"),
        *("--workdir", str(out / "work"), "--json", str(out / "q.json")),
    ]
    quality_main(argv)
    meta: dict[str, Any] = json.loads((out / "q.json").read_text())["meta"]["protocols"]["leave_last_out"]
    return meta


@pytest.mark.slow
def test_hide_earlier_scores_the_chosen_run_on_validation_under_the_same_rule(tmp_path: Path) -> None:
    # A window longer than any user's log: the example's history is its whole earlier history, so both rules agree.
    whole = _quality_meta(tmp_path, 200)
    run = whole["losses"]["loguniform"]
    for key in ("recall@10", "recall@50", "recall@100", "map"):
        assert run["validation_earlier_hidden"][key] == pytest.approx(run["validation_best"][key])
        assert whole["validation_popularity_earlier_hidden"][key] == pytest.approx(whole["validation_popularity"][key])
    # A 2-watch window: early stopping hides 2 watches, the rule every earlier one, so popularity's ranks move.
    short = _quality_meta(tmp_path, 2)
    assert short["validation_popularity_earlier_hidden"]["map"] != pytest.approx(short["validation_popularity"]["map"])
    assert set(short["losses"]["loguniform"]["validation_earlier_hidden"]) >= {"recall@100", "map"}
