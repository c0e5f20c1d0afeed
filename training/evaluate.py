"""`recsys evaluate`: full-catalogue exact retrieval metrics of a trained run on a split, beside popularity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from recsys.config import ModelConfig
from recsys.errors import InputError
from recsys.metrics import dot_scorer, exclusion_protocol, label_ranks, metrics_from_ranks, popularity_scorer
from recsys.model import FEATURE_NAMES, TwoTower, build_model
from recsys.publish import publish_json
from recsys.stats import compare, summarise
from training.data import Batch, ExampleSet, to_batch
from training.train import RUN_BIAS_FILE, RUN_EMBEDDINGS_FILE, RUN_FILE


def load_run(run: Path) -> tuple[ExampleSet, TwoTower]:
    """The example set a run was trained on and its best model."""
    if not (run / RUN_FILE).is_file() or not (run / "best.weights.h5").is_file():
        raise InputError(f"{run}: not a finished training run (no run.json / best.weights.h5)")
    meta = json.loads((run / RUN_FILE).read_text())
    data = ExampleSet.open(Path(meta["examples"]))
    model = build_model(data.sizes, ModelConfig(**meta["model"]), data.max_history, data.max_tokens)
    model.load_weights(run / "best.weights.h5")
    return data, model


def user_vectors(model: TwoTower, batch: Batch, chunk: int = 4096) -> np.ndarray:
    """Tower outputs for a feature batch, in chunks."""
    n = len(batch["label"])
    parts = [
        model.tower({k: tf.constant(batch[k][lo : lo + chunk]) for k in FEATURE_NAMES}).numpy()
        for lo in range(0, n, chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.tower.config.embedding_dim), np.float32)


def evaluate_run(run: Path, split: str = "test", exclude_history: bool = True) -> dict[str, Any]:
    """Recall@10/50/100, NDCG@10/50/100 and MAP of the run and of popularity, over the whole catalogue.

    By default as the service answers: each example's history hidden, so a re-watched label is a miss.
    """
    data, model = load_run(run)
    batch = to_batch(data.read(split), data.max_history, data.max_tokens)
    if len(batch["label"]) == 0:
        raise InputError(f"{data.directory}: the {split} split is empty")
    exclude = batch["history"] if exclude_history else None
    table = np.load(run / RUN_EMBEDDINGS_FILE)
    bias = np.load(run / RUN_BIAS_FILE)
    model_scores = dot_scorer(user_vectors(model, batch), table, bias)
    ranks = {
        "model": label_ranks(model_scores, batch["label"], exclude),
        "popularity": label_ranks(popularity_scorer(data.label_counts()), batch["label"], exclude),
    }
    users = np.asarray(data.read(split, columns=["user_id"])["user_id"].to_pylist())
    # 95% intervals from a bootstrap over users (examples of one user are not independent).
    intervals = summarise(ranks, users)
    difference = compare(ranks, users, [("model", "popularity")])["model vs popularity"]
    result = {
        "split": split,
        "exclude_history": exclude_history,
        "evaluation": exclusion_protocol(exclude_history),
        "videos": int(table.shape[0]),
        "test_users": len(np.unique(users)),
        **{name: metrics_from_ranks(r) for name, r in ranks.items()},
        "ci95": intervals,
        "model_vs_popularity": difference,
    }
    publish_json(run / f"evaluation-{split}.json", result)
    return result
