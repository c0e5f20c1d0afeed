"""Seed spread of the two-tower losses: how much of a quality gap between two losses is training noise.

    python -m benchmarks.seeds --dataset ml-100k --seeds 1,2,3 --json benchmarks/results/seeds/seeds_ml100k.json

`benchmarks.quality` trains each loss once, and its intervals are a bootstrap over test users: they capture which
users were tested, not which initialisation and batch order the run happened to get. Here every variant is trained
once per seed (`TrainConfig.seed`: initial weights, shuffle order, sampled negatives) on the same examples with the
same learning rate, epoch cap and early stopping as `benchmarks.quality`, and scored on test over the full catalogue,
as served by default (each example's history hidden on validation and test; --no-exclude-history: unfiltered).
It reports each variant's mean and standard deviation over seeds and, for every (top-K-plus-random variant, other
variant) pair, the relative Recall@100 gap per seed with a t interval over the seeds (the seeds pair the runs: seed
s of both).

Variants: a loss name, or `topk_random+logtail` for top-K-plus-random with `tail_sampler="loguniform"`.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from benchmarks.datasets import (
    Prepared,
    add_dataset_arguments,
    add_exclusion_argument,
    check_dataset_arguments,
    prepare_dataset,
)
from benchmarks.output import command_line, log, write_json
from benchmarks.report import write_report
from benchmarks.schema import METRIC_KEYS
from benchmarks.two_tower import model_configs, score_chunk, score_two_tower, with_tower
from recsys.config import HISTORY_POOLINGS, ModelConfig, TrainConfig, parse_widths, with_overrides
from recsys.metrics import exclusion_protocol, metrics_from_ranks
from training.data import ExampleSet, to_batch
from training.train import train

LOGTAIL = "topk_random+logtail"
VARIANTS = ("full", "loguniform", "inbatch", "topk_random", LOGTAIL)
TOPK_VARIANTS = ("topk_random", LOGTAIL)
DEFAULT_VARIANTS = ("full", "loguniform", "topk_random", LOGTAIL)
HEADLINE = "recall@100"


def variant_config(cfg: TrainConfig, variant: str) -> TrainConfig:
    """The training config of one variant name (a loss, or top-K-plus-random with the log-uniform tail)."""
    if variant == LOGTAIL:
        return with_overrides(cfg, loss="topk_random", tail_sampler="loguniform")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return with_overrides(cfg, loss=variant, tail_sampler="uniform")


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of one metric over seeds."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "sd": float(a.std(ddof=1)) if a.size > 1 else None,
        "min": float(a.min()),
        "max": float(a.max()),
        "values": [float(v) for v in a],
    }


def paired_gap(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """Relative gap (a - b) / b per seed, its mean and a t interval over the seeds (seed s of a paired with b's)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("paired_gap needs two equally long, non-empty series")
    rel = (x - y) / y
    out: dict[str, Any] = {"relative": [float(v) for v in rel], "mean": float(rel.mean())}
    if rel.size > 1:
        half = float(sps.t.ppf(1 - alpha / 2, rel.size - 1) * rel.std(ddof=1) / math.sqrt(rel.size))
        out |= {"ci95_low": out["mean"] - half, "ci95_high": out["mean"] + half}
    else:
        out |= {"ci95_low": None, "ci95_high": None}
    out["relative_of_means"] = float((x.mean() - y.mean()) / y.mean())
    return out


def summarise_seeds(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant the spread of every test metric and of validation recall@100; the paired top-K gaps."""
    summary: dict[str, Any] = {"variants": {}, "gaps": {}}
    for variant, runs in results.items():
        summary["variants"][variant] = {
            **{k: spread([r["test"][k] for r in runs]) for k in METRIC_KEYS},
            "validation_recall@100": spread([r["validation"]["recall@100"] for r in runs]),
        }
    pairs = [(a, b) for a in results if a in TOPK_VARIANTS for b in results if b not in TOPK_VARIANTS]
    if LOGTAIL in results and "topk_random" in results:
        pairs.append((LOGTAIL, "topk_random"))
    for a, b in pairs:
        summary["gaps"][f"{a} vs {b}"] = paired_gap(
            [r["test"][HEADLINE] for r in results[a]], [r["test"][HEADLINE] for r in results[b]]
        )
    return summary


def run_seeds(
    prepared: Prepared,
    protocol: str,
    model_cfg: ModelConfig,
    base: TrainConfig,
    variants: Sequence[str],
    seeds: Sequence[int],
    work: Path,
    progress: bool,
    exclude_history: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Train every variant once per seed on one protocol's examples; each run's test metrics and validation best."""
    examples = prepared.examples[protocol]
    data = ExampleSet.open(examples)
    test = to_batch(data.read("test"), data.max_history, data.max_tokens)
    exclude = test["history"] if exclude_history else None
    chunk = score_chunk(data.sizes.videos)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for seed in seeds:
        for variant in variants:
            cfg = with_overrides(variant_config(base, variant), seed=seed)
            run_dir = work / "runs" / f"{variant}-seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.perf_counter()
            report = train(examples, run_dir, model_cfg, cfg, progress=progress)
            wall = time.perf_counter() - t0
            best = report["epochs"][report["best_epoch"] - 1]
            metrics = metrics_from_ranks(score_two_tower(run_dir, test, exclude, chunk))
            results[variant].append(
                {
                    "seed": seed,
                    "test": {k: metrics[k] for k in METRIC_KEYS},
                    "validation": {k: best[k] for k in METRIC_KEYS},
                    "best_epoch": report["best_epoch"],
                    "epochs_run": report["epochs_run"],
                    "wall_s": round(wall, 1),
                }
            )
            log(
                f"seed {seed} {variant}: test recall@100 {metrics[HEADLINE]:.4f}, validation "
                f"{best[HEADLINE]:.4f} at epoch {report['best_epoch']}/{report['epochs_run']} ({wall:.0f} s)"
            )
            shutil.rmtree(run_dir, ignore_errors=True)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the seed-spread benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(p)
    p.add_argument("--epochs", type=int, help="epoch cap (default: quality's, 40 ML, 20 synthetic)")
    p.add_argument("--protocol", choices=("time_split", "leave_last_out"), default="time_split")
    p.add_argument("--learning-rate", type=float, help="every variant's (default 0.4, validation's choice)")
    p.add_argument("--hidden", help="hidden widths, comma-separated ('' for depth 0; default: quality's)")
    p.add_argument("--video-input-dim", type=int, help="watch-history embedding width (default: quality's)")
    p.add_argument("--history-pooling", choices=HISTORY_POOLINGS, help="watch-history pooling (default: quality's)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated TrainConfig seeds")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated of {VARIANTS}")
    p.add_argument("--workdir", type=Path, help="kept and reused (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--progress", action="store_true")
    add_exclusion_argument(p)
    args = p.parse_args(argv)
    check_dataset_arguments(p, args)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.hidden is not None:
        try:
            args.hidden = parse_widths(args.hidden)
        except ValueError as err:
            p.error(str(err))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        variant_config(TrainConfig(), v)  # unknown names fail here, before any training
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds needs distinct integers")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Prepare the examples, train every variant per seed, print and write the spread and the paired gaps."""
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        prepared = prepare_dataset(args, work, [args.protocol])
        model_cfg, base = model_configs(prepared.kind, args.epochs, budget=False)
        model_cfg = with_tower(model_cfg, args.hidden, args.video_input_dim, args.history_pooling)
        # The quality benchmark's base learning rate (0.4) is the one every time-split loss chose in its grid.
        base = with_overrides(base, learning_rate=args.learning_rate, eval_exclude_history=args.exclude_history)
        lr = base.learning_rate
        log(f"{prepared.name} {args.protocol}: variants {args.variants}, seeds {args.seeds}, learning rate {lr}")
        results = run_seeds(
            prepared,
            args.protocol,
            model_cfg,
            base,
            args.variants,
            args.seeds,
            work,
            args.progress,
            args.exclude_history,
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise_seeds(results)
    result = {
        "summary": summary,
        "runs": results,
        "meta": {
            "dataset": prepared.name,
            "protocol": args.protocol,
            "command": command_line("benchmarks.seeds", argv),
            "seeds": args.seeds,
            "exclude_history": args.exclude_history,
            "evaluation": exclusion_protocol(args.exclude_history),
            "model": model_cfg.model_dump(mode="json"),
            "train": base.model_dump(mode="json", exclude={"loss", "seed"}),
            "runtime_s": round(time.perf_counter() - started, 1),
        },
    }
    write_json(result, args.json)
    (md,) = write_report(args.json)
    print(md.read_text())
    print(f"wrote {args.json} and {md}")


if __name__ == "__main__":
    main()
