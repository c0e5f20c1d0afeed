"""Matrix-factorisation baselines for the quality benchmark: implicit's ALS and BPR (CPU), scored like every model.

Both are trained on a (user x video-index) count matrix of the training window. Columns are the project's video
vocabulary indices, so item factors line up with the two-tower output table and with `recsys.metrics.label_ranks`
(column 0, the OOV bucket, never holds an interaction and is never retrievable).

- ALS scores an example from the example's OWN history (fold-in): the user factor is the closed-form least-squares
  solve against the fixed item factors, exactly what ``AlternatingLeastSquares.recalculate_user`` computes, so it
  sees the same (at most max_history) watches as the two-tower model.
- implicit's BPR has no fold-in: an example is scored with the factors learned for its user on the training window
  (a user without training interactions gets the item-bias term only).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import threadpoolctl

from recsys.metrics import Scorer, label_ranks, metrics_from_ranks
from recsys.schemas import OOV_INDEX

THREADS = 2
SELECTION_METRIC = "recall@100"


@dataclass(frozen=True)
class AlsParams:
    """Hyperparameters of implicit's AlternatingLeastSquares (confidence = alpha * count)."""

    factors: int = 64
    regularization: float = 0.1
    alpha: float = 1.0
    iterations: int = 15


@dataclass(frozen=True)
class BprParams:
    """Hyperparameters of implicit's BayesianPersonalizedRanking."""

    factors: int = 64
    learning_rate: float = 0.01
    regularization: float = 0.01
    iterations: int = 100


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """A float32 CSR count matrix [n_users, n_items] from (user row, item index) pairs; OOV items are dropped."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    keep = items != OOV_INDEX
    data = np.ones(int(keep.sum()), dtype=np.float32)
    matrix = sp.coo_matrix((data, (users[keep], items[keep])), shape=(n_users, n_items)).tocsr()
    matrix.sum_duplicates()
    return matrix


def history_matrix(history: np.ndarray, n_items: int) -> sp.csr_matrix:
    """One CSR row of item counts per example from a padded history matrix (PAD < 0 and OOV dropped)."""
    rows, cols = np.nonzero(history >= 0)
    items = history[rows, cols]
    return interaction_matrix(rows, items, history.shape[0], n_items)


def fit_als(matrix: sp.csr_matrix, params: AlsParams, seed: int = 0, threads: int = THREADS) -> Any:
    """Fit implicit's CPU ALS on a user x item count matrix (BLAS held to one thread, as implicit asks)."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpoolctl.threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            num_threads=threads,
            random_state=seed,
        )
        model.fit(matrix, show_progress=False)
    return model


