"""Negative miner for the top-K-plus-random loss: a FAISS inner-product index over the output table V.

The index is refreshed every ``refresh_every`` steps and goes stale in between, so ``search`` fetches K' > K
candidates from it and re-scores them with the CURRENT rows of V, keeping the top K. An IVF index's coarse quantizer
(the expensive k-means) is trained on the first build, every ``retrain_every`` refreshes and whenever its lists have
grown unbalanced; other refreshes keep it and move only the rows that drifted since they were indexed (a sampled loss
moves the label and head rows a lot and the uniform tail barely). After each build nprobe can be tuned to the
smallest value whose re-scored top-K reaches a target recall of the exact top-K, measured on the first live queries
after each refresh (queries move as the tower trains). A bias b,
if given, is folded into the search as an extra coordinate: [V_j, b_j] · [u, 1] = u·V_j + b_j.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import tensorflow as tf

from recsys.config import TrainConfig
from recsys.index import clone_to_gpus, doubling_schedule, ivf_nlist, set_nprobe, smallest_reaching
from recsys.softmax import candidate_logits
from recsys.sparse_optim import tf_variable

__all__ = ["NegativeMiner", "RefreshStats", "TouchedRows", "default_ivf_spec"]

_PARALLEL_WORK = 2e7  # multiply-adds below which a search runs on one thread

log = logging.getLogger(__name__)


# Lower than serving's recsys.index.FLAT_LIMIT on purpose: the miner searches a whole batch (1024 queries) at once,
# where an exact scan costs B*n*d and IVF's fixed costs are shared, so IVF pays off at a smaller catalogue.
EXACT_BELOW = 20_000


def default_ivf_spec(n: int) -> str:
    """The default index: exact below EXACT_BELOW rows (cheaper than any IVF there), else IVF as serving sizes it."""
    if n < EXACT_BELOW:
        return "Flat"
    return f"IVF{ivf_nlist(n)},Flat"


@dataclass(frozen=True)
class RefreshStats:
    """What one refresh did and how long each part took (seconds)."""

    step: int
    kind: str  # "build" (train + add), "readd" (reset + add) or "update" (changed rows only)
    rows: int  # rows (re-)added
    read_s: float  # reading the table (and, for an update, finding the drifted rows)
    train_s: float
    add_s: float
    reason: str = ""


class TouchedRows:
    """Set of table rows updated since the last refresh: each step's labels and head candidates."""

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


