"""How much of top-K-plus-random's mined head its own tail would have drawn anyway, as training goes on.

    python -m benchmarks.head_cover --dataset synthetic --videos 1000000 --checks 300,1200,2500,5000 \
        --workdir out/q1m

Runs the trainer's own steps (`training.train.Trainer.step`) with the settings of the quality benchmark's budget
mode (the 1M equal-time runs: one hidden layer of 256, 64-d table, batch 1024, m = 2,048), and at each check step
reads the mined heads of that step's batch (B x K ids, without marking rows) and each head entry's chance to be
among the step's tail draws (`LossHead.tail_draw_chance`: 1 - (1 - p_j)^m for the log-uniform tail). A head whose
entries the tail draws almost surely changes the estimate of Z very little: its step then learns what a tail-only
step learns, at the mining's extra cost. Prints one line per check and the JSON.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import add_dataset_arguments, check_dataset_arguments, prepare_dataset
from benchmarks.output import command_line, emit_json, log
from benchmarks.two_tower import model_configs
from recsys.config import with_overrides
from training.data import ExampleSet, training_batches, with_next
from training.train import Trainer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--checks", default="300,1200,2500,5000", help="steps at which the heads are read")
    parser.add_argument(
        "--tail-sampler", choices=["loguniform", "loguniform_inbatch"], default=None, help="default: TrainConfig's"
    )
    parser.add_argument("--warmup", type=int, default=None, help="steps before the first index build (default: 200)")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-head-cover"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    check_dataset_arguments(parser, args)
    try:
        args.checks = sorted({int(c) for c in args.checks.split(",") if c})
    except ValueError:
        parser.error("--checks must be comma-separated step numbers")
    if not args.checks or args.checks[0] < 0:
        parser.error("--checks needs at least one step >= 0")
    return args


def head_cover(trainer: Trainer, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Distinct rows of the batch's mined heads and how likely the tail was to draw each head entry anyway."""
    assert trainer.miner is not None
    heads = trainer.miner.peek(trainer.user_vectors(batch))
    chance = trainer.loss_head.head_draw_chance(heads)
    distinct = np.unique(heads[heads >= 0])
    return {
        "distinct_head_rows": int(distinct.size),
        "median_head_id": float(np.median(distinct)),
        "max_head_id": int(distinct.max()),
        "mean_draw_chance": round(float(chance.mean()), 4),
        "share_drawn_at_least_half": round(float((chance >= 0.5).mean()), 4),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Train up to the last check, reading the heads at every check, and write the JSON."""
    args = parse_args(argv)
    prepared = prepare_dataset(args, args.workdir, ["time_split"])
    data = ExampleSet.open(prepared.examples["time_split"])
    model_cfg, cfg = model_configs(prepared.kind, None, budget=True)
    cfg = with_overrides(
        cfg, loss="topk_random", tail_sampler=args.tail_sampler, warmup_steps=args.warmup, checkpoint_every=10**9
    )
    trainer = Trainer(data, model_cfg, cfg)
    epochs = itertools.chain.from_iterable(training_batches(data, cfg, epoch=e) for e in itertools.count())
    batches = with_next(epochs)
    checks: list[dict[str, Any]] = []
    try:
        for step in range(args.checks[-1] + 1):
            current, following = next(batches)
            trainer.step(step, current, following)
            if step in args.checks and trainer.miner is not None and trainer.miner.index is not None:
                checks.append({"step": step, **head_cover(trainer, current)})
                log(f"step {step}: {checks[-1]}")
    finally:
        trainer.close()
    emit_json(
        {
            "command": command_line("benchmarks.head_cover", argv),
            "dataset": prepared.name,
            "videos_in_vocabulary": int(data.sizes.videos),
            "model": model_cfg.model_dump(mode="json"),
            "train": cfg.model_dump(mode="json"),
            "checks": checks,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
