"""Full-catalogue ranks: ties averaged, OOV and NaN labels are misses, excluded videos (the label too) are hidden."""

from __future__ import annotations

import numpy as np

from recsys.metrics import Scorer, label_ranks, metrics_from_ranks


def _scorer(table: np.ndarray) -> Scorer:
    return lambda rows: table[rows]


def test_ranks_average_ties_and_skip_the_oov_column() -> None:
    scores = np.array([[9.0, 1.0, 3.0, 3.0, 2.0]])  # column 0 (OOV) never outranks
    assert label_ranks(_scorer(scores), np.array([2]))[0] == 0.5  # one tie above-or-equal, averaged
    assert label_ranks(_scorer(scores), np.array([1]))[0] == 3.0


def test_oov_and_nan_labels_are_misses() -> None:
    scores = np.array([[0.0, 1.0, np.nan, 2.0], [0.0, 1.0, 2.0, 3.0]])
    ranks = label_ranks(_scorer(scores), np.array([2, 0]))
    assert np.isinf(ranks).all(), ranks
    assert metrics_from_ranks(ranks)["recall@10"] == 0.0


def test_excluded_videos_are_hidden_and_an_excluded_label_is_a_miss() -> None:
    scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0], [0.0, 5.0, 4.0, 3.0, 2.0]])
    exclude = np.array([[1, 2, -1], [3, 1, -1]])
    ranks = label_ranks(_scorer(scores), np.array([3, 3]), exclude)
    assert ranks[0] == 0.0, "videos 1 and 2 are hidden, so 3 is first"
    assert np.isinf(ranks[1]), "a re-watched label is never served when history is hidden"
    plain = label_ranks(_scorer(scores), np.array([3, 3]))
    assert (plain == 2.0).all()
