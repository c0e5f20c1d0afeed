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
    split_mode: str = "time"  # "time": global boundaries; "leave_last_out": per user, see leave_last_out_split


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
    total = int(offsets[-1])
    # A running sum of steps: +1 inside a range, and a jump to the next range's start at each boundary.
    # Positions index one partition's rows, so int32 suffices and halves the memory traffic.
    steps = np.ones(total, dtype=np.int32)
    nonempty = np.flatnonzero(lengths)
    if len(nonempty):
        first = offsets[nonempty]
        jump = starts[nonempty].astype(np.int64)
        jump[1:] -= ends[nonempty[:-1]].astype(np.int64) - 1
        steps[first] = jump
    return offsets, np.cumsum(steps, dtype=np.int32)


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
    if events.num_rows == 0:
        return empty_examples()
    watch_rows = np.flatnonzero(pc.is_valid(events["video_id"]).to_numpy(zero_copy_only=False))
    if len(watch_rows) == 0:
        return empty_examples()
    encoded = pc.dictionary_encode(events["user_id"].combine_chunks())
    all_users = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    all_ts = events["ts"].combine_chunks().cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    all_videos = ctx.features.videos.lookup(events["video_id"]).to_numpy()

    # Sort watches by (user, time, video index): numeric keys only, ties in time ordered by vocabulary index.
    keys = pa.table({"u": all_users[watch_rows], "t": all_ts[watch_rows], "v": all_videos[watch_rows]})
    order = pc.sort_indices(keys, [("u", "ascending"), ("t", "ascending"), ("v", "ascending")]).to_numpy()
    rows_of_events = watch_rows[order]
    user = all_users[rows_of_events]
    ts = all_ts[rows_of_events]
    videos = all_videos[rows_of_events]

    n = len(ts)
    idx = np.arange(n)
    user_start = _run_starts([user])
    earlier_end = _run_starts([user, ts])  # ties in time are not "earlier"
    n_earlier = earlier_end - user_start

    if ctx.split_mode == "leave_last_out":
        split, window_end = leave_last_out_split(user, ts, user_start, earlier_end)
    else:
        split = np.where(ts < ctx.validation_start_us, 0, np.where(ts < ctx.test_start_us, 1, 2)).astype(np.int8)
        window_end = np.full(n, ctx.validation_start_us, dtype=np.int64)
    candidate = (split >= 0) & (n_earlier >= ctx.min_history)
    # An out-of-vocabulary label cannot be learned; it stays a (missed) target in validation and test.
    candidate &= (split != 0) | (videos != OOV_INDEX)

    keep = _sample_per_user(candidate, user, split, idx - user_start, encoded.dictionary, ctx)
    rows = idx[keep]
    if len(rows) == 0:
        return empty_examples()

    hist_end = earlier_end[rows]
    hist_start = np.maximum(user_start[rows], hist_end - ctx.max_history)
    hist_offsets, hist_pos = _ranges(hist_start, hist_end)
    history = _list_array(hist_offsets, videos[hist_pos])

    search_tokens = _search_tokens(events, all_users, all_ts, user[rows], ts[rows], ctx)
    label_rows = events.take(pa.array(rows_of_events[rows]))
    attrs = _user_attributes(label_rows, ctx)
    example_age = np.where(split[rows] == 0, (window_end[rows] - ts[rows]) / _US_PER_DAY, 0.0).astype(np.float32)

    columns = {
        "user_id": label_rows["user_id"].combine_chunks(),
        "label_ts": pa.array(ts[rows], type=pa.int64()).cast(TIMESTAMP),
        "label": pa.array(videos[rows], type=pa.int32()),
        "history": history,
        "search_tokens": search_tokens,
        "example_age_days": pa.array(example_age),
        **attrs,
        SPLIT_COLUMN: pa.array(split[rows], type=pa.int8()),
    }
    return pa.table(columns, schema=EXAMPLES_WITH_SPLIT)


def _user_last(user_start: np.ndarray) -> np.ndarray:
    """For rows sorted by user, the index of the last row of each row's user."""
    n = len(user_start)
    is_first = user_start == np.arange(n)
    starts = np.flatnonzero(is_first)
    ends = np.append(starts[1:], n) - 1
    return ends[np.cumsum(is_first) - 1]


