"""One protocol of the quality benchmark: every method trained or fitted on its examples and ranked on its test split.

The main mode (`run_protocol`): each two-tower loss tuned on validation, popularity, and ALS, BPR, EASE and item-kNN
fitted on the training window and picked on validation. Budget mode (`run_budget_protocol`): the sampled losses at an
equal wall-clock budget each, and popularity. Both score on test over the full catalogue and check the targets.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import tensorflow as tf

from benchmarks.baselines import (
    BPR_GRID,
    BPR_NOTE,
    EASE_GRID,
    ITEMKNN_GRID,
    ITEMKNN_NEIGHBORS,
    ITEMKNN_NOTE,
    AlsParams,
    BprParams,
    GridResult,
    ItemKnnParams,
    als_grid,
    als_scorer,
    bpr_scorer,
    choose_lambda,
    ease_scorer,
    fit_als,
    fit_bpr,
    fit_ease,
    fit_itemknn,
    grid,
    grid_search,
    interaction_matrix,
    itemknn_fitter,
    itemknn_scorer,
)
from benchmarks.datasets import Prepared, user_groups, user_rows
from benchmarks.output import log
from benchmarks.schema import METRIC_KEYS, QUALITY_KS
from benchmarks.targets import check_targets
from benchmarks.topics import planted_share
from benchmarks.two_tower import score_chunk, train_for_budget, tune_loss, two_tower_scorers
from pipelines.transform import leave_last_out_window_end, to_us
from recsys.config import ModelConfig, TrainConfig, with_overrides
from recsys.features import FeatureSpace
from recsys.metrics import Scorer, dot_scorer, label_ranks, metrics_from_ranks, popularity_scorer
from recsys.schemas import OOV_INDEX, TIMESTAMP
from training.data import Batch, ExampleSet, to_batch
from training.evaluate import evaluate_run
from training.train import Trainer

CURVE_EXAMPLES = 2000  # validation examples scored at each point of the budget mode's recall-against-time curve


@dataclass
class ProtocolRun:
    """What one protocol produced: test metrics and ranks per method, and its meta."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    ranks: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # each test example's user


def training_window(
    events: pa.Table, protocol: str, split: dict[str, Any], features: FeatureSpace
) -> tuple[pa.Array, sp.csr_matrix]:
    """Distinct users and their (user x video index) watch counts in the training window, OOV videos dropped."""
    valid = pc.and_(pc.is_valid(events["user_id"]), pc.is_valid(events["video_id"]))
    events = events.filter(valid)
    ts = events["ts"].cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    if protocol == "time_split":
        keep = ts < to_us(datetime.fromisoformat(split["validation_start"]))
    else:  # strictly before the user's validation label (the test label for a user without one)
        keep = ts < leave_last_out_window_end(events["user_id"], ts)
    window = events.filter(pa.array(keep))
    users = pc.dictionary_encode(window["user_id"].combine_chunks())
    items = features.videos.lookup(window["video_id"]).to_numpy()
    rows = users.indices.to_numpy(zero_copy_only=False)
    matrix = interaction_matrix(rows, items, len(users.dictionary), len(features.videos))
    return users.dictionary, matrix


