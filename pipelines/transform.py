"""The rollback example transform: one pure function from a set of users' events to training examples.

Both engines (local multi-process and Spark) call `build_examples` on tables that hold ALL events of the users
they contain, so the output depends only on each user's own events and is identical whatever the grouping.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.features import FeatureSpace, tokenize
from recsys.schemas import EXAMPLES, OOV_INDEX, SPLITS, TIMESTAMP

SPLIT_COLUMN = "split"
EXAMPLES_WITH_SPLIT = EXAMPLES.append(pa.field(SPLIT_COLUMN, pa.int8(), nullable=False))
_US_PER_DAY = 86_400 * 1_000_000
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class TransformContext:
    """Everything the transform needs besides the events: vocabularies, split boundaries, knobs."""

    features: FeatureSpace
    validation_start_us: int  # end of the training window: example age is measured from here
    test_start_us: int
    max_history: int = 50
    max_search_tokens: int = 50
    max_examples_per_user: int = 20
    min_history: int = 1
    seed: int = 0


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return int(pa.scalar(moment, type=TIMESTAMP).cast(pa.int64()).as_py())


def user_hashes(user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable 32-bit hash per user id (crc32 of its UTF-8 bytes), the same in every process and engine."""
    return np.fromiter((zlib.crc32(u.encode()) for u in user_ids.to_pylist()), dtype=np.uint64, count=len(user_ids))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Well-mixed 64-bit hash of unsigned integers (vectorised), for seeded, order-free sampling."""
    z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and concatenated positions of the half-open ranges [start, end) without a Python loop."""
    lengths = (ends - starts).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return offsets, positions


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int32()))


def _run_starts(keys: list[np.ndarray]) -> np.ndarray:
    """For sorted rows, the index of the first row of each row's run of equal keys."""
    n = len(keys[0])
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = np.ones(n - 1, dtype=bool)
        for k in keys:
            same &= k[1:] == k[:-1]
        new[1:] = ~same
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def empty_examples() -> pa.Table:
    """A zero-row table with the transform's output schema."""
    return EXAMPLES_WITH_SPLIT.empty_table()


def build_examples(events: pa.Table, ctx: TransformContext) -> pa.Table:
    """Rollback examples (one per sampled watch) whose features use only events strictly before the label."""
    events = events.combine_chunks() if events.num_rows else events
    is_watch = pc.is_valid(events["video_id"])
    watches = events.filter(is_watch)
    if watches.num_rows == 0:
        return empty_examples()
    watches = watches.take(
        pc.sort_indices(watches, [("user_id", "ascending"), ("ts", "ascending"), ("video_id", "ascending")])
    )
    user_ids = watches["user_id"].combine_chunks()
    ts = watches["ts"].combine_chunks().cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    videos = ctx.features.videos.lookup(watches["video_id"]).to_numpy()

    encoded = pc.dictionary_encode(user_ids)
    user = encoded.indices.to_numpy().astype(np.int64)  # sorted by user, so codes are ascending
    unique_users = encoded.dictionary
    n = len(ts)
    idx = np.arange(n)
    user_start = _run_starts([user])
    earlier_end = _run_starts([user, ts])  # ties in time are not "earlier"
    n_earlier = earlier_end - user_start

    split = np.where(ts < ctx.validation_start_us, 0, np.where(ts < ctx.test_start_us, 1, 2)).astype(np.int8)
    candidate = n_earlier >= ctx.min_history
    # An out-of-vocabulary label cannot be learned; it stays a (missed) target in validation and test.
    candidate &= (split != 0) | (videos != OOV_INDEX)

    keep = _sample_per_user(candidate, user, split, idx - user_start, unique_users, ctx)
    rows = idx[keep]
    if len(rows) == 0:
        return empty_examples()

    hist_end = earlier_end[rows]
    hist_start = np.maximum(user_start[rows], hist_end - ctx.max_history)
    hist_offsets, hist_pos = _ranges(hist_start, hist_end)
    history = _list_array(hist_offsets, videos[hist_pos])

    search_tokens = _search_tokens(events, unique_users, user[rows], ts[rows], ctx)
    attrs = _user_attributes(watches.take(pa.array(rows)), ctx)
    example_age = np.where(split[rows] == 0, (ctx.validation_start_us - ts[rows]) / _US_PER_DAY, 0.0).astype(np.float32)

    columns = {
        "user_id": user_ids.take(pa.array(rows)),
        "label_ts": pa.array(ts[rows], type=pa.int64()).cast(TIMESTAMP),
        "label": pa.array(videos[rows], type=pa.int32()),
        "history": history,
        "search_tokens": search_tokens,
        "example_age_days": pa.array(example_age),
        **attrs,
        SPLIT_COLUMN: pa.array(split[rows], type=pa.int8()),
    }
    return pa.table(columns, schema=EXAMPLES_WITH_SPLIT)


