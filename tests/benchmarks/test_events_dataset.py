"""--events PATH: a watch log of your own through the benchmarks' example pipeline (tiny data, no training)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from benchmarks.datasets import check_events_log, events_name, prepare_dataset, prepare_events, read_watches
from benchmarks.quality import parse_args
from benchmarks.schema import PROTOCOLS
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig
from recsys.schemas import TIMESTAMP


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-user synthetic log (events, searches, users, videos tables in one directory)."""
    root = tmp_path_factory.mktemp("events-log") / "log"
    generate(GeneratorConfig(users=60, videos=120, events=4000, topics=4, days=30, seed=7), root, progress=False)
    return root


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The last stderr line of a refused command line (argparse: usage, then one error line)."""
    with pytest.raises(SystemExit) as refused:
        parse_args(argv)
    assert refused.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_prepare_dataset_builds_both_protocols_from_a_log_and_reuses_them(log_dir: Path, tmp_path: Path) -> None:
    args = parse_args(["--events", str(log_dir), "--json", str(tmp_path / "q.json")])
    assert (args.dataset, args.events, args.protocols) == ("events", log_dir, PROTOCOLS)
    prepared = prepare_dataset(args, tmp_path / "work", args.protocols)
    assert prepared.kind == "events" and prepared.name == "events-log" and prepared.truth is None
    raw = pq.read_table(log_dir / "events.parquet")
    assert prepared.events.column_names == ["user_id", "video_id", "ts"]
    assert prepared.events["ts"].type == TIMESTAMP and prepared.events.num_rows == raw.num_rows
    assert set(prepared.examples) == set(PROTOCOLS)
    for protocol in PROTOCOLS:
        assert (prepared.examples[protocol] / "report.json").is_file()
        counts = prepared.pipeline[protocol]["examples"]
        assert counts["train"] > 0 and counts["test"] > 0, (protocol, counts)
    assert prepared.pipeline["leave_last_out"]["config"]["split"] == "leave_last_out"

    # A second run reuses the examples; an edited log (new modification time) rebuilds them.
    report = prepared.examples["leave_last_out"] / "report.json"
    built = report.stat().st_mtime_ns
    again = prepare_events(log_dir, tmp_path / "work", ["leave_last_out"])
    assert again.examples["leave_last_out"] == prepared.examples["leave_last_out"]
    assert report.stat().st_mtime_ns == built
    stat = (log_dir / "events.parquet").stat()
    os.utime(log_dir / "events.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    prepare_events(log_dir, tmp_path / "work", ["leave_last_out"])
    assert report.stat().st_mtime_ns != built


def test_quality_accepts_a_log_file_and_keeps_the_synthetic_event_count(log_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "watches.csv"
    pacsv.write_csv(pq.read_table(log_dir / "events.parquet").slice(0, 50), csv)
    argv = ["--events", str(csv), "--json", "q.json", "--protocols", "leave_last_out", "--history-pooling", "attention"]
    args = parse_args(argv)
    assert (args.dataset, args.events, args.protocols, args.history_pooling) == (
        "events",
        csv,
        ("leave_last_out",),
        "attention",
    )
    parts = tmp_path / "parts"  # a directory of Parquet files, as a Spark job writes a log
    parts.mkdir()
    raw = pq.read_table(log_dir / "events.parquet")
    pq.write_table(raw.slice(0, 30), parts / "part-0.parquet")
    pq.write_table(raw.slice(30, 30), parts / "part-1.parquet")
    assert parse_args(["--events", str(parts), "--json", "q.json"]).events == parts
    synthetic = parse_args(["--dataset", "synthetic", "--events", "5000", "--json", "q.json"])
    assert (synthetic.dataset, synthetic.events) == ("synthetic", 5000)
    assert parse_args(["--json", "q.json"]).dataset == "ml-100k"


def test_a_missing_or_incomplete_log_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_dir: Path
) -> None:
    missing = tmp_path / "nowhere.parquet"
    line = _error_line(capsys, ["--events", str(missing), "--json", "q.json"])
    assert str(missing) in line and "no such file or directory" in line

    no_ts = tmp_path / "no_ts.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "video_id": ["v1"]}), no_ts)
    line = _error_line(capsys, ["--events", str(no_ts), "--json", "q.json"])
    assert str(no_ts) in line and "missing column(s) ['ts']" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "missing column(s)" in _error_line(capsys, ["--events", str(empty), "--json", "q.json"])
    line = _error_line(capsys, ["--dataset", "synthetic", "--events", str(log_dir), "--json", "q.json"])
    assert "number of events" in line
    assert "--events" in _error_line(capsys, ["--dataset", "ml-100k", "--events", str(log_dir), "--json", "q.json"])


def test_a_sequence_log_is_a_log_named_after_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "Beauty.txt"
    path.write_text("u1 a b c\nu2 c a\n")
    args = parse_args(["--events", str(path), "--json", "q.json"])
    assert (args.dataset, args.events) == ("events", path)
    events = read_watches(check_events_log(path))
    assert events.column_names == ["user_id", "video_id", "ts"] and events["ts"].type == TIMESTAMP
    assert events["video_id"].to_pylist() == ["a", "b", "c", "c", "a"]
    assert events_name(path) == "events-Beauty"
    assert events_name(tmp_path / "Sports and Outdoors.txt.gz") == "events-Sports_and_Outdoors"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    assert "holds no rows" in _error_line(capsys, ["--events", str(blank), "--json", "q.json"])
