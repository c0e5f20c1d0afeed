"""The local engine: user-hash partitions on disk, processed on all cores with bounded memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import common
from pipelines.sources import Inputs, iter_batches
from pipelines.transform import SPLIT_COLUMN, TransformContext, build_examples, user_hashes
from pipelines.validate import validate_searches, validate_users, validate_watches
from recsys.config import PipelineConfig
from recsys.errors import InputError
from recsys.schemas import (
    EXAMPLES,
    QUARANTINE,
    SEARCH_EVENTS,
    SEARCH_REQUIRED,
    SPLITS,
    USERS,
    USERS_REQUIRED,
    WATCH_EVENTS,
    WATCH_REQUIRED,
)

KINDS = {"watch": WATCH_EVENTS, "search": SEARCH_EVENTS, "user": USERS}
_TARGET_PARTITION_BYTES = 48 << 20  # on-disk input per partition; about 10x that in memory while transformed


def partition_of(user_ids: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Partition number of each row: a stable hash of its user id, so a user's rows always meet."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    encoded = user_ids.dictionary_encode()
    per_unique = (user_hashes(encoded.dictionary) % np.uint64(partitions)).astype(np.int32)
    return per_unique[encoded.indices.to_numpy(zero_copy_only=False)]


def _spill_path(directory: Path, kind: str, p: int) -> Path:
    return directory / f"{kind}-{p:05d}.arrow"


class _Spill:
    """Per-partition Arrow IPC files that hash-partitioned rows are appended to."""

    def __init__(self, directory: Path, partitions: int) -> None:
        self.directory = directory
        self.partitions = partitions
        self.writers: dict[tuple[str, int], ipc.RecordBatchFileWriter] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, p: int) -> Path:
        return _spill_path(self.directory, kind, p)

    def write(self, kind: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        part = partition_of(table["user_id"], self.partitions)
        order = np.argsort(part, kind="stable")
        table = table.take(pa.array(order))
        part = part[order]
        bounds = np.flatnonzero(np.diff(part)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(part)]])
        for s, e in zip(starts, ends, strict=True):
            key = (kind, int(part[s]))
            if key not in self.writers:
                self.writers[key] = ipc.new_file(str(self.path(*key)), KINDS[kind])
            self.writers[key].write_table(table.slice(s, e - s))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _read_spill(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.exists():
        return schema.empty_table()
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def _batches_of(path: Path | None, table: pa.Table | None, required: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    if table is not None:
        yield from table.to_batches(max_chunksize=1 << 20)
    elif path is not None:
        yield from iter_batches(path, required)


def _partition_inputs(
    inputs: Inputs, spill: _Spill, quarantine: pq.ParquetWriter, progress: bool
) -> tuple[dict[str, int], dict[str, dict[str, int]], tuple[int, int]]:
    """Pass 1: stream and validate every input, spill good rows by user hash, quarantine bad rows."""
    tables: dict[str, pa.Table | None] = {"events": None, "searches": None, "users": None}
    paths: dict[str, Path | None] = {
        "events": inputs.events,
        "searches": inputs.searches,
        "users": inputs.users,
    }
    if inputs.movielens_zip is not None:
        from pipelines.movielens import read_movielens

        ml = read_movielens(inputs.movielens_zip)
        tables = {"events": ml.events, "searches": None, "users": ml.users}
        paths = {"events": None, "searches": None, "users": None}

    rows_in: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    plan: list[tuple[str, str, tuple[str, ...], Callable[..., Any]]] = [
        ("events", "watch", WATCH_REQUIRED, validate_watches),
        ("searches", "search", SEARCH_REQUIRED, validate_searches),
        ("users", "user", USERS_REQUIRED, validate_users),
    ]
    bar = tqdm(desc="read+validate", unit=" rows", unit_scale=True, disable=not progress)
    for source, kind, required, validate in plan:
        if tables[source] is None and paths[source] is None:
            continue
        rows_in[source] = 0
        for batch in _batches_of(paths[source], tables[source], required):
            rows_in[source] += batch.num_rows
            good, bad = validate(batch)
            if bad.num_rows:
                quarantine.write_table(bad)
                common.merge_reason_counts(reasons, common.reason_counts(bad))
            if kind == "watch" and good.num_rows:
                ts = good["ts"].cast(pa.int64()).to_numpy()
                lo, hi = min(lo, int(ts.min())), max(hi, int(ts.max()))
            spill.write(kind, good)
            bar.update(batch.num_rows)
    bar.close()
    if rows_in.get("events", 0) == 0:
        raise InputError(f"{inputs.events}: holds no watch events")
    if hi < lo:
        raise InputError(f"{inputs.events}: every one of {rows_in['events']} watch events was quarantined")
    return rows_in, reasons, (lo, hi)


# --- worker side (module-level so the process pool can pickle them) --------------------------------------

_worker_ctx: TransformContext | None = None


def _set_context(ctx: TransformContext) -> None:
    global _worker_ctx
    _worker_ctx = ctx


def _clean_partition(args: tuple[Path, int, int]) -> tuple[common.WindowCounts, dict[str, dict[str, int]]]:
    """Phase A: de-duplicate one partition, save the transform's input, count the training window."""
    spill_dir, p, train_end_us = args
    watches = _read_spill(_spill_path(spill_dir, "watch", p), WATCH_EVENTS)
    searches = _read_spill(_spill_path(spill_dir, "search", p), SEARCH_EVENTS)
    users = _read_spill(_spill_path(spill_dir, "user", p), USERS)
    clean = common.dedupe_partition(watches, searches, users)
    if clean.quarantine is not None:
        pq.write_table(clean.quarantine, spill_dir / f"quarantine-{p:05d}.parquet")
    events = common.user_events(clean.watches, clean.searches, clean.users)
    with ipc.new_file(str(spill_dir / f"clean-{p:05d}.arrow"), events.schema) as writer:
        writer.write_table(events)
    for kind in KINDS:
        _spill_path(spill_dir, kind, p).unlink(missing_ok=True)
    counts = common.window_counts(clean.watches, clean.searches, clean.users, train_end_us)
    return counts, common.reason_counts(clean.quarantine)


