"""Markdown tables and plots of a quality benchmark run, from its JSON and ranks (no retraining).

    python benchmarks/report.py --json benchmarks/results/quality_ml100k.json

Writes beside the JSON, named after its stem (`quality_ml100k.json` -> `quality_ml100k.md`, ...): `<stem>.md` (one
table per protocol with 95% user-bootstrap intervals and the hyperparameters validation chose from which grid, the
paired comparisons of topk_random against every other method with raw and Holm-adjusted p-values, the protocols and
the regenerating command), `<stem>_recall_curve_<protocol>.png` (Recall@K for K = 1..100 with bootstrap bands) and,
where the JSON holds the per-epoch validation history, `<stem>_training_<protocol>.png`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/report.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

TABLE_METRICS = (("recall@10", "R@10"), ("recall@50", "R@50"), ("recall@100", "R@100"), ("ndcg@10", "NDCG@10"))
TABLE_METRICS = (*TABLE_METRICS, ("map", "MAP"))
COMPARE_METRICS = ("recall@10", "recall@100", "ndcg@10", "map")
CURVE_KS = 100
CURVE_REPLICATES = 300
CURVE_SEED = 0
TWO_TOWER = ("full", "loguniform", "inbatch", "topk_random")
SAMPLED = ("loguniform", "inbatch", "topk_random")
PROTOCOL_NAMES = {"time_split": "time split", "leave_last_out": "leave-last-out"}


def ranks_path(json_path: Path) -> Path:
    """The ranks file of a result JSON: `<json stem>.ranks.npz` beside it."""
    return json_path.with_name(json_path.stem + ".ranks.npz")


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
            stopping = f"epochs ≤ {info['epoch_cap']}, early stopping (patience {info['patience']})"
            return f"{_params(info['chosen'])}, {epoch}", f"{_grid(info['grid'])}; {stopping}"
        return f"{info.get('steps')} steps", "equal wall-clock budget"
    if method in pmeta and isinstance(pmeta[method], dict) and "chosen" in pmeta[method]:
        return _params(pmeta[method]["chosen"]), _grid(pmeta[method].get("grid", {}))
    if method == "popularity":
        return "training label counts", "—"
    return "", ""


def method_table(protocol: str, result: dict[str, Any]) -> list[str]:
    """The markdown table of one protocol: metrics with CIs, test examples/users, hyperparameters and grids."""
    meta = result["meta"]
    pmeta = meta.get("protocols", {}).get(protocol, {})
    head = ["method", *(label + " [95% CI]" for _, label in TABLE_METRICS), "test examples / users", "chosen", "grid"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, entry in result[protocol].items():
        chosen, grid = hyperparameters(method, pmeta, meta)
        counts = f"{entry.get('n_examples', '?')} / {entry.get('n_users', '?')}"
        cells = [method, *(_cell(entry, key) for key, _ in TABLE_METRICS), counts, chosen, grid]
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
        "interests (`benchmarks.quality.topic_share`; a chance-level recommender scores about the topics' share of "
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


def protocols_section(result: dict[str, Any]) -> list[str]:
    """The protocols as run: time-split boundaries, the leave-last-out tie rule, example and user counts."""
    meta = result["meta"]
    lines = ["## Protocols", ""]
    for protocol in protocols_of(result):
        pmeta = meta.get("protocols", {}).get(protocol, {})
        pipeline = pmeta.get("pipeline", {})
        config = pipeline.get("config", {})
        first = next(iter(result[protocol].values()), {})
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
        f"{'history excluded' if meta.get('exclude_history') else 'no history exclusion'}). "
        f"Intervals: {meta.get('intervals', 'n/a')}.",
    ]
    if meta.get("bpr_note"):
        lines.append(f"BPR: {meta['bpr_note']}.")
    return lines


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
    lines += ["", *protocols_section(result), "", "## Plots", ""]
    lines += [f"- `{p.name}`" for p in plots]
    command = meta.get("command", "")
    lines += [
        "",
        "## Regenerate",
        "",
        "```",
        f"python {command}" if command and not command.startswith("python") else command,
        f"python benchmarks/report.py --json {json_path.as_posix()}  # markdown and plots only, no retraining",
        "```",
        "",
    ]
    out.write_text("\n".join(lines))


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
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ks = np.arange(1, CURVE_KS + 1)
    for i, (method, r) in enumerate(ranks.items()):
        mean, low, high = recall_curves(r, groups, seed=CURVE_SEED)
        style = "-" if method in TWO_TOWER else "--"
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
    if not any(m in histories for m in SAMPLED):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(TWO_TOWER):
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


def write_report(json_path: Path, out_dir: Path | None = None) -> list[Path]:
    """Write `<stem>.md` and the plots from a result JSON and its ranks file; return the paths written."""
    json_path = Path(json_path)
    out_dir = Path(out_dir) if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result = json.loads(json_path.read_text())
    written: list[Path] = []
    with np.load(ranks_path(json_path)) as npz:
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
    md = out_dir / f"{json_path.stem}.md"
    write_markdown(result, json_path, md, written)
    return [md, *written]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: regenerate the markdown and plots of one result JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="a quality benchmark result JSON")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: beside the JSON")
    args = parser.parse_args(argv)
    for path in write_report(args.json, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
