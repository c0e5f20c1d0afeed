"""EASE: the closed form against a direct numpy computation, sparse scoring, a planted block structure, λ selection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks import baselines
from benchmarks.baselines import EASE_GRID, binary_history_matrix, choose_lambda, ease_scorer, ease_scores, fit_ease
from recsys.metrics import label_ranks

TINY = np.array(
    [
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [0, 1, 1, 1],
        [1, 1, 1, 0],
        [0, 0, 1, 1],
    ],
    dtype=np.float64,
)


def direct_ease(X: np.ndarray, lam: float) -> np.ndarray:
    """Steck's formula written out: P = (XᵀX + λI)⁻¹, B = −P / diag(P) per column, zero diagonal."""
    P = np.linalg.inv(X.T @ X + lam * np.eye(X.shape[1]))
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    return B


def planted_blocks(
    rng: np.random.Generator, users_per_group: int, items_per_group: int, n_groups: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users who watch mostly (p 0.5) their own group's items and rarely (p 0.02) anything else; returns X, groups."""
    n_items = items_per_group * n_groups
    user_group = np.repeat(np.arange(n_groups), users_per_group)
    item_group = np.repeat(np.arange(n_groups), items_per_group)
    p = np.where(user_group[:, None] == item_group[None, :], 0.5, 0.02)
    X = (rng.random((len(user_group), n_items)) < p).astype(np.float64)
    return sp.csr_matrix(X), user_group


@pytest.mark.parametrize("lam", [0.5, 3.0, 100.0])
def test_fit_ease_matches_the_direct_formula(lam: float) -> None:
    B = fit_ease(sp.csr_matrix(TINY), lam)
    assert B.shape == (4, 4)
    assert B.dtype == np.float32
    np.testing.assert_allclose(B, direct_ease(TINY, lam), rtol=0, atol=1e-6)
    assert np.all(np.diag(B) == 0.0)


def test_fit_ease_matches_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 3 columns over 20 items: every block edge of the Gram build and the in-place mirroring is crossed.
    monkeypatch.setattr(baselines, "_EASE_BLOCK", 3)
    rng = np.random.default_rng(2)
    X = (rng.random((60, 20)) < 0.2).astype(np.float64)
    B = fit_ease(sp.csr_matrix(X), 4.0)
    np.testing.assert_allclose(B, direct_ease(X, 4.0), rtol=0, atol=1e-6)


def test_fit_ease_binarises_counts_duplicates_and_explicit_zeros() -> None:
    expected = fit_ease(sp.csr_matrix(TINY), 2.0)
    counts = TINY.copy()
    counts[0, 0], counts[2, 3] = 3.0, 2.0  # repeat watches are one interaction
    np.testing.assert_array_equal(fit_ease(sp.csr_matrix(counts), 2.0), expected)
    # Row 0 stores item 1 twice and an explicit zero for item 3; both rows are otherwise TINY's.
    messy = sp.csr_matrix((np.array([1.0, 1.0, 1.0, 0.0]), np.array([0, 1, 1, 3]), np.array([0, 4])), shape=(1, 4))
    X = sp.vstack([messy, sp.csr_matrix(TINY[1:])], format="csr")
    np.testing.assert_array_equal(fit_ease(X, 2.0), expected)


def test_fit_ease_rejects_a_bad_lambda_and_a_huge_catalogue() -> None:
    with pytest.raises(ValueError, match="lam"):
        fit_ease(sp.csr_matrix(TINY), 0.0)
    with pytest.raises(ValueError, match="sparse approximation"):
        fit_ease(sp.csr_matrix((2, 61)), 1.0, max_items=60)
    with pytest.raises(ValueError, match="dense items x items"):
        fit_ease(sp.csr_matrix((1, 1_000_000)), 1.0)  # refused before anything items² is allocated


def test_ease_scores_equal_the_dense_product_with_repeats_counted_once() -> None:
    B = fit_ease(sp.csr_matrix(TINY), 1.0)
    history = np.array(
        [
            [0, 2, -1, -1],
            [3, 3, 1, -1],  # 3 repeated: counts once
            [-1, -1, -1, -1],  # no history: all zero
            [0, 1, 2, 3],
        ]
    )
    x = np.zeros((4, 4))
    for row, ids in enumerate(history):
        x[row, ids[ids >= 0]] = 1.0
    scores = ease_scores(B, history)
    assert scores.shape == (4, 4)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, x @ B.astype(np.float64), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(binary_history_matrix(history, 4).toarray(), x)
    np.testing.assert_allclose(ease_scorer(B, history)(np.array([3, 1])), scores[[3, 1]])


def test_history_matrix_rejects_ids_outside_the_catalogue() -> None:
    with pytest.raises(ValueError, match="outside the catalogue"):
        binary_history_matrix(np.array([[0, 4]]), 4)
    with pytest.raises(ValueError, match="padding"):
        binary_history_matrix(np.array([[0, -2]]), 4)
    with pytest.raises(ValueError, match="padded"):
        binary_history_matrix(np.array([0, 1]), 4)
    with pytest.raises(ValueError, match="square"):
        ease_scores(np.zeros((3, 4), dtype=np.float32), np.array([[0, 1]]))


def test_ease_ranks_same_group_items_above_other_groups() -> None:
    rng = np.random.default_rng(4)
    items_per_group = 12
    X, _ = planted_blocks(rng, users_per_group=300, items_per_group=items_per_group, n_groups=2)
    B = fit_ease(X, 50.0)
    # New users: three items of their own group each.
    history = np.array([[0, 3, 7], [1, 2, 11], [12, 15, 20], [13, 22, 23]])
    group = np.array([0, 0, 1, 1])
    scores = ease_scores(B, history)
    for row in range(len(history)):
        own = np.arange(items_per_group) + group[row] * items_per_group
        unseen = np.setdiff1d(own, history[row])
        other = np.arange(items_per_group) + (1 - group[row]) * items_per_group
        assert scores[row, unseen].min() > scores[row, other].max()
    # Through label_ranks over the full catalogue (index 0 is the OOV bucket there): an unseen own-group label ranks
    # within its group's 12 items.
    labels = np.array([5, 6, 18, 14])
    ranks = label_ranks(ease_scorer(B, history), labels)
    assert np.all(ranks < items_per_group)


def test_choose_lambda_returns_a_grid_value_and_the_table() -> None:
    rng = np.random.default_rng(6)
    items_per_group, n_groups = 40, 4
    X, _ = planted_blocks(rng, users_per_group=60, items_per_group=items_per_group, n_groups=n_groups)
    # Validation users: a short own-group history and one held-out own-group label.
    n_val = 80
    val_group = rng.integers(0, n_groups, size=n_val)
    picks = np.stack([rng.choice(items_per_group, size=4, replace=False) for _ in range(n_val)])
    own = val_group[:, None] * items_per_group + picks
    history, labels = own[:, :3], own[:, 3]
    history = np.concatenate([history, np.full((n_val, 2), -1)], axis=1)
    grid = (1.0, 10.0, 100.0)
    best, table = choose_lambda(X, history, labels, grid=grid, metric="recall@10", ks=(10, 50))
    assert best in grid
    assert sorted(table) == sorted(grid)
    for metrics in table.values():
        assert {"recall@10", "recall@50", "ndcg@10", "map", "examples"} <= set(metrics)
        assert metrics["examples"] == n_val
        assert 0.0 <= metrics["recall@10"] <= 1.0
    assert table[best]["recall@10"] == max(m["recall@10"] for m in table.values())
    assert table[best]["recall@10"] > 10 / (items_per_group * n_groups)  # far better than chance


def test_choose_lambda_passes_exclude_through_and_defaults_to_recall_at_100() -> None:
    rng = np.random.default_rng(8)
    X, _ = planted_blocks(rng, users_per_group=30, items_per_group=60, n_groups=2)
    history = np.array([[0, 1, 2], [60, 61, 62]])
    labels = np.array([3, 63])
    best, table = choose_lambda(X, history, labels, grid=(50.0, 5.0))
    assert best in (5.0, 50.0) and set(table) == {5.0, 50.0}
    assert "recall@100" in table[best]
    # Excluding the history can only move the label up (other history items no longer outrank it).
    _, excluded = choose_lambda(X, history, labels, grid=(5.0,), exclude=history, metric="map")
    assert excluded[5.0]["map"] >= table[5.0]["map"]
    assert EASE_GRID == (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
    with pytest.raises(KeyError, match="recall@20"):
        choose_lambda(X, history, labels, metric="recall@20")