def _transform_partition(args: tuple[Path, Path, int]) -> dict[str, int]:
    """Phase C: run the example transform on one partition and write one shard per split."""
    spill_dir, out, p = args
    assert _worker_ctx is not None
    clean_path = spill_dir / f"clean-{p:05d}.arrow"
    with pa.memory_map(str(clean_path)) as source:
        events = ipc.open_file(source).read_all()
    examples = build_examples(events, _worker_ctx)
    clean_path.unlink()
    counts: dict[str, int] = {}
    codes = examples[SPLIT_COLUMN].to_numpy()
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(codes == code)
        counts[split] = len(rows)
        if len(rows):
            shard = examples.take(pa.array(rows)).select(EXAMPLES.names).cast(EXAMPLES)
            pq.write_table(shard, out / split / f"part-{p:05d}.parquet", compression="lz4")
    return counts


def _pool(workers: int, ctx: TransformContext | None = None) -> ProcessPoolExecutor:
    kwargs: dict[str, Any] = {"max_workers": workers, "mp_context": mp.get_context("fork")}
    if ctx is not None:
        kwargs.update(initializer=_set_context, initargs=(ctx,))
    return ProcessPoolExecutor(**kwargs)


def _choose_partitions(inputs: Inputs, cfg: PipelineConfig, workers: int) -> int:
    if cfg.partitions:
        return cfg.partitions
    size = sum(
        p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        for p in (inputs.events, inputs.searches, inputs.users)
        if p is not None and p.exists()
    )
    return int(max(workers * 2, min(4096, size // _TARGET_PARTITION_BYTES + 1)))


def run_local(inputs: Inputs, tmp: Path, cfg: PipelineConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline with the local engine, writing everything under tmp; returns the report."""
    workers = cfg.workers or os.cpu_count() or 1
    partitions = _choose_partitions(inputs, cfg, workers)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    work = tmp / "_work"
    (tmp / "quarantine").mkdir(parents=True)
    spill = _Spill(work, partitions)
    with pq.ParquetWriter(tmp / "quarantine" / "invalid.parquet", QUARANTINE) as qwriter:
        try:
            rows_in, reasons, (lo, hi) = _partition_inputs(inputs, spill, qwriter, progress)
        finally:
            spill.close()
    timings["read_validate_partition"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    bounds = common.split_boundaries(cfg, lo, hi)
    totals = common.WindowCounts()
    with _pool(workers) as pool:
        jobs = [(work, p, bounds.validation_start_us) for p in range(partitions)]
        for counts, dup_reasons in tqdm(
            pool.map(_clean_partition, jobs), total=partitions, desc="dedupe+count", disable=not progress
        ):
            totals.add(counts)
            common.merge_reason_counts(reasons, dup_reasons)
    features = common.fit_features(totals, cfg)
    features.save(tmp / "vocab")
    timings["dedupe_vocabulary"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    ctx = common.transform_context(features, bounds, cfg)
    for split in SPLITS:
        (tmp / split).mkdir()
    examples = dict.fromkeys(SPLITS, 0)
    with _pool(workers, ctx) as pool:
        jobs2 = [(work, tmp, p) for p in range(partitions)]
        for counts2 in tqdm(
            pool.map(_transform_partition, jobs2), total=partitions, desc="examples", disable=not progress
        ):
            for split, n in counts2.items():
                examples[split] += n
    for q in sorted(work.glob("quarantine-*.parquet")):
        q.rename(tmp / "quarantine" / q.name)
    timings["transform_write"] = time.perf_counter() - t2
    _remove_tree(work)
    timings["total"] = time.perf_counter() - t0
    return common.report("local", cfg, rows_in, reasons, examples, bounds, features, timings) | {
        "partitions": partitions,
        "workers": workers,
    }


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def read_examples(directory: Path, split: str) -> pa.Table:
    """All example shards of one split as one table (for tests, evaluation and small data)."""
    files = sorted((directory / split).glob("*.parquet"))
    if not files:
        return EXAMPLES.empty_table()
    return pa.concat_tables([pq.read_table(f).cast(EXAMPLES) for f in files])
