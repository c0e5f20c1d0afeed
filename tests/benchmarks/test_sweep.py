"""The validation sweep: point parsing, its table, and one real two-point sweep on ML-100K."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.datasets import prepare_movielens
from benchmarks.report import sweep_summary, sweep_table
from benchmarks.sweep import main, parse_args, parse_point

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k.zip"


def test_points_must_be_json_objects_of_known_fields(tmp_path: Path) -> None:
    assert parse_point('{"hidden": [], "learning_rate": 0.2}') == {"hidden": [], "learning_rate": 0.2}
    for bad in ("[1]", "hidden=[]", '"x"'):
        with pytest.raises(ValueError, match="expected a JSON object"):
            parse_point(bad)
    out = str(tmp_path / "s.json")
    for bad in ('{"nope": 1}', '{"hidden": "wide"}', '{"learning_rate": -1}'):
        with pytest.raises(SystemExit) as err:  # a usage error before any data is read, not a traceback later
            parse_args(["--json", out, "--point", bad])
        assert err.value.code == 2
    for bad in ('{"max_examples_per_user": 0}', '{"nope": 1}', "[]"):
        with pytest.raises(SystemExit) as err:
            parse_args(["--json", out, "--point", "{}", "--pipeline", bad])
        assert err.value.code == 2


def test_rows_table_shows_best_and_curve() -> None:
    rows = [
        {
            "point": {"hidden": []},
            "validation": {"recall@100": 0.47},
            "best_epoch": 2,
            "epochs_run": 3,
            "curve": [0.41, 0.47, 0.46],
        }
    ]
    table = sweep_table(rows)
    assert '`{"hidden": []}` | 0.4700 | 2 / 3 | 0.410 0.470 0.460 |' in table
    rows.append({"point": {"hidden": [8]}, "validation": {"recall@100": 0.5}, "best_epoch": 4, "epochs_run": 4})
    words = "\n".join(sweep_summary(rows))
    assert 'Best point by validation Recall@100: `{"hidden": [8]}`, 0.5000 at epoch 4 of 4' in words
    assert 'still improving): `{"hidden": [8]}`.' in words


def test_every_scoring_benchmark_evaluates_as_served_unless_told_not_to(tmp_path: Path) -> None:
    from benchmarks import quality, seeds, sweep

    for module, extra in ((quality, []), (seeds, []), (sweep, ["--point", "{}"])):
        base = ["--json", str(tmp_path / "x.json"), *extra]
        assert module.parse_args(base).exclude_history is True, module.__name__
        assert module.parse_args([*base, "--exclude-history"]).exclude_history is True  # the old flag still works
        assert module.parse_args([*base, "--no-exclude-history"]).exclude_history is False


@pytest.mark.slow
def test_sweep_trains_every_point_and_reports_validation_only(tmp_path: Path) -> None:
    if not ML100K.is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (shared/data/ml-100k.zip)")
    out = tmp_path / "sweep.json"
    points = ['{"epochs": 2, "patience": 2}', '{"epochs": 1, "hidden": [16], "video_input_dim": 16}']
    main(
        [
            "--dataset",
            "ml-100k",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
            "--pipeline",
            '{"max_examples_per_user": 30}',
            *[arg for p in points for arg in ("--point", p)],
        ]
    )
    result = json.loads(out.read_text())
    assert result["meta"]["pipeline"]["max_examples_per_user"] == 30  # the data knob reached the pipeline
    assert result["meta"]["exclude_history"] is True and result["meta"]["base_train"]["eval_exclude_history"] is True
    assert "as served" in result["meta"]["evaluation"] and "as served" in out.with_suffix(".md").read_text()
    rows = result["points"]
    assert [r["point"] for r in rows] == [json.loads(p) for p in points]
    assert [len(r["curve"]) for r in rows] == [2, 1]  # each point trained its own epoch cap
    for r in rows:
        assert 0.0 < r["validation"]["recall@100"] <= 1.0
        assert r["validation"]["recall@100"] == pytest.approx(max(r["curve"]), abs=1e-4)
    assert "test" not in json.dumps(result["points"])  # validation only: no test metric is ever computed
    assert out.with_suffix(".md").read_text().count("| `{") == 2


@pytest.mark.slow
def test_pipeline_overrides_get_their_own_examples(tmp_path: Path) -> None:
    if not ML100K.is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (shared/data/ml-100k.zip)")
    default = prepare_movielens(ML100K, tmp_path, ["time_split"])
    capped = prepare_movielens(ML100K, tmp_path, ["time_split"], {"max_examples_per_user": 5})
    # Same work dir, other data knobs: a second run must not rewrite the first run's examples under it.
    assert default.examples["time_split"] != capped.examples["time_split"]
    assert (default.examples["time_split"] / "report.json").is_file()
    assert capped.pipeline["time_split"]["config"]["max_examples_per_user"] == 5
    assert capped.pipeline["time_split"]["examples"]["train"] < default.pipeline["time_split"]["examples"]["train"]
