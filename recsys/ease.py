"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): a closed-form item-item baseline.

With X the binary user-item matrix, EASE solves min_B ||X − XB||² + λ||B||² subject to diag(B) = 0, whose solution is

    G = XᵀX + λI,   P = G⁻¹,   B_ij = −P_ij / P_jj  (i ≠ j),   B_jj = 0.

A user's scores are x · B, x the binary vector of the videos in their history. Ranking uses
`recsys.metrics.label_ranks` over the FULL catalogue like every other method; a user's own history is not excluded
unless an `exclude` matrix is passed. Ids are column indices as given: the OOV bucket (index 0) is an ordinary column
of X and of a history here, and `label_ranks` is what keeps it from ever being retrieved.

Memory and time: B is DENSE, items × items. `fit_ease` works in ONE float64 items² buffer (Gram matrix, Cholesky
factor and inverse computed in place by LAPACK) plus the float32 result, so the peak is about 12 × items² bytes:
0.3 GB at 5k items, 7.5 GB at 25k, 30 GB at 50k. The solve costs about items³ flops: 5 s at 5k items on this
project's 2-core machine under load, hence roughly 1000 × that (an hour or more) at 50k. Up to ~50k items is
feasible on a machine with the memory; a 1M-video catalogue needs a sparse approximation (pruned or low-rank B),
which is out of scope. `max_items` (default 60,000) turns a catalogue that is too large into a clear ValueError
before anything items² is allocated, instead of an out-of-memory kill.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from recsys.metrics import DEFAULT_KS, Scorer, label_ranks, metrics_from_ranks

__all__ = ["DEFAULT_LAMBDAS", "MAX_ITEMS", "choose_lambda", "ease_scorer", "ease_scores", "fit_ease", "history_matrix"]

DEFAULT_LAMBDAS = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
MAX_ITEMS = 60_000
_BLOCK = 2048


def _binary(X: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """X as CSR float64 with every stored nonzero set to 1 (repeat interactions count once)."""
    Xb = sp.csr_matrix(X, dtype=np.float64, copy=True)
    Xb.sum_duplicates()
    Xb.eliminate_zeros()
    Xb.data[:] = 1.0
    return Xb


def _check_size(n_items: int, max_items: int) -> None:
    """Refuse a catalogue whose dense items² matrices would not fit."""
    if n_items > max_items:
        gib = 1.5 * n_items**2 * 8 / 2**30
        raise ValueError(
            f"EASE keeps a dense items x items matrix: {n_items} items need about {gib:.0f} GiB (max_items="
            f"{max_items}); use a sparse approximation for a catalogue this large"
        )


def _gram(Xb: sp.csr_matrix, lam: float) -> np.ndarray:
    """Dense G = XᵀX + λI in float64 Fortran order, built a block of columns at a time (no sparse items² product)."""
    n_items = Xb.shape[1]
    # Fortran order lets LAPACK factor and invert this buffer in place (G is symmetric, so the layout is free).
    G = np.empty((n_items, n_items), dtype=np.float64, order="F")
    Xt = Xb.T.tocsr()
    Xc = Xb.tocsc()
    for start in range(0, n_items, _BLOCK):
        stop = min(start + _BLOCK, n_items)
        G[:, start:stop] = (Xt @ Xc[:, start:stop]).toarray()
    G.ravel(order="F")[:: n_items + 1] += lam  # a view: G is F-contiguous
    return G


def fit_ease(X: sp.spmatrix | sp.sparray, lam: float, max_items: int = MAX_ITEMS) -> np.ndarray:
    """The EASE weight matrix B [items, items] (float32, zero diagonal) of a binary user-item matrix X."""
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a positive number, got {lam}")
    n_items = X.shape[1]
    _check_size(n_items, max_items)
    G = _gram(_binary(X), lam)
    factor, info = lapack.dpotrf(G, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"XᵀX + λI is not positive definite (dpotrf info {info})")
    P, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverting XᵀX + λI failed (dpotri info {info})")
    del G, factor
    # dpotri fills only the upper triangle; mirror it block by block to avoid an items² temporary.
    for start in range(0, n_items, _BLOCK):
        stop = min(start + _BLOCK, n_items)
        block = P[start:stop, start:stop]
        P[start:stop, start:stop] = np.triu(block) + np.triu(block, 1).T
        P[start:stop, :start] = P[:start, start:stop].T
    P /= -np.diag(P)[None, :]  # B_ij = −P_ij / P_jj, column by column
    np.fill_diagonal(P, 0.0)
    return np.ascontiguousarray(P, dtype=np.float32)


def history_matrix(history_ids: np.ndarray, n_items: int) -> sp.csr_matrix:
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
    x = history_matrix(history_ids, B.shape[0])
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
    grid: Sequence[float] = DEFAULT_LAMBDAS,
    metric: str = "recall@100",
    ks: Sequence[int] = DEFAULT_KS,
    exclude: np.ndarray | None = None,
    max_items: int = MAX_ITEMS,
    chunk: int = 1024,
) -> tuple[float, dict[float, dict[str, float]]]:
    """The λ of the grid with the best validation `metric` (ties: the larger λ) and every λ's metrics.

    Each λ is fitted on X and its validation labels ranked over the full catalogue by `label_ranks`, with `exclude`
    passed through unchanged (nothing is excluded by default, like every other method).
    """
    if not grid:
        raise ValueError("the λ grid is empty")
    known = {f"{name}@{k}" for k in ks for name in ("recall", "ndcg")} | {"map"}
    if metric not in known:
        raise KeyError(f"metric {metric!r} is not among {sorted(known)}; add its K to ks")
    _check_size(X.shape[1], max_items)
    table: dict[float, dict[str, float]] = {}
    for lam in sorted(float(v) for v in grid):
        B = fit_ease(X, lam, max_items)
        ranks = label_ranks(ease_scorer(B, validation_history), validation_labels, exclude, chunk)
        table[lam] = metrics_from_ranks(ranks, ks)
    best = max(table, key=lambda lam: (table[lam][metric], lam))
    return best, table