def earlier_watches(events: pa.Table, features: FeatureSpace, examples: pa.Table) -> np.ndarray:
    """Every video each example's user watched strictly before its label, [examples, H] with -1 padding.

    The "whole earlier history" hiding rule: stricter than hiding the example's own (capped) history, which is what
    the service can hide from its Redis list. OOV watches are left out (index 0 is never retrievable anyway).
    """
    events = events.filter(pc.and_(pc.is_valid(events["user_id"]), pc.is_valid(events["video_id"])))
    users = events["user_id"].combine_chunks()
    known = pc.unique(users)
    user = pc.index_in(users, value_set=known).to_numpy(zero_copy_only=False).astype(np.int64)
    ts = events["ts"].cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    items = features.videos.lookup(events["video_id"]).to_numpy()
    order = np.lexsort((ts, user))
    user, ts, items = user[order], ts[order], items[order]
    starts = np.searchsorted(user, np.arange(len(known) + 1))
    example_user = pc.fill_null(pc.index_in(examples["user_id"], value_set=known), -1).to_numpy()
    label_ts = examples["label_ts"].cast(TIMESTAMP).cast(pa.int64()).to_numpy()
    rows: list[np.ndarray] = []
    for u, t in zip(example_user, label_ts, strict=True):
        if u < 0:
            rows.append(np.zeros(0, dtype=np.int32))
            continue
        lo, hi = starts[u], starts[u + 1]
        seen = items[lo : lo + np.searchsorted(ts[lo:hi], t, side="left")]
        rows.append(np.unique(seen[seen != OOV_INDEX]).astype(np.int32))
    out = np.full((len(rows), max([1, *(len(r) for r in rows)])), -1, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def hides_earlier(args: argparse.Namespace) -> bool:
    """Whether the run hides every earlier watch of the user (--hide earlier), not just the example's own history."""
    return bool(args.exclude_history and args.hide == "earlier")


def exclusions(
    prepared: Prepared, data: ExampleSet, table: pa.Table, batch: Batch, args: argparse.Namespace
) -> np.ndarray | None:
    """What a split hides under the run's rule: nothing, the example's own history, or every earlier watch."""
    if not args.exclude_history:
        return None
    if hides_earlier(args):
        return earlier_watches(prepared.events, data.features, table)
    return batch["history"]


def hidden_per_example(exclude: np.ndarray | None) -> float:
    """Mean number of videos hidden per example (0 when nothing is), recorded beside each protocol's results."""
    return 0.0 if exclude is None else round(float((exclude >= 0).sum(1).mean()), 1)


def run_baselines(
    prepared: Prepared,
    protocol: str,
    data: ExampleSet,
    validation: Batch,
    validation_users: pa.ChunkedArray,
    test: Batch,
    test_users: pa.ChunkedArray,
    exclude: np.ndarray | None,
    chunk: int,
    seed: int,
    share: Callable[[Scorer], float] | None = None,
    validation_exclude: np.ndarray | None = None,
    skip_bpr: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """ALS (fold-in), BPR (learned user factors; not with skip_bpr), EASE and item-kNN (history) picked on validation,
    then ranked on test.

    `exclude` hides videos on test and `validation_exclude` on validation (as served: each split's own histories).
    With `share` (synthetic data), meta["topic_share@100"] holds share(test scorer) of each of them.
    """
    split = prepared.pipeline[protocol]["split"]
    dictionary, matrix = training_window(prepared.events, protocol, split, data.features)
    log(f"{protocol}: baselines' training window: {matrix.shape[0]} users, {matrix.nnz} (user, video) pairs")
    ranks: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"training_users": matrix.shape[0], "training_pairs": int(matrix.nnz)}
    shares: dict[str, float] = {}

    def record(
        name: str, label: str, search: GridResult, axes: dict[str, Any], scorer: Scorer, t0: float
    ) -> dict[str, Any]:
        """Rank test with the chosen point's scorer; the method's meta entry (grid, choice, every point)."""
        ranks[name] = label_ranks(scorer, test["label"], exclude, chunk)
        if share is not None:
            shares[name] = share(scorer)
        log(
            f"{protocol}: {label} chose {search.chosen['params']} "
            f"(validation recall@100 {search.chosen['validation']['recall@100']:.4f})"
        )
        return {
            "grid": axes,
            "chosen": search.chosen["params"],
            "chosen_validation": search.chosen["validation"],
            "fit_s": search.chosen["fit_s"],
            "grid_s": round(time.perf_counter() - t0, 2),
            "points": search.points,
        }

    t0 = time.perf_counter()
    als_axes = als_grid(prepared.kind)
    als = grid_search(
        grid(AlsParams, **als_axes),
        lambda p: fit_als(matrix, p, seed=seed),
        lambda m: als_scorer(m, validation["history"]),
        validation["label"],
        chunk=chunk,
        exclude=validation_exclude,
    )
    meta["als"] = record("als", "ALS", als, als_axes, als_scorer(als.model, test["history"]), t0) | {
        "scoring": "fold-in: closed-form least squares on each example's own history (implicit recalculate_user)",
    }

    if not skip_bpr:
        t0 = time.perf_counter()
        val_rows = user_rows(validation_users, dictionary)
        bpr = grid_search(
            grid(BprParams, **BPR_GRID),
            lambda p: fit_bpr(matrix, p, seed=seed),
            lambda m: bpr_scorer(m, val_rows),
            validation["label"],
            chunk=chunk,
            exclude=validation_exclude,
        )
        test_rows = user_rows(test_users, dictionary)
        meta["bpr"] = record("bpr", "BPR", bpr, BPR_GRID, bpr_scorer(bpr.model, test_rows), t0) | {
            "scoring": BPR_NOTE,
            "test_examples_without_user_factors": int((test_rows < 0).sum()),
        }

    ease_ranks, meta["ease"] = run_ease(matrix, validation, test, exclude, chunk, share, validation_exclude)
    ranks["ease"] = ease_ranks
    if share is not None:
        shares["ease"] = meta["ease"].pop("topic_share@100")
    log(
        f"{protocol}: EASE chose lambda={meta['ease']['chosen']['lambda']} (validation recall@100 "
        f"{meta['ease']['chosen_validation']['recall@100']:.4f})"
    )

    t0 = time.perf_counter()
    knn = grid_search(
        grid(ItemKnnParams, **ITEMKNN_GRID),
        itemknn_fitter(matrix, max(ITEMKNN_NEIGHBORS)),
        lambda S: itemknn_scorer(S, validation["history"]),
        validation["label"],
        chunk=chunk,
        exclude=validation_exclude,
    )
    meta["itemknn"] = record("itemknn", "item-kNN", knn, ITEMKNN_GRID, itemknn_scorer(knn.model, test["history"]), t0)
    meta["itemknn"] |= {"fit_s": itemknn_fit_seconds(matrix, knn.chosen["params"]), "scoring": ITEMKNN_NOTE}

    if share is not None:
        meta["topic_share@100"] = shares
    return ranks, meta


def itemknn_fit_seconds(matrix: sp.csr_matrix, params: dict[str, Any]) -> float:
    """Wall-clock seconds of one fresh item-kNN fit at the chosen point (the grid's fits share work per shrink)."""
    t0 = time.perf_counter()
    fit_itemknn(matrix, ItemKnnParams(**params))
    return round(time.perf_counter() - t0, 3)


def run_ease(
    matrix: sp.csr_matrix,
    validation: Batch,
    test: Batch,
    exclude: np.ndarray | None,
    chunk: int,
    share: Callable[[Scorer], float] | None = None,
    validation_exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """EASE on the ALS training matrix: lambda chosen on validation, test ranked from each example's own history."""
    t0 = time.perf_counter()
    lam, table = choose_lambda(
        matrix, validation["history"], validation["label"], grid=EASE_GRID, exclude=validation_exclude, chunk=chunk
    )
    grid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights = fit_ease(matrix, lam)
    fit_s = time.perf_counter() - t0
    scorer = ease_scorer(weights, test["history"])
    ranks = label_ranks(scorer, test["label"], exclude, chunk)
    meta: dict[str, Any] = {
        "grid": {"lambda": list(EASE_GRID)},
        "chosen": {"lambda": lam},
        "chosen_validation": table[lam],
        "fit_s": round(fit_s, 3),
        "grid_s": round(grid_s, 2),
        "points": [{"params": {"lambda": k}, "validation": v} for k, v in table.items()],
        "training_matrix": "the ALS/BPR training-window matrix, binarised",
        "scoring": "x . B with x the example's own (padded) history, binary; "
        + ("that history hidden (as served)" if exclude is not None else "no exclusion"),
    }
    if share is not None:
        meta["topic_share@100"] = share(scorer)
    return ranks, meta


def run_protocol(
    prepared: Prepared,
    protocol: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    work: Path,
    args: argparse.Namespace,
) -> ProtocolRun:
    """Every method of the main mode on one protocol's examples."""
    examples = prepared.examples[protocol]
    data = ExampleSet.open(examples)
    n = data.sizes.videos
    chunk = score_chunk(n)
    test_table = data.read("test")
    # The same validation examples the two-tower's early stopping scores (train() reads the first eval_max_examples).
    val_table = data.read("validation", train_cfg.eval_max_examples)
    test = to_batch(test_table, data.max_history, data.max_tokens)
    validation = to_batch(val_table, data.max_history, data.max_tokens)
    exclude = exclusions(prepared, data, test_table, test, args)
    validation_exclude = exclusions(prepared, data, val_table, validation, args)
    out = ProtocolRun()
    out.groups = user_groups(test_table["user_id"])
    out.meta = {
        "videos": n,
        "examples": {"train": data.count("train"), "validation": data.count("validation"), "test": len(test["label"])},
        "validation_scored": len(validation["label"]),
        "test_oov_labels": int((test["label"] == OOV_INDEX).sum()),
        "pipeline": prepared.pipeline[protocol],
        "hidden_per_test_example": hidden_per_example(exclude),
        "losses": {},
    }
    log(f"{protocol}: {out.meta['examples']} examples, {n} videos in the vocabulary")
    share = planted_share(prepared, data, test_table, exclude, chunk)
    if share is not None:
        out.meta["topic_share@100"] = {}

    axes = args.two_tower_grid
    for loss in args.losses:
        runs_dir = work / "runs" / f"{prepared.name}-{protocol}" / loss
        shutil.rmtree(runs_dir, ignore_errors=True)
        loss_cfg = with_overrides(train_cfg, loss=loss)
        run_dir, entry, report = tune_loss(examples, runs_dir, model_cfg, loss_cfg, axes, args)
        # Under --hide earlier the chosen run is also scored on validation under the run's rule (below).
        scorer, *validation_scorer = two_tower_scorers(run_dir, [test, validation] if hides_earlier(args) else [test])
        out.ranks[loss] = label_ranks(scorer, test["label"], exclude, chunk)
        if share is not None:
            out.meta["topic_share@100"][loss] = share(scorer)
        mine = metrics_from_ranks(out.ranks[loss])
        # Cross-check against the project's own evaluation of the run, which hides the example's history.
        if len(test["label"]) * n <= 5e8 and args.hide == "history":
            official = evaluate_run(run_dir, "test", exclude_history=args.exclude_history)["model"]
            entry["evaluate_run_agrees"] = all(abs(official[k] - mine[k]) < 1e-9 for k in METRIC_KEYS)
        if validation_scorer:
            # Early stopping hides the example's own history; this scores the chosen run's validation under the run's
            # rule too, so runs with different max_history compare on one protocol (same videos hidden).
            val_ranks = label_ranks(validation_scorer[0], validation["label"], validation_exclude, chunk)
            entry["validation_earlier_hidden"] = metrics_from_ranks(val_ranks)
        out.meta["losses"][loss] = entry
        out.meta.setdefault("validation_popularity", {k: report["validation_popularity"][k] for k in METRIC_KEYS})
        log(
            f"{protocol}: {loss}: chose {entry['chosen']} (validation recall@100 "
            f"{entry['validation_best']['recall@100']:.4f}) from {len(entry['points'])} points in "
            f"{entry['grid_s']:.0f} s, test recall@100 {mine['recall@100']:.4f}"
        )

    popularity = popularity_scorer(data.label_counts())
    out.ranks["popularity"] = label_ranks(popularity, test["label"], exclude, chunk)
    if share is not None:
        out.meta["topic_share@100"]["popularity"] = share(popularity)
    if hides_earlier(args):
        val_ranks = label_ranks(popularity, validation["label"], validation_exclude, chunk)
        out.meta["validation_popularity_earlier_hidden"] = metrics_from_ranks(val_ranks)
    if not args.skip_baselines:
        ranks, meta = run_baselines(
            prepared,
            protocol,
            data,
            validation,
            val_table["user_id"],
            test,
            test_table["user_id"],
            exclude,
            chunk,
            args.seed,
            share,
            validation_exclude,
            args.skip_bpr,
        )
        out.ranks |= ranks
        if share is not None:
            out.meta["topic_share@100"] |= meta.pop("topic_share@100")
        out.meta |= meta
    out.metrics = {m: metrics_from_ranks(r, QUALITY_KS) for m, r in out.ranks.items()}
    out.meta["checks"] = check_targets(out.metrics, out.ranks, out.groups)
    return out


def run_budget_protocol(
    prepared: Prepared,
    protocol: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    args: argparse.Namespace,
) -> ProtocolRun:
    """The sampled losses at an equal wall-clock budget each, plus popularity and the planted-topic shares."""
    examples = prepared.examples[protocol]
    data = ExampleSet.open(examples)
    n = data.sizes.videos
    chunk = score_chunk(n)
    test_table = data.read("test")
    if args.max_test_examples and test_table.num_rows > args.max_test_examples:
        pick = np.sort(np.random.default_rng(args.seed).choice(test_table.num_rows, args.max_test_examples, False))
        test_table = test_table.take(pa.array(pick))
    test = to_batch(test_table, data.max_history, data.max_tokens)
    exclude = test["history"] if args.exclude_history else None
    planted = planted_share(prepared, data, test_table, exclude, chunk)
    out = ProtocolRun()
    out.meta = {
        "videos": n,
        "examples": {"train": data.count("train"), "validation": data.count("validation"), "test": len(test["label"])},
        "test_subset_of": data.count("test"),
        "budget_seconds": args.budget_seconds,
        "pipeline": prepared.pipeline[protocol],
        "hidden_per_test_example": hidden_per_example(exclude),
        "losses": {},
        "topic_share@100": {},
        "curve_split": "validation",
    }
    log(f"{protocol}: {out.meta['examples']} examples, {n} videos in the vocabulary")

    def share(scorer: Scorer) -> float | None:
        return planted(scorer) if planted is not None else None

    # The curve's checkpoints score the first validation examples, so that test is scored once, at the end.
    curve_table = data.read("validation", CURVE_EXAMPLES)
    subset = to_batch(curve_table, data.max_history, data.max_tokens)
    subset_exclude = subset["history"] if args.exclude_history else None
    subset_planted = planted_share(prepared, data, curve_table, subset_exclude, chunk)

    def checkpoint(trainer: Trainer) -> dict[str, float]:
        layer = trainer.model.output_layer
        bias = layer.bias.numpy() if layer.bias is not None else None
        scorer = dot_scorer(trainer.user_vectors(subset), layer.table.numpy(), bias)
        ranks = label_ranks(scorer, subset["label"], subset_exclude, chunk)
        point = {"recall@100": round(metrics_from_ranks(ranks)["recall@100"], 5)}
        if subset_planted is not None:
            point["topic_share@100"] = round(subset_planted(scorer), 5)
        return point

    for loss in args.losses:
        trainer, info = train_for_budget(
            examples,
            model_cfg,
            with_overrides(train_cfg, loss=loss),
            args.budget_seconds,
            checkpoint if args.curve_points else None,
            args.curve_points,
        )
        layer = trainer.model.output_layer
        bias = layer.bias.numpy() if layer.bias is not None else None
        scorer = dot_scorer(trainer.user_vectors(test), layer.table.numpy(), bias)
        out.ranks[loss] = label_ranks(scorer, test["label"], exclude, chunk)
        out.meta["losses"][loss] = info
        out.meta["topic_share@100"][loss] = share(scorer)
        log(
            f"{protocol}: {loss}: {info['steps']} steps ({info['epochs']} epochs) in {info['train_s']} s, "
            f"test recall@100 {metrics_from_ranks(out.ranks[loss])['recall@100']:.4f}"
        )
        del trainer
        tf.keras.backend.clear_session()
    popularity = popularity_scorer(data.label_counts())
    out.ranks["popularity"] = label_ranks(popularity, test["label"], exclude, chunk)
    out.meta["topic_share@100"]["popularity"] = share(popularity)
    out.groups = user_groups(test_table["user_id"])
    out.metrics = {m: metrics_from_ranks(r, QUALITY_KS) for m, r in out.ranks.items()}
    out.meta["checks"] = check_targets(out.metrics, out.ranks, out.groups)
    return out
