"""The retrieval engine: one loaded bundle answering batches of queries with one tower call and one FAISS search.

It builds on ``recsys.recommender.Recommender`` (the tower call, the id lookup, the index), which notebooks use
directly, and adds what only the service needs: batches of queries with their own k and exclusions, popularity
answers when the history store is down, titles, and warm-up.

Everything here is synchronous and thread-safe for one caller at a time; the micro-batcher runs it on a worker
thread so the event loop keeps accepting requests while TensorFlow and FAISS (which both release the GIL) work.
An Engine is immutable after construction: a reload builds a new one and swaps the reference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.index import exclusion_matrix
from recsys.recommender import Context, Recommender
from recsys.schemas import OOV_INDEX

log = logging.getLogger(__name__)

__all__ = ["Context", "Engine", "Query", "Result", "WarmupError", "configure_tensorflow"]


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Thread pools of the tower's runtime (before its first op; several workers on few cores want small pools)."""
    if not (intra_op_threads or inter_op_threads):
        return
    import tensorflow as tf

    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError as exc:  # TensorFlow already ran an op in this process
        log.warning("TensorFlow thread settings not applied: %s", exc)


class WarmupError(RecsysError):
    """A freshly loaded bundle failed its warm-up queries (it is not swapped in)."""


@dataclass(frozen=True)
class Query:
    """One candidate request after the history store was read: everything the tower and the search need."""

    history: list[str]  # watched video ids, oldest first (store + request)
    tokens: list[str]  # search tokens, oldest first (store + request)
    context: Context = field(default_factory=Context)
    k: int = 100
    exclude: list[str] = field(default_factory=list)  # video ids never to return (the history when hidden)
    popularity_only: bool = False  # no usable history source: rank by popularity instead of the tower


@dataclass(frozen=True)
class Result:
    """Candidates of one query, best first (no padding), from the model version that computed them."""

    model_version: str
    ids: np.ndarray  # int64 [<= k] video indices
    video_ids: np.ndarray  # object [<= k] id strings
    titles: np.ndarray | None  # object [<= k] titles (None entries unknown), when a catalog is attached
    scores: np.ndarray  # float32 [<= k]
    unknown_history: int
    popularity: bool


