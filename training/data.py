"""Training input: example shards (Parquet) -> padded feature batches, shuffled deterministically per epoch.

Shuffling is done here (seeded by epoch) rather than by a tf.data shuffle buffer, so a resumed run can skip
exactly the batches it already consumed: nothing is lost or repeated after a kill.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.config import TrainConfig
from recsys.errors import InputError
from recsys.features import FeatureSpace
from recsys.model import PAD, Cardinalities
from recsys.schemas import EXAMPLES, SPLITS

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class ExampleSet:
    """A pipeline output directory: example shards per split, vocabularies and the knobs that made them."""

    directory: Path
    max_history: int
    max_tokens: int
    features: FeatureSpace

    @classmethod
    def open(cls, directory: Path) -> ExampleSet:
        """Check the layout of a `recsys pipeline` output and read its report and vocabularies."""
        report_path = directory / "report.json"
        if not report_path.is_file():
            raise InputError(f"{directory}: not a pipeline output (no report.json)")
        for split in SPLITS:
            if not (directory / split).is_dir():
                raise InputError(f"{directory}: missing the {split}/ directory")
        config = json.loads(report_path.read_text())["config"]
        return cls(
            directory=directory,
            max_history=int(config["max_history"]),
            max_tokens=max(int(config["max_search_tokens"]), 1),
            features=FeatureSpace.load(directory / "vocab"),
        )

    @property
    def sizes(self) -> Cardinalities:
        """Embedding table sizes from the vocabularies."""
        fs = self.features
        return Cardinalities(
            videos=len(fs.videos),
            tokens=len(fs.tokens),
            country=len(fs.categorical["country"]),
            device=len(fs.categorical["device"]),
            gender=len(fs.categorical["gender"]),
        )

    def files(self, split: str) -> list[Path]:
        """The split's shards in a stable order."""
        return sorted((self.directory / split).glob("*.parquet"))

    def count(self, split: str) -> int:
        """Number of examples in a split (from Parquet metadata, without reading the data)."""
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files(split))

    def read(self, split: str, limit: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """A whole split (or its first `limit` rows, or some columns) as one table, for evaluation."""
        schema = EXAMPLES if columns is None else pa.schema([EXAMPLES.field(c) for c in columns])
        tables, rows = [], 0
        for f in self.files(split):
            table = pq.read_table(f, columns=columns).cast(schema)
            tables.append(table)
            rows += table.num_rows
            if limit is not None and rows >= limit:
                break
        out = pa.concat_tables(tables) if tables else schema.empty_table()
        return out.slice(0, limit) if limit is not None else out

    def label_counts(self) -> np.ndarray:
        """Training label frequency per video index (the popularity baseline and the logQ prior)."""
        counts = np.zeros(self.sizes.videos, dtype=np.int64)
        for f in self.files("train"):
            labels = pq.read_table(f, columns=["label"])["label"].to_numpy()
            counts += np.bincount(labels, minlength=len(counts))
        return counts


def pad_lists(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A list<int32> column as an int32 matrix [rows, width], keeping the LAST width items, padded with PAD."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    arr = arr.cast(pa.list_(pa.int32()))
    n = len(arr)
    out = np.full((n, width), PAD, dtype=np.int32)
    offsets = arr.offsets.to_numpy()
    lengths = np.diff(offsets)
    take = np.minimum(lengths, width)
    values = arr.values.to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(n), take)
    # Position within the kept tail of each list: the last `take` items, left-aligned in the output.
    start = offsets[1:] - take
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    out[row, within] = values[np.repeat(start, take) + within]
    return out


def to_batch(table: pa.Table, max_history: int, max_tokens: int) -> Batch:
    """Feature arrays (and the label) of a table of examples, as the tower's signature expects."""
    return {
        "history": pad_lists(table["history"], max_history),
        "search_tokens": pad_lists(table["search_tokens"], max_tokens),
        "country": table["country"].to_numpy().astype(np.int32),
        "device": table["device"].to_numpy().astype(np.int32),
        "gender": table["gender"].to_numpy().astype(np.int32),
        "example_age_days": table["example_age_days"].to_numpy().astype(np.float32),
        "age": table["age"].to_numpy().astype(np.float32),
        "logged_in": table["logged_in"].to_numpy().astype(np.float32),
        "label": table["label"].to_numpy().astype(np.int32),
    }


def batches_per_epoch(rows: int, batch_size: int) -> int:
    """Full batches in an epoch (the ragged last batch is dropped so every step has the same shape)."""
    return rows // batch_size


def iterate_batches(
    files: list[Path],
    batch_size: int,
    max_history: int,
    max_tokens: int,
    *,
    seed: int,
    epoch: int,
    window: int,
    skip_batches: int = 0,
) -> Iterator[Batch]:
    """Shuffled full batches of one epoch; the same (seed, epoch) always yields the same batches in order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(files))
    buffer: list[pa.Table] = []
    buffered = 0
    emitted = 0

    def drain(final: bool) -> Iterator[pa.Table]:
        nonlocal buffer, buffered
        table = pa.concat_tables(buffer)
        table = table.take(pa.array(rng.permutation(table.num_rows)))
        usable = table.num_rows if final else (table.num_rows // batch_size) * batch_size
        for start in range(0, usable - batch_size + 1, batch_size):
            yield table.slice(start, batch_size)
        rest = table.slice((usable // batch_size) * batch_size)
        buffer, buffered = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    for i in order:
        pf = pq.ParquetFile(files[i])
        for rg in range(pf.num_row_groups):
            chunk = pf.read_row_group(rg).cast(EXAMPLES)
            buffer.append(chunk)
            buffered += chunk.num_rows
            if buffered >= window:
                for piece in drain(final=False):
                    if emitted >= skip_batches:
                        yield to_batch(piece, max_history, max_tokens)
                    emitted += 1
    if buffered:
        for piece in drain(final=True):
            if emitted >= skip_batches:
                yield to_batch(piece, max_history, max_tokens)
            emitted += 1


def training_batches(data: ExampleSet, cfg: TrainConfig, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
    """One epoch of a training config's shuffled train batches (what the training job and its benchmarks step on)."""
    return iterate_batches(
        data.files("train"),
        cfg.batch_size,
        data.max_history,
        data.max_tokens,
        seed=cfg.seed,
        epoch=epoch,
        window=cfg.shuffle_window,
        skip_batches=skip_batches,
    )


def with_next(batches: Iterator[Batch]) -> Iterator[tuple[Batch, Batch | None]]:
    """Each batch with the one after it (None for the last), so a step can start mining its successor's head."""
    current = next(batches, None)
    while current is not None:
        following = next(batches, None)
        yield current, following
        current = following


def history_exclusion(batch: Batch) -> np.ndarray:
    """Per-example ids to exclude from retrieval (the watch history), padded with PAD."""
    return batch["history"]


def known_label_mask(table: pa.Table) -> np.ndarray:
    """True for examples whose label is a real video (not OOV)."""
    return pc.greater(table["label"], 0).to_numpy(zero_copy_only=False)