def _sample_per_user(
    candidate: np.ndarray,
    user: np.ndarray,
    split: np.ndarray,
    position: np.ndarray,
    unique_users: pa.Array,
    ctx: TransformContext,
) -> np.ndarray:
    """Mask keeping at most max_examples_per_user candidates per (user, split), chosen by a seeded hash."""
    seed_mix = splitmix64(np.array([ctx.seed], dtype=np.uint64))[0]
    per_user = user_hashes(unique_users) ^ seed_mix
    # The key depends only on the user id and the watch's position in the user's own timeline.
    key = splitmix64(per_user[user] * np.uint64(1_000_003) + position.astype(np.uint64))
    cand = np.flatnonzero(candidate)
    order = cand[np.lexsort((key[cand], split[cand], user[cand]))]
    group = user[order] * 3 + split[order]
    group_start = _run_starts([group])
    rank = np.arange(len(order)) - group_start
    keep = np.zeros(len(candidate), dtype=bool)
    keep[order[rank < ctx.max_examples_per_user]] = True
    return keep


def _search_tokens(
    events: pa.Table,
    unique_users: pa.Array,
    label_user: np.ndarray,
    label_ts: np.ndarray,
    ctx: TransformContext,
) -> pa.ListArray:
    """The most recent <= max_search_tokens query tokens strictly before each label, oldest first."""
    n_labels = len(label_user)
    searches = events.filter(pc.is_valid(events["query"]))
    if searches.num_rows == 0 or ctx.max_search_tokens == 0:
        return _list_array(np.zeros(n_labels + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    s_user = pc.index_in(searches["user_id"], value_set=unique_users)
    searches = searches.filter(pc.is_valid(s_user))  # users who never watched have no examples
    if searches.num_rows == 0:
        return _list_array(np.zeros(n_labels + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    searches = searches.append_column("_user", pc.index_in(searches["user_id"], value_set=unique_users))
    searches = searches.take(
        pc.sort_indices(searches, [("_user", "ascending"), ("ts", "ascending"), ("query", "ascending")])
    )
    tokens = tokenize(searches["query"].combine_chunks())
    per_query = pc.list_value_length(tokens).to_numpy().astype(np.int64)
    tok_user = np.repeat(searches["_user"].combine_chunks().to_numpy().astype(np.int64), per_query)
    tok_ts = np.repeat(searches["ts"].combine_chunks().cast(TIMESTAMP).cast(pa.int64()).to_numpy(), per_query)
    tok_index = ctx.features.tokens.lookup(tokens.flatten()).to_numpy()

    # Order (user, ts) pairs on one int64 key: user code times the number of distinct times, plus the time rank.
    all_ts, inverse = np.unique(np.concatenate([tok_ts, label_ts]), return_inverse=True)
    width = np.int64(len(all_ts) + 1)
    tok_key = tok_user * width + inverse[: len(tok_ts)]
    label_key = label_user * width + inverse[len(tok_ts) :]
    end = np.searchsorted(tok_key, label_key, side="left")
    user_first = np.searchsorted(tok_key, label_user * width, side="left")
    start = np.maximum(user_first, end - ctx.max_search_tokens)
    offsets, pos = _ranges(start, end)
    return _list_array(offsets, tok_index[pos])


def _user_attributes(label_rows: pa.Table, ctx: TransformContext) -> dict[str, pa.Array]:
    """Categorical indices and normalised numerics of each example's user."""
    fs = ctx.features
    out: dict[str, pa.Array] = {
        name: fs.categorical[name].lookup(label_rows[name]) for name in ("country", "device", "gender")
    }
    out["age"] = pa.array(fs.numeric.normalise_age(label_rows["age"]))
    logged = pc.fill_null(label_rows["logged_in"], False).to_numpy(zero_copy_only=False)
    out["logged_in"] = pa.array(logged.astype(np.float32))
    return out


def split_name(code: int) -> str:
    """Name of a split code as written by the transform."""
    return SPLITS[code]
