"""The quality targets and the user-bootstrap statistics behind them: target checks, intervals, paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from benchmarks.schema import COMPARE_METRICS, LEARNED, LOSSES, QUALITY_KS, RESULT_KEYS
from recsys.stats import compare, holm_adjust, summarise

N_BOOT = 2000  # user-bootstrap replicates of every interval and paired comparison
BOOT_SEED = 0
COMPARE_BASE = "topk_random"
COMPARE_WITH = ("full", "loguniform", "inbatch", "ease", "als", "itemknn", "bpr", "popularity")
WELL_ABOVE = 0.10  # "well above popularity": >= 10% relative gain in recall@100 and a paired 95% CI above zero
WITHIN = 0.02  # topk_random recall@100 may fall at most 2% (relative) below full softmax


class RankedRun(Protocol):
    """What the statistics read of one protocol's run: per-method test ranks and each test example's user."""

    ranks: dict[str, np.ndarray]
    groups: np.ndarray


def paired_difference(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Recall@100(a) - recall@100(b) on the same examples with a paired user-bootstrap 95% interval and p-value."""
    groups = np.arange(len(a)) if groups is None else np.asarray(groups)
    pair = compare({"a": a, "b": b}, groups, [("a", "b")], n_boot=N_BOOT, seed=BOOT_SEED)["a vs b"]["recall@100"]
    return {
        "diff": pair["mean_diff"],
        "ci95_low": pair["low"],
        "ci95_high": pair["high"],
        "p_value": pair["p_value"],
        "significant": pair["significant"],
        "n_users": pair["n_users"],
    }


def check_targets(
    metrics: dict[str, dict[str, float]], ranks: dict[str, np.ndarray], groups: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """The quality targets on test recall@100, each with the values, a paired user-bootstrap 95% CI and holds/fails."""
    r = {m: v["recall@100"] for m, v in metrics.items()}
    checks: list[dict[str, Any]] = []

    def add(name: str, a: str, b: str, holds: bool, rel: float) -> None:
        pair = paired_difference(ranks[a], ranks[b], groups)
        checks.append({"check": name, "holds": bool(holds), "a": r[a], "b": r[b], "relative": rel, **pair})

    def relative(a: str, b: str) -> float:
        return (r[a] - r[b]) / r[b] if r[b] > 0 else math.inf

    tk = "topk_random"
    if tk in r and "full" in r:
        rel = relative(tk, "full")
        add(f"topk_random recall@100 within {WITHIN:.0%} (relative) of full softmax", tk, "full", rel >= -WITHIN, rel)
    if tk in r and "loguniform" in r:
        add(
            "topk_random recall@100 >= loguniform",
            tk,
            "loguniform",
            r[tk] >= r["loguniform"],
            relative(tk, "loguniform"),
        )
    for other in ("inbatch", "als", "bpr", "ease", "itemknn"):
        if tk in r and other in r:
            op = ">=" if other == "inbatch" else ">"
            ok = r[tk] >= r[other] if other == "inbatch" else r[tk] > r[other]
            add(f"topk_random recall@100 {op} {other}", tk, other, ok, relative(tk, other))
    for method in LEARNED:
        if method in r and "popularity" in r:
            rel = relative(method, "popularity")
            pair = paired_difference(ranks[method], ranks["popularity"], groups)
            ok = rel >= WELL_ABOVE and pair["ci95_low"] > 0
            add(f"{method} well above popularity (>= +{WELL_ABOVE:.0%}, CI > 0)", method, "popularity", ok, rel)
    return checks


def comparison_base(methods: Sequence[str]) -> str:
    """The method the paired comparisons hold to every other: COMPARE_BASE when it ran, else the first loss run."""
    if COMPARE_BASE in methods:
        return COMPARE_BASE
    return next((m for m in methods if m in LOSSES), COMPARE_BASE)


def add_intervals(
    result: dict[str, Any], runs: Mapping[str, RankedRun], methods: Sequence[str], base: str = COMPARE_BASE
) -> dict[str, dict[str, Any]]:
    """Add "<metric>_ci", n_examples and n_users to every method of `result`; return the paired comparisons of
    `base` against each of COMPARE_WITH (and every other loss) at every cutoff of QUALITY_KS."""
    comparisons: dict[str, dict[str, Any]] = {}
    others = [*COMPARE_WITH, *(m for m in LOSSES if m not in COMPARE_WITH)]
    for protocol, run in runs.items():
        ranks = {m: run.ranks[m] for m in methods}
        summary = summarise(ranks, run.groups, ks=QUALITY_KS, n_boot=N_BOOT, seed=BOOT_SEED)
        for method in methods:
            entry = result[protocol][method]
            for key in RESULT_KEYS:
                entry[f"{key}_ci"] = [summary[method][key]["low"], summary[method][key]["high"]]
            entry["n_examples"] = summary[method]["map"]["n_examples"]
            entry["n_users"] = summary[method]["map"]["n_users"]
        pairs = [(base, b) for b in others if base in ranks and b in ranks and b != base]
        # Holm family: every pair x every reported metric of this protocol.
        raw = compare(ranks, run.groups, pairs, ks=QUALITY_KS, n_boot=N_BOOT, seed=BOOT_SEED)
        comparisons[protocol] = holm_adjust(raw, COMPARE_METRICS)
    return comparisons
