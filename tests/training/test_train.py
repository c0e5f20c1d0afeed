"""The training job on real data: learning beats popularity, updates are sparse, a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from recsys.config import ModelConfig, TrainConfig
from recsys.errors import InputError
from training.data import ExampleSet, batches_per_epoch, iterate_batches, pad_lists, training_batches, with_next
from training.evaluate import evaluate_run
from training.train import FEATURE_NAMES, RUN_EMBEDDINGS_FILE, Trainer, train

SMALL = ModelConfig(hidden=[64], embedding_dim=32, video_input_dim=16, token_input_dim=8, category_dim=4)


def test_pad_lists_keeps_most_recent_items():
    import pyarrow as pa

    col = pa.array([[1, 2, 3, 4], [], [7]], pa.list_(pa.int32()))
    assert pad_lists(col, 3).tolist() == [[2, 3, 4], [-1, -1, -1], [7, -1, -1]]


def test_batches_are_deterministic_per_epoch_and_skip_exactly(synthetic_examples):
    data = ExampleSet.open(synthetic_examples)
    kw = dict(max_history=data.max_history, max_tokens=data.max_tokens, seed=1, window=500)
    a = [b["label"] for b in iterate_batches(data.files("train"), 64, epoch=0, **kw)]
    b = [b["label"] for b in iterate_batches(data.files("train"), 64, epoch=0, skip_batches=5, **kw)]
    c = [b["label"] for b in iterate_batches(data.files("train"), 64, epoch=1, **kw)]
    assert len(a) == data.count("train") // 64
    assert all(np.array_equal(x, y) for x, y in zip(a[5:], b, strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    # The same rows in a new order, except the ragged remainder (< one batch) each epoch drops.
    missing = Counter(np.concatenate(a).tolist()) - Counter(np.concatenate(c).tolist())
    assert sum(missing.values()) < 64


@pytest.mark.parametrize("tail_sampler", ["uniform", "loguniform", "loguniform_inbatch"])
def test_topk_random_step_touches_only_sampled_rows(synthetic_examples, tail_sampler):
    data = ExampleSet.open(synthetic_examples)
    cfg = TrainConfig(
        loss="topk_random",
        batch_size=32,
        uniform_samples=64,
        top_k=8,
        top_k_fetch=16,
        warmup_steps=0,
        tail_sampler=tail_sampler,
    )
    trainer = Trainer(data, SMALL, cfg, index_spec="Flat")
    batch = next(
        iterate_batches(data.files("train"), 32, data.max_history, data.max_tokens, seed=0, epoch=0, window=500)
    )
    features = {k: batch[k] for k in FEATURE_NAMES}
    layer = trainer.model.output_layer
    before_v = layer.table.numpy().copy()
    before_in = trainer.model.tower.video_inputs.numpy().copy()
    candidates = trainer.candidates(0, features)
    trainer._train_step(features, batch["label"], candidates)
    changed = np.flatnonzero(np.any(layer.table.numpy() != before_v, axis=1))
    head = set(batch["label"].tolist()) | set(candidates[candidates >= 0].tolist())
    outside_head = set(changed.tolist()) - head
    assert 0 < len(outside_head) <= cfg.uniform_samples  # only the uniform tail T may change outside S
    assert len(changed) < data.sizes.videos / 2
    changed_in = set(np.flatnonzero(np.any(trainer.model.tower.video_inputs.numpy() != before_in, axis=1)).tolist())
    history = set(batch["history"][batch["history"] >= 0].tolist())
    assert changed_in and changed_in <= history  # input embeddings: only rows in the batch's histories


def test_full_softmax_step_is_dense_reference(synthetic_examples):
    data = ExampleSet.open(synthetic_examples)
    trainer = Trainer(data, SMALL, TrainConfig(loss="full", batch_size=32))
    batch = next(
        iterate_batches(data.files("train"), 32, data.max_history, data.max_tokens, seed=0, epoch=0, window=500)
    )
    before = trainer.model.output_layer.table.numpy().copy()
    trainer._train_step({k: batch[k] for k in FEATURE_NAMES}, batch["label"], np.zeros((32, 0), np.int64))
    changed = np.any(trainer.model.output_layer.table.numpy() != before, axis=1).mean()
    assert changed > 0.99  # the exact softmax moves every row: this is what the sampled losses avoid


def _train_cfg(**kw) -> TrainConfig:
    base = dict(
        loss="topk_random",
        batch_size=64,
        epochs=2,
        optimizer="adagrad",
        learning_rate=0.2,
        uniform_samples=128,
        top_k=8,
        top_k_fetch=16,
        warmup_steps=20,
        refresh_every=20,
        checkpoint_every=20,
        diagnostics_every=40,
        eval_max_examples=500,
        patience=5,
        patience_steps=0,
        shuffle_window=2000,
    )
    return TrainConfig(**(base | kw))


KILL_SCRIPT = """
import os, sys
from pathlib import Path
import training.train as t
from recsys.config import ModelConfig, TrainConfig
original = t.Trainer.candidates
def candidates(self, step, features):
    if step == int(sys.argv[3]):
        os.kill(os.getpid(), 9)  # a hard kill: no cleanup, no final checkpoint
    return original(self, step, features)