def leave_last_out_split(
    user: np.ndarray, ts: np.ndarray, user_start: np.ndarray, earlier_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user split codes (-1 = not a label) and training-window ends, for rows sorted by (user, ts, video).

    Tie rule (the same everywhere): the test label is the user's last watch in that order; the validation label
    is the last watch strictly before the test label's time; training labels are strictly before the validation
    label's time (or the test label's, for a user without one). Other watches sharing the test or validation
    label's timestamp are neither labels nor history of it.
    """
    n = len(ts)
    idx = np.arange(n)
    last = _user_last(user_start)
    val = earlier_end[last] - 1  # the row just before the tie run of the last timestamp
    has_val = val >= user_start
    split = np.full(n, -1, dtype=np.int8)
    split[idx == last] = 2
    split[has_val & (idx == val)] = 1
    window_end = np.where(has_val, ts[np.maximum(val, 0)], ts[last])
    split[ts < window_end] = 0
    return split, window_end


def leave_last_out_window_end(user_ids: pa.Array | pa.ChunkedArray, ts: np.ndarray) -> np.ndarray:
    """Each watch's user's training-window end under leave-last-out (see leave_last_out_split)."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    user = user_ids.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((ts, user))
    su, st = user[order], ts[order]
    user_start = _run_starts([su])
    earlier_end = _run_starts([su, st])
    _, window_end = leave_last_out_split(su, st, user_start, earlier_end)
    out = np.empty(len(ts), dtype=np.int64)
    out[order] = window_end
    return out


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
    cand = np.flatnonzero(candidate)
    per_user = user_hashes(unique_users) ^ seed_mix
    # The key depends only on the user id and the watch's position in the user's own timeline, never on
    # which other users share the table, so any grouping of users gives the same choice.
    key = splitmix64(per_user[user[cand]] * np.uint64(1_000_003) + position[cand].astype(np.uint64))
    group = user[cand].astype(np.uint64) * np.uint64(3) + split[cand].astype(np.uint64)
    # One stable argsort over (group, top 32 bits of the key); equal keys fall back to timeline order.
    order = np.argsort((group << np.uint64(32)) | (key >> np.uint64(32)), kind="stable")
    sorted_group = group[order]
    rank = np.arange(len(order)) - _run_starts([sorted_group])
    keep = np.zeros(len(candidate), dtype=bool)
    keep[cand[order[rank < ctx.max_examples_per_user]]] = True
    return keep


def _search_tokens(
    events: pa.Table,
    all_users: np.ndarray,
    all_ts: np.ndarray,
    label_user: np.ndarray,
    label_ts: np.ndarray,
    ctx: TransformContext,
) -> pa.ListArray:
    """The most recent <= max_search_tokens query tokens strictly before each label, oldest first."""
    n_labels = len(label_user)
    search_rows = np.flatnonzero(pc.is_valid(events["query"]).to_numpy(zero_copy_only=False))
    if len(search_rows) == 0 or ctx.max_search_tokens == 0:
        return _list_array(np.zeros(n_labels + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    queries = events["query"].combine_chunks().take(pa.array(search_rows))
    keys = pa.table({"u": all_users[search_rows], "t": all_ts[search_rows], "q": queries})
    order = pc.sort_indices(keys, [("u", "ascending"), ("t", "ascending"), ("q", "ascending")]).to_numpy()
    tokens = tokenize(queries.take(pa.array(order)))
    per_query = pc.list_value_length(tokens).to_numpy().astype(np.int64)
    tok_user = np.repeat(all_users[search_rows[order]], per_query)
    tok_ts = np.repeat(all_ts[search_rows[order]], per_query)
    tok_index = ctx.features.tokens.lookup(tokens.flatten()).to_numpy()

    # Order (user, ts) pairs on one int64 key: user code times the number of distinct times, plus the time rank.
    times, inverse = np.unique(np.concatenate([tok_ts, label_ts]), return_inverse=True)
    width = np.int64(len(times) + 1)
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
