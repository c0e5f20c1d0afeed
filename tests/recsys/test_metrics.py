"""Full-catalogue ranks: ties averaged, OOV labels are misses, excluded videos (the label too) are hidden, and a
NaN or infinite score anywhere is an error."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import RecsysError, ScoreError
from recsys.metrics import Scorer, dot_scorer, label_ranks, metrics_from_ranks


def _scorer(table: np.ndarray) -> Scorer:
    return lambda rows: table[rows]


def test_ranks_average_ties_and_skip_the_oov_column() -> None:
    scores = np.array([[9.0, 1.0, 3.0, 3.0, 2.0]])  # column 0 (OOV) never outranks
    assert label_ranks(_scorer(scores), np.array([2]))[0] == 0.5  # one tie above-or-equal, averaged
    assert label_ranks(_scorer(scores), np.array([1]))[0] == 3.0


def test_oov_labels_are_misses() -> None:
    scores = np.array([[9.0, 1.0, 2.0, 3.0]])  # the OOV column scores highest, yet its label is never a hit
    ranks = label_ranks(_scorer(scores), np.array([0]))
    assert np.isinf(ranks).all(), ranks
    assert metrics_from_ranks(ranks)["recall@10"] == 0.0


def test_a_nan_label_score_is_an_error_not_a_miss() -> None:
    scores = np.array([[0.0, 1.0, np.nan, 2.0], [0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ScoreError, match=r"1 of 2 examples had NaN or infinite scores \(1 of them at the label\)"):
        label_ranks(_scorer(scores), np.array([2, 3]))


def test_a_nan_in_another_candidate_is_an_error() -> None:
    scores = np.array([[0.0, 1.0, 2.0, np.nan], [0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ScoreError, match=r"1 of 2 examples .* \(0 of them at the label\)"):
        label_ranks(_scorer(scores), np.array([2, 2]))
    # Also where the score would be hidden anyway: the OOV column and an excluded video.
    with pytest.raises(ScoreError):
        label_ranks(_scorer(np.array([[np.nan, 1.0, 2.0, 3.0]])), np.array([2]))
    with pytest.raises(ScoreError):
        label_ranks(_scorer(np.array([[0.0, np.nan, 2.0, 3.0]])), np.array([2]), np.array([[1]]))


def test_infinite_scores_are_errors_counted_over_every_chunk() -> None:
    scores = np.array([[0.0, np.inf, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, -np.inf, 3.0]])
    with pytest.raises(ScoreError, match=r"2 of 3 examples .* \(1 of them at the label\)") as caught:
        label_ranks(_scorer(scores), np.array([2, 2, 2]), chunk=1)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RecsysError)


def test_a_scorer_with_a_nan_user_vector_is_an_error() -> None:
    table = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    users = np.array([[1.0, 2.0], [np.nan, 1.0]])
    with pytest.raises(ScoreError, match="1 of 2 examples"):
        label_ranks(dot_scorer(users, table), np.array([1, 1]))
    with pytest.raises(ScoreError, match="2 of 2 examples"):  # an infinite bias breaks every example
        label_ranks(dot_scorer(users[:1].repeat(2, axis=0), table, np.array([0.0, np.inf, 0.0])), np.array([2, 2]))


def test_excluded_videos_are_hidden_and_an_excluded_label_is_a_miss() -> None:
    scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0], [0.0, 5.0, 4.0, 3.0, 2.0]])
    exclude = np.array([[1, 2, -1], [3, 1, -1]])
    ranks = label_ranks(_scorer(scores), np.array([3, 3]), exclude)
    assert ranks[0] == 0.0, "videos 1 and 2 are hidden, so 3 is first"
    assert np.isinf(ranks[1]), "a re-watched label is never served when history is hidden"
    plain = label_ranks(_scorer(scores), np.array([3, 3]))
    assert (plain == 2.0).all()


def test_hiding_the_history_changes_recall_as_worked_out_by_hand() -> None:
    # Five videos (1..5) scored 5, 4, 3, 2, 1 for every example; column 0 is the OOV bucket.
    scores = np.tile(np.array([0.0, 5.0, 4.0, 3.0, 2.0, 1.0]), (4, 1))
    labels = np.array([3, 1, 5, 2])
    history = np.array([[1, 2, -1], [1, -1, -1], [1, 2, 4], [-1, -1, -1]])
    # Unfiltered: ranks = videos above the label: 3 -> 2 (1, 2), 1 -> 0, 5 -> 4 (1..4), 2 -> 1 (1).
    # As served: 3 -> 0 (1, 2 hidden), 1 -> miss (a re-watch), 5 -> 1 (only 3 left above it), 2 -> 1 (nothing hidden).
    plain = label_ranks(_scorer(scores), labels)
    served = label_ranks(_scorer(scores), labels, history)
    np.testing.assert_array_equal(plain, [2.0, 0.0, 4.0, 1.0])
    np.testing.assert_array_equal(served, [0.0, np.inf, 1.0, 1.0])
    plain_m, served_m = metrics_from_ranks(plain, ks=(1, 2)), metrics_from_ranks(served, ks=(1, 2))
    # recall@1: one hit of four either way (unfiltered the re-watch, as served the first example).
    assert plain_m["recall@1"] == served_m["recall@1"] == 0.25
    # recall@2: unfiltered ranks 0 and 1 (2 of 4); as served 0, 1 and 1 (3 of 4).
    assert plain_m["recall@2"] == 0.5 and served_m["recall@2"] == 0.75
    # MAP: unfiltered (1/3 + 1 + 1/5 + 1/2) / 4; as served (1 + 0 + 1/2 + 1/2) / 4.
    assert plain_m["map"] == pytest.approx((1 / 3 + 1 + 1 / 5 + 1 / 2) / 4)
    assert served_m["map"] == pytest.approx(0.5)
