"""Tokenizer, vocabularies and numeric statistics shared by every layer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.features import FeatureSpace, NumericStats, Vocabulary, count_values, merge_counts, tokenize
from recsys.schemas import OOV_INDEX, OOV_TOKEN


def test_tokenize_lowercases_and_splits_on_non_alphanumerics():
    out = tokenize(pa.array(["Cat-Videos!!  Funny", None, "", "  ", "Ünïcode 42"]))
    assert out.to_pylist() == [["cat", "videos", "funny"], [], [], [], ["ünïcode", "42"]]


def test_vocabulary_orders_by_count_then_value_and_folds_rare_values():
    counts = merge_counts([count_values(pa.array(["b", "a", "c", "a", None])), count_values(pa.array(["b", "d"]))])
    vocab = Vocabulary.from_counts(counts, min_count=2)
    table = vocab.to_table()
    assert table.to_pylist() == [
        {"index": 0, "value": OOV_TOKEN, "count": 2},  # c and d folded into OOV
        {"index": 1, "value": "a", "count": 2},
        {"index": 2, "value": "b", "count": 2},
    ]
    assert vocab.lookup(pa.array(["b", "c", None, "a"])).to_pylist() == [2, OOV_INDEX, OOV_INDEX, 1]
    assert len(vocab) == 3


def test_feature_space_round_trip(tmp_path):
    make = lambda *v: Vocabulary.from_counts(count_values(pa.array(list(v))))  # noqa: E731
    fs = FeatureSpace(
        videos=make("v1", "v2", "v2"),
        tokens=make("jazz"),
        categorical={"country": make("US"), "device": make("tv", "phone"), "gender": make("F")},
        numeric=NumericStats.fit(pa.array([20.0, 40.0, None])),
    )
    fs.save(tmp_path)
    loaded = FeatureSpace.load(tmp_path)
    assert loaded.videos.to_table("video_id").equals(fs.videos.to_table("video_id"))
    assert loaded.categorical["device"].lookup(pa.array(["phone", "tv"])).to_pylist() == [1, 2]  # ties by value
    assert loaded.numeric == fs.numeric


def test_vocabulary_file_must_start_with_oov():
    bad = pa.table({"index": pa.array([0, 1], pa.int32()), "value": ["x", "y"], "count": pa.array([1, 1], pa.int64())})
    with pytest.raises(ValueError, match="OOV"):
        Vocabulary.from_table(bad)


def test_age_normalisation_is_standardised_and_missing_is_mean():
    stats = NumericStats.fit(pa.array([20.0, 30.0, 40.0, None]))
    z = stats.normalise_age(pa.array([30.0, None, 40.0, 1e9]))
    assert z[0] == 0 and z[1] == 0
    assert np.isclose(z[2], 10 / np.std([20, 30, 40]))
    assert z[3] == 5.0  # clipped