def fit_bpr(matrix: sp.csr_matrix, params: BprParams, seed: int = 0, threads: int = THREADS) -> Any:
    """Fit implicit's CPU BPR on a user x item count matrix (only the non-zero pattern matters to BPR)."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    with threadpoolctl.threadpool_limits(1, "blas"):
        model = BayesianPersonalizedRanking(
            factors=params.factors,
            learning_rate=params.learning_rate,
            regularization=params.regularization,
            iterations=params.iterations,
            num_threads=threads,
            random_state=seed,
        )
        model.fit(matrix, show_progress=False)
    return model


def als_fold_in(model: Any, rows: sp.csr_matrix) -> np.ndarray:
    """User factors of unseen rows of counts, solved against the fixed item factors (implicit's recalculate_user)."""
    if rows.shape[0] == 0:
        return np.zeros((0, model.factors), dtype=np.float32)
    with threadpoolctl.threadpool_limits(1, "blas"):
        return np.asarray(model.recalculate_user(np.arange(rows.shape[0]), rows.tocsr()), dtype=np.float32)


def least_squares_user_factors(
    item_factors: np.ndarray, rows: sp.csr_matrix, regularization: float, alpha: float
) -> np.ndarray:
    """The same fold-in written out: x_u = (Y'Y + reg I + Y' (C_u - I) Y)^-1 Y' C_u p_u with C_u = alpha * counts."""
    Y = np.asarray(item_factors, dtype=np.float64)
    k = Y.shape[1]
    gram = Y.T @ Y + regularization * np.eye(k)
    out = np.zeros((rows.shape[0], k), dtype=np.float64)
    rows = rows.tocsr()
    for u in range(rows.shape[0]):
        lo, hi = rows.indptr[u], rows.indptr[u + 1]
        items, confidence = rows.indices[lo:hi], alpha * rows.data[lo:hi].astype(np.float64)
        Yu = Y[items]
        A = gram + Yu.T @ ((confidence - 1.0)[:, None] * Yu)
        out[u] = np.linalg.solve(A, Yu.T @ confidence)
    return out


def factor_scorer(user_factors: np.ndarray, item_factors: np.ndarray) -> Scorer:
    """Scores x_u . y_j for the requested example rows (a `recsys.metrics.Scorer`)."""
    items = np.ascontiguousarray(item_factors, dtype=np.float32)

    def scores(rows: np.ndarray) -> np.ndarray:
        return user_factors[rows].astype(np.float32) @ items.T

    return scores


def als_scorer(model: Any, history: np.ndarray) -> Scorer:
    """ALS scores of each example from its own padded history (fold-in over the full catalogue)."""
    n_items = int(model.item_factors.shape[0])
    return factor_scorer(als_fold_in(model, history_matrix(history, n_items)), model.item_factors)


def bpr_user_factors(model: Any, user_rows: np.ndarray) -> np.ndarray:
    """Learned BPR factors of each example's user row; -1 (no training interactions) gets the item-bias term only."""
    factors = np.asarray(model.user_factors, dtype=np.float32)
    bias_only = np.zeros(factors.shape[1], dtype=np.float32)
    bias_only[-1] = 1.0  # implicit's BPR keeps the item bias in the last column and a constant 1 for users
    user_rows = np.asarray(user_rows, dtype=np.int64)
    out = factors[np.maximum(user_rows, 0)]
    out[user_rows < 0] = bias_only
    return out


def bpr_scorer(model: Any, user_rows: np.ndarray) -> Scorer:
    """BPR scores of each example from its user's learned factors (implicit's BPR cannot fold in a history)."""
    return factor_scorer(bpr_user_factors(model, user_rows), model.item_factors)


def grid(params_type: type, **axes: Sequence[Any]) -> list[Any]:
    """Every combination of the given axes as params objects, in a stable order."""
    names = list(axes)
    return [params_type(**dict(zip(names, values, strict=True))) for values in itertools.product(*axes.values())]


@dataclass
class GridResult:
    """A grid search on validation: every point's metrics and fit time, the choice, and the chosen fitted model."""

    points: list[dict[str, Any]]
    chosen: dict[str, Any]
    model: Any


def grid_search(
    candidates: Iterable[Any],
    fit: Callable[[Any], Any],
    scorer_for: Callable[[Any], Scorer],
    labels: np.ndarray,
    chunk: int = 1024,
    metric: str = SELECTION_METRIC,
) -> GridResult:
    """Fit each candidate, rank the validation labels over the full catalogue, keep the best by `metric`."""
    points: list[dict[str, Any]] = []
    best_model, best_value, best_point = None, -1.0, None
    for params in candidates:
        t0 = time.perf_counter()
        model = fit(params)
        fit_s = time.perf_counter() - t0
        metrics = metrics_from_ranks(label_ranks(scorer_for(model), labels, chunk=chunk))
        point = {"params": asdict(params), "fit_s": round(fit_s, 3), "validation": metrics}
        points.append(point)
        if metrics[metric] > best_value:  # ties keep the earlier (smaller) point
            best_model, best_value, best_point = model, metrics[metric], point
    if best_point is None:
        raise ValueError("empty hyperparameter grid")
    return GridResult(points=points, chosen=best_point, model=best_model)
