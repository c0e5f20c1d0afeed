"""Published figures of other papers on the logs the quality benchmark can read, printed beside ours (never mixed).

ICLRec (Chen, Liu, Li, McAuley, Xiong: "Intent Contrastive Learning for Sequential Recommendation", WWW 2022),
Table 2: HR@20 on the Amazon Beauty and Sports_and_Outdoors sequence logs (the `USER ITEM ITEM ...` .txt files that
`--events` reads), leave-last-out, every item ranked, each user's earlier items hidden. Their code, preprocessing,
tuning and runs: a reference for orders of magnitude, not a paired comparison.
"""

from __future__ import annotations

from typing import Any

PUBLISHED_SOURCE = (
    "ICLRec (Chen et al., Intent Contrastive Learning for Sequential Recommendation, WWW 2022), Table 2, HR@20"
)
PUBLISHED_PROTOCOL = (
    "leave-last-out (each user's last item is the test label), full ranking over every item, the user's earlier "
    "items hidden (as `--hide earlier` does here); their preprocessing, tuning and runs"
)
# HR@20 by log (the events log's file stem) and method.
PUBLISHED_HR20: dict[str, dict[str, float]] = {
    "Beauty": {"SASRec": 0.089, "BERT4Rec": 0.098, "ICLRec": 0.106},
    "Sports_and_Outdoors": {"SASRec": 0.050, "BERT4Rec": 0.060, "ICLRec": 0.065},
}
PUBLISHED_PROTOCOL_KEY = "leave_last_out"  # the only protocol of ours that the figures share


def published_for(dataset: str) -> dict[str, float]:
    """The published HR@20 of a result's dataset name ("events-Beauty" -> Beauty's); {} for any other dataset."""
    return PUBLISHED_HR20.get(dataset.removeprefix("events-"), {}) if dataset.startswith("events-") else {}


def published_rows(dataset: str, ours: dict[str, dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(source, method, HR@20) rows: ours from a protocol's metrics (recall@20 = HR@20 with one label), then theirs."""
    rows = [("ours, this run", method, float(m["recall@20"])) for method, m in ours.items() if "recall@20" in m]
    return rows + [("published", method, value) for method, value in published_for(dataset).items()]


def _hr(source: str, value: float) -> str:
    """HR@20 as text: ours to 4 places, the published figures to the 3 the paper gives."""
    return f"{value:.3f}" if source == "published" else f"{value:.4f}"


def published_section(result: dict[str, Any]) -> list[str]:
    """The markdown block of published HR@20 beside our leave-last-out recall@20 ([] when none applies)."""
    meta = result.get("meta", {})
    dataset = str(meta.get("dataset", ""))
    ours = result.get(PUBLISHED_PROTOCOL_KEY, {})
    if not published_for(dataset) or not any("recall@20" in m for m in ours.values()):
        return []
    lines = [
        "## Published figures (published, other runs, not comparable one-to-one)",
        "",
        f"{PUBLISHED_SOURCE}: {PUBLISHED_PROTOCOL}. Ours: test recall@20 (= HR@20, one label per user) of this run's "
        f"leave-last-out protocol, {meta.get('evaluation', 'exclusion not recorded')}. Different code, "
        "preprocessing, tuning and seeds: read them as a scale, not as a paired difference.",
        "",
        "| source | method | HR@20 |",
        "|---|---|---|",
    ]
    rows = published_rows(dataset, ours)
    return lines + [f"| {source} | {method} | {_hr(source, value)} |" for source, method, value in rows]


def format_published(dataset: str, ours: dict[str, dict[str, Any]]) -> str:
    """The plain-text block `benchmarks.quality` prints for a log with published figures ("" for any other)."""
    if not published_for(dataset):
        return ""
    title = f"HR@20, leave-last-out, ours beside {PUBLISHED_SOURCE}"
    lines = [f"{title} (published, other runs, not comparable one-to-one):"]
    rows = published_rows(dataset, ours)
    lines += [f"  {source:<15} {method:<12} {_hr(source, value)}" for source, method, value in rows]
    return "\n".join(lines)