t.Trainer.candidates = candidates
t.train(Path(sys.argv[1]), Path(sys.argv[2]), ModelConfig.model_validate_json(sys.argv[4]),
        TrainConfig.model_validate_json(sys.argv[5]), progress=False, index_spec="Flat")
"""


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["topk_random", "loguniform"])
def test_resume_after_kill_equals_uninterrupted_run(synthetic_examples, tmp_path, loss):
    cfg = _train_cfg(loss=loss)
    straight = train(synthetic_examples, tmp_path / "a", SMALL, cfg, progress=False, index_spec="Flat")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            str(synthetic_examples),
            str(tmp_path / "b"),
            "57",
            SMALL.model_dump_json(),
            cfg.model_dump_json(),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["step"] == 40  # the last checkpoint before the kill at step 57
    resumed = train(synthetic_examples, tmp_path / "b", SMALL, cfg, progress=False, index_spec="Flat", resume=True)
    assert resumed["steps"] == straight["steps"]
    a = np.load(tmp_path / "a" / RUN_EMBEDDINGS_FILE)
    b = np.load(tmp_path / "b" / RUN_EMBEDDINGS_FILE)
    np.testing.assert_array_equal(a, b)
    assert [e["recall@10"] for e in resumed["epochs"]] == [e["recall@10"] for e in straight["epochs"]]


def test_refuses_to_overwrite_a_run_and_bad_examples_dir(synthetic_examples, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text("{}")
    with pytest.raises(InputError, match="--resume"):
        train(synthetic_examples, tmp_path / "run", SMALL, _train_cfg(), progress=False)
    with pytest.raises(InputError, match="not a pipeline output"):
        train(tmp_path, tmp_path / "run2", SMALL, _train_cfg(), progress=False)


@pytest.mark.slow
def test_topk_random_beats_popularity_on_ml100k(ml100k_examples, tmp_path):
    cfg = TrainConfig(
        loss="topk_random",
        batch_size=256,
        epochs=10,
        optimizer="adagrad",
        learning_rate=0.4,
        uniform_samples=256,
        top_k=16,
        top_k_fetch=32,
        warmup_steps=50,
        refresh_every=50,
        diagnostics_every=200,
        patience=3,
    )
    model_cfg = ModelConfig(hidden=[256], embedding_dim=64, dropout=0.0)  # the configuration this test was tuned on
    report = train(ml100k_examples, tmp_path / "run", model_cfg, cfg, progress=False)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert report["estimator_diagnostics"], "diagnostics were logged"
    diag = report["estimator_diagnostics"][-1]
    assert 0 < diag["s_share"] <= 1 and diag["grad_cosine"] > 0.9
    result = evaluate_run(tmp_path / "run", "test")
    model, pop = result["model"], result["popularity"]
    assert model["examples"] == pop["examples"] > 1000
    # Measured here, not hard-coded: the learned model must clearly beat popularity on the held-out weeks.
    assert model["recall@100"] > pop["recall@100"] * 1.1, (model, pop)
    assert model["ndcg@10"] > pop["ndcg@10"], (model, pop)
    ci = result["ci95"]["model"]["recall@100"]
    assert ci["low"] <= model["recall@100"] <= ci["high"] and ci["n_users"] == result["test_users"]
    assert result["model_vs_popularity"]["recall@100"]["mean_diff"] > 0


def test_topk_random_trains_with_history_excluded_from_the_head(synthetic_examples, tmp_path):
    # The exclusion path runs inside the traced step (int64 ids against int32 history features).
    cfg = _train_cfg(loss="topk_random", exclude_history_from_head=True, epochs=1)
    report = train(synthetic_examples, tmp_path / "run", SMALL, cfg, progress=False, index_spec="Flat")
    assert report["steps"] > cfg.warmup_steps  # the top-K head (and so the exclusion) was used
    assert np.isfinite(report["epochs"][0]["loss"])
    assert np.isfinite(np.load(tmp_path / "run" / RUN_EMBEDDINGS_FILE)).all()


@pytest.mark.slow
def test_cli_trains_the_tower_shape_it_is_given(synthetic_examples, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    base = [sys.executable, "-m", "recsys", "train", "--examples", str(synthetic_examples), "--loss", "full"]
    out = tmp_path / "run"
    shape = ["--hidden", "", "--video-input-dim", "16", "--embedding-dim", "16", "--history-pooling", "mean"]
    shape += ["--epochs", "1", "--quiet"]
    done = subprocess.run([*base, "--out", str(out), *shape], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    model = json.loads((out / "report.json").read_text())["config"]["model"]
    assert (model["hidden"], model["video_input_dim"], model["embedding_dim"]) == ([], 16, 16)
    assert model["history_pooling"] == "mean"  # not the default (recency)
    # A malformed width list is a usage error naming the option, not a traceback; nothing is written.
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "bad"), "--hidden", "256,wide"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "--hidden" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    unknown = subprocess.run([*base, "--out", str(out), "--depth", "3"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "No such option" in unknown.stderr and "Traceback" not in unknown.stderr


def _whole_reads(concrete: Any, rows: int) -> list[str]:
    """ReadVariableOps in a traced function (and its nested functions) that read a table of `rows` rows whole."""
    found = [
        op.name
        for op in concrete.graph.get_operations()
        if op.type == "ReadVariableOp" and op.outputs[0].shape.rank and op.outputs[0].shape[0] == rows
    ]
    # Branch and loop bodies live in the function library without shapes: any variable read there is suspect.
    library = concrete.graph.as_graph_def().library.function
    return found + [f"{f.signature.name}/{n.name}" for f in library for n in f.node_def if n.op == "ReadVariableOp"]


@pytest.mark.parametrize("loss", ["topk_random", "loguniform", "inbatch"])
def test_traced_training_step_never_reads_a_whole_table(synthetic_examples, loss):
    data = ExampleSet.open(synthetic_examples)
    trainer = Trainer(data, SMALL, _train_cfg(loss=loss, warmup_steps=0), index_spec="Flat")
    n = data.sizes.videos
    assert n not in (data.sizes.tokens, SMALL.embedding_dim)  # the row count identifies the video tables
    concrete = trainer._train_step.get_concrete_function(*trainer._train_step.input_signature)
    assert _whole_reads(concrete, n) == []

    # The check itself can fail: gathering through the Keras variable reads the whole table.
    keras_table = trainer.model.output_layer.table
    gather = tf.function(lambda ids: tf.gather(keras_table, ids), input_signature=[tf.TensorSpec([None], tf.int32)])
    assert _whole_reads(gather.get_concrete_function(), n)


def test_prefetched_mining_trains_like_the_synchronous_miner(synthetic_examples, tmp_path):
    cfg = _train_cfg(loss="topk_random", epochs=1, warmup_steps=0, refresh_every=1000, checkpoint_every=1000)
    reports = {
        prefetch: train(
            synthetic_examples,
            tmp_path / str(prefetch),
            SMALL,
            cfg.model_copy(update={"mining_prefetch": prefetch}),
            progress=False,
            index_spec="Flat",
        )
        for prefetch in (True, False)
    }
    on, off = reports[True], reports[False]
    assert off["prefetched_steps"] == 0
    # Every step but the first (no batch before it) mined its head while the previous step trained.
    assert on["prefetched_steps"] == on["steps"] - 1 > 0
    assert on["step_profile_s"]["search_wait"] >= 0 and "search" in off["step_profile_s"]
    # One update staler user vectors pick nearly the same heads: the model learns as well.
    assert on["epochs"][-1]["recall@100"] >= 0.9 * off["epochs"][-1]["recall@100"]


@pytest.mark.parametrize("margin", [0.05, None])
def test_early_stopping_waits_until_the_model_rises_above_popularity(synthetic_examples, tmp_path, margin):
    # A learning rate this small leaves the model at its random start, far below popularity, with a flat
    # validation recall: without the popularity rule patience 1 stops it after the second epoch.
    cfg = _train_cfg(loss="loguniform", learning_rate=1e-9, epochs=3, patience=1, stop_margin_over_popularity=margin)
    report = train(synthetic_examples, tmp_path / "run", SMALL, cfg, progress=False)
    assert (report["schedule"]["epochs"], report["schedule"]["patience"]) == (3, 1)  # as set: nothing derived
    popularity = report["validation_popularity"]["recall@100"]
    assert all(e["recall@100"] < popularity for e in report["epochs"])
    if margin is None:
        assert report["stopped_early"] and report["epochs_run"] == 2
        assert report["early_stopping_armed_epoch"] == 1
    else:
        assert not report["stopped_early"] and report["epochs_run"] == 3
        assert report["early_stopping_armed_epoch"] is None


def test_an_unset_epoch_cap_is_planned_from_the_log(synthetic_examples, tmp_path):
    # epochs=None: early stopping may not end the run before min_steps, so here max_auto_epochs ends it, and the
    # report says whether validation was still improving when it did.
    cfg = _train_cfg(loss="loguniform", epochs=None, min_steps=10**6, max_auto_epochs=2)
    report = train(synthetic_examples, tmp_path / "run", SMALL, cfg, progress=False)
    plan = report["schedule"]
    assert plan["epochs"] == 2 and plan["epochs_from"].startswith("derived")
    assert report["epochs_run"] == 2 and report["steps"] == 2 * plan["steps_per_epoch"]
    improving = report["best_epoch"] == report["epochs_run"]
    assert report["stopped_by"] == ("epoch cap, validation still improving" if improving else "epoch cap")


def test_a_planned_run_is_not_stopped_before_its_planned_steps(synthetic_examples, tmp_path):
    # A flat validation curve (a step size that learns nothing) with patience 1 stops a set-cap run after epoch 2
    # (test_early_stopping_...); a planned run waits for min_steps (here 3 epochs' worth) before it may stop.
    per_epoch = batches_per_epoch(ExampleSet.open(synthetic_examples).count("train"), 64)
    cfg = _train_cfg(
        loss="loguniform",
        learning_rate=1e-9,
        epochs=None,
        min_steps=3 * per_epoch,
        max_auto_epochs=4,
        patience=1,
        stop_margin_over_popularity=None,
    )
    report = train(synthetic_examples, tmp_path / "run", SMALL, cfg, progress=False)
    assert report["schedule"]["epochs"] == 4 and report["schedule"]["stop_after_step"] == 3 * per_epoch
    assert report["stopped_early"] and report["epochs_run"] == 3 and report["stopped_by"] == "early stopping"


def _gated_run(data: ExampleSet, steps: int, **kw: Any) -> Trainer:
    """A top-K-plus-random trainer stepped `steps` times through Trainer.step (prefetch on) with the head gate."""
    cfg = _train_cfg(warmup_steps=4, refresh_every=10, checkpoint_every=10**6, **kw)
    trainer = Trainer(data, SMALL, cfg, index_spec="Flat")
    batches = with_next(iter(training_batches(data, cfg, epoch=0)))
    try:
        for step in range(steps):
            batch, following = next(batches)
            trainer.step(step, batch, following)
    finally:
        trainer.close()
    return trainer


def test_head_gate_mines_only_while_the_tail_would_miss_the_head(synthetic_examples):
    data = ExampleSet.open(synthetic_examples)
    steps = 34  # warm-up 4, then checks at steps 4, 14, 24 and 34 - 1 = 33 is the last step
    # A tail of 16 log-uniform draws over ~3k videos misses most head entries: the head is kept at every check.
    kept = _gated_run(data, steps, uniform_samples=16, head_min_miss=0.1)
    assert [c["step"] for c in kept.head_checks] == [4, 14, 24]
    assert all(c["head_on"] and c["mean_miss_chance"] >= 0.1 for c in kept.head_checks)
    assert kept.profile["mined"] == steps - 4
    assert kept.prefetched_steps > 0
    # 65,536 draws over ~3k videos take nearly every head entry: the head is mined only at the checks.
    dropped = _gated_run(data, steps, uniform_samples=65536, head_min_miss=0.1)
    assert [c["step"] for c in dropped.head_checks] == [4, 14, 24]
    assert all(not c["head_on"] and c["mean_miss_chance"] < 0.1 for c in dropped.head_checks)
    assert dropped.profile["mined"] == 3
    assert dropped.prefetched_steps == 0
    # The gate reads the tail actually configured: the mixture tail's label draws only raise the chance to draw.
    mixture = _gated_run(data, 5, uniform_samples=16, head_min_miss=0.0, tail_sampler="loguniform_inbatch")
    assert mixture.head_checks[0]["mean_miss_chance"] < kept.head_checks[0]["mean_miss_chance"]


def test_head_gate_needs_a_log_uniform_tail():
    with pytest.raises(ValueError, match="head_min_miss needs a log-uniform tail"):
        TrainConfig(loss="topk_random", tail_sampler="uniform", head_min_miss=0.1)
    with pytest.raises(ValueError):
        TrainConfig(head_min_miss=1.5)
