"""The local engine: user-hash partitions on disk, processed on all cores with bounded memory."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from tqdm import tqdm

import pipelines.common as common
from pipelines.sources import Inputs, iter_batches, parquet_row_groups
from pipelines.transform import TransformContext, build_examples, user_hashes
from pipelines.validate import validate_searches, validate_users, validate_watches
from recsys.config import PipelineConfig
from recsys.errors import InputError
from recsys.logs import progress_enabled
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

log = logging.getLogger(__name__)
KINDS = {"watch": WATCH_EVENTS, "search": SEARCH_EVENTS, "user": USERS}
_TARGET_PARTITION_BYTES = 48 << 20  # on-disk input per partition; about 10x that in memory while transformed


def partition_of(user_ids: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Partition number of each row: a stable hash of its user id, so a user's rows always meet."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    encoded = user_ids.dictionary_encode()
    per_unique = (user_hashes(encoded.dictionary) % np.uint64(partitions)).astype(np.int32)
    return per_unique[encoded.indices.to_numpy(zero_copy_only=False)]


def _spill_path(directory: Path, kind: str, p: int, suffix: str) -> Path:
    return directory / f"{kind}-{p:05d}-{suffix}.arrow"


def _spill_files(directory: Path, kind: str, p: int) -> list[Path]:
    return sorted(directory.glob(f"{kind}-{p:05d}-*.arrow"))


class _Spill:
    """Per-partition Arrow IPC files that hash-partitioned rows are appended to."""

    def __init__(self, directory: Path, partitions: int, suffix: str) -> None:
        self.directory = directory
        self.partitions = partitions
        self.suffix = suffix
        self.writers: dict[tuple[str, int], ipc.RecordBatchFileWriter] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, p: int) -> Path:
        return _spill_path(self.directory, kind, p, self.suffix)

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


def _read_spill(directory: Path, kind: str, p: int) -> pa.Table:
    """Every spilled slice of one partition and kind, in task order, as one table."""
    tables = []
    for path in _spill_files(directory, kind, p):
        with pa.memory_map(str(path)) as source:
            tables.append(ipc.open_file(source).read_all())
        path.unlink()
    return pa.concat_tables(tables) if tables else KINDS[kind].empty_table()


@dataclass(frozen=True)
class _ReadTask:
    """One slice of one input (a range of Parquet row groups, a whole file, or an in-memory table)."""

    task_id: int
    source: str
    path: Path | None
    row_groups: list[int] | None = None
    table: pa.Table | None = None


_PLAN: dict[str, tuple[str, tuple[str, ...], Callable[..., tuple[pa.Table, pa.Table]]]] = {
    "events": ("watch", WATCH_REQUIRED, validate_watches),
    "searches": ("search", SEARCH_REQUIRED, validate_searches),
    "users": ("user", USERS_REQUIRED, validate_users),
}


def _plan_reads(inputs: Inputs, workers: int) -> list[_ReadTask]:
    """Split the inputs into read tasks: Parquet files by row groups so that every core reads and validates."""
    tasks: list[_ReadTask] = []
    if inputs.movielens_zip is not None:
        from pipelines.movielens import read_movielens

        ml = read_movielens(inputs.movielens_zip)
        for source, table in (("events", ml.events), ("users", ml.users)):
            if table is not None:
                tasks.append(_ReadTask(len(tasks), source, None, table=table))
        return tasks
    for source, path in (("events", inputs.events), ("searches", inputs.searches), ("users", inputs.users)):
        if path is None:
            continue
        groups = parquet_row_groups(path, _PLAN[source][1])
        if groups is None or groups < 2:
            tasks.append(_ReadTask(len(tasks), source, path))
            continue
        for chunk in np.array_split(np.arange(groups), min(groups, workers)):
            tasks.append(_ReadTask(len(tasks), source, path, row_groups=[int(g) for g in chunk]))
    return tasks


def _read_task(args: tuple[_ReadTask, Path, int]) -> tuple[str, int, dict[str, dict[str, int]], int, int]:
    """Pass 1 worker: validate one slice, spill good rows by user hash, quarantine bad rows."""
    task, work, partitions = args
    kind, required, validate = _PLAN[task.source]
    spill = _Spill(work, partitions, suffix=f"{task.task_id:04d}")
    rows = 0
    reasons: dict[str, dict[str, int]] = {}
    lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    quarantine: pq.ParquetWriter | None = None
    if task.table is not None:
        batches: Iterator[pa.RecordBatch] = iter(task.table.to_batches(max_chunksize=1 << 20))
    else:
        assert task.path is not None
        batches = iter_batches(task.path, required, row_groups=task.row_groups)
    try:
        for batch in batches:
            rows += batch.num_rows
            good, bad = validate(batch)
            if bad.num_rows:
                if quarantine is None:
                    quarantine = pq.ParquetWriter(work / f"invalid-{task.task_id:04d}.parquet", QUARANTINE)
                quarantine.write_table(bad)
                common.merge_reason_counts(reasons, common.reason_counts(bad))
            if kind == "watch" and good.num_rows:
                ts = good["ts"].cast(pa.int64()).to_numpy()
                lo, hi = min(lo, int(ts.min())), max(hi, int(ts.max()))
            spill.write(kind, good)
    finally:
        spill.close()
        if quarantine is not None:
            quarantine.close()
    return task.source, rows, reasons, lo, hi


def _partition_inputs(
    inputs: Inputs, work: Path, partitions: int, workers: int, progress: bool
) -> tuple[dict[str, int], dict[str, dict[str, int]], tuple[int, int]]:
    """Pass 1: read and validate every input on all cores, spill good rows by user hash, quarantine bad rows."""
    tasks = _plan_reads(inputs, workers)
    rows_in: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    with _pool(workers) as pool:
        results = pool.map(_read_task, [(t, work, partitions) for t in tasks])
        for source, rows, task_reasons, t_lo, t_hi in tqdm(
            results, total=len(tasks), desc="read+validate", disable=not progress_enabled(progress)
        ):
            rows_in[source] = rows_in.get(source, 0) + rows
            common.merge_reason_counts(reasons, task_reasons)
            lo, hi = min(lo, t_lo), max(hi, t_hi)
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


def _clean_partition(args: tuple[Path, int, int, str]) -> tuple[common.WindowCounts, dict[str, dict[str, int]]]:
    """Phase A: de-duplicate one partition, save the transform's input, count the training window."""
    spill_dir, p, train_end_us, split_mode = args
    watches = _read_spill(spill_dir, "watch", p)
    searches = _read_spill(spill_dir, "search", p)
    users = _read_spill(spill_dir, "user", p)
    clean = common.dedupe_partition(watches, searches, users)
    if clean.quarantine is not None:
        pq.write_table(clean.quarantine, spill_dir / f"quarantine-{p:05d}.parquet")
    events = common.user_events(clean.watches, clean.searches, clean.users)
    with ipc.new_file(str(spill_dir / f"clean-{p:05d}.arrow"), events.schema) as writer:
        writer.write_table(events)
    counts = common.window_counts(clean.watches, clean.searches, clean.users, train_end_us, split_mode)
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
    return common.write_example_shards(examples, out, p)


