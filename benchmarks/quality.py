"""Retrieval quality of the four losses, popularity, ALS, BPR, EASE and item-kNN under two protocols, in one run.

    python -m benchmarks.quality --dataset ml-100k --json benchmarks/results/quality/quality_ml100k.json
    python -m benchmarks.quality --dataset ml-100k --movielens ml-1m.zip --json quality_ml1m.json
    python -m benchmarks.quality --dataset synthetic --videos 10000 --users 10000 --events 500000 \\
        --protocols time_split --json benchmarks/results/quality/quality_synthetic.json
    python -m benchmarks.quality --dataset synthetic --videos 1000000 --budget-seconds 300 --json quality_1m.json
    python -m benchmarks.quality --events data/log --history-pooling attention --json quality_mylog.json
    python -m benchmarks.quality --events ../shared/data/amazon/Beauty.txt --protocols leave_last_out --defaults \
        --skip-bpr --hide earlier --json quality_beauty_defaults.json

The dataset options are `benchmarks.datasets`' (the same in every benchmark); the pieces of the run live in
`benchmarks.two_tower` (configs, grids, training), `benchmarks.baselines` (ALS, BPR, EASE, item-kNN),
`benchmarks.protocol` (one protocol's run), `benchmarks.targets` (checks and bootstrap statistics), `benchmarks.topics`
(planted-topic share), `benchmarks.published` (other papers' figures) and `benchmarks.report` (tables, markdown,
plots).

Protocols (each one pipeline run over the same raw log):
- time_split: global label-time boundaries (MovieLens: the last 49 days are test, the 14 before validation,
  <= 200 examples per user and split; synthetic: the pipeline's defaults). On ML-100K a 14-day test window holds
  only ~91 users; 49 days is the shortest whole-week window with >= 300 test users
  (`benchmarks.datasets.MOVIELENS_TEST_DAYS`);
- leave_last_out: each user's last watch is the test label, the last watch strictly before it the validation label,
  history <= 50 watches: the protocol of DeepMatch's published ML-1M figures (recall@50 = hit rate, one target).

Methods, all scored by `recsys.metrics.label_ranks` over the FULL catalogue with exact scores (OOV label = miss,
index 0 never retrievable) and, by default, as served: each example's history hidden for every method on validation
and test, so a re-watched label is a miss (--no-exclude-history: the unfiltered protocol; meta records which):
- the two-tower model trained with each loss (full, loguniform, inbatch, topk_random): same model, same data, same
  grid (`benchmarks.two_tower.TWO_TOWER_GRID`: the learning rate) searched per loss; every grid point trains up to
  the epoch cap with early stopping on validation recall@100, and the point with the best validation recall@100 (at
  its best epoch) is the one scored on test; with --defaults instead, what `recsys train` trains with no flags
  (ModelConfig() and TrainConfig(): its default loss, one point, no grid; only the per-epoch validation's exclusion
  follows the protocol), not tuned on the log;
- popularity (training label counts);
- implicit's ALS (CPU), user factor folded in from each example's own history (the history the two-tower sees);
- implicit's BPR (CPU), scored from the user factors it learned on the training window (it cannot fold in);
- EASE (`benchmarks.baselines`), fitted on the same training-window matrix as ALS (binarised), each example scored
  from its own history like the ALS fold-in, lambda chosen on validation with `benchmarks.baselines.choose_lambda`;
- item-kNN (`benchmarks.baselines`): shrunk item-item cosine on the same binarised matrix, top neighbours per item,
  each example scored from its own history like EASE (--skip-bpr leaves BPR out: slow, and not one of issue 34's
  peers).
ALS, BPR, EASE and item-kNN are fitted on every (user, video) watch of the training window (time split: ts <
validation_start; leave-last-out: each user's watches strictly before that user's validation label) and their
hyperparameters are picked on the validation split from a small grid (recorded in meta; ALS reaches 256 factors on
a log of your own). Nothing is tuned on test. The report holds the two-tower against the best of ALS, EASE and
item-kNN per metric ("Against the best peer") and, for the Amazon Beauty and Sports logs, published HR@20 figures
beside ours (`benchmarks.published`).

Budget mode (--budget-seconds, implied by --videos >= 1000000): only the sampled losses, each trained for the same
wall-clock time in a loop around `training.train.Trainer`, then scored on (a seeded subset of) test, with the share
of each top-100 whose planted topic is one of the user's planted interests beside popularity's. On synthetic data the
main mode reports that planted-topic share for every method too (meta "topic_share@100").

Writes the JSON (metrics per protocol and method + meta) and `<json stem>.ranks.npz` with every method's per-example
test ranks under "<protocol>/<method>" (same example order for every method) and each test example's user id under
"groups/<protocol>". Test metrics are recall@10/20/50/100, ndcg@10/20 (and @50/100 in the comparisons) and MAP
(`benchmarks.schema.QUALITY_KS`). Every metric carries a 95% interval from `recsys.stats.summarise` (a bootstrap
over test users) and the target checks and `meta["comparisons"]` are paired user bootstraps
(`recsys.stats.compare`). At the end `benchmarks.report` turns the JSON and the ranks into `<json stem>.md` and
the plots beside the JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import tensorflow as tf

from benchmarks.baselines import BPR_NOTE
from benchmarks.datasets import (
    BIG_CATALOGUE,
    add_dataset_arguments,
    add_exclusion_argument,
    check_dataset_arguments,
    prepare_dataset,
)
from benchmarks.output import command_line, log, ranks_file, write_json
from benchmarks.protocol import ProtocolRun, hides_earlier, run_budget_protocol, run_protocol
from benchmarks.published import format_published
from benchmarks.report import best_peer_section, format_deepmatch, format_table, write_report
from benchmarks.schema import BASELINES, COMPARE_METRICS, LOSSES, METHODS, PROTOCOLS, SAMPLED_LOSSES, shape_results
from benchmarks.targets import BOOT_SEED, N_BOOT, add_intervals, comparison_base
from benchmarks.two_tower import (
    TOWER_NOTE,
    TWO_TOWER_GRID,
    TWO_TOWER_GRID_NOTE,
    model_configs,
    with_tower,
)
from recsys.config import HISTORY_POOLINGS, ModelConfig, TrainConfig, parse_widths, with_overrides
from recsys.grid import apply_point, parse_grid, parse_overrides
from recsys.metrics import exclusion_protocol

BUDGET_SECONDS = 300.0  # the equal wall-clock budget per loss from BIG_CATALOGUE videos, unless --budget-seconds
DEFAULTS_NOTE = (
    "Defaults: ModelConfig() and TrainConfig() exactly as `recsys train --examples E --out R` trains with no flags "
    "(one point, no grid; only the per-epoch validation's exclusion follows the protocol). Not tuned on this log."
)
# The options --defaults refuses (each changes the two-tower's config), with how parse_args holds them unset.
TOWER_OPTIONS: dict[str, tuple[str, Any]] = {
    "--hidden": ("hidden", None),
    "--video-input-dim": ("video_input_dim", None),
    "--history-pooling": ("history_pooling", None),
    "--learning-rates": ("learning_rates", None),
    "--grid": ("grid", []),
    "--set": ("overrides", []),
    "--epochs": ("epochs", None),
    "--tail-sampler": ("tail_sampler", None),
}


def training_seconds(run: ProtocolRun) -> dict[str, float]:
    """Wall-clock training seconds per method (two-tower: train() incl. per-epoch validation; ALS/BPR: chosen fit)."""
    out = {loss: float(info.get("wall_s", info.get("train_s", 0.0))) for loss, info in run.meta["losses"].items()}
    out |= {b: float(run.meta[b]["fit_s"]) for b in BASELINES if b in run.meta}
    return out


def _versions() -> dict[str, str]:
    """Versions of the libraries the figures depend on."""
    import faiss
    import implicit

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "implicit": implicit.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap of every loss (default: 40 / 20)")
    parser.add_argument(
        "--learning-rates",
        default=None,
        help="comma-separated learning-rate axis of the two-tower grid (default: TWO_TOWER_GRID of the dataset)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept and reused (default: a temp dir, removed)")
    parser.add_argument("--protocols", default=None, help="comma-separated subset of " + ",".join(PROTOCOLS))
    add_exclusion_argument(parser)
    parser.add_argument(
        "--hide",
        choices=("history", "earlier"),
        default="history",
        help="with --exclude-history, what is hidden: the example's own history (at most the pipeline's max_history "
        "watches, what the service hides) or every video its user watched before the label; test and the baselines' "
        "validation use the rule, the two-tower's early stopping keeps the history rule (its chosen run is then also "
        "scored on validation under the rule: validation_earlier_hidden)",
    )
    parser.add_argument(
        "--skip-baselines", action="store_true", help="no ALS/BPR/EASE/item-kNN (the JSON then lacks them)"
    )
    parser.add_argument("--skip-bpr", action="store_true", help="no BPR (slow, and not one of issue 34's peers)")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="the two-tower exactly as `recsys train` trains with no flags: ModelConfig(), TrainConfig(), its default "
        "loss unless --losses, one point (no grid); refuses the options that change the tower or its training",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help=f"equal wall-clock budget per loss (default from {BIG_CATALOGUE} synthetic videos: {BUDGET_SECONDS:.0f})",
    )
    parser.add_argument("--max-test-examples", type=int, default=None, help="budget mode test subset (default 5000)")
    parser.add_argument(
        "--curve-points",
        type=int,
        default=6,
        help="budget mode: validation recall@100 (and planted-topic share) measured this many times during each "
        "loss's budget, clock stopped, on the first 2,000 validation examples (0: none; test is scored once, at the "
        "end)",
    )
    parser.add_argument(
        "--tail-sampler",
        choices=["uniform", "loguniform", "loguniform_inbatch"],
        default=None,
        help="top-K-plus-random's tail T: the design's uniform draw, log-uniform with Hansen-Hurwitz weights, or "
        "log-uniform plus the batch's labels with balance-heuristic weights",
    )
    parser.add_argument(
        "--losses",
        default=None,
        help="comma-separated subset of the two-tower losses (default: all four; budget mode: the sampled three)",
    )
    parser.add_argument(
        "--hidden",
        default=None,
        help="the user tower's hidden widths, comma-separated ('' for depth 0; default: depth 0 on MovieLens, 256 on "
        "synthetic)",
    )
    parser.add_argument("--video-input-dim", type=int, default=None, help="width of the watch-history embeddings")
    parser.add_argument(
        "--history-pooling",
        choices=HISTORY_POOLINGS,
        default=None,
        help="how the user tower pools the watch history (default: ModelConfig's, the mean)",
    )
    parser.add_argument(
        "--max-examples-per-user",
        type=int,
        default=None,
        help="the pipeline's example cap per user and split (default: the protocol's; 200 on the time splits)",
    )
    parser.add_argument(
        "--max-history",
        type=int,
        default=None,
        help="the pipeline's history length per example, which is also what is hidden as served (default: the "
        "protocol's, 50 watches)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one ModelConfig or TrainConfig field of every two-tower run (repeatable; VALUE is JSON, else "
        "a string), e.g. --set exclude_history_from_head=true --set embedding_dim=128",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="add or replace one axis of the two-tower grid searched on validation per loss (repeatable), e.g. "
        "--grid history_pooling=mean,recency",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    args = parser.parse_args(argv)
    check_dataset_arguments(parser, args)
    big = args.dataset == "synthetic" and args.videos >= BIG_CATALOGUE
    if args.budget_seconds is None and big:
        args.budget_seconds = BUDGET_SECONDS
    args.budget = args.budget_seconds is not None
    if args.budget and args.dataset != "synthetic":
        parser.error("--budget-seconds is a synthetic-data mode")
    if args.budget and args.hide != "history":
        parser.error("--hide earlier is a main-mode rule (budget mode hides each example's history)")
    if args.budget and args.max_test_examples is None:
        args.max_test_examples = 5000
    default_protocols = ("time_split",) if args.budget else PROTOCOLS
    args.protocols = tuple(args.protocols.split(",")) if args.protocols else default_protocols
    if unknown := set(args.protocols) - set(PROTOCOLS):
        parser.error(f"unknown protocol(s) {sorted(unknown)}")
    allowed = SAMPLED_LOSSES if args.budget else LOSSES
    check_defaults(parser, args)
    default_losses = (TrainConfig().loss,) if args.defaults else allowed
    args.losses = tuple(v for v in args.losses.split(",") if v) if args.losses else default_losses
    if not args.losses or set(args.losses) - set(allowed):
        parser.error(f"--losses must name some of {', '.join(allowed)}")
    if args.hidden is not None:
        try:
            args.hidden = parse_widths(args.hidden)
        except ValueError as err:
            parser.error(str(err))
    if args.max_examples_per_user is not None and args.max_examples_per_user < 1:
        parser.error("--max-examples-per-user must be >= 1")
    if args.max_history is not None and args.max_history < 1:
        parser.error("--max-history must be >= 1")
    args.pipeline = {
        k: v
        for k, v in (("max_examples_per_user", args.max_examples_per_user), ("max_history", args.max_history))
        if v is not None
    }
    try:
        args.overrides = parse_overrides(args.overrides)
        args.grid = parse_grid(args.grid)
    except ValueError as err:
        parser.error(str(err))
    return args


def check_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse --defaults with an option that would change the two-tower's config (a usage error), or in budget mode."""
    if not args.defaults:
        return
    if args.budget:
        parser.error("--defaults is a main-mode option (budget mode trains the sampled losses at a time budget)")
    given = [flag for flag, (name, unset) in TOWER_OPTIONS.items() if getattr(args, name) != unset]
    if given:
        parser.error(f"--defaults trains the no-flag configs; drop {', '.join(given)}")