class Engine:
    """A verified bundle with its user tower, index, id lookup and popularity ranking, ready to answer batches."""

    def __init__(self, recommender: Recommender) -> None:
        """Wrap a loaded recommender; use ``Engine.load``."""
        self.recommender = recommender
        self.bundle = recommender.bundle
        self.index = recommender.index
        self.model_version = recommender.model_version
        self.video_ids: np.ndarray = recommender.video_ids
        self.titles: np.ndarray | None = None
        counts = self.bundle.features.videos.counts.to_numpy(zero_copy_only=False).astype(np.float64)
        # The vocabulary is ordered by count, so popularity is index order; scores are log counts.
        self.popular_ids = np.arange(1, len(counts) + 1, dtype=np.int64)
        self.popular_scores = np.log1p(counts).astype(np.float32)

    @classmethod
    def load(
        cls, path: Path, *, mmap: bool = True, verify_checksums: bool = True, catalog: Path | None = None
    ) -> Engine:
        """Load and verify a bundle (BUNDLES/latest or one version), load its tower, and warm both up."""
        t0 = time.perf_counter()
        engine = cls(Recommender.load(path, mmap=mmap, verify_checksums=verify_checksums))
        if catalog is not None:
            engine.attach_titles(catalog)
        engine.warm_up()
        log.info(
            "loaded bundle %s (%d videos, d=%d, index %s) in %.1fs",
            engine.model_version,
            engine.bundle.n_videos,
            engine.bundle.embedding_dim,
            engine.index.spec,
            time.perf_counter() - t0,
        )
        return engine

    def attach_titles(self, catalog: Path) -> None:
        """Titles from a videos table (video_id, title), aligned with the video indices (None where unknown)."""
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(catalog, columns=["video_id", "title"])
        except (OSError, KeyError, ValueError) as exc:
            raise RecsysError(f"{catalog}: unreadable catalog, need columns video_id and title ({exc})") from exc
        rows = self.lookup(table["video_id"].cast("string").to_pylist())
        titles = np.full(self.n_videos, None, dtype=object)
        known = rows != OOV_INDEX
        titles[rows[known]] = np.asarray(table["title"].to_pylist(), dtype=object)[known]
        self.titles = titles

    @property
    def n_videos(self) -> int:
        """Rows of the embedding table, OOV included."""
        return int(self.bundle.n_videos)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run real queries (cold start and with history) so the first request pays no tracing or page faults."""
        some = [str(v) for v in self.video_ids[1:4].tolist()]
        for size in batch_sizes:
            queries = [Query(history=some if i % 2 else [], tokens=[], k=10) for i in range(size)]
            results = self.recommend(queries)
            if any(len(r.ids) == 0 and self.n_videos > 1 for r in results):
                raise WarmupError(f"bundle {self.model_version}: warm-up query returned no candidates")
            if any(not np.isfinite(r.scores).all() for r in results):
                raise WarmupError(f"bundle {self.model_version}: warm-up query returned non-finite scores")

    # ------------------------------------------------------------------ lookups
    def lookup(self, video_ids: list[str]) -> np.ndarray:
        """Video indices of id strings (OOV_INDEX for unknown ids), int64."""
        return self.recommender.lookup(video_ids)

    def index_of(self, video_id: str) -> int | None:
        """The video index of one id, or None when the bundle does not know it."""
        return self.recommender.index_of(video_id)

    # ------------------------------------------------------------------ batches
    def user_vectors(self, queries: list[Query]) -> np.ndarray:
        """One tower call for the whole batch: raw strings in, u [B, d] out."""
        return self.recommender.user_vectors(
            [q.history for q in queries], [q.tokens for q in queries], [q.context for q in queries]
        )

    def _exclusions(self, queries: list[Query]) -> tuple[np.ndarray, np.ndarray]:
        """Padded [B, E] exclusion matrix of video indices (-1 padding) and each query's unknown history count."""
        batch = len(queries)
        lengths = np.fromiter(map(len, (q.exclude for q in queries)), dtype=np.int64, count=batch)
        flat = self.lookup([vid for q in queries for vid in q.exclude])
        rows = np.split(np.where(flat == OOV_INDEX, -1, flat), np.cumsum(lengths)[:-1])
        matrix = exclusion_matrix(rows, batch)
        hist_lengths = np.fromiter(map(len, (q.history for q in queries)), dtype=np.int64, count=batch)
        hist = self.lookup([vid for q in queries for vid in q.history])
        unknown = np.bincount(
            np.repeat(np.arange(batch), hist_lengths), weights=(hist == OOV_INDEX), minlength=batch
        ).astype(np.int64)
        return (np.full((batch, 1), -1, dtype=np.int64) if matrix is None else matrix), unknown

    def recommend(self, queries: list[Query]) -> list[Result]:
        """Candidates for a batch: one tower call and one search for the tower queries, popularity for the rest."""
        if not queries:
            return []
        exclude, unknown = self._exclusions(queries)
        popular = np.fromiter((q.popularity_only for q in queries), dtype=bool, count=len(queries))
        ks = np.fromiter((q.k for q in queries), dtype=np.int64, count=len(queries))
        ids = np.full((len(queries), int(ks.max())), -1, dtype=np.int64)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        tower_rows = np.flatnonzero(~popular)
        if len(tower_rows):
            u = self.user_vectors([queries[i] for i in tower_rows])
            found, found_scores = self.index.search(u, ids.shape[1], exclude[tower_rows])
            ids[tower_rows], scores[tower_rows] = found, found_scores
        for row in np.flatnonzero(popular):  # rare (degraded answers): one vectorised ranking per query
            ids[row], scores[row] = self._popular(ids.shape[1], exclude[row])
        counts = np.minimum((ids >= 0).sum(axis=1), ks)
        names = self.video_ids[np.maximum(ids, 0)]
        titles = None if self.titles is None else self.titles[np.maximum(ids, 0)]
        return [
            Result(
                self.model_version,
                ids[i, : counts[i]],
                names[i, : counts[i]],
                None if titles is None else titles[i, : counts[i]],
                scores[i, : counts[i]],
                int(unknown[i]),
                bool(popular[i]),
            )
            for i in range(len(queries))
        ]

    def _popular(self, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k most-watched videos not in exclude, padded with -1 / -inf."""
        head = self.popular_ids[: k + len(exclude)]
        keep = ~np.isin(head, exclude[exclude > OOV_INDEX])
        chosen = head[keep][:k]
        out_ids = np.full(k, -1, dtype=np.int64)
        out_scores = np.full(k, -np.inf, dtype=np.float32)
        out_ids[: len(chosen)] = chosen
        out_scores[: len(chosen)] = self.popular_scores[chosen - 1]
        return out_ids, out_scores

    def similar(self, video_index: int, k: int) -> Result:
        """Neighbours of one video by embedding inner product (itself excluded), best first, no padding."""
        ids, scores = self.index.similar(video_index, k)
        keep = ids[0] >= 0
        found = ids[0][keep]
        titles = None if self.titles is None else self.titles[found]
        return Result(self.model_version, found, self.video_ids[found], titles, scores[0][keep], 0, False)
