"""Pieces both engines share: split boundaries, vocabulary fitting, per-partition cleaning and the report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.transform import SPLIT_COLUMN, TransformContext, leave_last_out_window_end, to_us
from pipelines.validate import exact_duplicates, quarantine_rows
from recsys.config import PipelineConfig
from recsys.errors import InputError
from recsys.features import (
    CATEGORICAL_FEATURES,
    FeatureSpace,
    NumericStats,
    Vocabulary,
    count_values,
    merge_counts,
    tokenize,
)
from recsys.publish import publish_file
from recsys.schemas import EXAMPLES, SEARCH_EVENTS, SPLITS, TIMESTAMP, USER_EVENTS, USERS, WATCH_EVENTS

WATCH_KEYS = [f.name for f in WATCH_EVENTS]
SEARCH_KEYS = [f.name for f in SEARCH_EVENTS]


@dataclass(frozen=True)
class Boundaries:
    """Label-time split boundaries (UTC microseconds) and the observed time range."""

    validation_start_us: int
    test_start_us: int
    min_ts_us: int
    max_ts_us: int

    def as_dict(self) -> dict[str, str]:
        """ISO strings for the report."""

        def iso(us: int) -> str:
            return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()

        return {
            "validation_start": iso(self.validation_start_us),
            "test_start": iso(self.test_start_us),
            "min_ts": iso(self.min_ts_us),
            "max_ts": iso(self.max_ts_us),
        }


def split_boundaries(cfg: PipelineConfig, min_ts_us: int, max_ts_us: int) -> Boundaries:
    """Explicit boundaries from the config, else the last test_days for test and the validation_days before."""
    day = 86_400 * 1_000_000
    test = to_us(cfg.test_start) if cfg.test_start else max_ts_us - int(cfg.test_days * day)
    validation = to_us(cfg.validation_start) if cfg.validation_start else test - int(cfg.validation_days * day)
    if validation > test:
        raise InputError("validation_start falls after test_start")
    return Boundaries(validation, test, min_ts_us, max_ts_us)


@dataclass
class WindowCounts:
    """Training-window statistics of one partition, summed across partitions to fit the vocabularies."""

    videos: list[pa.Table] = field(default_factory=list)
    tokens: list[pa.Table] = field(default_factory=list)
    categorical: dict[str, list[pa.Table]] = field(default_factory=lambda: {c: [] for c in CATEGORICAL_FEATURES})
    ages: list[np.ndarray] = field(default_factory=list)

    def add(self, other: WindowCounts) -> None:
        """Accumulate another partition's counts."""
        self.videos += other.videos
        self.tokens += other.tokens
        for name in CATEGORICAL_FEATURES:
            self.categorical[name] += other.categorical[name]
        self.ages += other.ages


def window_counts(
    watches: pa.Table, searches: pa.Table, users: pa.Table, train_end_us: int, split_mode: str = "time"
) -> WindowCounts:
    """Counts over the training window only: videos watched, search tokens, and the training users' attributes.

    The window ends at train_end_us for the time split, and per user (before its validation label) for
    leave-last-out; the partition must hold every watch of its users.
    """
    if split_mode == "leave_last_out":
        w_ts = watches["ts"].combine_chunks().cast(pa.int64()).to_numpy()
        w_end = leave_last_out_window_end(watches["user_id"], w_ts)
        train_w = watches.filter(pa.array(w_ts < w_end))
        # A user's searches share the window end of its watches; users who never watched have no window.
        first = pc.fill_null(pc.index_in(searches["user_id"], value_set=watches["user_id"]), -1)
        first_row = first.to_numpy(zero_copy_only=False).astype(np.int64)
        s_ts = searches["ts"].combine_chunks().cast(pa.int64()).to_numpy()
        s_end = np.where(first_row >= 0, w_end[np.maximum(first_row, 0)], np.iinfo(np.int64).min)
        train_s = searches.filter(pa.array(s_ts < s_end))
    else:
        end = pa.scalar(train_end_us, pa.int64()).cast(TIMESTAMP)
        train_w = watches.filter(pc.less(watches["ts"], end))
        train_s = searches.filter(pc.less(searches["ts"], end))
    counts = WindowCounts(videos=[count_values(train_w["video_id"])])
    counts.tokens.append(count_values(tokenize(train_s["query"].combine_chunks()).flatten()))
    active = pc.unique(train_w["user_id"])
    train_users = users.filter(pc.is_in(users["user_id"], value_set=active))
    for name in CATEGORICAL_FEATURES:
        counts.categorical[name].append(count_values(train_users[name]))
    counts.ages.append(train_users["age"].to_numpy(zero_copy_only=False).astype(np.float64))
    return counts


def fit_features(counts: WindowCounts, cfg: PipelineConfig) -> FeatureSpace:
    """Vocabularies (min counts applied) and numeric statistics from the summed training-window counts."""
    ages = np.concatenate(counts.ages) if counts.ages else np.zeros(0)
    ages = np.sort(ages[np.isfinite(ages)])  # sorted so the float sums do not depend on partitioning
    return FeatureSpace(
        videos=Vocabulary.from_counts(merge_counts(counts.videos), cfg.video_min_count),
        tokens=Vocabulary.from_counts(merge_counts(counts.tokens), cfg.token_min_count),
        categorical={
            name: Vocabulary.from_counts(merge_counts(counts.categorical[name]), cfg.category_min_count)
            for name in CATEGORICAL_FEATURES
        },
        numeric=NumericStats.fit(pa.array(ages, pa.float64())),
    )


