"""Negative miner for the top-K-plus-random loss: a FAISS inner-product index over the output table V.

The index is refreshed every ``refresh_every`` steps and goes stale in between, so ``search`` fetches K' > K
candidates from it and re-scores them with the CURRENT rows of V, keeping the top K. An IVF index's coarse quantizer
(the expensive k-means) is trained only on the first build and every ``retrain_every`` refreshes; other refreshes
reuse it and only re-add the vectors (all of them, or only the rows that changed). A bias b, if given, is folded
into the search as an extra coordinate: [V_j, b_j] · [u, 1] = u·V_j + b_j.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import tensorflow as tf

__all__ = ["NegativeMiner", "RefreshStats", "TouchedRows", "default_ivf_spec"]

_PARALLEL_WORK = 2e7  # multiply-adds below which a search runs on one thread

log = logging.getLogger(__name__)


EXACT_BELOW = 20_000


def default_ivf_spec(n: int) -> str:
    """The default index: exact below EXACT_BELOW rows (cheaper than any IVF there), else IVF with ~4*sqrt(n) lists."""
    if n < EXACT_BELOW:
        return "Flat"
    return f"IVF{max(1, round(4 * math.sqrt(n)))},Flat"


@dataclass(frozen=True)
class RefreshStats:
    """What one refresh did and how long each part took (seconds)."""

    step: int
    kind: str  # "build" (train + add), "readd" (reset + add) or "update" (changed rows only)
    rows: int
    read_s: float
    train_s: float
    add_s: float


class TouchedRows:
    """Set of table rows changed since the last refresh, fed from each step's S ∪ T (for incremental refresh)."""

    def __init__(self, n: int) -> None:
        """Start with no row marked."""
        self._mask = np.zeros(n, dtype=bool)

    def mark(self, indices: Any) -> None:
        """Mark rows as changed (ids outside [0, n) are ignored)."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        idx = idx[(idx >= 0) & (idx < self._mask.size)]
        self._mask[idx] = True

    def fraction(self) -> float:
        """Share of the table marked."""
        return float(self._mask.mean()) if self._mask.size else 0.0

    def take(self) -> np.ndarray:
        """Return the marked rows (sorted int64) and clear the set."""
        rows = np.flatnonzero(self._mask).astype(np.int64)
        self._mask[:] = False
        return rows


def _as_float32(x: Any) -> np.ndarray:
    """A C-contiguous float32 numpy copy/view of a tensor, variable or array (what FAISS needs)."""
    if isinstance(x, tf.Variable):
        x = x.read_value()
    if isinstance(x, tf.Tensor):
        x = x.numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class NegativeMiner:
    """Top-K candidate source over a live output table (a tf.Variable or a numpy array updated in place)."""

    def __init__(
        self,
        table: Any,
        bias: Any | None = None,
        *,
        k: int = 32,
        k_prime: int = 64,
        refresh_every: int = 200,
        warmup_steps: int = 0,
        index_spec: str | None = None,
        nprobe: int = 8,
        retrain_every: int = 10,
        train_points_per_centroid: int = 64,
        incremental_max_fraction: float = 0.25,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        """Configure the miner; the index is built on the first refresh.

        ``index_spec`` is a FAISS factory string (None: ``default_ivf_spec(n)``; "Flat" is exact). K' < K is
        rejected. ``train_points_per_centroid`` caps the k-means sample (FAISS warns below 39 per list).
        """
        if k < 1 or k_prime < k:
            raise ValueError(f"need 1 <= k <= k_prime, got k={k}, k_prime={k_prime}")
        if refresh_every < 1 or retrain_every < 1:
            raise ValueError("refresh_every and retrain_every must be >= 1")
        self.table = table
        self.bias = bias
        self.n = int(table.shape[0])
        self.dim = int(table.shape[1])
        self.k = k
        self.k_prime = k_prime
        self.refresh_every = refresh_every
        self.warmup_steps = warmup_steps
        self.index_spec = index_spec or default_ivf_spec(self.n)
        self.nprobe = nprobe
        self.retrain_every = retrain_every
        self.train_points_per_centroid = train_points_per_centroid
        self.incremental_max_fraction = incremental_max_fraction
        # FAISS parallelises builds and batch searches with OpenMP. Use the machine's cores (TensorFlow is idle
        # while the miner runs in the same loop), never more than there are, and one for small searches, where
        # OpenMP start-up and spinning beside TensorFlow's thread pools cost more than the search.
        self.threads = max(1, min(threads or os.cpu_count() or 1, os.cpu_count() or 1))
        self._rng = np.random.default_rng(seed)
        self.index: faiss.Index | None = None
        self.last_refresh_step: int | None = None
        self.refreshes_since_train = 0  # refreshes done since the quantizer was last trained
        self.history: list[RefreshStats] = []

    # ------------------------------------------------------------------ schedule
    def topk_enabled(self, step: int) -> bool:
        """Whether top-K negatives are used at this step (False during the uniform-only warm-up)."""
        return step >= self.warmup_steps

    def refresh_due(self, step: int) -> bool:
        """Whether the index is missing or at least ``refresh_every`` steps old."""
        return self.last_refresh_step is None or step - self.last_refresh_step >= self.refresh_every

    def maybe_refresh(self, step: int, changed_rows: np.ndarray | None = None) -> RefreshStats | None:
        """Refresh if due (top-K enabled only; no index is built during warm-up)."""
        if self.topk_enabled(step) and self.refresh_due(step):
            return self.refresh(step, changed_rows)
        return None

    # ------------------------------------------------------------------ index
    @property
    def _search_dim(self) -> int:
        """Index dimension: d, plus one for the folded-in bias."""
        return self.dim + (1 if self.bias is not None else 0)

    def _rows(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Current table rows (all, or ids) with the bias appended as a last column when present."""
        if ids is None:
            rows = _as_float32(self.table)
            if self.bias is None:
                return rows
            return np.ascontiguousarray(np.hstack([rows, _as_float32(self.bias)[:, None]]))
        if isinstance(self.table, tf.Variable | tf.Tensor):
            rows = _as_float32(tf.gather(self.table, ids))
        else:
            rows = np.asarray(self.table, dtype=np.float32)[ids]
        if self.bias is None:
            return np.ascontiguousarray(rows)
        if isinstance(self.bias, tf.Variable | tf.Tensor):
            bias = _as_float32(tf.gather(self.bias, ids))
        else:
            bias = np.asarray(self.bias, dtype=np.float32)[ids]
        return np.ascontiguousarray(np.hstack([rows, bias[:, None]]))

    def _queries(self, u: Any) -> np.ndarray:
        """User vectors as float32, with a trailing 1 when the bias is folded in."""
        q = _as_float32(u)
        if self.bias is not None:
            q = np.ascontiguousarray(np.hstack([q, np.ones((q.shape[0], 1), np.float32)]))
        return q

    def _ivf(self) -> Any | None:
        """The IVF part of the index, or None for a non-IVF index (Flat, HNSW...)."""
        return None if self.index is None else _extract_ivf(self.index)

    def refresh(self, step: int = 0, changed_rows: np.ndarray | None = None) -> RefreshStats:
        """Bring the index up to date with the current table.

        First build or every ``retrain_every``-th refresh of an IVF index: train the quantizer and add everything.
        Otherwise keep the trained quantizer and either update only ``changed_rows`` (if given and a small enough
        share) or reset and re-add all rows. Non-IVF indexes are rebuilt.
        """
        faiss.omp_set_num_threads(self.threads)
        ivf = self._ivf()
        retrain = self.index is None or ivf is None or self.refreshes_since_train + 1 >= self.retrain_every
        incremental = (
            not retrain
            and changed_rows is not None
            and ivf is not None
            and len(changed_rows) <= self.incremental_max_fraction * self.n
        )
        t0 = time.perf_counter()
        train_s = 0.0
        if incremental:
            assert changed_rows is not None and ivf is not None
            ids = np.unique(np.asarray(changed_rows, dtype=np.int64))
            vectors = self._rows(ids)
            read_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            if len(ids):
                ivf.update_vectors(ids, vectors)
            add_s = time.perf_counter() - t1
            kind, rows = "update", len(ids)
            self.refreshes_since_train += 1
        else:
            vectors = self._rows()
            read_s = time.perf_counter() - t0
            if retrain:
                index = faiss.index_factory(self._search_dim, self.index_spec, faiss.METRIC_INNER_PRODUCT)
                new_ivf = _extract_ivf(index)
                t1 = time.perf_counter()
                if not index.is_trained:
                    index.train(self._training_sample(vectors, new_ivf))
                train_s = time.perf_counter() - t1
                if new_ivf is not None:
                    new_ivf.nprobe = self.nprobe
                    # An array direct map lets later refreshes move just the changed rows between lists.
                    new_ivf.set_direct_map_type(faiss.DirectMap.Array)  # type: ignore[attr-defined]  # not in stubs
                self.index = index
                self.refreshes_since_train = 0
                kind = "build"
            else:
                assert self.index is not None
                self.index.reset()  # keeps the trained coarse quantizer
                self.refreshes_since_train += 1
                kind = "readd"
            t2 = time.perf_counter()
            self.index.add(vectors)
            add_s = time.perf_counter() - t2
            rows = len(vectors)
        self.last_refresh_step = step
        stats = RefreshStats(step=step, kind=kind, rows=rows, read_s=read_s, train_s=train_s, add_s=add_s)
        self.history.append(stats)
        log.debug("miner refresh %s", stats)
        return stats

    def _training_sample(self, vectors: np.ndarray, ivf: Any | None) -> np.ndarray:
        """Vectors to train the quantizer on: a random subset of train_points_per_centroid · nlist rows."""
        if ivf is None:
            return vectors
        cap = max(self.train_points_per_centroid * int(ivf.nlist), int(ivf.nlist))
        if len(vectors) <= cap:
            return vectors
        pick = np.sort(self._rng.choice(len(vectors), size=cap, replace=False))
        return np.ascontiguousarray(vectors[pick])

    # ------------------------------------------------------------------ search
    def search(self, u: Any, k_prime: int | None = None, k: int | None = None) -> np.ndarray:
        """Top-k class ids per query [B, k] (int64, best first, -1 where fewer were found).

        Fetches k_prime > k from the (possibly stale) index, re-scores them with the current table, keeps the k best.
        """
        if self.index is None:
            raise RuntimeError("the miner has no index yet: call refresh() first")
        k = self.k if k is None else k
        k_prime = max(k, self.k_prime if k_prime is None else k_prime)
        queries = self._queries(u)
        faiss.omp_set_num_threads(self.threads if self._search_work(len(queries)) > _PARALLEL_WORK else 1)
        _, ids = self.index.search(queries, k_prime)
        return self._rescore(queries, ids, k)

    def _search_work(self, n_queries: int) -> float:
        """Rough multiply-adds of one batch search (coarse assignment + scanned lists, or all rows)."""
        ivf = self._ivf()
        if ivf is None:
            scanned = float(self.n)
        else:
            nlist = int(ivf.nlist)
            scanned = nlist + min(int(ivf.nprobe), nlist) * self.n / nlist
        return n_queries * scanned * self._search_dim

    def _current_scores(self, u: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """u_b · V_j + b_j with the table's current rows for candidate ids [B, K'] (ids must be valid)."""
        if isinstance(self.table, tf.Variable | tf.Tensor):
            # One multi-threaded gather + batched mat-vec; no [B, K', d] copy into numpy.
            scores = tf.linalg.matvec(tf.gather(self.table, ids), tf.constant(u))
            if self.bias is not None:
                scores += tf.gather(self.bias, ids)
            return np.asarray(scores.numpy(), dtype=np.float32)
        table = np.asarray(self.table, dtype=np.float32)
        out = np.empty(ids.shape, np.float32)
        chunk = 16  # keeps the gathered [chunk, K', d] block small and cache-resident
        for lo in range(0, len(ids), chunk):
            hi = min(len(ids), lo + chunk)
            rows = table[ids[lo:hi]]
            out[lo:hi] = np.matmul(rows, u[lo:hi, :, None])[..., 0]
        if self.bias is not None:
            out += np.asarray(self.bias, dtype=np.float32)[ids]
        return out

    def _rescore(self, queries: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
        """Re-score candidate ids [B, K'] with the current rows and keep the k best per query."""
        valid = ids >= 0
        scores = self._current_scores(np.ascontiguousarray(queries[:, : self.dim]), np.where(valid, ids, 0))
        scores = np.where(valid, scores, -np.inf)
        if k < ids.shape[1]:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        out = np.take_along_axis(np.where(valid, ids, -1), best, axis=1).astype(np.int64)
        if out.shape[1] < k:
            out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
        return out

    def exact_topk(self, u: Any, k: int, V: Any | None = None) -> np.ndarray:
        """Exact top-k ids [B, k] by u·V_j (+ b_j) over all rows (the reference for recall; O(B·n·d))."""
        table = self.table if V is None else V
        q = tf.constant(_as_float32(u))
        ids = []
        for lo in range(0, int(q.shape[0]), 64):  # bounds the [chunk, n] score block
            scores = tf.matmul(q[lo : lo + 64], tf.convert_to_tensor(table), transpose_b=True)
            if self.bias is not None:
                scores += tf.convert_to_tensor(self.bias)[None, :]
            ids.append(tf.math.top_k(scores, k).indices.numpy())
        return np.concatenate(ids).astype(np.int64)

    def recall_of_true_topk(self, u: Any, V: Any | None = None, k: int | None = None, sample: int = 128) -> float:
        """Share of the exact top-k (by u·V_j + b_j) that ``search`` returns, on up to ``sample`` queries.

        ``V`` defaults to the miner's live table (pass another only if it has the same rows, e.g. a snapshot).
        """
        k = self.k if k is None else k
        queries = _as_float32(u)
        if len(queries) > sample:
            queries = queries[np.sort(self._rng.choice(len(queries), size=sample, replace=False))]
        exact = self.exact_topk(queries, k, V)
        found = self.search(queries, k=k)
        hits = sum(len(np.intersect1d(exact[i], found[i])) for i in range(len(queries)))
        return hits / float(len(queries) * k)


def _extract_ivf(index: Any) -> Any | None:
    """The IVF sub-index of a freshly built index, or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
