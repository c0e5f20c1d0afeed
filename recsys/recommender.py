"""Recommendations from a loaded bundle in-process: its user tower, its index and its video-id lookup together.

This is the part of retrieval that every caller shares: raw features in (watched ids, search tokens, context),
one tower call, one index search, video ids out. The service's ``serving.engine.Engine`` builds on it (adding
cross-request batching, popularity answers when the history store is down, and titles); a notebook uses it as is::

    rec = Recommender(load_bundle("out/bundles"))
    rec.recommend(["v0000375", "v0000733"], searches=["werol guide"], context=Context(country="DE"), k=10)

TensorFlow is imported only when the user tower is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.bundle import USER_VECTOR, Bundle, load_bundle
from recsys.features import padded_strings, query_tokens
from recsys.index import VideoIndex
from recsys.schemas import OOV_INDEX

__all__ = ["Context", "Recommender"]


@dataclass(frozen=True)
class Context:
    """A user's attributes, raw as the tower's signature takes them (unknown values map to OOV)."""

    country: str = ""
    device: str = ""
    gender: str = ""
    age: float = math.nan
    logged_in: float = 0.0


class Recommender:
    """A verified bundle with its user tower and index: raw user features in, ranked video ids out."""

    def __init__(self, bundle: Bundle, index: VideoIndex | None = None, tower: Any = None) -> None:
        """Wrap a loaded bundle; index and tower default to the bundle's own (exact Flat when it has no index)."""
        self.bundle = bundle
        self.index = index if index is not None else VideoIndex.from_bundle(bundle)
        self.tower = tower if tower is not None else bundle.user_tower()
        self.model_version = bundle.model_version
        self.max_history = int(bundle.config.get("max_history", 50))
        self.max_search_tokens = int(bundle.config.get("max_search_tokens", bundle.config.get("max_tokens", 50)))
        self.video_ids: np.ndarray = bundle.video_ids
        # One hash lookup per id string; built once per bundle (the in-graph tables serve the tower itself).
        self._index_of: dict[str, int] = {vid: i for i, vid in enumerate(self.video_ids.tolist()) if i != OOV_INDEX}

    @classmethod
    def load(cls, path: Path | str, *, mmap: bool = False, verify_checksums: bool = True) -> Recommender:
        """Load and verify a bundle (BUNDLES/latest or one version) and its user tower."""
        return cls(load_bundle(Path(path), verify_checksums=verify_checksums, mmap=mmap))

    @property
    def n_videos(self) -> int:
        """Rows of the embedding table, OOV included."""
        return int(self.bundle.n_videos)

    # ------------------------------------------------------------------ lookups
    def lookup(self, video_ids: Sequence[str]) -> np.ndarray:
        """Video indices of id strings (OOV_INDEX for unknown ids), int64."""
        get = self._index_of.get
        return np.fromiter(map(get, video_ids, [OOV_INDEX] * len(video_ids)), dtype=np.int64, count=len(video_ids))

    def index_of(self, video_id: str) -> int | None:
        """The video index of one id, or None when the bundle does not know it."""
        return self._index_of.get(video_id)

    # ------------------------------------------------------------------ batches
    def user_vectors(
        self, histories: Sequence[list[str]], tokens: Sequence[list[str]], contexts: Sequence[Context]
    ) -> np.ndarray:
        """One tower call for a batch of users: watched ids and search tokens (oldest first), contexts -> u [B, d]."""
        import tensorflow as tf

        # Every input is built host-side and wrapped once: an eager op such as tf.zeros costs ~0.25 ms of dispatch.
        inputs = {
            "history": tf.constant(padded_strings(list(histories), self.max_history), tf.string),
            "search_tokens": tf.constant(padded_strings(list(tokens), self.max_search_tokens), tf.string),
            "country": tf.constant([c.country for c in contexts], tf.string),
            "device": tf.constant([c.device for c in contexts], tf.string),
            "gender": tf.constant([c.gender for c in contexts], tf.string),
            "age": tf.constant([c.age for c in contexts], tf.float32),
            "logged_in": tf.constant([c.logged_in for c in contexts], tf.float32),
            "example_age_days": tf.constant(np.zeros(len(contexts), np.float32)),
        }
        out = self.tower(**inputs)[USER_VECTOR].numpy()
        if not np.isfinite(out).all():
            raise ValueError("the user tower returned non-finite user vectors")
        return np.asarray(out, dtype=np.float32)

    # ------------------------------------------------------------------ one user
    def recommend(
        self,
        history: Sequence[str] = (),
        *,
        searches: Sequence[str] = (),
        context: Context | None = None,
        k: int = 10,
        exclude: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The k best (video id, score) for one user, best first, as the service ranks an anonymous request.

        ``history`` holds watched video ids and ``searches`` raw search queries, both oldest first; unknown ids
        are ignored. ``exclude`` defaults to the history (the service hides watched videos too); pass ``[]``
        to keep them.
        """
        u = self.user_vectors([list(history)], [query_tokens(list(searches))], [context or Context()])
        hidden = self.lookup(list(history if exclude is None else exclude))
        ids, scores = self.index.search(u, k, [hidden[hidden != OOV_INDEX]])
        return self._pairs(ids[0], scores[0])

    def similar(self, video_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The k videos nearest to one video by embedding inner product (itself excluded), best first."""
        row = self.index_of(video_id)
        if row is None:
            raise KeyError(f"video {video_id!r} is not in bundle {self.model_version}")
        ids, scores = self.index.similar(row, k)
        return self._pairs(ids[0], scores[0])

    def _pairs(self, ids: np.ndarray, scores: np.ndarray) -> list[tuple[str, float]]:
        """(video id, score) of one result row, padding (-1) dropped."""
        keep = ids >= 0
        return list(zip(self.video_ids[ids[keep]].tolist(), scores[keep].tolist(), strict=True))
