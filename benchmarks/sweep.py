"""Validation-only sweep: how model and training settings move one loss's validation recall, never looking at test.

    python -m benchmarks.sweep --dataset ml-100k --loss full \\
        --point '{"hidden": [256]}' --point '{"hidden": [], "video_input_dim": 128}' \\
        --json benchmarks/results/sweep/sweep_ml100k_tower.json

Every point starts from the quality benchmark's base model and training config of the dataset
(`benchmarks.two_tower.model_configs`: its tower and learning rate included) and overrides the JSON object's keys
(ModelConfig or TrainConfig fields). Each point trains with early stopping on the time split and reports its
validation recall@100 per epoch and at its best epoch (as served unless --no-exclude-history: the training job's
per-epoch validation, `TrainConfig.eval_exclude_history`). This is how the quality benchmark's defaults (TOWER_NOTE,
TWO_TOWER_GRID_NOTE in `benchmarks.two_tower`) are chosen; the test split is never read, so the choice cannot leak
into the reported test figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.datasets import (
    add_dataset_arguments,
    add_exclusion_argument,
    check_dataset_arguments,
    pipeline_config,
    prepare_dataset,
)
from benchmarks.output import command_line, log, write_json
from benchmarks.report import write_report
from benchmarks.schema import LOSSES, METRIC_KEYS
from benchmarks.two_tower import model_configs
from recsys.config import HISTORY_POOLINGS, with_overrides
from recsys.grid import apply_point
from recsys.metrics import exclusion_protocol
from training.train import train

HEADLINE = "recall@100"


def parse_point(text: str) -> dict[str, Any]:
    """Config overrides from a JSON object (a --point or --pipeline value)."""
    try:
        point = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"expected a JSON object, got {text!r}: {err}") from None
    if not isinstance(point, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return point


def curve(report: dict[str, Any]) -> list[float]:
    """Validation recall@100 after each epoch of one training report."""
    return [round(float(e[HEADLINE]), 4) for e in report["epochs"]]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the sweep."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(p)
    p.add_argument("--loss", choices=LOSSES, default="full")
    p.add_argument("--point", action="append", required=True, help="JSON object of config overrides (repeatable)")
    p.add_argument(
        "--history-pooling",
        choices=HISTORY_POOLINGS,
        default=None,
        help="the base tower's history pooling (default: ModelConfig's, recency; a point may still override it)",
    )
    p.add_argument("--pipeline", default="{}", help="JSON object of PipelineConfig overrides (every point)")
    p.add_argument("--workdir", type=Path, help="kept and reused (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--progress", action="store_true")
    add_exclusion_argument(p)
    args = p.parse_args(argv)
    check_dataset_arguments(p, args)
    try:
        args.point = [parse_point(t) for t in args.point]
        args.pipeline = parse_point(args.pipeline)
        with_overrides(pipeline_config("movielens", "time_split"), **args.pipeline)
        model_cfg, train_cfg = model_configs("movielens", None, budget=False)
        for point in args.point:  # unknown or invalid keys fail here, before any data is prepared
            apply_point(model_cfg, train_cfg, point)
    except (ValueError, KeyError) as err:
        p.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Train the loss at every point on the time split and write each point's validation results."""
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        prepared = prepare_dataset(args, work, ["time_split"], args.pipeline)
        model_cfg, train_cfg = model_configs(prepared.kind, None, budget=False)
        model_cfg = with_overrides(model_cfg, history_pooling=args.history_pooling)
        train_cfg = with_overrides(train_cfg, loss=args.loss, eval_exclude_history=args.exclude_history)
        (work / "runs").mkdir(parents=True, exist_ok=True)
        for i, point in enumerate(args.point):
            point_model, point_train = apply_point(model_cfg, train_cfg, point)
            # A fresh directory per point: sweeps sharing a --workdir never train into each other's runs.
            run_dir = Path(tempfile.mkdtemp(prefix=f"point-{i}-", dir=work / "runs"))
            t0 = time.perf_counter()
            report = train(prepared.examples["time_split"], run_dir, point_model, point_train, progress=args.progress)
            best = report["epochs"][report["best_epoch"] - 1]
            rows.append(
                {
                    "point": point,
                    "validation": {k: best[k] for k in METRIC_KEYS},
                    "best_epoch": report["best_epoch"],
                    "epochs_run": report["epochs_run"],
                    "curve": curve(report),
                    "steps": report["steps"],
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
            )
            log(
                f"{args.loss} {json.dumps(point)}: validation recall@100 {best[HEADLINE]:.4f} at epoch "
                f"{report['best_epoch']}/{report['epochs_run']}"
            )
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "points": rows,
        "meta": {
            "dataset": prepared.name,
            "loss": args.loss,
            "exclude_history": args.exclude_history,
            "evaluation": exclusion_protocol(args.exclude_history),
            "pipeline": prepared.pipeline["time_split"]["config"],
            "command": command_line("benchmarks.sweep", argv),
            "base_model": model_cfg.model_dump(mode="json"),
            "base_train": train_cfg.model_dump(mode="json"),
            "runtime_s": round(time.perf_counter() - started, 1),
        },
    }
    write_json(result, args.json)
    (md,) = write_report(args.json)
    print(md.read_text())


if __name__ == "__main__":
    main()
