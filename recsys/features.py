"""Featurisation shared by the pipeline, training and serving: tokenizer, vocabularies, numeric transforms."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.schemas import OOV_INDEX, OOV_TOKEN, VIDEO_VOCAB, VOCAB

# Splitting on anything that is not a letter or digit keeps "Cat-Videos!" and "cat videos" the same tokens.
_TOKEN_SPLIT = r"[^\p{L}\p{N}]+"

CATEGORICAL_FEATURES = ("country", "device", "gender")
VOCAB_FILES = {"videos": "videos.parquet", "tokens": "tokens.parquet"} | {
    name: f"{name}.parquet" for name in CATEGORICAL_FEATURES
}
NUMERIC_STATS_FILE = "numeric.json"


def tokenize(queries: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Lower-cased alphanumeric tokens of each query (empty list for a null query)."""
    lowered = pc.utf8_lower(queries)
    parts = pc.split_pattern_regex(lowered, pattern=_TOKEN_SPLIT)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    parts = pc.fill_null(parts, pa.scalar([], type=parts.type))
    flat = parts.flatten()
    keep = pc.not_equal(pc.utf8_length(flat), 0)
    # Rebuild the list offsets after dropping empty strings (leading/trailing separators).
    parent = pc.list_parent_indices(parts)
    kept_parent = pc.filter(parent, keep).to_numpy(zero_copy_only=False)
    counts = np.bincount(kept_parent, minlength=len(parts)).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.filter(flat, keep))


