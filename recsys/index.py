"""FAISS maximum-inner-product retrieval over the video embeddings: build, tune, save, load and search.

Scores are u·V_j + b_j. The bias is folded into plain inner-product search as an extra coordinate,
[V_j, b_j] · [u, 1], so every index is built by ``faiss.index_factory(d + 1, spec, METRIC_INNER_PRODUCT)``.
Row 0 of the table is the out-of-vocabulary bucket: it is never added to the index, so it is never returned, and
FAISS ids are video indices (IVF indexes take explicit ids natively; others are wrapped in an IndexIDMap).

One code path for CPU and GPU: when ``faiss.get_num_gpus() > 0`` the index is cloned to every GPU with
``faiss.index_cpu_to_all_gpus`` before training, adding and searching; it is always saved from a CPU copy.
Types FAISS cannot run on a GPU (HNSW) stay on the CPU. A GPU IVF index caps nprobe and k at 2048.

This module needs numpy and faiss only (no TensorFlow), so serving and benchmarks can use it directly.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.errors import RecsysError
from recsys.publish import publish_file
from recsys.schemas import OOV_INDEX

__all__ = [
    "Exclusions",
    "IndexFileError",
    "VideoIndex",
    "augment_items",
    "augment_queries",
    "default_spec",
    "exact_topk",
    "exclusion_matrix",
    "factory_string",
    "ivf_nlist",
    "mixture_queries",
    "read_index",
    "recall_at_k",
]

log = logging.getLogger(__name__)

Exclusions = Sequence[Sequence[int] | np.ndarray] | np.ndarray | None

FLAT_LIMIT = 50_000  # below this many videos exact search is fast enough (< ~5 ms per query at d=256)
IVF_FLAT_LIMIT = 2_000_000  # below this many, uncompressed IVF vectors fit comfortably in RAM (< 2 GB at d=256)
TRAIN_POINTS_PER_CENTROID = 64  # k-means sample per IVF list (FAISS warns below 39)
MIN_TRAIN_POINTS = 65_536  # PQ codebooks (256 centroids per sub-quantizer) want ~10k points at least
LOSSY_RERANK = 4  # candidates fetched per wanted result from a compressed index, re-scored exactly
# Smaller batches search on one OpenMP thread: FAISS parallelises over queries, and for a few queries the parallel
# region's start-up and barrier cost more than the search (here, HNSW32 at 100k: 0.25 ms on one thread, 7.6 ms on
# two for a single query). omp_set_num_threads only affects the calling thread, so concurrent servers are safe.
PARALLEL_MIN_BATCH = 64
_EFSEARCH_START = 16
_EFSEARCH_MAX = 4096
_EXACT_COMPONENT = re.compile(r"^(IDMap2?|Flat|IVF\d+(_HNSW\d+)?|HNSW\d+|Pad\d+|RFlat|Refine\(Flat\))$", re.IGNORECASE)


class IndexFileError(RecsysError):
    """An index file is missing, truncated or not a FAISS index."""


# ---------------------------------------------------------------------------------------------- specs
def ivf_nlist(n: int) -> int:
    """Number of IVF lists for n vectors: about 4·sqrt(n), at least 1."""
    return max(1, round(4 * math.sqrt(max(n, 1))))


def default_spec(n: int, dim: int) -> str:
    """The default FAISS factory string for a catalogue of n videos with d-dimensional embeddings.

    - n < 50k: "Flat". Exact search over 50k x 257 floats is ~13 M multiply-adds (a few ms per query on one
      core); nothing to train, recall 1.0.
    - n < 2M: "IVF{4·sqrt(n)},Flat". Flat codes keep scores exact, so recall depends only on nprobe (tuned to a
      target on held-out user vectors); 4·sqrt(n) lists of ~sqrt(n)/4 vectors balance the coarse assignment
      against the list scan. At 1M x 256 the vectors take 1 GB, which one machine holds easily.
    - larger: "IVF{4·sqrt(n)},PQ{d/8}". Past a few million rows flat codes cost 1 KB per video (10 GB at 10M,
      100 GB at 100M) and a scan is memory-bound; PQ with d/8 one-byte sub-quantizers (32 B for d=256, 32x
      smaller) keeps the index in RAM or on one GPU. Its scores are approximate, so VideoIndex re-scores a few
      times more candidates than asked with the exact embeddings, which recovers most of the PQ loss.
      ``factory_string`` pads d+1 up to a multiple of the sub-quantizer count.
    """
    if n < FLAT_LIMIT:
        return "Flat"
    if n < IVF_FLAT_LIMIT:
        return f"IVF{ivf_nlist(n)},Flat"
    return f"IVF{ivf_nlist(n)},PQ{max(1, dim // 8)}"


def factory_string(spec: str, dim: int) -> str:
    """The factory string actually built for a spec at index dimension dim (= d + 1).

    PQ needs dim divisible by its sub-quantizer count; d + 1 rarely is (257 is prime), so a spec whose PQ does
    not divide dim and that has no leading transform gets a "Pad{m}," prefix (zero coordinates leave inner
    products unchanged).
    """
    found = re.search(r"(?:^|,)PQ(\d+)", spec)
    if found is None or re.match(r"^(Pad|PCA|OPQ|RR|ITQ|L2norm)", spec):
        return spec
    m = int(found.group(1))
    if dim % m == 0:
        return spec
    return f"Pad{math.ceil(dim / m) * m},{spec}"


def _is_exact(factory: str) -> bool:
    """Whether an index built from this factory string returns exact inner products (no compressed codes)."""
    return all(_EXACT_COMPONENT.match(part.strip()) for part in factory.split(","))


# ---------------------------------------------------------------------------------------------- vectors
def augment_items(embeddings: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Item vectors [V_j, b_j] as float32 [n, d + 1] (b = 0 without a bias)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    out = np.empty((emb.shape[0], emb.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = emb
    out[:, -1] = 0.0 if bias is None else np.asarray(bias, dtype=np.float32)
    return out


def augment_queries(user_vectors: np.ndarray, bias_weight: float = 1.0) -> np.ndarray:
    """Query vectors [u, w] as float32 [B, d + 1]; w = 1 adds the video bias to the score, w = 0 ignores it."""
    u = np.asarray(user_vectors, dtype=np.float32)
    out = np.empty((u.shape[0], u.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = u
    out[:, -1] = bias_weight
    return out


def _all_threads() -> int:
    """Use every core for FAISS work started from this thread (builds, exact reference searches)."""
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    return threads


def exact_topk(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (ids, scores) of augmented queries against augmented items, skipping the OOV row 0."""
    _all_threads()
    xb = np.ascontiguousarray(items[1:], dtype=np.float32)
    k = max(1, min(k, len(xb)))
    scores, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(ids >= 0, ids + 1, -1).astype(np.int64), scores.astype(np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true ids (>= 0) that appear in the found row."""
    if len(truth) == 0:
        return 1.0
    rows = len(truth)
    width = np.int64(max(int(found.max(initial=0)), int(truth.max(initial=0))) + 2)
    offsets = np.arange(rows, dtype=np.int64)[:, None] * width
    hit = np.isin(truth + offsets, np.where(found >= 0, found + offsets, -1)) & (truth >= 0)
    wanted = np.maximum((truth >= 0).sum(axis=1), 1)
    return float((hit.sum(axis=1) / wanted).mean())


def mixture_queries(embeddings: np.ndarray, n: int, seed: int = 0, max_parts: int = 8) -> np.ndarray:
    """Synthetic user vectors: random convex mixtures of 1..max_parts embedding rows (OOV row excluded).

    The fallback for tuning when no real user vectors are available; real ones are better (see DESIGN.md).
    """
    rng = np.random.default_rng(seed)
    rows = len(embeddings) - 1
    if rows < 1:
        return np.zeros((n, embeddings.shape[1]), np.float32)
    parts = rng.integers(1, max_parts + 1, size=n)
    pick = rng.integers(1, rows + 1, size=(n, max_parts))
    weights = rng.dirichlet(np.ones(max_parts), size=n) * (np.arange(max_parts)[None, :] < parts[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("bp,bpd->bd", weights, np.asarray(embeddings, np.float32)[pick]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- device
def clone_to_gpus(index: Any) -> Any | None:
    """A copy of a CPU index on every GPU FAISS sees, or None (no GPU, or a type with no GPU implementation)."""
    if faiss.get_num_gpus() <= 0:
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:
        log.warning("index stays on the CPU: %s", exc)
        return None


def set_nprobe(index: Any, nprobe: int) -> None:
    """Set nprobe on an IVF index on either device, wrapped (pre-transforms) or not."""
    space = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)()  # the GPU one also handles CPU indexes
    space.set_index_parameter(index, "nprobe", nprobe)


def _to_device(index: Any) -> tuple[Any, str]:
    """The index cloned to all GPUs when FAISS sees any (CPU otherwise); returns (index, "gpu" | "cpu")."""
    gpu = clone_to_gpus(index)
    return (index, "cpu") if gpu is None else (gpu, "gpu")


def _to_cpu(index: Any, device: str) -> Any:
    """A CPU copy of an index (the index itself when it already is one)."""
    return faiss.index_gpu_to_cpu(index) if device == "gpu" else index


def read_index(path: Path, mmap: bool = False) -> Any:
    """Read a FAISS index file, turning a missing, truncated or corrupt file into IndexFileError.

    ``mmap`` maps flat codes and inverted lists read-only from the file (IO_FLAG_MMAP_IFC): processes that read
    the same file share one copy in the page cache instead of each holding the vectors in private memory.
    """
    if not path.is_file():
        raise IndexFileError(f"{path}: index file not found")
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise IndexFileError(f"{path}: unreadable FAISS index (truncated or corrupt): {first}") from exc


# ---------------------------------------------------------------------------------------------- exclusions
def exclusion_matrix(exclude: Exclusions, batch: int) -> np.ndarray | None:
    """Exclusions (lists or a matrix) as an int64 [B, E] matrix padded with -1 (None when there are none)."""
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray):
        mat = np.asarray(exclude, dtype=np.int64)
        if mat.ndim == 1 and batch == 1:
            mat = mat[None, :]
    else:
        rows = [np.asarray(r, dtype=np.int64).ravel() for r in exclude]
        if len(rows) != batch:
            raise ValueError(f"exclude has {len(rows)} rows for {batch} queries")
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        mat = np.full((batch, int(lengths.max(initial=0))), -1, dtype=np.int64)
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        row_of = np.repeat(np.arange(batch), lengths)
        col_of = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mat[row_of, col_of] = flat
    if mat.ndim != 2 or mat.shape[0] != batch:
        raise ValueError(f"exclude must be [{batch}, E], got shape {mat.shape}")
    return mat if mat.shape[1] else None


def _member(ids: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Row-wise membership: out[b, i] = ids[b, i] in exclude[b, :] (vectorised with per-row offsets)."""
    width = np.int64(max(int(ids.max(initial=0)), int(exclude.max(initial=0))) + 2)
    offsets = np.arange(len(ids), dtype=np.int64)[:, None] * width
    keys = np.sort((exclude + offsets)[exclude >= 0])
    probe = ids + offsets
    if not len(keys):
        return np.zeros(ids.shape, dtype=bool)
    # A sorted search instead of np.isin: 4-5x faster at serving's sizes (isin sorts both sides every call).
    return keys[np.minimum(np.searchsorted(keys, probe), len(keys) - 1)] == probe


# ---------------------------------------------------------------------------------------------- the index
class VideoIndex:
    """A FAISS index over [V_j, b_j] (rows 1..n-1, ids = video indices) with the embeddings it was built from."""

    def __init__(
        self,
        index: Any,
        embeddings: np.ndarray,
        bias: np.ndarray | None,
        spec: str,
        *,
        video_ids: np.ndarray | None = None,
        params: dict[str, int] | None = None,
        device: str = "cpu",
        nlist: int | None = None,
        stats: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        """Wrap a built index; prefer ``build``, ``read`` or ``load``.

        ``nlist`` is the IVF list count (read from the CPU index before it moved to a GPU; None: not IVF).
        ``threads`` is the OpenMP thread count for batches of at least PARALLEL_MIN_BATCH queries (default: cores).
        """
        self.index = index
        self.nlist = nlist
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self.spec = spec
        self.factory = factory_string(spec, self.dim + 1)
        self.exact = _is_exact(self.factory)
        self.device = device
        self.stats = dict(stats or {})
        self.threads = max(1, threads or os.cpu_count() or 1)
        self._video_ids = None if video_ids is None else np.asarray(video_ids, dtype=object)
        if self._video_ids is not None and len(self._video_ids) != self.n_videos:
            raise ValueError(f"{len(self._video_ids)} video ids for {self.n_videos} embeddings")
        if int(index.d) != self.dim + 1:
            raise ValueError(f"index dimension {index.d} != embedding dimension {self.dim} + 1 (bias coordinate)")
        self.params: dict[str, int] = {}
        self.set_params(**({"rerank": 1 if self.exact else LOSSY_RERANK} | (params or {})))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        bias: np.ndarray | None = None,
        spec: str | None = None,
        *,
        video_ids: np.ndarray | None = None,
        seed: int = 0,
        train_points_per_centroid: int = TRAIN_POINTS_PER_CENTROID,
    ) -> VideoIndex:
        """Build an index over rows 1..n-1 of [V, b]: factory, (GPU,) train on a sample, add with video-index ids."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) < 2:
            raise ValueError(f"need embeddings [n >= 2, d], got shape {emb.shape}")
        n, dim = emb.shape
        spec = spec or default_spec(n, dim)
        factory = factory_string(spec, dim + 1)
        t0 = time.perf_counter()
        _all_threads()
        index = faiss.index_factory(dim + 1, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:  # only IVF indexes store explicit ids themselves
            index = faiss.IndexIDMap(index)
        index, device = _to_device(index)
        items = augment_items(emb, bias)
        ids = np.arange(1, n, dtype=np.int64)
        t1 = time.perf_counter()
        if not index.is_trained:
            index.train(_training_sample(items, ivf, train_points_per_centroid, seed))
        t2 = time.perf_counter()
        index.add_with_ids(items[1:], ids)
        t3 = time.perf_counter()
        del items
        stats = {
            "build_seconds": round(t3 - t0, 3),
            "train_seconds": round(t2 - t1, 3),
            "add_seconds": round(t3 - t2, 3),
            "device": device,
            "ntotal": int(index.ntotal),
        }
        params = {"nprobe": min(8, int(ivf.nlist))} if ivf is not None else {}
        if "HNSW" in factory.upper() and ivf is None:
            params = {"efSearch": 128}
        nlist = None if ivf is None else int(ivf.nlist)
        return cls(
            index,
            emb,
            bias,
            spec,
            video_ids=video_ids,
            params=params,
            device=device,
            nlist=nlist,
            stats=stats,
        )

    @classmethod
    def read(
        cls,
        path: Path,
        embeddings: np.ndarray,
        bias: np.ndarray | None,
        spec: str,
        *,
        video_ids: np.ndarray | None = None,
        params: dict[str, int] | None = None,
        mmap: bool = False,
    ) -> VideoIndex:
        """Read a saved index (IndexFileError if unreadable) and move it to the GPU when there is one."""
        cpu_index = read_index(path, mmap=mmap)
        ivf = faiss.try_extract_index_ivf(cpu_index)
        nlist = None if ivf is None else int(ivf.nlist)
        index, device = _to_device(cpu_index)
        return cls(
            index,
            embeddings,
            bias,
            spec,
            video_ids=video_ids,
            params=params,
            device=device,
            nlist=nlist,
        )

    @classmethod
    def from_bundle(cls, bundle: Any) -> VideoIndex:
        """A loaded bundle's index, or an exact Flat index over its embeddings when it has none."""
        if bundle.index is not None:
            return bundle.index
        return cls.build(bundle.embeddings, bundle.bias, "Flat", video_ids=bundle.video_ids)

    def write(self, path: Path) -> None:
        """Save a CPU copy of the index (published atomically, so a crash never leaves a partial file)."""
        with publish_file(path) as tmp:
            faiss.write_index(_to_cpu(self.index, self.device), str(tmp))

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """d, the embedding width (the index itself has d + 1 dimensions)."""
        return int(self.embeddings.shape[1])

    @property
    def n_videos(self) -> int:
        """Rows of the embedding table, OOV row included."""
        return int(self.embeddings.shape[0])

    @property
    def ntotal(self) -> int:
        """Vectors in the index (n_videos - 1: every row but OOV)."""
        return int(self.index.ntotal)

    @property
    def tunable_parameter(self) -> str | None:
        """The recall/speed knob of this index type: "nprobe" (IVF), "efSearch" (HNSW) or None (exact Flat)."""
        if self.nlist is not None:
            return "nprobe"
        if "HNSW" in self.factory.upper():
            return "efSearch"
        return None

    def set_params(self, **params: int) -> None:
        """Set search parameters: nprobe (IVF), efSearch (HNSW), rerank (candidates per result, compressed codes)."""
        space = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)() if self.device == "gpu" else None
        space = space or faiss.ParameterSpace()
        for name, value in params.items():
            if name == "rerank":
                self.params["rerank"] = max(1, int(value))
                continue
            if name == "nprobe":
                value = max(1, min(int(value), (self.nlist or 1)))
            space.set_index_parameter(self.index, name, int(value))
            self.params[name] = int(value)

    # ------------------------------------------------------------------ search
    def search(self, user_vectors: np.ndarray, k: int, exclude: Exclusions = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k video indices [B, k] (int64, best first, -1 padding) and scores u·V_j + b_j [B, k] (float32).

        ``exclude`` holds per-query video indices never to return (a list of lists, or an int matrix padded with
        negatives). The OOV row 0 is never returned. Padding scores are -inf.
        """
        u = self._check_queries(user_vectors)
        queries = augment_queries(u, 1.0)
        excl = exclusion_matrix(exclude, len(queries))  # once, for the search and any re-search
        ids, scores = self._search(queries, k, excl)
        return self._refill(queries, k, excl, ids, scores)

    def _refill(
        self, queries: np.ndarray, k: int, excl: np.ndarray | None, ids: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-search rows that came back short with 4x the probes until they are full or every list is probed.

        The probed IVF lists can hold fewer than k + exclusions vectors (a user vector near a sparse region of
        the catalogue); an answer with fewer than k videos while the catalogue has more is a miss, not a result.
        """
        if self.nlist is None or self.device == "gpu":
            return ids, scores
        excluded = np.zeros(len(queries), np.int64) if excl is None else (excl > OOV_INDEX).sum(axis=1)
        short = (ids[:, -1] < 0) & (self.ntotal - excluded >= k)
        nprobe = int(self.params.get("nprobe", 1))
        direct = isinstance(faiss.downcast_index(self.index), faiss.IndexIVF)  # per-call params reach it as is
        while short.any() and nprobe < self.nlist and direct:
            nprobe = min(self.nlist, nprobe * 4)
            rows = np.flatnonzero(short)
            sub = None if excl is None else excl[rows]
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            ids[rows], scores[rows] = self._search(queries[rows], k, sub, params=params)
            short[rows] = ids[rows, -1] < 0
        return ids, scores

    def similar(self, video_indices: int | Sequence[int] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest videos to each given video by embedding inner product V_i·V_j (bias ignored), itself excluded.

        One int gives [1, k] arrays. The OOV index 0 has no neighbours (a row of -1).
        """
        idx = np.atleast_1d(np.asarray(video_indices, dtype=np.int64))
        if ((idx < 0) | (idx >= self.n_videos)).any():
            raise ValueError(f"video indices must be in [0, {self.n_videos})")
        queries = augment_queries(self.embeddings[idx], 0.0)
        ids, scores = self._search(queries, k, idx[:, None])
        oov = idx == OOV_INDEX
        ids[oov], scores[oov] = -1, -np.inf
        return ids, scores

    def video_ids(self, ids: np.ndarray) -> np.ndarray:
        """Video ID strings for video indices (object array of the same shape; None for -1 padding)."""
        if self._video_ids is None:
            raise ValueError("this index was built without video ids")
        arr = np.asarray(ids, dtype=np.int64)
        out = self._video_ids[np.clip(arr, 0, self.n_videos - 1)]
        out[arr < 0] = None
        return out

    def _check_queries(self, user_vectors: np.ndarray) -> np.ndarray:
        u = np.asarray(user_vectors, dtype=np.float32)
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"user vectors must be [B, {self.dim}], got shape {u.shape}")
        if not np.isfinite(u).all():
            raise ValueError("user vectors hold NaN or Inf")
        return u

    def _search(
        self, queries: np.ndarray, k: int, exclude: Exclusions, params: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search augmented queries, over-fetching by the largest exclusion count, mask, re-score, re-pad."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        batch = len(queries)
        excl = exclusion_matrix(exclude, batch)
        extra = 0 if excl is None else int((excl > OOV_INDEX).sum(axis=1).max(initial=0))
        fetch = max(1, min(self.ntotal, (k + extra) * self.params["rerank"]))
        faiss.omp_set_num_threads(self.threads if batch >= PARALLEL_MIN_BATCH else 1)
        if params is None:
            scores, ids = self.index.search(np.ascontiguousarray(queries), fetch)
        else:
            scores, ids = self.index.search(np.ascontiguousarray(queries), fetch, params=params)
        ids = ids.astype(np.int64, copy=False)
        valid = ids > OOV_INDEX
        if not self.exact:
            scores = self._exact_scores(queries, np.where(valid, ids, 0))
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        if excl is not None:
            valid &= ~_member(ids, excl)
        if self.exact:  # already best first: keep the first k valid entries in order
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        else:  # exact re-scores: sort the valid candidates by them
            order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(valid, order, axis=1)
        out_ids = np.where(keep, np.take_along_axis(ids, order, axis=1), -1)
        out_scores = np.where(keep, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32)
        if out_ids.shape[1] < k:
            pad = ((0, 0), (0, k - out_ids.shape[1]))
            out_ids = np.pad(out_ids, pad, constant_values=-1)
            out_scores = np.pad(out_scores, pad, constant_values=-np.inf)
        return out_ids, out_scores

    def _exact_scores(self, queries: np.ndarray, ids: np.ndarray, chunk: int = 64) -> np.ndarray:
        """[u, w]·[V_j, b_j] for candidate ids [B, K] from the float32 embeddings (re-scoring lossy codes)."""
        out = np.empty(ids.shape, dtype=np.float32)
        for lo in range(0, len(ids), chunk):
            hi = lo + chunk
            rows = self.embeddings[ids[lo:hi]]
            out[lo:hi] = np.einsum("bkd,bd->bk", rows, queries[lo:hi, :-1])
            if self.bias is not None:
                out[lo:hi] += queries[lo:hi, -1:] * self.bias[ids[lo:hi]]
        return out

    # ------------------------------------------------------------------ tuning
    def recall(self, user_vectors: np.ndarray, k: int = 100, truth: np.ndarray | None = None) -> float:
        """Recall@k of ``search`` against exact search over the same rows, for these user vectors."""
        u = self._check_queries(user_vectors)
        if truth is None:
            truth, _ = exact_topk(augment_queries(u), augment_items(self.embeddings, self.bias), k)
        found, _ = self.search(u, k)
        return recall_at_k(found, truth)

    def tune(self, user_vectors: np.ndarray, target_recall: float = 0.95, k: int = 100) -> dict[str, Any]:
        """The smallest nprobe (IVF) or efSearch (HNSW) whose recall@k on these queries reaches the target.

        ``smallest_reaching`` over a doubling schedule (at 1M videos nprobe 4 missed 0.95 by 0.0015 and doubling
        alone took 8). Keeps that value (or the largest tried, with ``reached`` false) and returns every value
        tried. Exact indexes just report their recall.
        """
        t0 = time.perf_counter()
        u = self._check_queries(user_vectors)
        truth, _ = exact_topk(augment_queries(u), augment_items(self.embeddings, self.bias), k)
        name = self.tunable_parameter
        if name == "nprobe":
            schedule = doubling_schedule(self.nlist or 1)
        elif name == "efSearch":
            start = max(_EFSEARCH_START, 1 << (k - 1).bit_length())
            schedule = [start << i for i in range(32) if start << i <= _EFSEARCH_MAX] or [start]
        else:
            schedule = [0]
        tried: list[dict[str, float]] = []

        def measure(value: int) -> float:
            if name is not None:
                self.set_params(**{name: value})
            found, _ = self.search(u, k)
            measured = recall_at_k(found, truth)
            tried.append({name or "exact": value, "recall": round(measured, 4)})
            return measured

        value, recall = smallest_reaching(measure, schedule, target_recall)
        if name is not None:
            self.set_params(**{name: value})
        if recall < target_recall:
            log.warning("index %s reached recall@%d %.3f < target %.3f", self.spec, k, recall, target_recall)
        return {
            "parameter": name,
            "value": self.params.get(name) if name else None,
            "recall_at_k": round(recall, 4),
            "k": k,
            "target": target_recall,
            "reached": recall >= target_recall,
            "queries": len(u),
            "tried": tried,
            "seconds": round(time.perf_counter() - t0, 3),
        }


def doubling_schedule(top: int) -> list[int]:
    """1, 2, 4, ... up to and including ``top``: the values a search-width tuning brackets its target with."""
    top = max(int(top), 1)
    return sorted({min(2**i, top) for i in range(int(math.log2(top)) + 2)})


def smallest_reaching(measure: Callable[[int], float], schedule: Sequence[int], target: float) -> tuple[int, float]:
    """The smallest search width whose measured recall reaches ``target`` (recall grows with the width).

    The schedule (increasing, usually doubling) brackets it; bisection between the last value that missed and the
    first that reached it then narrows it to within 1/8 of the missed value (to 1 for small widths), since doubling
    alone overshoots by up to 2x and a search costs about linearly in the width. Returns the value and its recall;
    when no value reaches the target, the last one tried and its recall. ``measure`` is called once per value.
    """
    if not schedule:
        raise ValueError("an empty schedule")
    recall, missed, value = 0.0, 0, schedule[0]
    for value in schedule:
        recall = measure(value)
        if recall >= target:
            break
        missed = value
    if recall < target or missed == 0:
        return value, recall
    low, high, best = missed, value, recall  # low missed, high reached
    while high - low > max(1, low // 8):
        middle = (low + high) // 2
        reached = measure(middle)
        if reached >= target:
            high, best = middle, reached
        else:
            low = middle
    return high, best


def _training_sample(items: np.ndarray, ivf: Any | None, per_centroid: int, seed: int) -> np.ndarray:
    """Rows (OOV excluded) to train on: up to per_centroid · nlist (IVF) or MIN_TRAIN_POINTS, chosen at random."""
    rows = items[1:]
    cap = max(per_centroid * int(ivf.nlist), MIN_TRAIN_POINTS) if ivf is not None else MIN_TRAIN_POINTS
    if len(rows) <= cap:
        return np.ascontiguousarray(rows)
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=cap, replace=False))
    return np.ascontiguousarray(rows[pick])
