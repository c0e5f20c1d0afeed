"""The rollback transform against a naive reference: features only from events strictly before the label."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipelines.transform import TransformContext, build_examples, to_us
from recsys.features import FeatureSpace, NumericStats, Vocabulary, count_values, tokenize
from recsys.schemas import OOV_INDEX, USER_EVENTS

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORDS = ["cat", "dog", "jazz", "news", "chess"]


def make_events(watches: list[tuple[str, int, str]], searches: list[tuple[str, int, str]]) -> pa.Table:
    """USER_EVENTS table from (user, minute, video) watches and (user, minute, query) searches."""
    rows = [(u, m, v, None) for u, m, v in watches] + [(u, m, None, q) for u, m, q in searches]
    n = len(rows)
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "ts": [T0 + timedelta(minutes=r[1]) for r in rows],
            "video_id": [r[2] for r in rows],
            "query": [r[3] for r in rows],
            "country": ["US"] * n,
            "device": ["tv"] * n,
            "gender": ["F"] * n,
            "age": [30.0] * n,
            "logged_in": [True] * n,
        },
        schema=USER_EVENTS,
    )


def feature_space(events: pa.Table) -> FeatureSpace:
    return FeatureSpace(
        videos=Vocabulary.from_counts(count_values(events["video_id"])),
        tokens=Vocabulary.from_counts(count_values(tokenize(events["query"].combine_chunks()).flatten())),
        categorical={k: Vocabulary.from_counts(count_values(events[k])) for k in ("country", "device", "gender")},
        numeric=NumericStats.fit(events["age"]),
    )


def context(events: pa.Table, val_minute: int, test_minute: int, **knobs: int) -> TransformContext:
    return TransformContext(
        features=feature_space(events),
        validation_start_us=to_us(T0 + timedelta(minutes=val_minute)),
        test_start_us=to_us(T0 + timedelta(minutes=test_minute)),
        **knobs,
    )


def reference(
    watches: list[tuple[str, int, str]],
    searches: list[tuple[str, int, str]],
    ctx: TransformContext,
) -> dict[tuple[str, int, int], tuple[list[int], list[int]]]:
    """Obviously-correct (slow) history and search tokens for every possible label."""
    vocab = ctx.features.videos
    tok_vocab = ctx.features.tokens

    def index(video: str) -> int:
        return int(vocab.lookup(pa.array([video]))[0].as_py())

    out = {}
    for user, minute, video in watches:
        # Watches sharing a timestamp are ordered by vocabulary index (the documented tie order).
        earlier = sorted((m, index(v)) for u, m, v in watches if u == user and m < minute)
        hist = [i for _, i in earlier][-ctx.max_history :]
        queries = sorted((m, q) for u, m, q in searches if u == user and m < minute)
        toks: list[int] = []
        for _, q in queries:
            toks += [int(x) for x in tok_vocab.lookup(tokenize(pa.array([q])).flatten()).to_pylist()]
        toks = toks[-ctx.max_search_tokens :] if ctx.max_search_tokens else []
        label = index(video)
        out.setdefault((user, minute, label), []).append((hist, toks))
    return out


watch_strategy = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 30), st.sampled_from(["a", "b", "c", "d"])),
    min_size=1,
    max_size=40,
    unique=True,
)
search_strategy = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3", "u4"]),
        st.integers(0, 30),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
    ),
    max_size=15,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(watches=[("u1", 0, "b"), ("u1", 0, "a"), ("u2", 0, "b"), ("u1", 1, "c")], searches=[], max_history=5)
@given(watches=watch_strategy, searches=search_strategy, max_history=st.integers(1, 5))
def test_features_use_only_strictly_earlier_events(watches, searches, max_history):
    events = make_events(watches, searches)
    ctx = context(
        events,
        20,
        25,
        max_history=max_history,
        max_search_tokens=4,
        max_examples_per_user=1000,
        min_history=0,
    )
    out = build_examples(events, ctx)
    expected = reference(watches, searches, ctx)
    assert out.num_rows == len(watches)
    for row in out.to_pylist():
        minute = int((row["label_ts"] - T0).total_seconds() // 60)
        key = (row["user_id"], minute, row["label"])
        assert (row["history"], row["search_tokens"]) in expected[key]
        # Nothing at or after the label time: every history item has an earlier watch.
        earlier_videos = {v for u, m, v in watches if u == row["user_id"] and m < minute}
        assert len(row["history"]) <= min(max_history, len(earlier_videos) * 31)
        if not earlier_videos:
            assert row["history"] == []


def test_ties_are_not_earlier_and_splits_follow_label_time():
    watches = [("u", 0, "a"), ("u", 5, "b"), ("u", 5, "c"), ("u", 10, "a"), ("u", 20, "d")]
    searches = [("u", 5, "jazz cat"), ("u", 4, "chess")]
    events = make_events(watches, searches)
    ctx = context(events, 10, 20, min_history=1)
    out = build_examples(events, ctx).to_pylist()
    v = ctx.features.videos
    idx = {name: int(v.lookup(pa.array([name]))[0].as_py()) for name in "abcd"}
    by_minute = {}
    for r in out:
        by_minute.setdefault(int((r["label_ts"] - T0).total_seconds() // 60), []).append(r)
    assert sorted(by_minute) == [5, 10, 20]  # minute 0 has no earlier watch (min_history=1)
    for r in by_minute[5]:
        assert r["history"] == [idx["a"]]  # the other watch at minute 5 is a tie, not history
        assert len(r["search_tokens"]) == 1  # only "chess" (minute 4); "jazz cat" is a tie
        assert r["split"] == 0
        assert r["example_age_days"] == pytest.approx(5 / 1440)
    assert by_minute[10][0]["history"] == [idx["a"], idx["b"], idx["c"]]
    assert by_minute[10][0]["split"] == 1 and by_minute[10][0]["example_age_days"] == 0
    assert by_minute[20][0]["split"] == 2
    assert len(by_minute[20][0]["search_tokens"]) == 3


def test_history_keeps_most_recent_oldest_first():
    watches = [("u", m, f"v{m}") for m in range(10)]
    events = make_events(watches, [])
    ctx = context(events, 100, 200, max_history=3)
    rows = {int((r["label_ts"] - T0).total_seconds() // 60): r for r in build_examples(events, ctx).to_pylist()}
    lookup = ctx.features.videos.lookup
    assert rows[9]["history"] == lookup(pa.array(["v6", "v7", "v8"])).to_pylist()


def test_cap_per_user_and_split_is_deterministic_and_seeded():
    watches = [(f"u{u}", m, f"v{(u * 7 + m) % 13}") for u in range(5) for m in range(60)]
    events = make_events(watches, [])
    ctx = context(events, 40, 50, max_examples_per_user=4)
    out = build_examples(events, ctx)
    per = Counter(zip(out["user_id"].to_pylist(), out["split"].to_pylist(), strict=True))
    assert set(per.values()) == {4}  # every user has more than 4 candidates in each split
    assert len(per) == 15
    again = build_examples(events, ctx)
    assert out.equals(again)
    other = build_examples(events, context(events, 40, 50, max_examples_per_user=4, seed=7))
    assert not out.equals(other)
    # Grouping must not matter: one user at a time gives the same rows (what Spark does).
    single = pa.concat_tables(
        build_examples(events.filter(pa.compute.equal(events["user_id"], f"u{u}")), ctx) for u in range(5)
    )
    assert single.sort_by([("user_id", "ascending"), ("label_ts", "ascending")]).equals(
        out.sort_by([("user_id", "ascending"), ("label_ts", "ascending")])
    )


def test_oov_labels_are_skipped_in_train_only():
    watches = [("u", 0, "a"), ("u", 1, "rare"), ("u", 2, "a"), ("u", 30, "new")]
    events = make_events(watches, [])
    fs = feature_space(events.filter(pa.compute.not_equal(events["video_id"], "rare")))
    fs_no_new = FeatureSpace(
        videos=Vocabulary.from_counts(count_values(pa.array(["a", "a"]))),
        tokens=fs.tokens,
        categorical=fs.categorical,
        numeric=fs.numeric,
    )
    ctx = TransformContext(fs_no_new, to_us(T0 + timedelta(minutes=20)), to_us(T0 + timedelta(minutes=25)))
    out = build_examples(events, ctx)
    labels = dict(zip(out["label_ts"].to_pylist(), out["label"].to_pylist(), strict=True))
    assert T0 + timedelta(minutes=1) not in labels  # OOV label in train: not an example
    assert labels[T0 + timedelta(minutes=30)] == OOV_INDEX  # OOV label in test: kept, a miss for any model
    assert out.filter(pa.compute.equal(out["label_ts"], pa.scalar(T0 + timedelta(minutes=2)))).to_pylist()[0][
        "history"
    ] == [1, OOV_INDEX]


def test_empty_and_search_only_inputs_give_empty_output():
    events = make_events([], [("u", 1, "jazz")])
    ctx = context(make_events([("x", 0, "a")], [("x", 0, "jazz")]), 10, 20)
    assert build_examples(events, ctx).num_rows == 0
    assert build_examples(events.slice(0, 0), ctx).num_rows == 0


def test_user_attributes_are_featurised():
    events = make_events([("u", 0, "a"), ("u", 1, "b")], [])
    ctx = context(events, 10, 20)
    row = build_examples(events, ctx).to_pylist()[0]
    assert row["country"] == 1 and row["device"] == 1 and row["gender"] == 1
    assert row["logged_in"] == 1.0
    assert np.isclose(row["age"], 0.0)  # the only age is the mean


def test_leave_last_out_tie_rule():
    # u: watches at minutes 0, 5, 5, 9, 9 -> test = last row of the minute-9 tie, validation = last of minute 5,
    # training labels strictly before minute 5; the other tied watches are not labels.
    watches = [("u", 0, "a"), ("u", 5, "b"), ("u", 5, "c"), ("u", 9, "d"), ("u", 9, "e"), ("w", 3, "a")]
    events = make_events(watches, [("u", 9, "jazz"), ("u", 4, "cat")])
    ctx = TransformContext(
        feature_space(events), 0, 0, min_history=0, max_examples_per_user=100, split_mode="leave_last_out"
    )
    out = build_examples(events, ctx).to_pylist()
    lookup = ctx.features.videos.lookup
    d, e = lookup(pa.array(["d", "e"])).to_pylist()
    b, c = lookup(pa.array(["b", "c"])).to_pylist()
    by_split = {s: [r for r in out if r["user_id"] == "u" and r["split"] == s] for s in (0, 1, 2)}
    assert len(by_split[2]) == 1 and by_split[2][0]["label"] == max(d, e)  # last in (time, index) order
    assert len(by_split[1]) == 1 and by_split[1][0]["label"] == max(b, c)
    assert [r["label_ts"] for r in by_split[0]] == [T0]  # only minute 0 is strictly before the validation time
    test = by_split[2][0]
    assert sorted(test["history"]) == sorted(lookup(pa.array(["a", "b", "c"])).to_pylist())  # ties at 9 excluded
    assert len(test["search_tokens"]) == 1  # "cat" at 4; "jazz" at 9 is a tie
    assert test["example_age_days"] == 0
    # A user with a single watch has only a test label.
    assert [r["split"] for r in out if r["user_id"] == "w"] == [2]
