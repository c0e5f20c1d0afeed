"""The quality benchmark's non-neural baselines: implicit's ALS and BPR (CPU), EASE and item-kNN, scored alike.

All are trained on a (user x video-index) matrix of the training window. Columns are the project's video vocabulary
indices, so item factors line up with the two-tower output table and with `recsys.metrics.label_ranks` (column 0,
the OOV bucket, never holds an interaction and is never retrievable).

- ALS scores an example from the example's OWN history (fold-in): the user factor is the closed-form least-squares
  solve against the fixed item factors, exactly what ``AlternatingLeastSquares.recalculate_user`` computes, so it
  sees the same (at most max_history) watches as the two-tower model.
- implicit's BPR has no fold-in: an example is scored with the factors learned for its user on the training window
  (a user without training interactions gets the item-bias term only).
- EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), a closed-form item-item model.
  With X the binary user-item matrix it solves min_B ||X − XB||² + λ||B||² subject to diag(B) = 0:

      G = XᵀX + λI,   P = G⁻¹,   B_ij = −P_ij / P_jj  (i ≠ j),   B_jj = 0,

  and scores an example x · B, x the binary vector of the videos in its own history (like the ALS fold-in). Ids are
  column indices as given: the OOV bucket is an ordinary column of X and of a history here, and `label_ranks` is
  what keeps it from ever being retrieved. B is DENSE, items × items: `fit_ease` works in ONE float64 items² buffer
  (Gram matrix, Cholesky factor and inverse computed in place by LAPACK) plus the float32 result, so the peak is
  about 12 × items² bytes (0.3 GB at 5k items, 7.5 GB at 25k, 30 GB at 50k) and the solve about items³ flops (5 s
  at 5k items on a 2-core box, an hour or more at 50k). `max_items` (default EASE_MAX_ITEMS) turns a catalogue that
  is too large into a clear ValueError before anything items² is allocated, instead of an out-of-memory kill; a 1M
  catalogue would need a sparse approximation (pruned or low-rank B), which is out of scope.
- Item-kNN: item-item cosine similarity on the same binary matrix, with a shrinkage term (Sarwar et al. 2001; the
  ItemKNNCF of Dacrema et al., RecSys 2019):

      S_ij = c_ij / (sqrt(n_i) sqrt(n_j) + shrink),   c_ij = users with both i and j,  n_i = users with i,  S_jj = 0,

  of which each target item j keeps its `neighbors` largest S_ij (a sparse column); an example scores x · S, x its
  binary history, like EASE. Shrinkage pulls a similarity resting on few co-occurrences towards 0. `top_neighbors`
  builds S a block of target items at a time (one sparse product and one argpartition per block), so the peak is
  a block x items dense array, not items².
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import threadpoolctl
from scipy.linalg import lapack

from recsys.metrics import DEFAULT_KS, Scorer, label_ranks, metrics_from_ranks
from recsys.schemas import OOV_INDEX

THREADS = 2
SELECTION_METRIC = "recall@100"
# The validation grids of the quality benchmark (each point fitted on the training window, picked on validation).
ALS_GRID = {
    "factors": (16, 32, 64, 128),
    "regularization": (0.01, 0.1, 1.0),
    "alpha": (1.0, 10.0, 40.0),
    "iterations": (15,),
}
BPR_GRID = {
    "factors": (32, 64, 128),
    "learning_rate": (0.01, 0.05),
    "regularization": (0.001, 0.01),
    "iterations": (100,),
}
# ALS up to 256 factors on a log of your own (issue 34's peers); MovieLens and synthetic keep ALS_GRID, so their
# committed results still describe the grid they ran.
ALS_FACTORS_EVENTS = (*ALS_GRID["factors"], 256)
EASE_GRID = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)  # lambda
ITEMKNN_NEIGHBORS = (50, 100, 200, 500)
# shrink first: the points of one shrink share their neighbour lists (`itemknn_fitter`).
ITEMKNN_GRID: dict[str, tuple[float, ...]] = {"shrink": (0.0, 10.0, 100.0), "neighbors": ITEMKNN_NEIGHBORS}
_KNN_BLOCK = 1024  # target items per block of `top_neighbors`'s similarity rows
EASE_MAX_ITEMS = 60_000
_EASE_BLOCK = 2048  # columns per block of the Gram build and the in-place mirroring
ITEMKNN_NOTE = (
    "x . S with x the example's own (padded) history, binary; S the cosine item-item similarity of the binarised "
    "training-window matrix, shrunk, each target item's top `neighbors` kept; the points of one shrink share one "
    "neighbour computation, so a point's fit_s is that or the truncation; the method's fit_s is a fresh fit"
)
BPR_NOTE = (
    "implicit's BPR cannot fold in a history: each example is scored with the factors its user learned on the "
    "training window (users without training interactions get the item-bias term only)"
)


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


@dataclass(frozen=True)
class ItemKnnParams:
    """Hyperparameters of the item-kNN baseline: neighbours kept per target item and the cosine's shrinkage."""

    shrink: float = 0.0
    neighbors: int = 100


