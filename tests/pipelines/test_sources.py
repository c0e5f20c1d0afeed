"""Sequence logs (`USER ITEM ITEM ...` or `USER ITEM` lines) read as watch rows, validated and run end to end."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.local import read_examples
from pipelines.pipeline import run_pipeline
from pipelines.sources import format_of, iter_batches, resolve_inputs
from pipelines.validate import validate_watches
from recsys.config import PipelineConfig
from recsys.errors import InputError
from recsys.features import FeatureSpace
from recsys.schemas import SEARCH_REQUIRED, WATCH_EVENTS, WATCH_REQUIRED

BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon" / "Beauty.txt"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_log(path: Path, batch_rows: int = 1 << 20) -> tuple[pa.Table, pa.Table]:
    """The good (contract-typed) and quarantined rows the pipeline's validation makes of a log."""
    batches = list(iter_batches(path, WATCH_REQUIRED, batch_rows=batch_rows))
    return validate_watches(pa.Table.from_batches(batches))


def triples(table: pa.Table) -> list[tuple[str, str, int]]:
    """(user, item, position) per row, in the table's order; the position is the row's ts in days."""
    days = [(ts - EPOCH) / timedelta(days=1) for ts in table["ts"].to_pylist()]
    assert all(d == int(d) for d in days)
    return list(zip(table["user_id"].to_pylist(), table["video_id"].to_pylist(), map(int, days), strict=True))


def test_sequence_lines_become_one_row_per_item_numbered_per_user(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("u1 a b c\n\n  u2\tc a  \n007 10\n")
    good, bad = read_log(path)
    assert good.schema.equals(WATCH_EVENTS)
    u1, u2 = [("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2)], [("u2", "c", 0), ("u2", "a", 1)]
    assert triples(good) == [*u1, *u2, ("007", "10", 0)]  # ids stay the text they are: leading zeros kept
    assert good["watch_seconds"].null_count == good.num_rows
    assert bad.num_rows == 0


def test_pairs_count_positions_per_user_across_lines_and_match_the_sequence_file(tmp_path: Path) -> None:
    (tmp_path / "seq.txt").write_text("u1 a b c\nu2 c a\nu3 b\n")
    (tmp_path / "grouped.txt").write_text("u1 a\nu1 b\nu1 c\nu2 c\nu2 a\nu3 b\n")
    (tmp_path / "interleaved.txt").write_text("u1 a\nu2 c\nu1 b\nu3 b\nu2 a\nu1 c\n")
    sequence = read_log(tmp_path / "seq.txt")[0]
    assert read_log(tmp_path / "grouped.txt")[0].equals(sequence)
    by_user_then_time = [("user_id", "ascending"), ("ts", "ascending")]
    assert read_log(tmp_path / "interleaved.txt")[0].sort_by(by_user_then_time).equals(sequence)


def test_one_item_per_user_reads_the_same_as_sequence_or_as_pairs(tmp_path: Path) -> None:
    path = tmp_path / "ambiguous.txt"
    path.write_text("u1 a\nu2 b\nu3 a\n")
    assert triples(read_log(path)[0]) == [("u1", "a", 0), ("u2", "b", 0), ("u3", "a", 0)]


def test_a_line_without_items_is_quarantined_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("u1 a b\nlonely\nu2 c\n")
    good, bad = read_log(path)
    assert triples(good) == [("u1", "a", 0), ("u1", "b", 1), ("u2", "c", 0)]
    assert bad["reason"].to_pylist() == ["missing_video_id"]
    row = json.loads(bad["row"][0].as_py())
    assert (row["user_id"], row["video_id"], row["line"]) == ("lonely", None, 2)


def test_batches_hold_at_most_batch_rows_and_positions_run_on(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("u1 a b c d e\nu2 f\n")
    sizes = [b.num_rows for b in iter_batches(path, WATCH_REQUIRED, batch_rows=2)]
    assert sizes == [2, 2, 2]
    assert [p for _, _, p in triples(read_log(path, batch_rows=2)[0])] == [0, 1, 2, 3, 4, 0]


def test_gzip_and_a_byte_order_mark_read_like_plain_text(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("u1 a b\nu2 c\n")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfu1 a b\nu2 c\n")
    with gzip.open(tmp_path / "packed.TXT.GZ", "wb") as handle:
        handle.write(b"u1 a b\nu2 c\n")
    plain = read_log(tmp_path / "plain.txt")[0]
    assert format_of(tmp_path / "packed.TXT.GZ") == "sequence"
    assert read_log(tmp_path / "packed.TXT.GZ")[0].equals(plain)
    assert read_log(tmp_path / "bom.txt")[0].equals(plain)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.txt", b"u1 a\nu2 caf\xe9\n", "line 2 is not UTF-8 text"),
        ("broken.txt.gz", gzip.compress(b"u1 a b c\n" * 1000)[:-20], "not a readable"),
    ],
)
def test_unreadable_text_fails_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_log(path)


def test_a_sequence_log_is_no_side_table(tmp_path: Path) -> None:
    path = tmp_path / "searches.txt"
    path.write_text("u1 a\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['query'\]"):
        list(iter_batches(path, SEARCH_REQUIRED))


def test_leave_last_out_pipeline_labels_each_users_last_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sequences = {f"user{u}": [f"item{i}" for i in rng.integers(0, 12, rng.integers(4, 10))] for u in range(25)}
    lines = [" ".join([user, *items]) for user, items in sequences.items()]
    path = tmp_path / "log.txt"
    path.write_text("\n".join([*lines[:10], "lonely", *lines[10:]]) + "\n")
    out = tmp_path / "examples"
    cfg = PipelineConfig(split="leave_last_out", workers=1, partitions=2)
    report = run_pipeline(resolve_inputs(path), out, cfg, progress=False)

    assert report["rows_in"]["events"] == sum(map(len, sequences.values())) + 1
    assert report["quarantined"] == {"events": {"missing_video_id": 1}}
    videos = FeatureSpace.load(out / "vocab").videos
    for split, back in (("test", 1), ("validation", 2)):
        examples = read_examples(out, split).sort_by("user_id")
        assert examples["user_id"].to_pylist() == sorted(sequences)
        expected = [sequences[u][-back] for u in examples["user_id"].to_pylist()]
        assert examples["label"].to_pylist() == videos.lookup(pa.array(expected)).to_pylist()
        assert pc.min(examples["label"]).as_py() > 0  # every item recurs, so no label is out of vocabulary
        days = [len(sequences[u]) - back for u in examples["user_id"].to_pylist()]
        assert examples["label_ts"].to_pylist() == [EPOCH + timedelta(days=d) for d in days]


@pytest.mark.skipif(not BEAUTY.exists(), reason=f"the Amazon Beauty sequence log is not at {BEAUTY}")
def test_the_amazon_beauty_log() -> None:
    good, bad = read_log(BEAUTY)
    assert bad.num_rows == 0
    assert good.num_rows == 198_502
    assert pc.count_distinct(good["user_id"]).as_py() == 22_363
    assert pc.count_distinct(good["video_id"]).as_py() == 12_101
