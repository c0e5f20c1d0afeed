"""The two-tower side of the quality benchmarks: base configs and grids per dataset, grid training, scoring."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.output import log
from benchmarks.schema import METRIC_KEYS
from recsys.config import ModelConfig, TrainConfig, with_overrides
from recsys.metrics import Scorer, dot_scorer, label_ranks
from training.data import Batch, ExampleSet, training_batches, with_next
from training.evaluate import load_run, user_vectors
from training.train import RUN_BIAS_FILE, RUN_EMBEDDINGS_FILE, Trainer
from training.tune import tune

# Two-tower grid per dataset kind, searched per loss and protocol on validation recall@100 (keys: TrainConfig or
# ModelConfig fields); every point trains up to the epoch cap with early stopping and its best epoch counts.
TWO_TOWER_GRID: dict[str, dict[str, tuple[Any, ...]]] = {
    "movielens": {"learning_rate": (0.2, 0.4)},
    "synthetic": {"learning_rate": (0.4,)},
    "events": {"learning_rate": (0.4,)},
}
# How the grid was fixed (recorded in each result's JSON, which is what its report prints). The MovieLens
# exploration was not kept as a result file, so its figures are quoted here; the synthetic sweeps are.
TWO_TOWER_GRID_NOTE = {
    "movielens": (
        "Grid fixed by a validation-only exploration on the ML-100K time split (full and topk_random, best validation "
        "recall@100): learning rate 0.8 and 1.6 never left the popularity-level plateau of the first epochs (<= 0.25); "
        "0.1 with patience 3 stopped inside that plateau; 0.15 (patience 5), 0.2 and 0.3 were within 0.003 of each "
        "other and 0.01-0.02 above 0.4; embedding_dim 32/128, batch size 128 and patience 6 moved it by <= 0.01 at lr "
        "0.4. Hence learning_rate in {0.2, 0.4} with the epoch cap raised to 40 and patience 4 (3 could stop inside the"
        " plateau). exclude_history_from_head=True was not part of that exploration (it crashed then, an int32/int64 "
        "tf.where in recsys/softmax.py, since fixed)."
    ),
    "synthetic": (
        "Validation-only sweeps of full softmax (benchmarks/results/sweep/sweep_synthetic_epochs.md, "
        "sweep_synthetic_batch256.md, sweep_synthetic_cap200.md): at the pipeline's default cap of 20 examples per "
        "user and 6 epochs every loss was still improving; more epochs, batch 256 and a cap of 200 examples per user "
        "(so the two-tower learns from every training-window watch, as ALS, BPR and EASE do) each raised validation "
        "recall@100, the cap still rising at its epoch cap of 12. Hence cap 200, an epoch cap of 20 with patience 3, "
        "and learning rate 0.4 alone: it won every loss of the earlier 6-epoch grid {0.2, 0.4} "
        "(benchmarks/results/history/quality/quality_synthetic_6ep.md), and one point per loss keeps the run near an "
        "hour on 2 cores."
    ),
    "events": (
        "Not tuned on this log: the synthetic data's configuration and grid (learning rate 0.4, one hidden layer of "
        "256, up to 200 examples per user); --learning-rates, --hidden, --video-input-dim and --history-pooling "
        "change them."
    ),
}
# How each dataset kind's user tower was chosen: by FULL softmax's validation recall@100 (the reference the sampled
# losses are held to), so the choice does not favour any sampled loss. The figures are in the sweeps' own reports.
TOWER_NOTE = (
    "User tower chosen by full softmax's validation recall@100 (validation only, one run each): depth 0 with "
    "video_input_dim 128 for MovieLens (benchmarks/results/sweep/sweep_ml100k_tower.md), one hidden layer of 256 for "
    "synthetic data (benchmarks/results/sweep/sweep_synthetic_epochs.md). History pooling: recency, ModelConfig's "
    "default, chosen on ML-100K leave-last-out validation as served (top-K-plus-random, learning rate 0.2, best "
    "validation recall@100: mean 0.432, recency 0.501; ALS 0.456 on the same examples)."
)


def model_configs(kind: str, epochs: int | None, budget: bool) -> tuple[ModelConfig, TrainConfig]:
    """The base model and training config of every loss; TWO_TOWER_GRID's values are searched on top of it."""
    if kind == "movielens":
        # Depth 0 with 128-wide history embeddings: the best full-softmax validation recall of TOWER_NOTE's sweep.
        model = ModelConfig(hidden=[], embedding_dim=64, video_input_dim=128, dropout=0.0)
        cfg = TrainConfig(
            optimizer="adagrad",  # the optimizer these grids were tuned with (before Adam became the default)
            batch_size=256,
            epochs=40,
            learning_rate=0.4,
            uniform_samples=256,
            top_k=16,
            top_k_fetch=32,
            warmup_steps=50,
            refresh_every=50,
            patience=4,
            patience_steps=0,  # the protocol of the committed results: patience in epochs only
        )
    else:  # synthetic or a log of your own: not tuned; m and K around sqrt(n) as the design suggests
        # One hidden layer: full softmax's validation recall beat depth 0 with it (TOWER_NOTE).
        model = ModelConfig(hidden=[256], embedding_dim=64, dropout=0.0)  # as tuned, before dropout existed
        cfg = TrainConfig(
            optimizer="adagrad",
            batch_size=1024,
            epochs=20,
            learning_rate=0.4,
            uniform_samples=2048 if budget else 1024,
            top_k=32,
            top_k_fetch=64,
            warmup_steps=200,
            refresh_every=200 if budget else 100,
            patience=3,
            patience_steps=0,  # the protocol of the committed results: patience in epochs only
        )
    if epochs is not None:
        cfg = with_overrides(cfg, epochs=epochs)
    return model, cfg