def _take(x: Any, select: np.ndarray | slice) -> np.ndarray:
    """Rows of a tensor, variable or array (ids gathered, a slice read) as C-contiguous float32 numpy."""
    if isinstance(select, slice):
        return _as_float32(x[select])
    if isinstance(x, tf.Variable | tf.Tensor):
        return _as_float32(tf.gather(x, select))
    return _as_float32(np.asarray(x)[select])


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
        target_recall: float | None = None,
        max_nprobe: int = 64,
        drift_tolerance: float | None = 0.05,
        retrain_every: int = 50,
        imbalance_growth: float = 1.5,
        track_touched: bool = True,
        retune_every: int = 5,
        train_points_per_centroid: int = 64,
        incremental_max_fraction: float = 0.25,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        """Configure the miner; the index is built on the first refresh.

        ``index_spec`` is a FAISS factory string (None: ``default_ivf_spec(n)``; "Flat" is exact). K' < K is
        rejected. ``nprobe`` is fixed, or with ``target_recall`` tuned after builds, never above ``max_nprobe`` (the
        search cost grows linearly with it, so the cap bounds a step's cost when the target is out of reach).
        ``drift_tolerance``: a refresh re-indexes the rows that moved more than this times the table's RMS row norm
        (None: re-add every row). ``imbalance_growth``: retrain early when the lists' imbalance factor has grown by
        this factor since training. ``track_touched``: check drift only on the rows this miner returned as
        candidates or was told about with ``mark`` (the labels) since the last refresh, not on the whole table.
        ``retune_every``: re-check nprobe after builds and every this many refreshes.
        ``train_points_per_centroid`` caps the k-means sample (FAISS warns below 39).
        """
        if k < 1 or k_prime < k:
            raise ValueError(f"need 1 <= k <= k_prime, got k={k}, k_prime={k_prime}")
        if refresh_every < 1 or retrain_every < 1:
            raise ValueError("refresh_every and retrain_every must be >= 1")
        if target_recall is not None and not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        if drift_tolerance is not None and drift_tolerance < 0:
            raise ValueError(f"drift_tolerance must be >= 0, got {drift_tolerance}")
        # Keras variables are unwrapped: gathering from one reads (and, after sparse updates, copies) the whole table.
        self.table = table if isinstance(table, np.ndarray | tf.Tensor) else tf_variable(table)
        self.bias = bias if bias is None or isinstance(bias, np.ndarray | tf.Tensor) else tf_variable(bias)
        self.n = int(table.shape[0])
        self.dim = int(table.shape[1])
        self.k = k
        self.k_prime = k_prime
        self.refresh_every = refresh_every
        self.warmup_steps = warmup_steps
        self.index_spec = index_spec or default_ivf_spec(self.n)
        self.nprobe = nprobe
        self.target_recall = target_recall
        self.max_nprobe = max_nprobe
        self.drift_tolerance = drift_tolerance
        self.retrain_every = retrain_every
        self.imbalance_growth = imbalance_growth
        self.retune_every = max(1, retune_every)
        self.touched = TouchedRows(self.n) if track_touched and drift_tolerance is not None else None
        self.train_points_per_centroid = train_points_per_centroid
        self.incremental_max_fraction = incremental_max_fraction
        # FAISS parallelises builds and batch searches with OpenMP. Use the machine's cores (TensorFlow is idle
        # while the miner runs in the same loop), never more than there are, and one for small searches, where
        # OpenMP start-up and spinning beside TensorFlow's thread pools cost more than the search.
        self.threads = max(1, min(threads or os.cpu_count() or 1, os.cpu_count() or 1))
        self._rng = np.random.default_rng(seed)
        self.index: faiss.Index | None = None
        # With a GPU, searches run on a copy of the index there, made again after every refresh: the CPU index stays
        # the one that refreshes edit (GPU IVF lists cannot move single rows) and the one the drift check reads.
        self.gpu_index: Any | None = None
        self._gpu_nprobe: int | None = None
        self.last_refresh_step: int | None = None
        self.refreshes_since_train = 0  # refreshes done since the quantizer was last trained
        self._trained_imbalance = 1.0
        self._tune_pending = False
        self.tuning: dict[str, Any] | None = None  # the last nprobe tuning: chosen value and recall per value tried
        self.history: list[RefreshStats] = []
        self._scores: Any = None
        if isinstance(self.table, tf.Variable) and (self.bias is None or isinstance(self.bias, tf.Variable)):
            # The step's own head logits, traced once: no [B, K', d] copy of the rows and no per-call op dispatch.
            self._scores = tf.function(
                lambda u, ids: candidate_logits(u, self.table, self.bias, ids),
                input_signature=[tf.TensorSpec([None, self.dim], tf.float32), tf.TensorSpec([None, None], tf.int64)],
            )

    @classmethod
    def from_config(
        cls, table: Any, bias: Any | None, cfg: TrainConfig, index_spec: str | None = None, seed: int | None = None
    ) -> NegativeMiner:
        """The miner a training config describes (K, K', R, warm-up, nprobe tuning, drift tolerance)."""
        return cls(
            table,
            bias,
            k=cfg.top_k,
            k_prime=cfg.top_k_fetch,
            refresh_every=cfg.refresh_every,
            warmup_steps=cfg.warmup_steps,
            index_spec=index_spec,
            nprobe=cfg.nprobe,
            target_recall=cfg.index_target_recall,
            max_nprobe=cfg.index_max_nprobe,
            drift_tolerance=cfg.refresh_drift,
            seed=cfg.seed if seed is None else seed,
        )

    # ------------------------------------------------------------------ schedule
    def topk_enabled(self, step: int) -> bool:
        """Whether top-K negatives are used at this step (False during the uniform-only warm-up)."""
        return step >= self.warmup_steps

    def mark(self, rows: Any) -> None:
        """Note rows the caller is about to update (the batch's labels) so the next refresh checks their drift."""
        if self.touched is not None:
            self.touched.mark(rows)

    @property
    def tuning_pending(self) -> bool:
        """Whether the next ``search`` re-checks nprobe first (after a build, and every ``retune_every`` refreshes)."""
        return self._tune_pending

    def refresh_due(self, step: int) -> bool:
        """Whether the index is missing or at least ``refresh_every`` steps old."""
        return self.last_refresh_step is None or step - self.last_refresh_step >= self.refresh_every

    def maybe_refresh(self, step: int) -> RefreshStats | None:
        """Refresh if due (top-K enabled only; no index is built during warm-up)."""
        if self.topk_enabled(step) and self.refresh_due(step):
            return self.refresh(step)
        return None

    # ------------------------------------------------------------------ index
    @property
    def _search_dim(self) -> int:
        """Index dimension: d, plus one for the folded-in bias."""
        return self.dim + (1 if self.bias is not None else 0)

    def _rows(self, ids: np.ndarray | slice | None = None) -> np.ndarray:
        """Current table rows (all, ids or a slice) with the bias appended as a last column when present."""
        select = slice(None) if ids is None else ids
        rows = _take(self.table, select)
        if self.bias is None:
            return rows
        out = np.empty((len(rows), self._search_dim), np.float32)
        out[:, : self.dim] = rows
        out[:, self.dim] = _take(self.bias, select)
        return out

    def _queries(self, u: Any) -> np.ndarray:
        """User vectors as float32, with a trailing 1 when the bias is folded in."""
        q = _as_float32(u)
        if self.bias is not None:
            q = np.ascontiguousarray(np.hstack([q, np.ones((q.shape[0], 1), np.float32)]))
        return q

    def _ivf(self) -> Any | None:
        """The IVF part of the index, or None for a non-IVF index (Flat, HNSW...)."""
        return None if self.index is None else _extract_ivf(self.index)

    def refresh(self, step: int = 0) -> RefreshStats:
        """Bring the index up to date with the current table.

        Builds (trains the quantizer, adds every row) on the first call, every ``retrain_every``-th refresh and when
        the lists have grown unbalanced. Otherwise keeps the quantizer and moves only the rows that drifted beyond
        ``drift_tolerance`` (among those marked, with ``track_touched``); it re-adds everything when more than
        ``incremental_max_fraction`` of the rows drifted. Non-IVF indexes are rebuilt.
        """
        faiss.omp_set_num_threads(self.threads)
        t0 = time.perf_counter()
        ivf = self._ivf()
        reason = self._retrain_reason(ivf)
        if reason:
            stats = self._build(step, reason)
        else:
            assert ivf is not None
            self.refreshes_since_train += 1
            ids = self._drifted(ivf)
            if ids is not None and len(ids) <= self.incremental_max_fraction * self.n:
                read_s = time.perf_counter() - t0
                stats = self._update(step, ivf, ids, read_s)
            else:
                why = "no drift tolerance" if ids is None else f"{len(ids)} rows changed"
                stats = self._readd(step, why)
        self._mirror_to_gpus()
        self.last_refresh_step = step
        # Queries drift as the tower trains, so the nprobe that met the target is re-checked now and then.
        recheck = stats.kind == "build" or self.refreshes_since_train % self.retune_every == 0
        self._tune_pending = self.target_recall is not None and self._ivf() is not None and recheck
        self.history.append(stats)
        log.debug("miner refresh %s", stats)
        return stats

    def _mirror_to_gpus(self) -> None:
        """Copy the refreshed index to the GPUs (nothing without one); its nprobe is set at the next search."""
        self.gpu_index = None if self.index is None else clone_to_gpus(self.index)
        self._gpu_nprobe = None

    def _searcher(self) -> Any:
        """The index searches go to: the GPU copy when there is one, with the CPU index's current nprobe."""
        if self.gpu_index is None:
            return self.index
        ivf = self._ivf()
        if ivf is not None and self._gpu_nprobe != int(ivf.nprobe):
            set_nprobe(self.gpu_index, int(ivf.nprobe))
            self._gpu_nprobe = int(ivf.nprobe)
        return self.gpu_index

    def _retrain_reason(self, ivf: Any | None) -> str:
        """Why the quantizer must be (re)trained now, or "" if the current one is kept."""
        if self.index is None:
            return "first build"
        if ivf is None:
            return "not an IVF index"
        if self.refreshes_since_train + 1 >= self.retrain_every:
            return f"every {self.retrain_every} refreshes"
        imbalance = float(ivf.invlists.imbalance_factor())
        if imbalance > self.imbalance_growth * self._trained_imbalance:
            return f"imbalance {imbalance:.2f} > {self.imbalance_growth} x {self._trained_imbalance:.2f}"
        return ""

    def _build(self, step: int, reason: str) -> RefreshStats:
        """A new index: train the quantizer on a sample and add every row."""
        t0 = time.perf_counter()
        vectors = self._rows()
        read_s = time.perf_counter() - t0
        index = faiss.index_factory(self._search_dim, self.index_spec, faiss.METRIC_INNER_PRODUCT)
        ivf = _extract_ivf(index)
        t1 = time.perf_counter()
        if not index.is_trained:
            index.train(self._training_sample(vectors, ivf))
        train_s = time.perf_counter() - t1
        if ivf is not None:
            ivf.nprobe = self.nprobe
            # An array direct map lets later refreshes move just the changed rows between lists.
            ivf.set_direct_map_type(faiss.DirectMap.Array)  # type: ignore[attr-defined]  # not in stubs
        t2 = time.perf_counter()
        index.add(vectors)
        add_s = time.perf_counter() - t2
        self.index = index
        self.refreshes_since_train = 0
        if self.touched is not None:
            self.touched.take()  # every row was just indexed as it is
        if ivf is not None:
            self._trained_imbalance = float(ivf.invlists.imbalance_factor())
        return RefreshStats(step, "build", len(vectors), read_s, train_s, add_s, reason)

    def _readd(self, step: int, reason: str) -> RefreshStats:
        """Empty the lists and add every row again, keeping the trained quantizer."""
        assert self.index is not None
        t0 = time.perf_counter()
        vectors = self._rows()
        read_s = time.perf_counter() - t0
        self.index.reset()
        t1 = time.perf_counter()
        self.index.add(vectors)
        return RefreshStats(step, "readd", len(vectors), read_s, 0.0, time.perf_counter() - t1, reason)

    def _update(self, step: int, ivf: Any, ids: np.ndarray, read_s: float) -> RefreshStats:
        """Move just these rows to their current vectors (and lists)."""
        t0 = time.perf_counter()
        vectors = self._rows(ids)
        read_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        if len(ids):
            ivf.update_vectors(ids, vectors)
        return RefreshStats(step, "update", len(ids), read_s, 0.0, time.perf_counter() - t1)

    def _drifted(self, ivf: Any, chunk: int = 1 << 17) -> np.ndarray | None:
        """Rows whose current vector is farther than drift_tolerance x RMS row norm from their indexed copy.

        The tolerance is relative to the table's typical row rather than to each row, so a score u·v moves by at
        most about tolerance x |u| x typical |v| for every row left alone, whatever that row's own norm.
        """
        if self.drift_tolerance is None or not ivf.direct_map.type:  # no direct map: cannot read rows back
            return None
        assert self.index is not None
        if self.touched is not None:
            return self._drifted_among(self.touched.take(), chunk)
        moved = np.empty(self.n, np.float32)
        norms = 0.0
        for lo in range(0, self.n, chunk):
            hi = min(self.n, lo + chunk)
            current = self._rows(slice(lo, hi))
            diff = self.index.reconstruct_n(lo, hi - lo)
            np.subtract(current, diff, out=diff)
            moved[lo:hi] = np.einsum("ij,ij->i", diff, diff)
            norms += float(np.einsum("ij,ij->i", current, current).sum(dtype=np.float64))
        rms2 = norms / max(self.n, 1)
        return np.flatnonzero(moved > self.drift_tolerance**2 * rms2).astype(np.int64)

    def _drifted_among(self, ids: np.ndarray, chunk: int) -> np.ndarray:
        """The drifted rows among ids, against the RMS row norm of a fixed-size random sample of the table.

        Rows outside ids were only ever in a uniform tail, whose per-row gradient is about 1/m of a label's: they
        stay put between rebuilds (every retrain_every refreshes), which re-index everything anyway.
        """
        assert self.index is not None and self.drift_tolerance is not None
        sample = np.sort(self._rng.choice(self.n, size=min(self.n, 16_384), replace=False))
        rows = self._rows(sample)
        rms2 = float(np.einsum("ij,ij->i", rows, rows).mean(dtype=np.float64))
        out = []
        for lo in range(0, len(ids), chunk):
            part = ids[lo : lo + chunk]
            diff = self.index.reconstruct_batch(part)
            np.subtract(self._rows(part), diff, out=diff)
            out.append(part[np.einsum("ij,ij->i", diff, diff) > self.drift_tolerance**2 * rms2])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

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
        if self._tune_pending:
            self.tune_nprobe(u)
        queries = self.queries(u)
        return self.finish(queries, self.fetch(queries, k_prime, k), k)

    def queries(self, u: Any) -> np.ndarray:
        """The index queries of user vectors (float32, a trailing 1 when the bias is folded in)."""
        return self._queries(u)

    def fetch(self, queries: np.ndarray, k_prime: int | None = None, k: int | None = None) -> np.ndarray:
        """The index's k_prime best ids per query [B, k_prime], not yet re-scored.

        Reads only the index (on the GPU when there is one), never the table, and changes no state but the GPU copy's
        nprobe: it may run on another thread while a training step updates the table (FAISS releases the GIL), as
        long as no refresh runs at the same time.
        """
        if self.index is None:
            raise RuntimeError("the miner has no index yet: call refresh() first")
        k = self.k if k is None else k
        k_prime = max(k, self.k_prime if k_prime is None else k_prime)
        faiss.omp_set_num_threads(self.threads if self._search_work(len(queries)) > _PARALLEL_WORK else 1)
        return self._searcher().search(queries, k_prime)[1]

    def finish(self, queries: np.ndarray, ids: np.ndarray, k: int | None = None, mark: bool = True) -> np.ndarray:
        """Re-score fetched ids [B, K'] with the current table and keep the k best; mark them for the next refresh."""
        found = self._rescore(queries, ids, self.k if k is None else k)
        if mark:
            self.mark(found)  # the training step is about to update these rows
        return found

    def peek(self, u: Any, k: int | None = None) -> np.ndarray:
        """What ``search`` would return, without marking rows or tuning nprobe (for diagnostics)."""
        queries = self.queries(u)
        return self.finish(queries, self.fetch(queries, k=k), k, mark=False)

    def _search(self, queries: np.ndarray, k: int, k_prime: int) -> np.ndarray:
        """Fetch k_prime per query from the index and keep the k best by the current table (marks nothing)."""
        return self.finish(queries, self.fetch(queries, k_prime, k), k, mark=False)

    def tune_nprobe(self, u: Any, sample: int = 128) -> int:
        """Set nprobe to the smallest value whose re-scored top-K holds target_recall of the exact top-K.

        Measured on up to ``sample`` of these live queries against an exact scan of the current table (O(sample·n·d),
        once per check), by ``recsys.index.smallest_reaching`` over 1, 2, 4, ... up to max_nprobe (the search is
        about half a 1M step, and doubling alone overshoots by up to 2x). If no value reaches the target, max_nprobe
        is kept and a warning logged: the training diagnostics' index recall then shows the shortfall.
        """
        self._tune_pending = False
        ivf = self._ivf()
        if ivf is None or self.target_recall is None:
            return self.nprobe
        queries = self._sample_queries(u, sample)
        exact = self.exact_topk(queries, self.k)
        index_queries = self._queries(queries)
        tried: dict[int, float] = {}

        def measure(nprobe: int) -> float:
            ivf.nprobe = nprobe
            tried[nprobe] = _recall(exact, self._search(index_queries, self.k, self.k_prime))
            return tried[nprobe]

        schedule = doubling_schedule(min(int(ivf.nlist), self.max_nprobe))
        nprobe, recall = smallest_reaching(measure, schedule, self.target_recall)
        ivf.nprobe = nprobe
        if recall < self.target_recall:
            log.warning("nprobe %d reaches recall %.3f < target %.3f", nprobe, recall, self.target_recall)
        self.nprobe = nprobe
        self.tuning = {"nprobe": nprobe, "recall": recall, "tried": tried, "queries": len(queries)}
        return nprobe

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
        if self._scores is not None:
            return np.asarray(self._scores(u, ids).numpy(), dtype=np.float32)
        if isinstance(self.table, tf.Variable | tf.Tensor):
            return np.asarray(candidate_logits(tf.constant(u), self.table, self.bias, ids).numpy(), dtype=np.float32)
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
        queries = self._sample_queries(u, sample)
        exact = self.exact_topk(queries, k, V)
        # The internal search: a diagnostic must not mark rows for the next refresh nor trigger a tuning.
        return _recall(exact, self._search(self._queries(queries), k, max(k, self.k_prime)))

    def _sample_queries(self, u: Any, sample: int) -> np.ndarray:
        """Up to ``sample`` of the query rows (a seeded random subset, in order) as float32."""
        queries = _as_float32(u)
        if len(queries) > sample:
            queries = queries[np.sort(self._rng.choice(len(queries), size=sample, replace=False))]
        return queries


def _recall(exact: np.ndarray, found: np.ndarray) -> float:
    """Share of the exact top-k ids [B, k] that appear in the found rows [B, k'] (same queries)."""
    return sum(len(np.intersect1d(e, f)) for e, f in zip(exact, found, strict=True)) / float(exact.size)


def _extract_ivf(index: Any) -> Any | None:
    """The IVF sub-index of a freshly built index, or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
