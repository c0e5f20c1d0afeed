"""Seconds per training step of the trainer `recsys train` runs, with the real tower, at 10k / 100k / 1M videos.

    python -m benchmarks.train_step --json benchmarks/results/train_step/train_step.json

Each size is a synthetic log (the generator's Zipf popularity and latent interests) run through the example
pipeline; every loss trains on the same batches of it with `training.train.Trainer.step`, the call the training job
makes (default tower: 64-d history embeddings, hidden [1024, 512, 256], a 256-d output table with bias; batch
1024; sparse Adagrad through the raw table variables). Top-K-plus-random uses the trainer's default index and
schedule: the trainer's own warm-up (`--warmup`, 200 steps), so the index is built on a table as far along as in
`recsys train`, then a refresh window of `--refresh-every` steps so the timed steps include an index refresh (a
20-step warm-up, used before, built it on a nearly random 1M table whose tuned nprobe hit the cap). The timed steps
exclude the first
`--skip` after the build (tracing, nprobe tuning); the build itself (k-means) is reported apart, with what it costs
per step when amortised over `retrain_every` refresh windows of the default length.

`softmax_scaling` times the loss alone (one Dense layer as the tower, plain tf.Variables); this benchmark is what a
user gets from `recsys train`. Every loss runs at every size in this one process, so the ratios are side by side.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import prepare_synthetic
from benchmarks.output import command_line, emit_json, log
from recsys.config import GeneratorConfig, ModelConfig, TrainConfig
from training.data import ExampleSet, training_batches, with_next
from training.train import Trainer

VARIANTS = ("loguniform", "inbatch", "topk_random", "topk_random_no_prefetch")


def _config(variant: str, args: argparse.Namespace) -> TrainConfig:
    """The training config of one variant (defaults everywhere but the schedule this benchmark fits in)."""
    loss = "topk_random" if variant.startswith("topk_random") else variant
    return TrainConfig(
        loss=loss,
        batch_size=args.batch,
        warmup_steps=args.warmup,
        refresh_every=args.refresh_every,
        mining_prefetch=not variant.endswith("no_prefetch"),
        checkpoint_every=10**9,  # no forced synchronous search: the benchmark never checkpoints
    )


def measure(data: ExampleSet, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median and mean seconds per step of one variant, with the trainer's own per-part profile."""
    cfg = _config(variant, args)
    trainer = Trainer(data, ModelConfig(), cfg)
    batches = with_next(training_batches(data, cfg, epoch=0))
    first = args.warmup + args.skip if cfg.loss == "topk_random" else args.skip
    total = first + args.steps
    times: list[float] = []
    build_s = 0.0
    try:
        for step in range(total):
            current, following = next(batches, (None, None))
            if current is None or following is None:
                raise SystemExit(f"{data.directory}: fewer than {total + 1} batches; use a bigger log")
            if step == first:
                trainer.profile.clear()  # the profile covers the timed steps only
            t0 = time.perf_counter()
            trainer.step(step, current, following)
            elapsed = time.perf_counter() - t0
            if trainer.miner is not None and trainer.miner.history and trainer.miner.history[-1].step == step:
                stats = trainer.miner.history[-1]
                if stats.reason == "first build":  # later refreshes stay in the timed steps
                    build_s = stats.read_s + stats.train_s + stats.add_s
                    elapsed -= build_s  # reported apart, amortised below
            if step >= first:
                times.append(elapsed)
    finally:
        trainer.close()
    out: dict[str, Any] = {
        "median_step_s": round(statistics.median(times), 4),
        "mean_step_s": round(statistics.fmean(times), 4),
        "steps": len(times),
        "profile_s": trainer.step_profile(),
    }
    if trainer.miner is not None:
        out["head_distinct_rows"] = _head_distinct_rows(trainer, current)
        defaults = TrainConfig()
        per_build = defaults.refresh_every * trainer.miner.retrain_every
        out |= {
            "build_s": round(build_s, 2),
            "build_amortised_s": round(build_s / per_build, 4),
            "prefetched_steps": trainer.prefetched_steps,
            "refreshes": [s.kind for s in trainer.miner.history],
            "nprobe": trainer.miner.nprobe,
            "tuned_recall": trainer.miner.tuning["recall"] if trainer.miner.tuning else None,
        }
    return out


def _head_distinct_rows(trainer: Trainer, batch: Any) -> int:
    """Distinct rows among the last batch's mined top-K heads (B x K ids): what sets the head's gather cost.

    `recsys.softmax.candidate_logits` scores few distinct rows as one dense product and many as row copies, so the
    step's cost depends on this count; it is read after the timed steps, without marking rows.
    """
    assert trainer.miner is not None
    ids = trainer.miner.peek(trainer.user_vectors(batch))
    return int(np.unique(ids[ids >= 0]).size)


def main() -> None:
    """Run every variant at every size and write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (videos)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and size")
    parser.add_argument("--skip", type=int, default=3, help="untimed steps first (tracing; after the build)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=TrainConfig().warmup_steps,
        help="top-K-plus-random: steps before the index build (default: the trainer's)",
    )
    parser.add_argument("--refresh-every", type=int, default=25, help="top-K-plus-random: steps between refreshes")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-train-step"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variants.split(",")
    result: dict[str, Any] = {
        "command": command_line("benchmarks.train_step"),
        "batch": args.batch,
        "model": ModelConfig().model_dump(mode="json"),
        "step_s": {v: {} for v in variants},
        "detail": {},
    }
    for n in (int(s) for s in args.sizes.split(",")):
        gen = GeneratorConfig(users=args.users, videos=n, events=args.events, seed=1)
        log(f"data: {gen.users} users, {n} videos, {gen.events} events")
        data = ExampleSet.open(prepare_synthetic(gen, args.workdir, ["time_split"]).examples["time_split"])
        for variant in variants:
            detail = measure(data, variant, args)
            gc.collect()  # frees this size's tables before the next variant
            result["step_s"][variant][str(n)] = detail["median_step_s"]
            result["detail"][f"{variant}@{n}"] = detail
            log(f"{variant:24s} n={n:>9,d}  {detail['median_step_s'] * 1000:8.1f} ms/step  {detail['profile_s']}")
        if "loguniform" in variants:
            base = result["step_s"]["loguniform"][str(n)]
            result.setdefault("over_loguniform", {})[str(n)] = {
                v: round(result["step_s"][v][str(n)] / base, 2) for v in variants
            }
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
