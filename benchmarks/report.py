"""Human-readable reports of the benchmark results, from their JSON (and ranks) alone: no retraining.

    python -m benchmarks.report --json benchmarks/results/quality/quality_ml100k.json

For a quality result, writes beside the JSON, named after its stem (`quality_ml100k.json` -> `quality_ml100k.md`,
...): `<stem>.md` (a summary generated from the numbers, one table per protocol with 95% user-bootstrap intervals
and the hyperparameters validation chose from which grid, the paired comparisons of topk_random against every other
method with raw and Holm-adjusted p-values, the two-tower against the best of ALS, EASE and item-kNN per metric
("Against the best peer", results with @20 figures), published figures for the Amazon logs (`benchmarks.published`),
in budget mode the Equal steps table, the protocols and the regenerating command),
`<stem>_recall_curve_<protocol>.png` (Recall@K for K = 1..100 with bootstrap bands) and, where the JSON holds the
per-epoch validation history, `<stem>_training_<protocol>.png`. For a seed-spread or sweep result, `<stem>.md` with
its tables and a summary generated from them. Also the tables `benchmarks.quality` prints when it finishes.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.output import ranks_file
from benchmarks.published import published_section
from benchmarks.schema import BASELINE_LABELS, BASELINES, COMPARE_METRICS, LOSSES, PEERS, PROTOCOL_NAMES, SAMPLED_LOSSES
from benchmarks.targets import COMPARE_BASE
from recsys.metrics import exclusion_protocol

# A result's table shows those of these its JSON holds (results older than QUALITY_KS have no @20 figures).
TABLE_METRICS = (
    ("recall@10", "R@10"),
    ("recall@20", "R@20"),
    ("recall@50", "R@50"),
    ("recall@100", "R@100"),
    ("ndcg@10", "NDCG@10"),
    ("ndcg@20", "NDCG@20"),
    ("map", "MAP"),
)
# "Against the best peer": the two-tower against the best of PEERS at each of these (issue 34).
PEER_METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20")
CURVE_KS = 100
CURVE_REPLICATES = 300
CURVE_SEED = 0
# DeepMatch's published ML-1M recall@50 (leave-last-out, history 50, every item ranked): printed beside ours.
DEEPMATCH_ML1M_RECALL50 = {"YoutubeDNN": 0.337, "DSSM (in-batch)": 0.355, "SDM": 0.475}
SEEDS_HEADLINE = "recall@100"


def protocols_of(result: dict[str, Any]) -> list[str]:
    """The protocol sections of a result JSON (every top-level key but meta)."""
    return [k for k in result if k != "meta"]


def tie_rule() -> str:
    """The leave-last-out tie rule, verbatim from `pipelines.transform.leave_last_out_split`'s docstring."""
    from pipelines.transform import leave_last_out_split

    doc = inspect.getdoc(leave_last_out_split) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    return next((p for p in paragraphs if p.startswith("Tie rule")), "")


def _cell(entry: dict[str, Any], key: str) -> str:
    """A metric with its interval, e.g. `0.1234 [0.1100, 0.1350]`."""
    ci = entry.get(f"{key}_ci")
    value = f"{entry[key]:.4f}"
    return f"{value} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else value


def _params(params: dict[str, Any]) -> str:
    """Hyperparameters as `k=v, ...`."""
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _grid(grid: dict[str, Any]) -> str:
    """A grid as `k ∈ {a, b}; ...`."""
    return "; ".join(f"{k} ∈ {{{', '.join(str(v) for v in values)}}}" for k, values in grid.items())


def hyperparameters(method: str, pmeta: dict[str, Any], meta: dict[str, Any]) -> tuple[str, str]:
    """The chosen hyperparameters of a method and the grid they came from (markdown-safe text)."""
    if method in pmeta.get("losses", {}):
        info = pmeta["losses"][method]
        if "best_epoch" in info:
            epoch = f"best epoch {info['best_epoch']} of {info['epochs_run']}"
            if "chosen" not in info:  # a result from before the two-tower grid
                return epoch, "epochs ≤ cap, early stopping"
            chosen = f"{_params(info['chosen'])}, {epoch}" if info["chosen"] else epoch
            return chosen, f"{_grid(info['grid']) or 'no grid (one point)'}; {_stopping(info)}"
        return f"{info.get('steps')} steps", "equal wall-clock budget"
    if method in pmeta and isinstance(pmeta[method], dict) and "chosen" in pmeta[method]:
        return _params(pmeta[method]["chosen"]), _grid(pmeta[method].get("grid", {}))
    if method == "popularity":
        return "training label counts", "—"
    return "", ""