def with_tower(
    model_cfg: ModelConfig,
    hidden: list[int] | None,
    video_input_dim: int | None,
    history_pooling: str | None = None,
) -> ModelConfig:
    """The model config with the command line's tower shape and history pooling (None keeps the config's value)."""
    return with_overrides(model_cfg, hidden=hidden, video_input_dim=video_input_dim, history_pooling=history_pooling)


def score_chunk(n_videos: int) -> int:
    """Examples per scoring chunk so that one float64 score block stays near 512 MB."""
    return int(max(8, min(1024, (1 << 26) // max(n_videos, 1))))


def two_tower_scorers(run_dir: Path, batches: Sequence[Batch]) -> list[Scorer]:
    """Exact full-catalogue scores of a finished run's best epoch for each batch's examples (the run loaded once)."""
    _, model = load_run(run_dir)
    embeddings, bias = np.load(run_dir / RUN_EMBEDDINGS_FILE), np.load(run_dir / RUN_BIAS_FILE)
    return [dot_scorer(user_vectors(model, batch), embeddings, bias) for batch in batches]


def two_tower_scorer(run_dir: Path, batch: Batch) -> Scorer:
    """Exact full-catalogue scores of a finished run's best epoch for the batch's examples."""
    return two_tower_scorers(run_dir, [batch])[0]


def score_two_tower(run_dir: Path, batch: Batch, exclude: np.ndarray | None, chunk: int) -> np.ndarray:
    """Test ranks of a finished run's best epoch (exactly what `training.evaluate.evaluate_run` computes)."""
    return label_ranks(two_tower_scorer(run_dir, batch), batch["label"], exclude, chunk)


def tune_loss(
    examples: Path,
    runs_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    axes: dict[str, Sequence[Any]],
    args: argparse.Namespace,
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Train one loss at every grid point with `training.tune` (what `recsys tune` runs); keep the best on validation.

    Returns the chosen run's directory, its meta entry (grid, chosen values, every point's validation result) and
    its training report. Test is never looked at here.
    """
    tuning = tune(examples, runs_dir, model_cfg, train_cfg, axes, progress=args.progress)
    record, report = tuning.record, tuning.report
    points = [
        {**{k: v for k, v in p.items() if k != "run"}, "validation": {k: p["validation"][k] for k in METRIC_KEYS}}
        for p in record["points"]
    ]
    for p in points:
        log(
            f"  {train_cfg.loss} {p['params']}: validation recall@100 {p['validation']['recall@100']:.4f} at epoch "
            f"{p['best_epoch']}/{p['epochs_run']} ({p['wall_s']:.0f} s)"
        )
    chosen_validation = {k: record["chosen_validation"][k] for k in METRIC_KEYS}
    entry: dict[str, Any] = {
        "grid": record["grid"],
        "chosen": record["chosen"],
        "chosen_validation": chosen_validation,
        "epoch_cap": train_cfg.epochs,
        "patience": train_cfg.patience,
        "schedule": report.get("schedule"),  # the epochs and patience the run planned (epochs=None: from the log)
        "points": points,
        "grid_s": record["grid_s"],
        "wall_s": record["wall_s"],
        "timings_s": report["timings_s"],
        "steps": report["steps"],
        "epochs_run": report["epochs_run"],
        "best_epoch": report["best_epoch"],
        "stopped_early": report["stopped_early"],
        "validation_best": chosen_validation,
        "epochs": [{k: v for k, v in e.items() if isinstance(v, (int, float))} for e in report["epochs"]],
    }
    return tuning.run, entry, report


def train_for_budget(
    examples: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    seconds: float,
    checkpoint: Callable[[Trainer], dict[str, float]] | None = None,
    checkpoints: int = 0,
) -> tuple[Trainer, dict[str, Any]]:
    """Train with one loss until `seconds` of wall-clock have passed (index builds included; no evaluation).

    With `checkpoint`, it is called `checkpoints` times at equal shares of the budget with the clock stopped, and its
    figures are recorded with the training seconds and steps at that point (a quality-against-time curve).
    """
    data = ExampleSet.open(examples)
    trainer = Trainer(data, model_cfg, cfg)
    step, epoch, loss = 0, 0, float("nan")
    curve: list[dict[str, float]] = []
    paused = 0.0
    start = time.perf_counter()
    marks = [seconds * (i + 1) / checkpoints for i in range(checkpoints)] if checkpoint is not None else []
    out_of_time = False
    try:
        while not out_of_time:
            batches = training_batches(data, cfg, epoch)
            for batch, next_batch in with_next(batches):
                loss = trainer.step(step, batch, next_batch)  # as the training job: the next head mined meanwhile
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{cfg.loss}: loss became {loss} at step {step}")
                step += 1
                used = time.perf_counter() - start - paused
                if marks and used >= marks[0] and checkpoint is not None:
                    marks.pop(0)
                    t0 = time.perf_counter()
                    curve.append({"seconds": round(used, 1), "steps": step, **checkpoint(trainer)})
                    paused += time.perf_counter() - t0
                if used >= seconds:
                    out_of_time = True
                    break
            epoch += 1
    finally:
        trainer.close()
    start += paused  # the checkpoints' evaluation time is not training time
    seconds_used = time.perf_counter() - start
    per_epoch = max(data.count("train") // cfg.batch_size, 1)
    info = {
        "steps": step,
        "epochs": round(step / per_epoch, 3),
        "train_s": round(seconds_used, 2),
        "last_loss": loss,
        "miner_refreshes": len(trainer.miner.history) if trainer.miner is not None else 0,
        "step_profile_s": trainer.step_profile(),
        "head_checks": trainer.head_checks,
        "curve": curve,
    }
    return trainer, info