def count_values(values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Counts of each non-null value as a (value, count) table, mergeable across partitions."""
    counted = pc.value_counts(pc.drop_null(values))
    if isinstance(counted, pa.ChunkedArray):
        counted = counted.combine_chunks()
    return pa.table({"value": counted.field("values").cast(pa.string()), "count": counted.field("counts")})


def merge_counts(tables: list[pa.Table]) -> pa.Table:
    """Sum (value, count) tables from several partitions."""
    if not tables:
        return pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    merged = pa.concat_tables(tables).group_by("value").aggregate([("count", "sum")])
    return merged.rename_columns(["value", "count"])


@dataclass(frozen=True)
class Vocabulary:
    """Value -> index map; index 0 is out-of-vocabulary, known values are ordered by count desc then value."""

    values: pa.Array  # string, position i holds the value of index i + 1
    counts: pa.Array  # int64, aligned with values
    oov_count: int = 0

    @classmethod
    def from_counts(cls, counts: pa.Table, min_count: int = 1) -> Vocabulary:
        """Build from a (value, count) table, folding values rarer than min_count into OOV."""
        keep = pc.greater_equal(counts["count"], min_count)
        kept = counts.filter(keep)
        order = pc.sort_indices(kept, sort_keys=[("count", "descending"), ("value", "ascending")])
        kept = kept.take(order)
        dropped = pc.sum(counts.filter(pc.invert(keep))["count"]).as_py() or 0
        return cls(
            values=kept["value"].combine_chunks().cast(pa.string()),
            counts=kept["count"].combine_chunks().cast(pa.int64()),
            oov_count=int(dropped),
        )

    def __len__(self) -> int:
        """Number of indices including OOV."""
        return len(self.values) + 1

    def lookup(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Index of each value (OOV_INDEX for unknown or null), as int32."""
        found = pc.index_in(values, value_set=self.values)
        if isinstance(found, pa.ChunkedArray):
            found = found.combine_chunks()
        return pc.fill_null(pc.add(found, 1), OOV_INDEX).cast(pa.int32())

    def to_table(self, value_column: str = "value") -> pa.Table:
        """Vocabulary file contents: index, value, count (row 0 is OOV)."""
        schema = VIDEO_VOCAB if value_column == "video_id" else VOCAB
        n = len(self.values)
        return pa.table(
            [
                pa.array(np.arange(n + 1, dtype=np.int32)),
                pa.concat_arrays([pa.array([OOV_TOKEN], pa.string()), self.values]),
                pa.concat_arrays([pa.array([self.oov_count], pa.int64()), self.counts]),
            ],
            schema=schema,
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> Vocabulary:
        """Inverse of to_table; checks that indices are 0..n with OOV first."""
        value_col = table.column_names[1]
        index = table["index"].to_numpy()
        if len(index) == 0 or not np.array_equal(index, np.arange(len(index))):
            raise ValueError("vocabulary indices must be 0..n in order")
        if table[value_col][0].as_py() != OOV_TOKEN:
            raise ValueError("vocabulary row 0 must be the OOV entry")
        return cls(
            values=table[value_col].combine_chunks()[1:],
            counts=table["count"].combine_chunks()[1:],
            oov_count=int(table["count"][0].as_py()),
        )


@dataclass(frozen=True)
class NumericStats:
    """Normalisation of the numeric user features, fitted on the training window's users."""

    age_mean: float = 0.0
    age_std: float = 1.0

    @classmethod
    def fit(cls, ages: pa.Array | pa.ChunkedArray) -> NumericStats:
        """Mean and standard deviation of the non-null ages (identity when there are none)."""
        arr = pc.drop_null(ages).to_numpy(zero_copy_only=False).astype(np.float64)
        arr = arr[np.isfinite(arr)]
        if len(arr) == 0:
            return cls()
        std = float(arr.std())
        return cls(age_mean=float(arr.mean()), age_std=std if std > 0 else 1.0)

    def normalise_age(self, ages: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Standardised age, clipped to +-5, with 0 (the mean) for a missing age."""
        arr = pc.fill_null(ages, float("nan")).to_numpy(zero_copy_only=False).astype(np.float64)
        z = np.clip((arr - self.age_mean) / self.age_std, -5.0, 5.0)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)


@dataclass(frozen=True)
class FeatureSpace:
    """Every vocabulary and statistic that featurisation needs: saved with the examples, loaded by serving."""

    videos: Vocabulary
    tokens: Vocabulary
    categorical: dict[str, Vocabulary] = field(default_factory=dict)
    numeric: NumericStats = NumericStats()

    def save(self, directory: Path) -> None:
        """Write the vocabularies as Parquet files and the numeric statistics as JSON."""
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.videos.to_table("video_id"), directory / VOCAB_FILES["videos"])
        pq.write_table(self.tokens.to_table(), directory / VOCAB_FILES["tokens"])
        for name in CATEGORICAL_FEATURES:
            pq.write_table(self.categorical[name].to_table(), directory / VOCAB_FILES[name])
        stats = {"age": {"mean": self.numeric.age_mean, "std": self.numeric.age_std}}
        (directory / NUMERIC_STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> FeatureSpace:
        """Read what save() wrote."""

        def vocab(name: str) -> Vocabulary:
            return Vocabulary.from_table(pq.read_table(directory / VOCAB_FILES[name]))

        stats = json.loads((directory / NUMERIC_STATS_FILE).read_text())
        return cls(
            videos=vocab("videos"),
            tokens=vocab("tokens"),
            categorical={name: vocab(name) for name in CATEGORICAL_FEATURES},
            numeric=NumericStats(age_mean=stats["age"]["mean"], age_std=stats["age"]["std"]),
        )


def padded_strings(rows: list[list[str]], limit: int) -> np.ndarray:
    """The last `limit` items of each row as an object matrix [B, max(1, longest)], "" padding at the end.

    This is the layout of the user tower signature's sequence inputs (oldest first, "" = padding), so that
    serving and every other caller of the exported tower build them one way.
    """
    kept = [row[-limit:] if limit > 0 else [] for row in rows]
    width = max(1, max((len(row) for row in kept), default=0))
    out = np.full((len(kept), width), "", dtype=object)
    for i, row in enumerate(kept):  # one slice assignment per request; no loop over a request's items
        out[i, : len(row)] = row
    return out


def query_tokens(queries: list[str]) -> list[str]:
    """The tokens of several search queries in order, as `tokenize` makes them for the pipeline."""
    if not queries:
        return []
    tokens: list[str] = tokenize(pa.array(queries, pa.string())).flatten().to_pylist()
    return tokens
