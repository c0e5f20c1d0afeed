"""Confidence intervals and paired comparisons of retrieval metrics, resampling USERS (a cluster bootstrap).

Test examples are not independent: one user contributes several, and a user the model understands well tends to be a
hit in all of them. Resampling examples as if independent then makes intervals too narrow. Here every replicate draws
users with replacement, takes all of each drawn user's examples, and recomputes the statistic as the mean over the
drawn examples (the same per-example mean that `recsys.metrics.metrics_from_ranks` reports). Per-user sums and counts
are computed once, so a replicate costs O(users), not O(examples).

Intervals are bootstrap percentile intervals. A comparison of two methods is PAIRED: both are evaluated on the same
examples, and each replicate uses the same drawn users for both, so the interval is that of the per-example difference.
`compare` reports each pair and metric on its own; `holm_adjust` then controls the family-wise error rate of a
family of those tests (Holm–Bonferroni step-down adjusted p-values, raw p-values kept beside them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recsys.metrics import DEFAULT_KS

__all__ = [
    "Comparison",
    "Interval",
    "bootstrap_ci",
    "compare",
    "holm",
    "holm_adjust",
    "paired_bootstrap",
    "per_example_metrics",
    "summarise",
]

# Upper bound on the user indices drawn at once ([chunk, n_users] int64 plus two gathers): about 32 MiB.
_DRAW_BUDGET = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A metric's mean over all examples and its bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n_examples: int
    n_users: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as plain Python numbers (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Paired difference a − b of a metric's mean, its bootstrap interval and two-sided p-value."""

    mean_diff: float
    low: float
    high: float
    p_value: float
    significant: bool
    n_examples: int
    n_users: int

    def as_dict(self) -> dict[str, float | int | bool]:
        """The fields as plain Python values (JSON-ready)."""
        return asdict(self)


def per_example_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-example recall@K (0/1), NDCG@K and reciprocal rank ("map"); their means are `metrics_from_ranks`."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    out["map"] = 1.0 / (ranks + 1.0)
    return out