def _pool(workers: int, ctx: TransformContext | None = None) -> ProcessPoolExecutor:
    kwargs: dict[str, Any] = {"max_workers": workers, "mp_context": mp.get_context("fork")}
    if ctx is not None:
        kwargs.update(initializer=_set_context, initargs=(ctx,))
    return ProcessPoolExecutor(**kwargs)


def choose_partitions(inputs: Inputs, cfg: PipelineConfig, workers: int) -> int:
    """Number of user-hash partitions: the configured one, else enough that each holds ~48 MB of input."""
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
    partitions = choose_partitions(inputs, cfg, workers)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    work = tmp / "_work"
    work.mkdir(parents=True)
    rows_in, reasons, (lo, hi) = _partition_inputs(inputs, work, partitions, workers, progress)
    timings["read_validate_partition"] = time.perf_counter() - t0
    log.info(
        "read+validate: %s rows into %d partitions, %.1fs", rows_in, partitions, timings["read_validate_partition"]
    )

    t1 = time.perf_counter()
    bounds = common.split_boundaries(cfg, lo, hi)
    totals = common.WindowCounts()
    with _pool(workers) as pool:
        jobs = [(work, p, bounds.validation_start_us, cfg.split) for p in range(partitions)]
        for counts, dup_reasons in tqdm(
            pool.map(_clean_partition, jobs),
            total=partitions,
            desc="dedupe+count",
            disable=not progress_enabled(progress),
        ):
            totals.add(counts)
            common.merge_reason_counts(reasons, dup_reasons)
    features = common.fit_features(totals, cfg)
    features.save(tmp / "vocab")
    timings["dedupe_vocabulary"] = time.perf_counter() - t1
    log.info("dedupe+count: vocabularies fitted, %.1fs", timings["dedupe_vocabulary"])

    t2 = time.perf_counter()
    ctx = common.transform_context(features, bounds, cfg)
    for split in SPLITS:
        (tmp / split).mkdir()
    examples = dict.fromkeys(SPLITS, 0)
    with _pool(workers, ctx) as pool:
        jobs2 = [(work, tmp, p) for p in range(partitions)]
        for counts2 in tqdm(
            pool.map(_transform_partition, jobs2),
            total=partitions,
            desc="examples",
            disable=not progress_enabled(progress),
        ):
            for split, n in counts2.items():
                examples[split] += n
    (tmp / "quarantine").mkdir()
    for q in sorted([*work.glob("invalid-*.parquet"), *work.glob("quarantine-*.parquet")]):
        q.rename(tmp / "quarantine" / q.name)
    timings["transform_write"] = time.perf_counter() - t2
    log.info("examples: %s, %.1fs", examples, timings["transform_write"])
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
