"""Retrieval metrics over the FULL catalogue with exact scores (never against a few sampled negatives).

Each example has one true label. Its rank is the number of other videos scoring strictly higher plus half of
those scoring exactly the same (so ties, common for popularity, are neither flattering nor punishing).
Recall@K is then P(rank < K), NDCG@K = 1/log2(rank + 2) when rank < K, and MAP = mean reciprocal rank 1/(rank+1)
(with a single relevant item, average precision is the reciprocal rank).

Video index 0 is the out-of-vocabulary bucket: it is never retrievable, and an example whose label is OOV (a video
first seen after the training window) is a miss for every method. So, when history is excluded (`exclude`, what
every evaluation passes by default), is a label the user had already watched: the service hides every watched
video, so a re-watch is never among its answers. A NaN or infinite score anywhere is an error (`ScoreError`),
never a hit or a miss: a broken model must neither look perfect nor pass as merely weak.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recsys.errors import ScoreError
from recsys.schemas import OOV_INDEX

DEFAULT_KS = (10, 50, 100)
Scorer = Callable[[np.ndarray], np.ndarray]  # rows of examples -> scores [len(rows), n_videos]


def exclusion_protocol(exclude_history: bool) -> str:
    """The words a result records for its protocol, so that as-served and unfiltered figures are never confused."""
    if exclude_history:
        return "as served: each example's watched videos (its padded history) hidden, a re-watched label a miss"
    return "unfiltered: watched videos ranked like any other, a re-watched label can be a hit"


def label_ranks(
    scores_for: Scorer,
    labels: np.ndarray,
    exclude: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Tie-averaged 0-based rank of each example's label among all videos (excluded videos never outrank).

    ``exclude`` [examples, E] (-1 padding) hides videos as the service does; an excluded label is a miss (inf).
    Raises ScoreError, after scoring every example so that it can count them, if any score is NaN or +/-inf.
    """
    n_examples = len(labels)
    ranks = np.empty(n_examples, dtype=np.float64)
    broken = broken_label = 0
    for start in range(0, n_examples, chunk):
        rows = np.arange(start, min(start + chunk, n_examples))
        scores = np.asarray(scores_for(rows), dtype=np.float64)
        y = labels[rows]
        # Checked on the raw scores, before the OOV column and the excluded videos are set to -inf.
        finite = np.isfinite(scores)
        bad = ~finite.all(axis=1)
        if bad.any():
            broken += int(bad.sum())
            broken_label += int((~finite[np.arange(len(rows)), y]).sum())
        if broken:
            continue  # the call raises below; only the count is still needed
        hidden_label = np.zeros(len(rows), dtype=bool)
        if exclude is not None:
            ids = exclude[rows]
            r, c = np.nonzero(ids >= 0)
            hide = ids[r, c]
            hidden_label[r[hide == y[r]]] = True
            scores[r, hide] = -np.inf
        scores[:, OOV_INDEX] = -np.inf
        target = scores[np.arange(len(rows)), y][:, None]
        greater = (scores > target).sum(axis=1)
        equal = (scores == target).sum(axis=1) - 1
        miss = (y == OOV_INDEX) | hidden_label
        ranks[rows] = np.where(miss, np.inf, greater + 0.5 * equal)
    if broken:
        raise ScoreError(
            f"{broken} of {n_examples} examples had NaN or infinite scores ({broken_label} of them at the label): "
            "the model is broken (diverged training or corrupt weights); non-finite scores are never ranked"
        )
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K and NDCG@K for each K, MAP (= MRR with one relevant item) and the example count."""
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
    out["map"] = float((1.0 / (ranks + 1.0)).mean()) if len(ranks) else 0.0
    out["examples"] = float(len(ranks))
    return out


def dot_scorer(user_vectors: np.ndarray, table: np.ndarray, bias: np.ndarray | None = None) -> Scorer:
    """Scores u . V[j] + b[j] for the requested rows of user vectors."""
    table32 = np.ascontiguousarray(table, dtype=np.float32)

    def scores(rows: np.ndarray) -> np.ndarray:
        out = user_vectors[rows].astype(np.float32) @ table32.T
        return out + bias if bias is not None else out

    return scores


def popularity_scorer(counts: np.ndarray) -> Scorer:
    """The popularity baseline: every user gets the training label counts as scores."""
    base = counts.astype(np.float64)

    def scores(rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(base, (len(rows), len(base))).copy()

    return scores
