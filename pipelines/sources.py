"""Readers for watch logs and side tables (Parquet, CSV, Arrow IPC, sequence text, directories, MovieLens zips)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipelines.sequences import SEQUENCE_SCHEMA, SEQUENCE_SUFFIXES, sequence_batches
from recsys.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
BATCH_ROWS = 1 << 20


@dataclass(frozen=True)
class Inputs:
    """The files one pipeline run reads: a watch log and optional search, user and video tables."""

    events: Path
    searches: Path | None = None
    users: Path | None = None
    videos: Path | None = None
    movielens_zip: Path | None = None


def _side_table(directory: Path, stem: str) -> Path | None:
    for suffix in (*PARQUET_SUFFIXES, *CSV_SUFFIXES, *ARROW_SUFFIXES, ""):
        candidate = directory / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def resolve_inputs(
    events: Path, searches: Path | None = None, users: Path | None = None, videos: Path | None = None
) -> Inputs:
    """Find the input files: a file, a MovieLens zip, or a directory holding events/searches/users/videos."""
    if not events.exists():
        raise InputError(f"{events}: no such file or directory")
    if events.is_file() and events.suffix == ".zip":
        return Inputs(events=events, movielens_zip=events)
    if events.is_dir():
        inner = _side_table(events, "events")
        if inner is not None:
            return Inputs(
                events=inner,
                searches=searches or _side_table(events, "searches"),
                users=users or _side_table(events, "users"),
                videos=videos or _side_table(events, "videos"),
            )
    return Inputs(events=events, searches=searches, users=users, videos=videos)


def format_of(path: Path) -> str:
    """The reader a path needs (parquet, csv, arrow, sequence or dataset), from its extension."""
    name = path.name.lower()
    if path.is_dir():
        return "dataset"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    if name.endswith(SEQUENCE_SUFFIXES):
        return "sequence"
    known = PARQUET_SUFFIXES + CSV_SUFFIXES + ARROW_SUFFIXES + SEQUENCE_SUFFIXES
    raise InputError(
        f"{path}: unknown file type (expected one of {known}, a directory of Parquet files or a MovieLens .zip)"
    )


def check_columns(path: Path, schema: pa.Schema, required: Sequence[str]) -> None:
    """Fail clearly when a table lacks a required column."""
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {schema.names}")


def parquet_row_groups(path: Path, required: Sequence[str]) -> int | None:
    """Number of row groups of a Parquet file (checked for columns), None for other formats."""
    if not path.is_file() or format_of(path) != "parquet":
        return None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
    check_columns(path, pf.schema_arrow, required)
    return int(pf.num_row_groups)


def iter_batches(
    path: Path, required: Sequence[str], batch_rows: int = BATCH_ROWS, row_groups: list[int] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a table file in record batches, failing clearly on an empty, mislabelled or incomplete file."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    fmt = format_of(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        if fmt == "parquet":
            yield from _parquet_batches(path, required, batch_rows, row_groups)
        elif fmt == "dataset":
            dataset = ds.dataset(path, format="parquet")
            check_columns(path, dataset.schema, required)
            yield from dataset.to_batches(batch_size=batch_rows)
        elif fmt == "csv":
            yield from _csv_batches(path, required)
        elif fmt == "sequence":
            check_columns(path, SEQUENCE_SCHEMA, required)  # a sequence log holds watches, never a side table
            yield from sequence_batches(path, batch_rows)
        else:
            with pa.memory_map(str(path)) as source:
                reader = ipc.open_file(source)
                check_columns(path, reader.schema, required)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputError(f"{path}: not a readable {fmt} file ({exc})") from exc


def _parquet_batches(
    path: Path, required: Sequence[str], batch_rows: int, row_groups: list[int] | None
) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(path)
    check_columns(path, pf.schema_arrow, required)
    yield from pf.iter_batches(batch_size=batch_rows, row_groups=row_groups)


def _csv_batches(path: Path, required: Sequence[str]) -> Iterator[pa.RecordBatch]:
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    # Every column is read as text: types are converted row by row later so that one bad value is quarantined,
    # not fatal for the whole file.
    with pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=64 << 20),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(
            column_types={
                c: pa.string()
                for c in ("user_id", "video_id", "ts", "watch_seconds", "query", "country", "device", "gender")
            },
            strings_can_be_null=True,
        ),
    ) as reader:
        check_columns(path, reader.schema, required)
        yield from reader


def read_all(path: Path, required: Sequence[str]) -> pa.Table:
    """Read a whole (small) table file, with the same checks as iter_batches."""
    batches = list(iter_batches(path, required))
    if not batches:
        raise InputError(f"{path}: holds no rows")
    return pa.Table.from_batches(batches)


def is_zip(path: Path) -> bool:
    """Whether the path is a readable zip archive (MovieLens input)."""
    return path.is_file() and zipfile.is_zipfile(path)