def als_grid(kind: str) -> dict[str, tuple[Any, ...]]:
    """The ALS validation grid of a dataset kind: ALS_GRID, with factors up to 256 for a log of your own."""
    if kind == "events":
        return {**ALS_GRID, "factors": ALS_FACTORS_EVENTS}
    return dict(ALS_GRID)


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
    exclude: np.ndarray | None = None,
) -> GridResult:
    """Fit each candidate, rank the validation labels over the full catalogue, keep the best by `metric`.

    `exclude` (padded ids, -1 padding) hides videos as `label_ranks` does: the validation histories, as served.
    """
    points: list[dict[str, Any]] = []
    best_model, best_value, best_point = None, -1.0, None
    for params in candidates:
        t0 = time.perf_counter()
        model = fit(params)
        fit_s = time.perf_counter() - t0
        metrics = metrics_from_ranks(label_ranks(scorer_for(model), labels, exclude, chunk))
        point = {"params": asdict(params), "fit_s": round(fit_s, 3), "validation": metrics}
        points.append(point)
        if metrics[metric] > best_value:  # ties keep the earlier (smaller) point
            best_model, best_value, best_point = model, metrics[metric], point
    if best_point is None:
        raise ValueError("empty hyperparameter grid")
    return GridResult(points=points, chosen=best_point, model=best_model)