def two_tower_configs(args: argparse.Namespace, kind: str) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The two-tower's base model and training configs and its grid: the benchmark's per kind, or --defaults'."""
    if args.defaults:
        return ModelConfig(), with_overrides(TrainConfig(), eval_exclude_history=args.exclude_history), {}
    model_cfg, train_cfg = model_configs(kind, args.epochs, args.budget)
    model_cfg = with_tower(model_cfg, args.hidden, args.video_input_dim, args.history_pooling)
    # The tail sampler only matters to top-K-plus-random; the two-tower's validation follows the protocol.
    train_cfg = with_overrides(train_cfg, tail_sampler=args.tail_sampler, eval_exclude_history=args.exclude_history)
    model_cfg, train_cfg = apply_point(model_cfg, train_cfg, args.overrides)
    axes = dict(TWO_TOWER_GRID[kind])
    if args.learning_rates:
        axes["learning_rate"] = tuple(float(v) for v in args.learning_rates.split(","))
    return model_cfg, train_cfg, axes | args.grid


def grid_note(args: argparse.Namespace, kind: str) -> str | None:
    """How the two-tower's grid was fixed, as the JSON records it (none in budget mode)."""
    if args.budget:
        return None
    return DEFAULTS_NOTE if args.defaults else TWO_TOWER_GRID_NOTE[kind]


