"""Row-level validation: coerce raw batches to the contract schemas and set bad rows aside with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.schemas import QUARANTINE, SEARCH_EVENTS, TIMESTAMP, USERS, WATCH_EVENTS


def quarantine_rows(source: str, reasons: np.ndarray, raw: pa.Table, bad: np.ndarray) -> pa.Table:
    """Quarantine table of the bad rows: original values as JSON text, so nothing is lost."""
    rows = raw.filter(pa.array(bad)).to_pylist()
    return pa.table(
        {
            "source": pa.array([source] * len(rows), pa.string()),
            "reason": pa.array(reasons[bad].tolist(), pa.string()),
            "row": pa.array([json.dumps(r, default=str, ensure_ascii=False) for r in rows], pa.string()),
        },
        schema=QUARANTINE,
    )


def empty_quarantine() -> pa.Table:
    """A zero-row quarantine table."""
    return QUARANTINE.empty_table()


class _Checker:
    """Collects the first failing reason of each row while columns are converted."""

    def __init__(self, raw: pa.Table) -> None:
        self.raw = raw
        self.codes = np.zeros(raw.num_rows, dtype=np.int8)  # 0 = fine, i = self.names[i - 1]
        self.names: list[str] = []

    def flag(self, mask: np.ndarray | pa.Array | pa.ChunkedArray, reason: str) -> None:
        if isinstance(mask, pa.Array | pa.ChunkedArray):
            mask = mask.to_numpy(zero_copy_only=False)
        hit = np.asarray(mask, dtype=bool) & (self.codes == 0)
        if hit.any():
            if reason not in self.names:
                self.names.append(reason)
            self.codes[hit] = self.names.index(reason) + 1

    @property
    def bad(self) -> np.ndarray:
        return self.codes != 0

    def split(self, source: str, good: dict[str, pa.Array], schema: pa.Schema) -> tuple[pa.Table, pa.Table]:
        bad = self.bad
        table = pa.table({f.name: good[f.name] for f in schema})
        if not bad.any():
            return table.cast(schema), empty_quarantine()
        reasons = np.array([None, *self.names], dtype=object)[self.codes]
        return table.filter(pa.array(~bad)).cast(schema), quarantine_rows(source, reasons, self.raw, bad)


def _string_id(checker: _Checker, column: pa.ChunkedArray | pa.Array, reason: str) -> pa.Array:
    values = pc.cast(column, pa.string())
    # Missing: null, empty or only whitespace. Other values are kept exactly as given (no trimming).
    blank = pc.or_(pc.equal(pc.utf8_length(values), 0), pc.utf8_is_space(values))
    checker.flag(pc.fill_null(blank, True), reason)
    return values


def _parse_timestamp_text(values: pa.Array) -> pa.Array:
    """Text timestamps to UTC microseconds: epoch seconds, naive ISO 8601 (taken as UTC) or with an offset."""
    attempts = (
        lambda: pc.multiply(pc.cast(values, pa.int64()), 1_000_000),
        lambda: pc.cast(pc.cast(values, pa.timestamp("us")), pa.int64()),
        lambda: pc.cast(pc.cast(values, TIMESTAMP), pa.int64()),
    )
    for attempt in attempts:
        try:
            return attempt()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    # Slow path, only for batches holding a value no cast accepts: parse each row, None where impossible.
    return pa.array([_parse_one(text) for text in values.to_pylist()], pa.int64())


def _parse_one(text: Any) -> int | None:
    if text is None:
        return None
    stripped = str(text).strip()
    try:
        number = float(stripped)
    except ValueError:
        number = None
    if number is not None:
        return round(number * 1_000_000) if np.isfinite(number) else None
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _timestamp(checker: _Checker, column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Timestamps as UTC microseconds: timestamp columns as they are, integers as epoch seconds, text parsed."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    checker.flag(pc.is_null(arr), "missing_timestamp")
    if pa.types.is_timestamp(arr.type):
        micros = pc.cast(arr, pa.timestamp("us", tz=arr.type.tz or "UTC")).cast(pa.int64())
    elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        seconds = pc.cast(arr, pa.float64())
        finite = pc.fill_null(pc.is_finite(seconds), True)
        checker.flag(pc.invert(finite), "bad_timestamp")
        micros = pc.cast(pc.round(pc.multiply(pc.if_else(finite, seconds, 0.0), 1e6)), pa.int64())
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        micros = _parse_timestamp_text(arr)
        checker.flag(pc.and_(pc.is_valid(arr), pc.is_null(micros)), "bad_timestamp")
    else:
        checker.flag(np.ones(len(arr), dtype=bool), "bad_timestamp")
        micros = pa.nulls(len(arr), pa.int64())
    return pc.cast(pc.fill_null(micros, 0), pa.int64()).cast(TIMESTAMP)


def _watch_seconds(checker: _Checker, raw: pa.Table) -> pa.Array:
    if "watch_seconds" not in raw.column_names:
        return pa.nulls(raw.num_rows, pa.float64())
    col = raw["watch_seconds"].combine_chunks()
    if pa.types.is_string(col.type):
        text = pc.utf8_trim_whitespace(col)
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        as_float = pa.array([_to_float(v) for v in text.to_pylist()], pa.float64())
        checker.flag(pc.and_(pc.is_valid(text), pc.is_null(as_float)), "bad_watch_seconds")
        col = as_float
    try:
        values = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        checker.flag(np.ones(len(col), dtype=bool), "bad_watch_seconds")
        return pa.nulls(len(col), pa.float64())
    finite = pc.fill_null(pc.is_finite(values), True)
    checker.flag(pc.invert(finite), "bad_watch_seconds")
    checker.flag(pc.fill_null(pc.less(values, 0.0), False), "negative_watch_seconds")
    return values


def _to_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def validate_watches(raw: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
    """Split raw watch rows into contract-typed good rows and quarantined bad rows."""
    raw = pa.table(raw) if isinstance(raw, pa.RecordBatch) else raw
    checker = _Checker(raw)
    good = {
        "user_id": _string_id(checker, raw["user_id"], "missing_user_id"),
        "video_id": _string_id(checker, raw["video_id"], "missing_video_id"),
        "ts": _timestamp(checker, raw["ts"]),
        "watch_seconds": _watch_seconds(checker, raw),
    }
    return checker.split("events", good, WATCH_EVENTS)


def validate_searches(raw: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
    """Split raw search rows into good rows and quarantined bad rows (missing user, time or query)."""
    raw = pa.table(raw) if isinstance(raw, pa.RecordBatch) else raw
    checker = _Checker(raw)
    good = {
        "user_id": _string_id(checker, raw["user_id"], "missing_user_id"),
        "ts": _timestamp(checker, raw["ts"]),
        "query": _string_id(checker, raw["query"], "missing_query"),
    }
    return checker.split("searches", good, SEARCH_EVENTS)


def validate_users(raw: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
    """Coerce a users table to the contract; rows without an id are quarantined, missing columns become null."""
    raw = pa.table(raw) if isinstance(raw, pa.RecordBatch) else raw
    checker = _Checker(raw)
    good: dict[str, pa.Array] = {"user_id": _string_id(checker, raw["user_id"], "missing_user_id")}
    for field in USERS:
        if field.name == "user_id":
            continue
        if field.name not in raw.column_names:
            good[field.name] = pa.nulls(raw.num_rows, field.type)
            continue
        try:
            good[field.name] = pc.cast(raw[field.name], field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            good[field.name] = _lenient_cast(checker, raw[field.name], field)
    return checker.split("users", good, USERS)


def _lenient_cast(checker: _Checker, column: pa.ChunkedArray, field: pa.Field) -> pa.Array:
    out = []
    for value in column.to_pylist():
        try:
            out.append(pa.scalar(value).cast(field.type).as_py() if value is not None else None)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(_BAD)
    mask = np.array([v is _BAD for v in out])
    checker.flag(mask, f"bad_{field.name}")
    return pa.array([None if v is _BAD else v for v in out], field.type)


_BAD = object()


def exact_duplicates(table: pa.Table, keys: list[str]) -> np.ndarray:
    """Mask of rows that repeat an earlier row on every key column (the first occurrence is kept)."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    # Sort on integer codes (dictionary codes for strings, raw bits for numbers) rather than on the values.
    codes = pa.table({k: _sortable_codes(table[k]) for k in keys})
    order = pc.sort_indices(codes, [(k, "ascending") for k in keys]).to_numpy()
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        col = codes[k].to_numpy()[order]
        same &= col[1:] == col[:-1]
    mask = np.zeros(n, dtype=bool)
    mask[order[1:]] = same
    return mask


def _sortable_codes(column: pa.ChunkedArray) -> np.ndarray:
    """An int64 per row that is equal exactly when the values are equal (nulls equal to nulls)."""
    arr = column.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_boolean(arr.type):
        encoded = arr.dictionary_encode()
        return pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = pc.is_null(arr).to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(arr.type) or pa.types.is_integer(arr.type):
        codes = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        codes[nulls] = np.iinfo(np.int64).min
        return codes
    values = pc.fill_null(pc.cast(arr, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    values = np.where(np.isnan(values), np.float64(np.nan), values) + 0.0  # one NaN pattern; -0.0 becomes 0.0
    codes = values.view(np.int64).copy()
    codes[nulls] = np.iinfo(np.int64).min
    return codes