# ------------------------------------------------------------------------------------------------ EASE
def _binary_matrix(X: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """X as CSR float64 with every stored nonzero set to 1 (repeat interactions count once)."""
    Xb = sp.csr_matrix(X, dtype=np.float64, copy=True)
    Xb.sum_duplicates()
    Xb.eliminate_zeros()
    Xb.data[:] = 1.0
    return Xb


def _check_ease_size(n_items: int, max_items: int) -> None:
    """Refuse a catalogue whose dense items² matrices would not fit."""
    if n_items > max_items:
        gib = 1.5 * n_items**2 * 8 / 2**30
        raise ValueError(
            f"EASE keeps a dense items x items matrix: {n_items} items need about {gib:.0f} GiB (max_items="
            f"{max_items}); use a sparse approximation for a catalogue this large"
        )


def _ease_gram(Xb: sp.csr_matrix, lam: float) -> np.ndarray:
    """Dense G = XᵀX + λI in float64 Fortran order, built a block of columns at a time (no sparse items² product)."""
    n_items = Xb.shape[1]
    # Fortran order lets LAPACK factor and invert this buffer in place (G is symmetric, so the layout is free).
    G = np.empty((n_items, n_items), dtype=np.float64, order="F")
    Xt = Xb.T.tocsr()
    Xc = Xb.tocsc()
    for start in range(0, n_items, _EASE_BLOCK):
        stop = min(start + _EASE_BLOCK, n_items)
        G[:, start:stop] = (Xt @ Xc[:, start:stop]).toarray()
    G.ravel(order="F")[:: n_items + 1] += lam  # a view: G is F-contiguous
    return G


def fit_ease(X: sp.spmatrix | sp.sparray, lam: float, max_items: int = EASE_MAX_ITEMS) -> np.ndarray:
    """The EASE weight matrix B [items, items] (float32, zero diagonal) of a binary user-item matrix X."""
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a positive number, got {lam}")
    n_items = X.shape[1]
    _check_ease_size(n_items, max_items)
    G = _ease_gram(_binary_matrix(X), lam)
    factor, info = lapack.dpotrf(G, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"XᵀX + λI is not positive definite (dpotrf info {info})")
    P, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverting XᵀX + λI failed (dpotri info {info})")
    del G, factor
    # dpotri fills only the upper triangle; mirror it block by block to avoid an items² temporary.
    for start in range(0, n_items, _EASE_BLOCK):
        stop = min(start + _EASE_BLOCK, n_items)
        block = P[start:stop, start:stop]
        P[start:stop, start:stop] = np.triu(block) + np.triu(block, 1).T
        P[start:stop, :start] = P[:start, start:stop].T
    P /= -np.diag(P)[None, :]  # B_ij = −P_ij / P_jj, column by column
    np.fill_diagonal(P, 0.0)
    return np.ascontiguousarray(P, dtype=np.float32)


def binary_history_matrix(history_ids: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Binary CSR [N, n_items] of padded history ids (−1 = padding; a repeated id counts once)."""
    ids = np.asarray(history_ids)
    if ids.ndim != 2:
        raise ValueError(f"history_ids must be a padded [N, H] matrix, got shape {ids.shape}")
    rows, cols = np.nonzero(ids >= 0)
    items = ids[rows, cols].astype(np.int64)
    if len(items) and items.max() >= n_items:
        raise ValueError(f"history id {int(items.max())} is outside the catalogue of {n_items} items")
    if np.any(ids < -1):
        raise ValueError("history ids must be >= 0, or -1 for padding")
    x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (rows, items)), shape=(ids.shape[0], n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def ease_scores(B: np.ndarray, history_ids: np.ndarray) -> np.ndarray:
    """Scores [N, items] = x · B for each row's binary history vector x (built sparse from the padded ids)."""
    if B.ndim != 2 or B.shape[0] != B.shape[1]:
        raise ValueError(f"B must be a square items x items matrix, got shape {B.shape}")
    x = binary_history_matrix(history_ids, B.shape[0])
    return np.asarray(x @ B, dtype=np.float32)


def ease_scorer(B: np.ndarray, history_ids: np.ndarray) -> Scorer:
    """A `label_ranks` scorer: the EASE scores of the requested rows of the padded history matrix."""

    def scores(rows: np.ndarray) -> np.ndarray:
        return ease_scores(B, history_ids[rows])

    return scores


def choose_lambda(
    X: sp.spmatrix | sp.sparray,
    validation_history: np.ndarray,
    validation_labels: np.ndarray,
    grid: Sequence[float] = EASE_GRID,
    metric: str = "recall@100",
    ks: Sequence[int] = DEFAULT_KS,
    exclude: np.ndarray | None = None,
    max_items: int = EASE_MAX_ITEMS,
    chunk: int = 1024,
) -> tuple[float, dict[float, dict[str, float]]]:
    """The λ of the grid with the best validation `metric` (ties: the larger λ) and every λ's metrics.

    Each λ is fitted on X and its validation labels ranked over the full catalogue by `label_ranks`, with `exclude`
    passed through unchanged (the benchmarks pass the validation histories unless --no-exclude-history).
    """
    if not grid:
        raise ValueError("the λ grid is empty")
    known = {f"{name}@{k}" for k in ks for name in ("recall", "ndcg")} | {"map"}
    if metric not in known:
        raise KeyError(f"metric {metric!r} is not among {sorted(known)}; add its K to ks")
    _check_ease_size(X.shape[1], max_items)
    table: dict[float, dict[str, float]] = {}
    for lam in sorted(float(v) for v in grid):
        B = fit_ease(X, lam, max_items)
        ranks = label_ranks(ease_scorer(B, validation_history), validation_labels, exclude, chunk)
        table[lam] = metrics_from_ranks(ranks, ks)
    best = max(table, key=lambda lam: (table[lam][metric], lam))
    return best, table


# ------------------------------------------------------------------------------------------------ item-kNN
def _cosine_rows(Xt: sp.csr_matrix, Xb: sp.csr_matrix, norms: np.ndarray, rows: slice, shrink: float) -> np.ndarray:
    """Dense [rows, items] float32: the shrunk cosine of each target item in `rows` with every item, self set to 0."""
    block = np.asarray((Xt[rows] @ Xb).toarray(), dtype=np.float32)
    denom = norms[rows, None] * norms[None, :] + np.float32(shrink)
    denom[denom == 0] = 1.0  # an item nobody watched: its co-occurrences are 0 anyway
    block /= denom
    start = rows.start or 0
    block[np.arange(block.shape[0]), np.arange(start, start + block.shape[0])] = 0.0
    return block


def top_neighbors(X: sp.spmatrix | sp.sparray, shrink: float, neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Each target item's `neighbors` most similar items, [items, k] indices and similarities, largest first.

    k = min(neighbors, items); entries past an item's non-zero similarities hold similarity 0 (dropped later).
    """
    if neighbors < 1 or not (np.isfinite(shrink) and shrink >= 0):
        raise ValueError(f"need neighbors >= 1 and a finite shrink >= 0, got {neighbors}, {shrink}")
    Xb = _binary_matrix(X).astype(np.float32)
    n_items = Xb.shape[1]
    k = min(neighbors, n_items)
    Xt = Xb.T.tocsr()
    norms = np.sqrt(np.asarray(Xb.sum(axis=0)).ravel()).astype(np.float32)
    index = np.empty((n_items, k), dtype=np.int32)
    sims = np.empty((n_items, k), dtype=np.float32)
    for start in range(0, n_items, _KNN_BLOCK):
        rows = slice(start, min(start + _KNN_BLOCK, n_items))
        block = _cosine_rows(Xt, Xb, norms, rows, shrink)
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]  # the k largest of each row, unordered
        values = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        index[rows] = np.take_along_axis(top, order, axis=1)
        sims[rows] = np.take_along_axis(values, order, axis=1)
    return index, sims


def knn_matrix(index: np.ndarray, sims: np.ndarray, neighbors: int) -> sp.csr_matrix:
    """Sparse S [items, items] from `top_neighbors`' lists: S[i, j] = similarity of neighbour i of target j.

    Only the first `neighbors` entries of each list are kept, and only non-zero similarities.
    """
    n_items = index.shape[0]
    k = min(neighbors, index.shape[1])
    targets = np.repeat(np.arange(n_items, dtype=np.int64), k)
    sources = index[:, :k].ravel().astype(np.int64)
    values = sims[:, :k].ravel()
    keep = values != 0
    S = sp.csr_matrix((values[keep], (sources[keep], targets[keep])), shape=(n_items, n_items), dtype=np.float32)
    S.sum_duplicates()
    return S


def fit_itemknn(X: sp.spmatrix | sp.sparray, params: ItemKnnParams) -> sp.csr_matrix:
    """The item-kNN similarity matrix S of a user-item matrix X (binarised) for one grid point."""
    return knn_matrix(*top_neighbors(X, params.shrink, params.neighbors), params.neighbors)


def itemknn_fitter(X: sp.spmatrix | sp.sparray, max_neighbors: int) -> Callable[[ItemKnnParams], sp.csr_matrix]:
    """`fit_itemknn` for a grid: the lists of one shrink computed once, at max_neighbors, and truncated per point.

    Lists are sorted, so truncating the longest equals computing the shorter ones (up to ties at the cut).
    """

    @functools.lru_cache(maxsize=1)  # the grid visits one shrink's points in a row (ITEMKNN_GRID's axis order)
    def lists(shrink: float) -> tuple[np.ndarray, np.ndarray]:
        return top_neighbors(X, shrink, max_neighbors)

    def fit(params: ItemKnnParams) -> sp.csr_matrix:
        if params.neighbors > max_neighbors:
            raise ValueError(f"neighbors {params.neighbors} above the fitter's max_neighbors {max_neighbors}")
        return knn_matrix(*lists(params.shrink), params.neighbors)

    return fit


def itemknn_scores(S: sp.csr_matrix, history_ids: np.ndarray) -> np.ndarray:
    """Scores [N, items] = x · S for each row's binary history vector x (built sparse from the padded ids)."""
    x = binary_history_matrix(history_ids, S.shape[0])
    return np.asarray((x @ S).toarray(), dtype=np.float32)


def itemknn_scorer(S: sp.csr_matrix, history_ids: np.ndarray) -> Scorer:
    """A `label_ranks` scorer: the item-kNN scores of the requested rows of the padded history matrix."""

    def scores(rows: np.ndarray) -> np.ndarray:
        return itemknn_scores(S, history_ids[rows])

    return scores