def transform_context(features: FeatureSpace, bounds: Boundaries, cfg: PipelineConfig) -> TransformContext:
    """The transform's context from the fitted features, the boundaries and the config knobs."""
    return TransformContext(
        features=features,
        validation_start_us=bounds.validation_start_us,
        test_start_us=bounds.test_start_us,
        max_history=cfg.max_history,
        max_search_tokens=cfg.max_search_tokens,
        max_examples_per_user=cfg.max_examples_per_user,
        min_history=cfg.min_history,
        seed=cfg.seed,
        split_mode=cfg.split,
    )


@dataclass
class CleanPartition:
    """One user-complete partition after de-duplication, ready for the transform."""

    watches: pa.Table
    searches: pa.Table
    users: pa.Table
    quarantine: pa.Table | None


def dedupe_partition(watches: pa.Table, searches: pa.Table, users: pa.Table) -> CleanPartition:
    """Remove exact duplicate events and repeated user rows (first kept); the removed rows go to quarantine."""
    quarantined = []
    w_dup = exact_duplicates(watches, WATCH_KEYS)
    s_dup = exact_duplicates(searches, SEARCH_KEYS)
    # A user row is "first" by (its content) order, so both engines keep the same one whatever the file order.
    users = users.take(pc.sort_indices(users, [(f.name, "ascending") for f in USERS]))
    u_dup = exact_duplicates(users, ["user_id"])
    for name, table, dup, reason in (
        ("events", watches, w_dup, "duplicate"),
        ("searches", searches, s_dup, "duplicate"),
        ("users", users, u_dup, "duplicate_user_id"),
    ):
        if dup.any():
            quarantined.append(quarantine_rows(name, np.array([reason] * len(dup), dtype=object), table, dup))
    return CleanPartition(
        watches=watches.filter(pa.array(~w_dup)),
        searches=searches.filter(pa.array(~s_dup)),
        users=users.filter(pa.array(~u_dup)),
        quarantine=pa.concat_tables(quarantined) if quarantined else None,
    )


def user_events(watches: pa.Table, searches: pa.Table, users: pa.Table) -> pa.Table:
    """The transform's input: watches and searches of the same users in one table, user attributes joined."""
    n_w, n_s = watches.num_rows, searches.num_rows
    events = pa.table(
        {
            "user_id": pa.concat_arrays([watches["user_id"].combine_chunks(), searches["user_id"].combine_chunks()]),
            "ts": pa.concat_arrays([watches["ts"].combine_chunks(), searches["ts"].combine_chunks()]),
            "video_id": pa.concat_arrays([watches["video_id"].combine_chunks(), pa.nulls(n_s, pa.string())]),
            "query": pa.concat_arrays([pa.nulls(n_w, pa.string()), searches["query"].combine_chunks()]),
        }
    )
    # users holds at most one row per id (dedupe_partition), so a lookup replaces a join.
    at = pc.index_in(events["user_id"], value_set=users["user_id"])
    attrs = users.drop_columns(["user_id"]).take(at)
    for name in attrs.column_names:
        events = events.append_column(name, attrs[name])
    return events.select([f.name for f in USER_EVENTS]).cast(USER_EVENTS)


def write_parquet_atomic(table: pa.Table, path: Path, **options: Any) -> None:
    """Publish a Parquet file atomically, so a retried task replaces it whole."""
    with publish_file(path) as partial:
        pq.write_table(table, partial, **options)


def write_example_shards(examples: pa.Table, out: Path, part: int) -> dict[str, int]:
    """Route the transform's rows to one shard per split (`out/<split>/part-NNNNN.parquet`); rows per split."""
    codes = examples[SPLIT_COLUMN].to_numpy()
    counts: dict[str, int] = {}
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(codes == code)
        counts[split] = len(rows)
        if len(rows):
            shard = examples.take(pa.array(rows)).select(EXAMPLES.names).cast(EXAMPLES)
            # Dictionary pages only pay off for the repeated user ids; on the id lists they double the write time.
            write_parquet_atomic(
                shard, out / split / f"part-{part:05d}.parquet", compression="lz4", use_dictionary=["user_id"]
            )
    return counts


def reason_counts(quarantine: pa.Table | None) -> dict[str, dict[str, int]]:
    """Quarantined rows per source and reason."""
    out: dict[str, Counter[str]] = {}
    if quarantine is None or quarantine.num_rows == 0:
        return {}
    grouped = quarantine.group_by(["source", "reason"]).aggregate([("row", "count")])
    for source, reason, count in zip(
        grouped["source"].to_pylist(),
        grouped["reason"].to_pylist(),
        grouped["row_count"].to_pylist(),
        strict=True,
    ):
        out.setdefault(source, Counter())[reason] += count
    return {k: dict(v) for k, v in out.items()}


def merge_reason_counts(into: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    """Add per-source, per-reason counts in place."""
    for source, reasons in more.items():
        bucket = into.setdefault(source, {})
        for reason, count in reasons.items():
            bucket[reason] = bucket.get(reason, 0) + count


def report(
    engine: str,
    cfg: PipelineConfig,
    rows_in: dict[str, int],
    quarantined: dict[str, dict[str, int]],
    examples: dict[str, int],
    bounds: Boundaries,
    features: FeatureSpace,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The job report written to report.json."""
    return {
        "engine": engine,
        "rows_in": rows_in,
        "quarantined": quarantined,
        "quarantined_total": sum(sum(r.values()) for r in quarantined.values()),
        "examples": examples,
        "examples_total": sum(examples.values()),
        # Under leave-last-out the boundaries are per user; only the observed time range is global.
        "split": bounds.as_dict()
        if cfg.split == "time"
        else {**bounds.as_dict(), "validation_start": None, "test_start": None, "mode": "leave_last_out"},
        "vocab_sizes": {
            "videos": len(features.videos),
            "tokens": len(features.tokens),
            **{name: len(features.categorical[name]) for name in CATEGORICAL_FEATURES},
        },
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": cfg.model_dump(mode="json"),
    }