EARLIER_RULE = (
    "whole earlier history hidden: every video the user watched before the label (stricter than as served, which "
    "hides the example's padded history), a re-watched label a miss"
)


def main(argv: Sequence[str] | None = None) -> None:
    """Prepare the data, run every method under every protocol, print the tables, write the JSON and the ranks."""
    args = parse_args(argv)
    keep_work = args.workdir is not None
    if keep_work:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = args.workdir
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    started = time.perf_counter()
    try:
        prepared = prepare_dataset(args, work, args.protocols, args.pipeline)
        log(f"examples ready for {', '.join(args.protocols)}")
        model_cfg, train_cfg, args.two_tower_grid = two_tower_configs(args, prepared.kind)
        runs: dict[str, ProtocolRun] = {}
        for protocol in args.protocols:
            if args.budget:
                runs[protocol] = run_budget_protocol(prepared, protocol, model_cfg, train_cfg, args)
            else:
                runs[protocol] = run_protocol(prepared, protocol, model_cfg, train_cfg, work, args)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    runtime = time.perf_counter() - started

    methods = [m for m in METHODS if all(m in run.metrics for run in runs.values())]
    result: dict[str, Any] = shape_results({p: r.metrics for p, r in runs.items()}, args.protocols, methods)
    base = comparison_base(methods)
    comparisons = add_intervals(result, runs, methods, base)
    default_tower = (args.hidden, args.video_input_dim, args.history_pooling) == (None, None, None) and not any(
        k in ModelConfig.model_fields for k in (*args.overrides, *args.grid)
    )
    result["meta"] = {
        "dataset": prepared.name,
        "mode": "equal wall-clock budget, sampled losses only" if args.budget else "same epochs and early stopping",
        # defaults: ModelConfig() and TrainConfig() as `recsys train` uses them (hyperparameters.two_tower holds both).
        "two_tower_config": "defaults" if args.defaults else "benchmark",
        "command": command_line("benchmarks.quality", argv),
        "runtime_s": round(runtime, 1),
        "exclude_history": args.exclude_history,
        "evaluation": EARLIER_RULE if hides_earlier(args) else exclusion_protocol(args.exclude_history),
        "hide": args.hide if args.exclude_history else None,
        "metrics": "test split, full catalogue, exact scores, tie-averaged ranks (recsys.metrics.label_ranks)",
        "selection": "two-tower: per loss, the grid point and its best epoch by validation recall@100 (early "
        "stopping); ALS/BPR/EASE/item-kNN: grid point by validation recall@100; validation under the same protocol as "
        "test; "
        "test is scored once, for the chosen point",
        "intervals": f"95% percentile intervals from a bootstrap over test users ({N_BOOT} replicates, seed "
        f"{BOOT_SEED}, recsys.stats.summarise); comparisons: paired user bootstrap (recsys.stats.compare), "
        f"Holm-Bonferroni adjusted over every pair x {', '.join(COMPARE_METRICS)} of a protocol "
        "(recsys.stats.holm_adjust)",
        "compare_base": base,
        "comparisons": comparisons,
        "bpr_note": None if args.skip_bpr else BPR_NOTE,
        "test_examples": {p: r.meta["examples"]["test"] for p, r in runs.items()},
        "checks": {p: r.meta["checks"] for p, r in runs.items()},
        "hyperparameters": {
            "two_tower": {
                "model": model_cfg.model_dump(mode="json"),
                "train": train_cfg.model_dump(mode="json", exclude={"loss"}),
                "losses": list(args.losses),
                "overrides": args.overrides,
                "pipeline_overrides": args.pipeline,
                "grid": {} if args.budget else {k: list(v) for k, v in args.two_tower_grid.items()},
                "grid_note": grid_note(args, prepared.kind),
                "tower_note": TOWER_NOTE if default_tower and not args.defaults else None,
                "chosen": {
                    p: {loss: info["chosen"] for loss, info in r.meta["losses"].items() if "chosen" in info}
                    for p, r in runs.items()
                },
            },
            **{b: {p: r.meta[b]["chosen"] for p, r in runs.items() if b in r.meta} for b in BASELINES},
        },
        "training_s": {p: training_seconds(r) for p, r in runs.items()},
        "protocols": {p: {k: v for k, v in r.meta.items() if k != "checks"} for p, r in runs.items()},
        "ranks_file": ranks_file(args.json).name,
        "versions": _versions(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    write_json(result, args.json)
    arrays: dict[str, Any] = {f"{p}/{m}": r.ranks[m] for p, r in runs.items() for m in r.ranks}
    arrays |= {f"groups/{p}": r.groups for p, r in runs.items()}
    np.savez_compressed(ranks_file(args.json), **arrays)

    print()
    for protocol, run in runs.items():
        print(format_table(protocol, run.metrics, run.meta, prepared.name))
        if protocol == "leave_last_out" and prepared.name == "ml-1m":
            print(format_deepmatch(run.metrics))
        if protocol == "leave_last_out" and (published := format_published(prepared.name, run.metrics)):
            print(published)
        print()
    if peers := best_peer_section(result):
        print("\n".join(peers) + "\n")
    print(f"runtime {runtime:.0f} s; wrote {args.json} and {ranks_file(args.json)}")
    written = write_report(args.json)
    print("report: " + ", ".join(str(w) for w in written))


if __name__ == "__main__":
    main()
