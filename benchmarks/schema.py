"""The shape of a quality result (protocols, methods, metric keys), shared by the benchmark runs and their reports."""

from __future__ import annotations

from collections.abc import Sequence

PROTOCOLS = ("time_split", "leave_last_out")
PROTOCOL_NAMES = {"time_split": "time split", "leave_last_out": "leave-last-out"}
LOSSES = ("full", "loguniform", "inbatch", "topk_random")
SAMPLED_LOSSES = ("loguniform", "inbatch", "topk_random")
BASELINES = ("als", "bpr", "ease")
METHODS = (*LOSSES, "popularity", *BASELINES)
LEARNED = (*LOSSES, *BASELINES)
METRIC_KEYS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "map")
# The metrics of the paired comparisons (one Holm family per protocol).
COMPARE_METRICS = ("recall@10", "recall@100", "ndcg@10", "map")


def shape_results(
    metrics: dict[str, dict[str, dict[str, float]]],
    protocols: Sequence[str] = PROTOCOLS,
    methods: Sequence[str] = METHODS,
) -> dict[str, dict[str, dict[str, float]]]:
    """The JSON body: protocol -> method -> exactly METRIC_KEYS (missing protocols, methods or metrics raise)."""
    return {
        protocol: {method: {k: float(metrics[protocol][method][k]) for k in METRIC_KEYS} for method in methods}
        for protocol in protocols
    }
