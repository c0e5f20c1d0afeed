"""The local engine end to end on real files: outputs, quarantine, report, bad files, atomic publication."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines import local
from pipelines.local import read_examples
from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from recsys.config import PipelineConfig
from recsys.errors import InputError
from recsys.features import FeatureSpace
from recsys.schemas import EXAMPLES, OOV_INDEX, QUARANTINE, SPLITS

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k.zip"


def run(log: Path, out: Path, **cfg) -> dict:
    return run_pipeline(resolve_inputs(log), out, PipelineConfig(**cfg), progress=False)


def test_outputs_report_and_quarantine(log_dir, tmp_path):
    log, planted = log_dir
    out = tmp_path / "examples"
    report = run(log, out, test_days=2, validation_days=2, max_examples_per_user=10, workers=2, partitions=3)

    assert report["rows_in"]["events"] == 40 * 30 + 3 + 5
    assert report["quarantined"]["events"] == planted
    assert report["quarantined"]["users"] == {"duplicate_user_id": 1}
    quarantine = pa.concat_tables(pq.read_table(f) for f in sorted((out / "quarantine").glob("*.parquet")))
    assert quarantine.schema.equals(QUARANTINE)
    assert quarantine.num_rows == report["quarantined_total"] == sum(planted.values()) + 1
    # The original values survive in the quarantined rows.
    negative = quarantine.filter(pc.equal(quarantine["reason"], "negative_watch_seconds"))
    assert {json.loads(r)["watch_seconds"] for r in negative["row"].to_pylist()} == {-5.0, -1.0}

    vocab = FeatureSpace.load(out / "vocab")
    total = 0
    for split in SPLITS:
        table = read_examples(out, split)
        assert table.schema.equals(EXAMPLES)
        assert table.num_rows == report["examples"][split]
        total += table.num_rows
        per_user = pc.value_counts(table["user_id"]).field("counts").to_pylist()
        assert max(per_user, default=0) <= 10
        assert pc.max(pc.list_value_length(table["history"])).as_py() <= 50
        assert pc.max(table["label"]).as_py() < len(vocab.videos)
    assert total > 0 and report["examples"]["train"] > 0 and report["examples"]["test"] > 0
    train = read_examples(out, "train")
    assert pc.min(train["label"]).as_py() > OOV_INDEX  # OOV labels are never training targets
    bounds = report["split"]
    assert pc.max(train["label_ts"]).as_py().isoformat() < bounds["validation_start"]
    assert not (out / "_work").exists()
    assert not list(tmp_path.glob(".examples.tmp-*"))


def test_deterministic_across_worker_and_partition_counts(log_dir, tmp_path):
    log, _ = log_dir
    a = run(log, tmp_path / "a", workers=1, partitions=1)
    b = run(log, tmp_path / "b", workers=2, partitions=7)
    assert a["examples"] == b["examples"]
    keys = [("user_id", "ascending"), ("label_ts", "ascending"), ("label", "ascending")]
    for split in SPLITS:
        ta = read_examples(tmp_path / "a", split).sort_by(keys)
        tb = read_examples(tmp_path / "b", split).sort_by(keys)
        assert ta.equals(tb)
    for name in ("videos.parquet", "tokens.parquet", "country.parquet", "numeric.json"):
        assert (tmp_path / "a" / "vocab" / name).read_bytes() == (tmp_path / "b" / "vocab" / name).read_bytes()


def test_vocabulary_comes_from_training_window_only(log_dir, tmp_path):
    log, _ = log_dir
    events = pq.read_table(log / "events.parquet")
    late = pa.table(
        {
            "user_id": ["user1"],
            "video_id": ["brand-new-video"],
            "ts": pa.array([pc.max(events["ts"]).as_py()], pa.timestamp("us", "UTC")),
            "watch_seconds": [10.0],
        }
    )
    pq.write_table(pa.concat_tables([events, late]), log / "events.parquet")
    run(log, tmp_path / "out", test_days=2, validation_days=2)
    vocab = pq.read_table(tmp_path / "out" / "vocab" / "videos.parquet")
    assert "brand-new-video" not in vocab["video_id"].to_pylist()
    assert vocab.column_names == ["index", "video_id", "count"]
    assert vocab["video_id"][0].as_py() == "[OOV]"
    counts = vocab["count"].to_pylist()[1:]
    assert counts == sorted(counts, reverse=True)


def test_csv_input_with_text_timestamps(tmp_path):
    rows = "user_id,video_id,ts,watch_seconds\n" + "".join(
        f"u{u},v{(u + i) % 5},2026-01-{1 + i:02d}T10:00:00Z,{i}\n" for u in range(4) for i in range(20)
    )
    rows += "u9,v1,not-a-time,3\nu9,v1,2026-01-02 10:00:00,abc\n"
    (tmp_path / "log.csv").write_text(rows)
    report = run(tmp_path / "log.csv", tmp_path / "out", test_days=3, validation_days=3)
    assert report["quarantined"]["events"] == {"bad_timestamp": 1, "bad_watch_seconds": 1}
    assert report["rows_in"]["events"] == 82
    assert sum(report["examples"].values()) > 0


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "events.parquet", "empty"),
        (b"user_id,video_id,ts\nu,v,2026-01-01\n", "events.parquet", "not a readable parquet"),
        (b"user_id,ts\nu,2026-01-01\n", "events.csv", "missing column(s) ['video_id']"),
        (b"hello", "events.json", "unknown file type"),
    ],
)
def test_bad_files_stop_with_a_clear_error(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=pytest.importorskip("re").escape(message)):
        run(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_zero_rows_and_all_bad_rows_are_errors(tmp_path):
    empty = pa.table(
        {
            "user_id": pa.array([], pa.string()),
            "video_id": pa.array([], pa.string()),
            "ts": pa.array([], pa.timestamp("us")),
        }
    )
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(InputError, match="no watch events"):
        run(tmp_path / "empty.parquet", tmp_path / "out")
    pacsv.write_csv(pa.table({"user_id": ["", ""], "video_id": ["a", "b"], "ts": ["1", "2"]}), tmp_path / "bad.csv")
    with pytest.raises(InputError, match="quarantined"):
        run(tmp_path / "bad.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_rerun_keeps_previous_result(log_dir, tmp_path, monkeypatch):
    log, _ = log_dir
    out = tmp_path / "out"
    first = run(log, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(local, "build_examples", explode)
    with pytest.raises(Exception, match="killed mid-way"):
        run_pipeline(resolve_inputs(log), out, PipelineConfig(workers=1), overwrite=True, progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((out / "report.json").read_text())["examples"] == first["examples"]
    assert not list(tmp_path.glob(".out.*"))
    with pytest.raises(InputError, match="already exists"):
        run(log, out)


def test_cli_exit_codes(log_dir, tmp_path):
    log, _ = log_dir
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "pipeline",
            "--events",
            str(log),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "examples train" in ok.stdout
    (tmp_path / "broken.parquet").write_text("not parquet")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "pipeline",
            "--events",
            str(tmp_path / "broken.parquet"),
            "--out",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "not a readable parquet file" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_file_and_env_override(log_dir, tmp_path):
    log, _ = log_dir
    (tmp_path / "recsys.toml").write_text("[pipeline]\nmax_examples_per_user = 2\nmax_history = 3\n")
    env = {"RECSYS_PIPELINE__MAX_HISTORY": "4", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "--config",
            str(tmp_path / "recsys.toml"),
            "pipeline",
            "--events",
            str(log),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["config"]["max_examples_per_user"] == 2  # from the TOML file
    assert report["config"]["max_history"] == 4  # the environment beats the file
    train = read_examples(tmp_path / "o", "train")
    assert pc.max(pc.list_value_length(train["history"])).as_py() <= 4


@pytest.mark.skipif(not ML100K.exists(), reason=f"MovieLens-100K not found at {ML100K}")
def test_movielens_100k_zip_runs_directly(tmp_path):
    report = run(ML100K, tmp_path / "ml", test_days=14, validation_days=14)
    assert report["rows_in"]["events"] == 100_000
    assert report["quarantined_total"] == 0
    assert report["vocab_sizes"]["gender"] == 3  # OOV, F, M
    assert all(report["examples"][s] > 0 for s in SPLITS)


def test_exact_duplicates_compares_every_column_and_keeps_the_first():
    from pipelines.validate import exact_duplicates

    table = pa.table(
        {
            "user_id": ["a", "a", "a", "b", "a", None, None],
            "ts": pa.array([1, 1, 1, 1, 2, 3, 3], pa.timestamp("us", "UTC")),
            "watch_seconds": [1.5, 1.5, None, 1.5, 1.5, None, None],
        }
    )
    assert exact_duplicates(table, ["user_id", "ts", "watch_seconds"]).tolist() == [
        False,
        True,
        False,
        False,
        False,
        False,
        True,
    ]


def test_leave_last_out_mode_end_to_end(log_dir, tmp_path):
    log, _ = log_dir
    report = run(log, tmp_path / "llo", split="leave_last_out", workers=2, partitions=3)
    test = read_examples(tmp_path / "llo", "test")
    validation = read_examples(tmp_path / "llo", "validation")
    assert test.num_rows == 40  # one per user, every user has 30 watches
    assert pc.max(pc.value_counts(validation["user_id"]).field("counts")).as_py() == 1
    train = read_examples(tmp_path / "llo", "train")
    latest_train: dict[str, object] = {}
    for u, t in zip(train["user_id"].to_pylist(), train["label_ts"].to_pylist(), strict=True):
        latest_train[u] = max(t, latest_train.get(u, t))
    for row in validation.to_pylist():
        assert latest_train[row["user_id"]] < row["label_ts"]
    assert report["config"]["split"] == "leave_last_out"
