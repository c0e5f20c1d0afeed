"""Planted-topic scoring on synthetic data: the share of each top-100 in its user's planted interests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.datasets import Prepared, user_rows
from recsys.features import FeatureSpace
from recsys.metrics import Scorer
from recsys.schemas import OOV_INDEX
from training.data import ExampleSet


def topic_share(
    scorer: Scorer,
    n_rows: int,
    rows_user: np.ndarray,
    interests: np.ndarray,
    video_topic: np.ndarray,
    exclude: np.ndarray | None,
    chunk: int,
    k: int = 100,
) -> float:
    """Mean share of each example's top-k whose planted topic is one of its user's planted interests."""
    shares = np.zeros(n_rows, dtype=np.float64)
    for lo in range(0, n_rows, chunk):
        rows = np.arange(lo, min(lo + chunk, n_rows))
        scores = np.array(scorer(rows), dtype=np.float32)
        if exclude is not None:
            r, c = np.nonzero(exclude[rows] >= 0)
            scores[r, exclude[rows][r, c]] = -np.inf
        scores[:, OOV_INDEX] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        topic = video_topic[top]
        users = rows_user[rows]
        hit = (topic >= 0) & (users[:, None] >= 0) & interests[np.maximum(users, 0)[:, None], np.maximum(topic, 0)]
        shares[rows] = hit.mean(axis=1)
    return float(shares.mean()) if n_rows else 0.0


def planted_truth(
    truth: Path, features: FeatureSpace, test_users: pa.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Topic of each video index (-1 unknown), each test example's user row and the users' planted-interest matrix."""
    videos = pq.read_table(truth / "video_topics.parquet")
    interests = pq.read_table(truth / "user_interests.parquet")
    index = features.videos.lookup(videos["video_id"]).to_numpy()
    topics = videos["topic"].to_numpy()
    video_topic = np.full(len(features.videos), -1, dtype=np.int64)
    known = index != OOV_INDEX
    video_topic[index[known]] = topics[known]
    users = pc.unique(test_users)
    rows = user_rows(interests["user_id"], users)
    n_topics = int(max(topics.max(), interests["topic"].to_numpy().max())) + 1
    matrix = np.zeros((len(users), n_topics), dtype=bool)
    have = rows >= 0
    matrix[rows[have], interests["topic"].to_numpy()[have]] = True
    return video_topic, user_rows(test_users, users), matrix


def planted_share(
    prepared: Prepared, data: ExampleSet, test_table: pa.Table, exclude: np.ndarray | None, chunk: int
) -> Callable[[Scorer], float] | None:
    """On synthetic data: scorer -> mean share of each test example's top-100 in its user's planted topics."""
    if prepared.truth is None:
        return None
    video_topic, rows_user, interests = planted_truth(prepared.truth, data.features, test_table["user_id"])
    n_rows = test_table.num_rows

    def share(scorer: Scorer) -> float:
        return topic_share(scorer, n_rows, rows_user, interests, video_topic, exclude, max(chunk // 2, 8))

    return share
