"""Sequence logs: the plain-text user/item orders public sequential-recommendation datasets ship, as watch rows."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import InputError
from recsys.schemas import TIMESTAMP

SEQUENCE_SUFFIXES = (".txt", ".txt.gz")
DAY_US = 86_400 * 1_000_000
# The contract's columns plus each row's line in the file, which a quarantined row keeps (its JSON holds every column).
SEQUENCE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("ts", TIMESTAMP),
        pa.field("watch_seconds", pa.float64()),
        pa.field("line", pa.int64()),
    ]
)
_BOM = b"\xef\xbb\xbf"

# user, item (None when the line names no item), 0-based position in the user's sequence, 1-based line number
Row = tuple[str, str | None, int, int]


def sequence_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream a sequence log as raw watch rows (SEQUENCE_SCHEMA), `batch_rows` at a time, for the usual validation.

    Every non-empty line is ``USER ITEM ITEM ...``, fields separated by ASCII whitespace, items oldest first. The
    pairs format (``USER ITEM`` per line, a user's lines in time order) is the same grammar with one item a line:
    a user's positions count on across all its lines in file order, so a pairs file and the sequence file of the
    same orders read identically, and no pass over the file is needed to tell the two apart.

    The files hold no times, so the order is the time: an item's ``ts`` is 1970-01-01T00:00:00Z plus its 0-based
    position in its user's sequence, in days. "Days" in the pipeline (time split windows, example age) therefore
    count positions. ``watch_seconds`` is null. A line naming a user and no item yields one row without a
    ``video_id``, which validation quarantines as ``missing_video_id`` (with its line number) instead of dropping
    it unseen; blank lines are skipped. A file that is not UTF-8 text (or a broken ``.gz``) fails as a whole.
    """
    try:
        with _open(path) as handle:
            rows = _rows(path, handle)
            while chunk := list(islice(rows, batch_rows)):
                yield _batch(chunk)
    except (EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable gzip file ({exc})") from exc


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """The file's bytes, decompressed when it ends in .gz."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _rows(path: Path, lines: Iterable[bytes]) -> Iterator[Row]:
    """One row per item, positions counted per user across lines; one item-less row per line naming no item."""
    next_position: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        fields = _fields(path, number, raw.removeprefix(_BOM) if number == 1 else raw)
        if not fields:
            continue
        user, items = fields[0], fields[1:]
        start = next_position.get(user, 0)
        if not items:
            yield user, None, start, number
            continue
        next_position[user] = start + len(items)
        for offset, item in enumerate(items):
            yield user, item, start + offset, number


def _fields(path: Path, number: int, raw: bytes) -> list[str]:
    """A line's fields as text; ids are split on ASCII whitespace only, so no other character breaks one."""
    try:
        return [field.decode("utf-8") for field in raw.split()]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: line {number} is not UTF-8 text ({exc.reason})") from exc


def _batch(rows: list[Row]) -> pa.RecordBatch:
    """Rows as one record batch; a position becomes that many days after the epoch."""
    users, items, positions, numbers = zip(*rows, strict=True)
    days = pc.multiply_checked(pa.array(positions, pa.int64()), DAY_US)
    return pa.record_batch(
        [
            pa.array(users, pa.string()),
            pa.array(items, pa.string()),
            days.cast(TIMESTAMP),
            pa.nulls(len(rows), pa.float64()),
            pa.array(numbers, pa.int64()),
        ],
        schema=SEQUENCE_SCHEMA,
    )