def _stopping(info: dict[str, Any]) -> str:
    """A loss's epoch cap and patience: as set, or as the run planned them (epochs=None: `training.schedule`)."""
    plan = info.get("schedule") or {}
    cap = info["epoch_cap"] if info["epoch_cap"] is not None else f"{plan.get('epochs', '?')} (planned)"
    return f"epochs ≤ {cap}, early stopping (patience {plan.get('patience', info['patience'])})"


def table_metrics(entries: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The TABLE_METRICS that a protocol's method entries hold (an older result has no @20 figures)."""
    return [(key, label) for key, label in TABLE_METRICS if all(key in e for e in entries.values())]


def method_table(protocol: str, result: dict[str, Any]) -> list[str]:
    """The markdown table of one protocol: metrics with CIs, test examples/users, hyperparameters and grids."""
    meta = result["meta"]
    pmeta = meta.get("protocols", {}).get(protocol, {})
    metrics = table_metrics(result[protocol])
    head = ["method", *(label + " [95% CI]" for _, label in metrics), "test examples / users", "chosen", "grid"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, entry in result[protocol].items():
        chosen, grid = hyperparameters(method, pmeta, meta)
        counts = f"{entry.get('n_examples', '?')} / {entry.get('n_users', '?')}"
        cells = [method, *(_cell(entry, key) for key, _ in metrics), counts, chosen, grid]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison_table(protocol: str, result: dict[str, Any]) -> list[str]:
    """The paired comparisons of one protocol as a markdown table (a − b, CI, raw and Holm-adjusted p)."""
    comparisons = result["meta"].get("comparisons", {}).get(protocol, {})
    if not comparisons:
        return ["(no paired comparisons in the JSON)"]
    lines = [
        "| pair (a vs b) | metric | a − b | 95% CI | p | significant (raw) | p (Holm) | significant (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, by_metric in comparisons.items():
        for metric in COMPARE_METRICS:
            c = by_metric.get(metric)
            if c is None:
                continue
            holm = f"{c['p_holm']:.3f}" if "p_holm" in c else "—"
            holm_sig = ("yes" if c["significant_holm"] else "no") if "significant_holm" in c else "—"
            lines.append(
                f"| {pair} | {metric} | {c['mean_diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] "
                f"| {c['p_value']:.3f} | {'yes' if c['significant'] else 'no'} | {holm} | {holm_sig} |"
            )
    return lines


def best_peer_rows(protocol: str, result: dict[str, Any]) -> list[str]:
    """One protocol's rows of "Against the best peer" ([] when the result lacks the base, a peer or a metric)."""
    entries = result[protocol]
    base = result["meta"].get("compare_base", COMPARE_BASE)
    peers = [m for m in PEERS if m in entries]
    comparisons = result["meta"].get("comparisons", {}).get(protocol, {})
    if base not in entries or not peers or any(k not in entries[base] for k in PEER_METRICS):
        return []
    rows = []
    for metric in PEER_METRICS:
        best = max(peers, key=lambda m: entries[m][metric])
        pair = comparisons.get(f"{base} vs {best}", {}).get(metric)
        interval = f"{pair['mean_diff']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}]" if pair else "—"
        verdict = "—" if not pair else "yes" if pair["low"] > 0 or pair["high"] < 0 else "no"
        rows.append(
            f"| {PROTOCOL_NAMES.get(protocol, protocol)} | {metric} | {entries[base][metric]:.4f} | "
            f"{BASELINE_LABELS[best]} {entries[best][metric]:.4f} | {interval} | {verdict} |"
        )
    return rows


def best_peer_section(result: dict[str, Any]) -> list[str]:
    """The two-tower against the best of ALS, EASE and item-kNN at each PEER_METRICS cutoff, with the paired interval.

    Empty for a result without the peers or without @20 figures (those written before this section existed).
    """
    rows = [row for protocol in protocols_of(result) for row in best_peer_rows(protocol, result)]
    if not rows:
        return []
    base = result["meta"].get("compare_base", COMPARE_BASE)
    peers = ", ".join(BASELINE_LABELS[m] for m in PEERS)
    return [
        "## Against the best peer",
        "",
        f"{base} against the best of {peers} at each metric (each peer tuned on validation in this run; the best "
        "is picked on test per metric, which favours the peers). a − b: the paired user-bootstrap difference and "
        "its 95% interval (`recsys.stats.compare`, as in Paired comparisons, without Holm's adjustment); "
        "significant = the interval excludes 0.",
        "",
        f"| protocol | metric | {base} | best peer | a − b [95% CI] | significant |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def planted_section(result: dict[str, Any]) -> list[str]:
    """Share of each top-100 in the user's planted topics, per method and protocol (synthetic data only; else [])."""
    protocols = protocols_of(result)
    shares = {p: result["meta"].get("protocols", {}).get(p, {}).get("topic_share@100") or {} for p in protocols}
    if not any(shares.values()):
        return []
    methods = list(dict.fromkeys(m for p in protocols for m in shares[p]))
    lines = [
        "## Planted ground truth",
        "",
        "The synthetic generator plants each user's interests (a few of its topics) and each video's topic. Below: "
        "the mean share of each test example's top-100 whose video's planted topic is one of its user's planted "
        "interests (`benchmarks.topics.topic_share`; a chance-level recommender scores about the topics' share of "
        "the catalogue a user is interested in). It needs no held-out label, so it also measures how much of a list "
        "is on-taste beyond the single test label.",
        "",
        "| method | " + " | ".join(PROTOCOL_NAMES.get(p, p) for p in protocols) + " |",
        "|---|" + "---|" * len(protocols),
    ]
    for method in methods:
        cells = [f"{shares[p][method]:.3f}" if shares[p].get(method) is not None else "—" for p in protocols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def budget_curves(result: dict[str, Any], protocol: str) -> dict[str, list[dict[str, float]]]:
    """Budget mode's quality-against-time points per loss of one protocol ({} for a result without them)."""
    return curves_of(result["meta"].get("protocols", {}).get(protocol, {}).get("losses", {}))


def curve_split(result: dict[str, Any], protocol: str) -> str:
    """The split budget mode's curve scored: recorded since it moved to validation, else test (older results)."""
    return str(result["meta"].get("protocols", {}).get(protocol, {}).get("curve_split", "test"))


def curves_of(losses: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The losses that recorded a quality-against-time curve, with their points."""
    return {m: info["curve"] for m, info in losses.items() if isinstance(info, dict) and info.get("curve")}


def at_steps(curve: Sequence[dict[str, float]], steps: float, key: str = "recall@100") -> float | None:
    """A curve's `key` linearly interpolated at a step count; None outside the steps it measured."""
    points = [(p["steps"], p[key]) for p in curve if key in p]
    if not points or not points[0][0] <= steps <= points[-1][0]:
        return None
    return float(np.interp(steps, [s for s, _ in points], [v for _, v in points]))


def equal_steps_section(result: dict[str, Any], base: str = "topk_random") -> list[str]:
    """Budget mode: each loss's curve read at the estimator's step counts, so a gap in time splits into
    'slower per step' and 'worse per step' ([] without curves)."""
    tables: list[str] = []
    for protocol in protocols_of(result):
        curves = budget_curves(result, protocol)
        if base not in curves or len(curves) < 2:
            continue
        split = curve_split(result, protocol)
        others = [m for m in LOSSES if m in curves and m != base]
        tables += [
            "",
            f"### {PROTOCOL_NAMES.get(protocol, protocol)} ({split} recall@100 of the curve subset)",
            "",
            f"| {base} steps | seconds | {base} | " + " | ".join(f"{m} at the same steps" for m in others) + " |",
            "|---|---|---|" + "---|" * len(others),
        ]
        for point in curves[base]:
            cells = []
            for m in others:
                value = at_steps(curves[m], point["steps"])
                cells.append("—" if value is None else f"{value:.4f} ({point['recall@100'] - value:+.4f})")
            tables.append(
                f"| {point['steps']} | {point['seconds']} | {point['recall@100']:.4f} | " + " | ".join(cells) + " |"
            )
    if not tables:
        return []
    return [
        "## Equal steps",
        "",
        f"The budget curves read at {base}'s step counts: every other loss's recall@100 linearly interpolated "
        f"between its own curve points at the same number of training steps (— outside the steps it measured), and "
        f"in brackets {base}'s lead. Equal seconds favour the cheaper step; equal steps show whether a loss also "
        "learns more per step. The curve subset is small, so differences of about 0.01 are within its noise.",
        *tables,
    ]


def protocols_section(result: dict[str, Any]) -> list[str]:
    """The protocols as run: time-split boundaries, the leave-last-out tie rule, example and user counts."""
    meta = result["meta"]
    lines = ["## Protocols", ""]
    for protocol in protocols_of(result):
        pmeta = meta.get("protocols", {}).get(protocol, {})
        pipeline = pmeta.get("pipeline", {})
        config = pipeline.get("config", {})
        first: dict[str, Any] = next(iter(result[protocol].values()), {})
        counts = f"{first.get('n_examples', '?')} test examples from {first.get('n_users', '?')} test users"
        if protocol == "time_split":
            split = pipeline.get("split", {})
            lines.append(
                f"- **time split** ({counts}): training labels before {split.get('validation_start')}, validation "
                f"labels in [{split.get('validation_start')}, {split.get('test_start')}), test labels from "
                f"{split.get('test_start')} to the end of the log ({split.get('max_ts')}); the log starts "
                f"{split.get('min_ts')}. test_days={config.get('test_days')}, "
                f"validation_days={config.get('validation_days')}, at most "
                f"{config.get('max_examples_per_user')} examples per user and split, history ≤ "
                f"{config.get('max_history')}."
            )
        elif protocol == "leave_last_out":
            lines.append(
                f"- **leave-last-out** ({counts}): each user's last watch is the test label, the last watch "
                f"strictly before it the validation label, history ≤ {config.get('max_history')}. "
                f"{tie_rule()} (`pipelines/transform.py::leave_last_out_split`)"
            )
        else:
            lines.append(f"- **{protocol}** ({counts})")
    lines += [
        "",
        "Every method ranks each test label over the full catalogue with exact scores "
        "(`recsys.metrics.label_ranks`; OOV label = miss; "
        f"{meta.get('evaluation') or exclusion_protocol(bool(meta.get('exclude_history')))}). "
        f"Intervals: {meta.get('intervals', 'n/a')}.",
    ]
    if meta.get("bpr_note"):
        lines.append(f"BPR: {meta['bpr_note']}.")
    return lines


def _relative(a: float, b: float) -> float:
    """(a - b) / b, infinite when b is 0."""
    return (a - b) / b if b > 0 else float("inf")


def quality_summary(result: dict[str, Any]) -> list[str]:
    """Per protocol, in words computed from the numbers: the best method, topk_random against each other, the checks."""
    meta = result["meta"]
    lines = [
        "## Summary",
        "",
        "Generated from the numbers below: test recall@100, the relative difference of topk_random to each other "
        "method, and whether the paired user-bootstrap 95% interval of the difference excludes 0 (after Holm's "
        "adjustment where the result has it).",
        "",
    ]
    for protocol in protocols_of(result):
        recall = {m: float(e["recall@100"]) for m, e in result[protocol].items()}
        best = max(recall, key=lambda m: recall[m])
        text = f"- **{PROTOCOL_NAMES.get(protocol, protocol)}**: highest recall@100 {best} ({recall[best]:.4f})."
        if COMPARE_BASE in recall:
            comparisons = meta.get("comparisons", {}).get(protocol, {})
            parts = []
            for other in recall:
                if other == COMPARE_BASE:
                    continue
                part = f"{_relative(recall[COMPARE_BASE], recall[other]):+.1%} against {other}"
                pair = comparisons.get(f"{COMPARE_BASE} vs {other}", {}).get("recall@100")
                if pair is not None:
                    significant = pair.get("significant_holm", pair["significant"])
                    part += " (significant)" if significant else " (not significant)"
                parts.append(part)
            text += f" {COMPARE_BASE} ({recall[COMPARE_BASE]:.4f}): {', '.join(parts)}."
        checks = meta.get("checks", {}).get(protocol, [])
        if checks:
            failing = [c["check"] for c in checks if not c["holds"]]
            text += f" Target checks: {len(checks) - len(failing)} of {len(checks)} hold"
            text += f"; failing: {'; '.join(failing)}." if failing else "."
        lines.append(text)
    return lines


def regenerate_section(command: str, json_path: Path) -> list[str]:
    """How to remake a result (its command as recorded when it ran) and its report (from the JSON alone)."""
    if command and not command.startswith("python"):
        command = f"python {command}"
    return [
        "## Regenerate",
        "",
        "The benchmark as recorded when it ran (`benchmarks/results/README.md` lists today's command of every "
        "committed result):",
        "",
        "```",
        command or "(not recorded)",
        "```",
        "",
        "This report alone, from the JSON (no retraining):",
        "",
        "```",
        f"python -m benchmarks.report --json {json_path.as_posix()}",
        "```",
        "",
    ]


def write_markdown(result: dict[str, Any], json_path: Path, out: Path, plots: Sequence[Path]) -> None:
    """Write the markdown report of a result JSON."""
    meta = result["meta"]
    lines = [f"# Retrieval quality: {meta.get('dataset', '?')}", ""]
    lines.append(
        "Test-split metrics, each with a 95% interval from a bootstrap over test users. "
        "`chosen` is what validation recall@100 picked from `grid` (validation carved from training data only; "
        "test is scored once, for the chosen point); for the two-tower losses each grid point trains with early "
        "stopping and its best epoch counts."
    )
    two_tower = meta.get("hyperparameters", {}).get("two_tower", {})
    model = two_tower.get("model")
    if model:
        lines += [
            "",
            f"User tower: hidden {model.get('hidden')}, embedding_dim {model.get('embedding_dim')}, "
            f"video_input_dim {model.get('video_input_dim')}. {two_tower.get('tower_note') or ''}".rstrip(),
        ]
    if two_tower.get("grid_note"):
        lines += ["", f"Two-tower grid: {two_tower['grid_note']}"]
    lines += ["", *quality_summary(result)]
    for section in (best_peer_section(result), published_section(result)):
        if section:
            lines += ["", *section]
    for protocol in protocols_of(result):
        lines += ["", f"## {PROTOCOL_NAMES.get(protocol, protocol)}", "", *method_table(protocol, result)]
    lines += ["", "## Paired comparisons", ""]
    lines.append(
        "Difference a − b of the per-example metric on the same test examples; 95% interval and two-sided p-value "
        "from a paired bootstrap over users (`recsys.stats.compare`); significant (raw) = the interval excludes 0. "
        f"p (Holm): Holm–Bonferroni adjusted p-value over the family of every pair and metric in the protocol's "
        f"table ({', '.join(COMPARE_METRICS)}), `recsys.stats.holm_adjust`; significant (Holm) = adjusted p ≤ 0.05, "
        "which controls the family-wise error rate at 5%. The bootstrap p-value's resolution is about "
        "2/(replicates + 1)."
    )
    for protocol in protocols_of(result):
        lines += ["", f"### {PROTOCOL_NAMES.get(protocol, protocol)}", "", *comparison_table(protocol, result)]
    planted = planted_section(result)
    if planted:
        lines += ["", *planted]
    equal_steps = equal_steps_section(result)
    if equal_steps:
        lines += ["", *equal_steps]
    lines += ["", *protocols_section(result), "", "## Plots", ""]
    lines += [f"- `{p.name}`" for p in plots]
    lines += ["", *regenerate_section(meta.get("command", ""), json_path)]
    out.write_text("\n".join(lines))


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported at the first plot (the text reports need none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_curves(
    ranks: np.ndarray, groups: np.ndarray, ks: int = CURVE_KS, replicates: int = CURVE_REPLICATES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall@K for K = 1..ks and its 2.5/97.5% user-bootstrap band, every K from the same replicates."""
    ranks = np.asarray(ranks, dtype=np.float64)
    _, user = np.unique(np.asarray(groups), return_inverse=True)
    n_users = int(user.max()) + 1 if len(user) else 0
    hits = ranks[:, None] < np.arange(1, ks + 1)[None, :]  # [examples, ks]
    sums = np.zeros((n_users, ks))
    np.add.at(sums, user, hits.astype(np.float64))
    counts = np.bincount(user, minlength=n_users).astype(np.float64)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=replicates).astype(np.float64)
    curves = (weights @ sums) / (weights @ counts)[:, None]  # [replicates, ks]
    low, high = np.quantile(curves, [0.025, 0.975], axis=0)
    return hits.mean(axis=0), low, high


def plot_recall_curve(protocol: str, ranks: dict[str, np.ndarray], groups: np.ndarray, out: Path) -> None:
    """Recall@K, K = 1..100, per method with its bootstrap band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ks = np.arange(1, CURVE_KS + 1)
    for i, (method, r) in enumerate(ranks.items()):
        mean, low, high = recall_curves(r, groups, seed=CURVE_SEED)
        style = "-" if method in LOSSES else "--"
        (line,) = ax.plot(ks, mean, style, color=f"C{i}", label=method, linewidth=1.6)
        ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (test)")
    ax.set_xlim(1, CURVE_KS)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{PROTOCOL_NAMES.get(protocol, protocol)}: Recall@K, 95% user-bootstrap bands ({CURVE_REPLICATES} reps)"
    )
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_training(protocol: str, losses: dict[str, Any], out: Path) -> bool:
    """Validation recall@100 per epoch of the sampled losses (and full softmax for reference); False if no history."""
    # Budget mode records "epochs" as a float (epochs done in the time budget), not a per-epoch history.
    histories = {
        m: info["epochs"] for m, info in losses.items() if isinstance(info.get("epochs"), list) and info["epochs"]
    }
    if not any(m in histories for m in SAMPLED_LOSSES):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(LOSSES):
        if method not in histories:
            continue
        epochs = [e["epoch"] for e in histories[method]]
        values = [e["recall@100"] for e in histories[method]]
        style = ":" if method == "full" else "-"
        ax.plot(epochs, values, style, marker="o", color=f"C{i}", label=method)
        best = losses[method].get("best_epoch")
        if best:
            ax.plot([best], [values[best - 1]], "*", color=f"C{i}", markersize=14)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation recall@100")
    ax.grid(alpha=0.3)
    ax.set_title(f"{PROTOCOL_NAMES.get(protocol, protocol)}: validation recall@100 per epoch (★ = best epoch)")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_budget_curve(protocol: str, losses: dict[str, Any], out: Path, split: str = "validation") -> bool:
    """Budget mode: recall@100 and planted-topic share against training seconds and steps per loss; False if no curve.

    `split` names the examples the curve scored (results written before the curve moved to validation used test).
    """
    curves = curves_of(losses)
    if not curves:
        return False
    shares = any("topic_share@100" in p for c in curves.values() for p in c)
    plt = _pyplot()
    keys = ["recall@100", "topic_share@100"] if shares else ["recall@100"]
    # Top row against seconds (what the budget equalises), bottom row against steps (what each step learns).
    xs = [("seconds", "training seconds (evaluation excluded)"), ("steps", "training steps")]
    fig, axes = plt.subplots(2, len(keys), figsize=(12 if shares else 7, 8.5), squeeze=False)
    for row, (x, xlabel) in enumerate(xs):
        for ax, key in zip(axes[row], keys, strict=True):
            for i, method in enumerate(LOSSES):
                if method in curves:
                    points = [p for p in curves[method] if key in p and x in p]
                    ax.plot([p[x] for p in points], [p[key] for p in points], marker="o", color=f"C{i}", label=method)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{split} {key} (curve subset)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9)
    fig.suptitle(f"{PROTOCOL_NAMES.get(protocol, protocol)}: quality against wall-clock and steps at an equal budget")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def format_table(protocol: str, metrics: dict[str, dict[str, float]], meta: dict[str, Any], dataset: str) -> str:
    """The plain-text table `benchmarks.quality` prints for one protocol: validation and test metrics, time, checks."""
    lines = [
        f"== {protocol} | {dataset} | {meta['examples']['test']} test examples | {meta['videos']} videos "
        f"| train {meta['examples']['train']} | validation {meta['examples']['validation']} ==",
        f"{'method':<12} {'val R@100':>9} {'R@10':>7} {'R@20':>7} {'R@50':>7} {'R@100':>7} {'NDCG@10':>8} "
        f"{'NDCG@20':>8} {'MAP':>7} {'train s':>8}  notes",
    ]
    for method, m in metrics.items():
        val, secs, note = "", "", ""
        if method in meta.get("losses", {}):
            info = meta["losses"][method]
            if "validation_best" in info:
                val = f"{info['validation_best']['recall@100']:.4f}"
                chosen = ", ".join(f"{k}={v}" for k, v in info.get("chosen", {}).items())
                note = f"{chosen + ', ' if chosen else ''}best epoch {info['best_epoch']}/{info['epochs_run']}"
                if "validation_earlier_hidden" in info:
                    note += f", val R@100 earlier hidden {info['validation_earlier_hidden']['recall@100']:.4f}"
            else:
                note = f"{info['steps']} steps, {info['epochs']} epochs"
            secs = f"{info.get('wall_s', info.get('train_s')):.0f}"
        elif method in BASELINES and method in meta:
            val = f"{meta[method]['chosen_validation']['recall@100']:.4f}"
            secs = f"{meta[method]['fit_s']:.1f}"
            note = ", ".join(f"{k}={v}" for k, v in meta[method]["chosen"].items())
            if method == "bpr":
                note += " (no fold-in)"
        elif method == "popularity" and "validation_popularity" in meta:
            val = f"{meta['validation_popularity']['recall@100']:.4f}"
            if "validation_popularity_earlier_hidden" in meta:
                note = f"val R@100 earlier hidden {meta['validation_popularity_earlier_hidden']['recall@100']:.4f}"
        share = meta.get("topic_share@100", {}).get(method)
        if share is not None:
            note += f" topic share@100 {share:.3f}"
        lines.append(
            f"{method:<12} {val:>9} {m['recall@10']:>7.4f} {m['recall@20']:>7.4f} {m['recall@50']:>7.4f} "
            f"{m['recall@100']:>7.4f} {m['ndcg@10']:>8.4f} {m['ndcg@20']:>8.4f} {m['map']:>7.4f} {secs:>8}  {note}"
        )
    lines.append("targets (test recall@100; CI: paired user-bootstrap 95% interval of the difference):")
    for c in meta["checks"]:
        lines.append(
            f"  [{'HOLDS' if c['holds'] else 'FAILS'}] {c['check']}: {c['a']:.4f} vs {c['b']:.4f} "
            f"({c['relative']:+.1%}; diff {c['diff']:+.4f}, CI [{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]"
            f"{'' if c['ci95_low'] > 0 or c['ci95_high'] < 0 else ', not significant'})"
        )
    return "\n".join(lines)


def format_deepmatch(metrics: dict[str, dict[str, float]]) -> str:
    """Our leave-last-out recall@50 beside DeepMatch's published ML-1M figures (their code, their runs)."""
    lines = ["ML-1M leave-last-out recall@50 (hit rate), ours beside DeepMatch's published figures:"]
    lines += [f"  ours {m:<12} {v['recall@50']:.4f}" for m, v in metrics.items()]
    lines += [f"  DeepMatch {name:<18} {value:.3f}" for name, value in DEEPMATCH_ML1M_RECALL50.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- seed spread
def seeds_table(summary: dict[str, Any], seeds: Sequence[int]) -> str:
    """Markdown tables: each variant's test metrics over seeds, then the paired Recall@100 gaps."""
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample sd over seeds (min–max of Recall@100).",
        "",
        "| variant | Recall@10 | Recall@50 | Recall@100 | R@100 min–max | NDCG@10 | MAP | validation R@100 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(s: dict[str, Any]) -> str:
        return f"{s['mean']:.4f}" + (f" ± {s['sd']:.4f}" if s["sd"] is not None else "")

    for variant, m in summary["variants"].items():
        r100 = m[SEEDS_HEADLINE]
        lines.append(
            f"| {variant} | {cell(m['recall@10'])} | {cell(m['recall@50'])} | {cell(r100)} | "
            f"{r100['min']:.4f}–{r100['max']:.4f} | {cell(m['ndcg@10'])} | {cell(m['map'])} | "
            f"{cell(m['validation_recall@100'])} |"
        )
    lines += ["", "| pair | Recall@100 gap per seed | mean gap [95% t interval] |", "|---|---|---|"]
    for pair, g in summary["gaps"].items():
        per_seed = ", ".join(f"{v:+.1%}" for v in g["relative"])
        ci = f" [{g['ci95_low']:+.1%}, {g['ci95_high']:+.1%}]" if g["ci95_low"] is not None else ""
        lines.append(f"| {pair} | {per_seed} | {g['mean']:+.1%}{ci} |")
    return "\n".join(lines)


def seeds_summary(summary: dict[str, Any]) -> list[str]:
    """In words computed from the numbers: the best mean Recall@100 and, per pair, how often and how far a led b."""
    means = {v: m[SEEDS_HEADLINE]["mean"] for v, m in summary["variants"].items()}
    best = max(means, key=lambda v: means[v])
    lines = [f"- Highest mean test Recall@100 over the seeds: {best} ({means[best]:.4f})."]
    for pair, g in summary["gaps"].items():
        a, b = pair.split(" vs ")
        ahead = sum(v > 0 for v in g["relative"])
        text = f"- {a} against {b}: ahead in {ahead} of {len(g['relative'])} seeds, mean gap {g['mean']:+.1%}"
        if g["ci95_low"] is not None:
            inside = g["ci95_low"] <= 0 <= g["ci95_high"]
            text += f", 95% t interval [{g['ci95_low']:+.1%}, {g['ci95_high']:+.1%}]"
            text += " (contains 0: within the seed-to-seed spread)" if inside else " (excludes 0)"
        lines.append(text + ".")
    return lines


def seeds_markdown(result: dict[str, Any], json_path: Path) -> str:
    """The markdown report of a seed-spread result."""
    meta = result["meta"]
    lines = [
        f"# Seed spread: {meta['dataset']}, {meta['protocol']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        # Results from before the as-served default record no exclude_history: they were unfiltered.
        f"Validation and test {exclusion_protocol(bool(meta.get('exclude_history')))}.",
        "",
        seeds_table(result["summary"], meta["seeds"]),
        "",
        "## Summary",
        "",
        "Generated from the tables above.",
        "",
        *seeds_summary(result["summary"]),
        "",
        f"Rebuild this report from the JSON: `python -m benchmarks.report --json {json_path.as_posix()}`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- validation sweep
def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one row per point, its best validation recall@100, best epoch and curve."""
    lines = [
        "| point | validation R@100 | best epoch / run | per-epoch validation R@100 |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{json.dumps(r['point'])}` | {r['validation']['recall@100']:.4f} | {r['best_epoch']} / "
            f"{r['epochs_run']} | {' '.join(f'{v:.3f}' for v in r['curve'])} |"
        )
    return "\n".join(lines)


def sweep_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """In words computed from the rows: the best point, and the points still improving when training stopped."""
    if not rows:
        return ["- No points."]
    best = max(rows, key=lambda r: r["validation"]["recall@100"])
    lines = [
        f"- Best point by validation Recall@100: `{json.dumps(best['point'])}`, "
        f"{best['validation']['recall@100']:.4f} at epoch {best['best_epoch']} of {best['epochs_run']}."
    ]
    rising = [f"`{json.dumps(r['point'])}`" for r in rows if r["best_epoch"] == r["epochs_run"]]
    if rising:
        lines.append(f"- Best epoch = last epoch run (possibly still improving): {', '.join(rising)}.")
    return lines


def sweep_markdown(result: dict[str, Any], json_path: Path) -> str:
    """The markdown report of a validation sweep."""
    meta = result["meta"]
    lines = [
        f"# Validation sweep: {meta['dataset']}, {meta['loss']}, time split",
        "",
        f"Command: `{meta['command']}`",
        "",
        "Validation only (test is never read), "
        f"{exclusion_protocol(bool(meta.get('exclude_history')))}. Base: the quality benchmark's config of the "
        "dataset (`benchmarks.two_tower.model_configs`).",
        "",
        sweep_table(result["points"]),
        "",
        "## Summary",
        "",
        "Generated from the table above.",
        "",
        *sweep_summary(result["points"]),
        "",
        f"Rebuild this report from the JSON: `python -m benchmarks.report --json {json_path.as_posix()}`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- entry points
def result_kind(result: dict[str, Any]) -> str:
    """Which benchmark wrote a result JSON: "seeds", "sweep" or "quality"."""
    if "summary" in result and "runs" in result:
        return "seeds"
    if "points" in result:
        return "sweep"
    if isinstance(result.get("meta"), dict) and protocols_of(result):
        return "quality"
    raise ValueError("not a quality, seed-spread or sweep result")


def write_quality_report(json_path: Path, out_dir: Path | None = None) -> list[Path]:
    """Write `<stem>.md` and the plots from a quality result JSON and its ranks file; return the paths written."""
    json_path = Path(json_path)
    out_dir = Path(out_dir) if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result = json.loads(json_path.read_text())
    written: list[Path] = []
    with np.load(ranks_file(json_path)) as npz:
        stored = {k: npz[k] for k in npz.files}
    for protocol in protocols_of(result):
        ranks = {m: stored[f"{protocol}/{m}"] for m in result[protocol] if f"{protocol}/{m}" in stored}
        n = len(next(iter(ranks.values()))) if ranks else 0
        groups = stored.get(f"groups/{protocol}", np.arange(n))  # an old ranks file: one example = one cluster
        if ranks:
            curve = out_dir / f"{json_path.stem}_recall_curve_{protocol}.png"
            plot_recall_curve(protocol, ranks, groups, curve)
            written.append(curve)
        losses = result["meta"].get("protocols", {}).get(protocol, {}).get("losses", {})
        training = out_dir / f"{json_path.stem}_training_{protocol}.png"
        if plot_training(protocol, losses, training):
            written.append(training)
        budget_curve = out_dir / f"{json_path.stem}_budget_curve_{protocol}.png"
        if plot_budget_curve(protocol, losses, budget_curve, curve_split(result, protocol)):
            written.append(budget_curve)
    md = out_dir / f"{json_path.stem}.md"
    write_markdown(result, json_path, md, written)
    return [md, *written]


def write_report(json_path: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the report of any result JSON (quality: markdown and plots; seeds, sweep: markdown); the paths written."""
    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    kind = result_kind(result)
    if kind == "quality":
        return write_quality_report(json_path, out_dir)
    out = (Path(out_dir) if out_dir is not None else json_path.parent) / f"{json_path.stem}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(seeds_markdown(result, json_path) if kind == "seeds" else sweep_markdown(result, json_path))
    return [out]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: regenerate the report of one result JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="a quality, seed-spread or sweep result JSON")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: beside the JSON")
    args = parser.parse_args(argv)
    for path in write_report(args.json, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
