"""The shape of a quality result (protocols, methods, metric keys), shared by the benchmark runs and their reports."""

from __future__ import annotations

from collections.abc import Sequence

PROTOCOLS = ("time_split", "leave_last_out")
PROTOCOL_NAMES = {"time_split": "time split", "leave_last_out": "leave-last-out"}
LOSSES = ("full", "loguniform", "inbatch", "topk_random")
SAMPLED_LOSSES = ("loguniform", "inbatch", "topk_random")
BASELINES = ("als", "bpr", "ease", "itemknn")
BASELINE_LABELS = {"als": "ALS", "bpr": "BPR", "ease": "EASE", "itemknn": "item-kNN"}
# The peers a two-tower model is held to in "Against the best peer" (issue 34: the best of ALS, EASE and item-kNN).
PEERS = ("als", "ease", "itemknn")
METHODS = (*LOSSES, "popularity", *BASELINES)
LEARNED = (*LOSSES, *BASELINES)
# The validation metrics a training report holds (recsys.metrics.DEFAULT_KS); results older than QUALITY_KS hold
# only these on test too.
METRIC_KEYS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "map")
# The cutoffs of every test metric and interval: DEFAULT_KS plus 20, the cutoff published sequential figures use.
QUALITY_KS = (10, 20, 50, 100)
RESULT_KEYS = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "map")
# The metrics of the paired comparisons (one Holm family per protocol).
COMPARE_METRICS = ("recall@10", "recall@100", "ndcg@10", "map")


def shape_results(
    metrics: dict[str, dict[str, dict[str, float]]],
    protocols: Sequence[str] = PROTOCOLS,
    methods: Sequence[str] = METHODS,
) -> dict[str, dict[str, dict[str, float]]]:
    """The JSON body: protocol -> method -> exactly RESULT_KEYS (missing protocols, methods or metrics raise)."""
    return {
        protocol: {method: {k: float(metrics[protocol][method][k]) for k in RESULT_KEYS} for method in methods}
        for protocol in protocols
    }