def _check_args(n_boot: int, alpha: float) -> None:
    """Reject a replicate count below 1 or a level outside (0, 1)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _user_totals(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sums of the values and per-user example counts (users in sorted id order)."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
    if values.ndim != 1 or groups.ndim != 1:
        raise ValueError(f"values and groups must be 1-D, got shapes {values.shape} and {groups.shape}")
    if len(values) != len(groups):
        raise ValueError(f"values ({len(values)}) and groups ({len(groups)}) differ in length")
    if len(values) == 0:
        raise ValueError("no examples to bootstrap")
    if not np.isfinite(values).all():
        raise ValueError(
            "values must be finite (derive them with per_example_metrics, which maps an infinite rank to 0)"
        )
    _, user = np.unique(groups, return_inverse=True)
    sums = np.bincount(user, weights=values)
    counts = np.bincount(user).astype(np.float64)
    return sums, counts


def _replicate_means(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Mean over the examples of n_users users drawn with replacement, for each of n_boot replicates."""
    rng = np.random.default_rng(seed)
    n_users = len(sums)
    chunk = max(1, _DRAW_BUDGET // n_users)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        drawn = rng.integers(0, n_users, size=(stop - start, n_users))
        out[start:stop] = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    return out


def _percentiles(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    """The alpha/2 and 1 − alpha/2 quantiles of the replicates."""
    low, high = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    values: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Mean of the per-example values with a (1 − alpha) percentile interval from a bootstrap over users."""
    _check_args(n_boot, alpha)
    sums, counts = _user_totals(values, groups)
    low, high = _percentiles(_replicate_means(sums, counts, n_boot, seed), alpha)
    return Interval(
        mean=float(np.mean(values)),  # exactly the value metrics_from_ranks reports
        low=low,
        high=high,
        n_examples=int(counts.sum()),
        n_users=len(sums),
    )


def paired_bootstrap(
    values_a: np.ndarray,
    values_b: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap over users of mean(a) − mean(b): both methods see the same drawn users in every replicate.

    The p-value inverts the percentile interval: twice the smaller share of replicates on either side of zero
    (zero itself counted on both sides), with one added to numerator and denominator so it is never exactly 0; its
    resolution is about 2/n_boot. `significant` is whether the interval excludes 0, as reported in low/high.
    Identical inputs give a difference of exactly 0 in every replicate: interval [0, 0], p-value 1.
    """
    _check_args(n_boot, alpha)
    values_a = np.asarray(values_a, dtype=np.float64)
    values_b = np.asarray(values_b, dtype=np.float64)
    if values_a.shape != values_b.shape:
        raise ValueError(f"values_a {values_a.shape} and values_b {values_b.shape} must pair example by example")
    if not (np.isfinite(values_a).all() and np.isfinite(values_b).all()):
        raise ValueError("values must be finite")
    sums, counts = _user_totals(values_a - values_b, groups)
    replicates = _replicate_means(sums, counts, n_boot, seed)
    low, high = _percentiles(replicates, alpha)
    at_or_below = int(np.count_nonzero(replicates <= 0.0))
    at_or_above = int(np.count_nonzero(replicates >= 0.0))
    p_value = min(1.0, 2.0 * (min(at_or_below, at_or_above) + 1) / (n_boot + 1))
    return Comparison(
        mean_diff=float(values_a.mean() - values_b.mean()),
        low=low,
        high=high,
        p_value=p_value,
        significant=bool(low > 0.0 or high < 0.0),
        n_examples=int(counts.sum()),
        n_users=len(sums),
    )


def _check_ranks(ranks_by_method: Mapping[str, np.ndarray], groups: np.ndarray) -> None:
    """Every method must rank the same examples as `groups` lists."""
    n = len(groups)
    for method, ranks in ranks_by_method.items():
        if np.shape(ranks) != (n,):
            raise ValueError(f"ranks of {method!r} have shape {np.shape(ranks)}; groups holds {n} examples")


def summarise(
    ranks_by_method: Mapping[str, np.ndarray],
    groups: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and metric: {mean, low, high, n_examples, n_users} from a user bootstrap of the ranks.

    Every method and metric uses the same seed, hence the same drawn users (common random numbers).
    """
    groups = np.asarray(groups)
    _check_ranks(ranks_by_method, groups)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, ranks in ranks_by_method.items():
        metrics = per_example_metrics(ranks, ks)
        out[method] = {
            name: bootstrap_ci(values, groups, n_boot, alpha, seed).as_dict() for name, values in metrics.items()
        }
    return out


def compare(
    ranks_by_method: Mapping[str, np.ndarray],
    groups: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    ks: Sequence[int] = DEFAULT_KS,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """For each (a, b) pair, keyed "a vs b", and each metric: the paired bootstrap of a − b as a plain dict."""
    groups = np.asarray(groups)
    _check_ranks(ranks_by_method, groups)
    missing = sorted({m for pair in pairs for m in pair} - set(ranks_by_method))
    if missing:
        raise KeyError(f"no ranks for method(s) {missing}")
    metrics = {m: per_example_metrics(ranks_by_method[m], ks) for m in {m for pair in pairs for m in pair}}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a, b in pairs:
        out[f"{a} vs {b}"] = {
            name: paired_bootstrap(metrics[a][name], metrics[b][name], groups, n_boot, alpha, seed).as_dict()
            for name in metrics[a]
        }
    return out


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order: reject test i at level alpha iff adjusted[i] <= alpha.

    With the m raw p-values sorted ascending, p(1) <= ... <= p(m), the adjusted value of the j-th is
    max over i <= j of min(1, (m − i + 1) · p(i)); the running maximum keeps the step-down order monotone.
    Controls the family-wise error rate under any dependence between the tests.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    if p.size and (np.isnan(p).any() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("p-values must lie in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def holm_adjust(
    comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]],
    metrics: Sequence[str],
    alpha: float = 0.05,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Copy of `compare`'s output with "p_holm" and "significant_holm" on every (pair, metric) in `metrics`.

    The family is every pair in `comparisons` times every metric in `metrics` (metrics outside it are copied
    unchanged); significant_holm is p_holm <= alpha.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    out = {pair: {name: dict(entry) for name, entry in by_metric.items()} for pair, by_metric in comparisons.items()}
    family = [(pair, name) for pair, by_metric in out.items() for name in metrics if name in by_metric]
    missing = sorted({name for name in metrics} - {name for _, name in family})
    if comparisons and missing:
        raise KeyError(f"no comparisons of metric(s) {missing}")
    adjusted = holm([out[pair][name]["p_value"] for pair, name in family])
    for (pair, name), value in zip(family, adjusted, strict=True):
        out[pair][name]["p_holm"] = float(value)
        out[pair][name]["significant_holm"] = bool(value <= alpha)
    return out
