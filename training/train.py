"""The training job: streamed batches, one loss on the shared two-tower model, checkpoints, evaluation, report."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from recsys.config import ModelConfig, TrainConfig
from recsys.errors import InputError
from recsys.logs import progress_enabled, progress_line
from recsys.metrics import dot_scorer, label_ranks, metrics_from_ranks, popularity_scorer
from recsys.model import FEATURE_NAMES, PAD, TwoTower, build_model, feature_signature
from recsys.publish import publish_file, publish_json, publish_npy
from recsys.softmax import estimator_diagnostics
from recsys.sparse_optim import SparseAdagrad, SparseAdam, tf_variable
from training.data import Batch, ExampleSet, batches_per_epoch, to_batch, training_batches, with_next
from training.losses import LossHead
from training.miner import NegativeMiner
from training.schedule import Schedule, schedule

STATE_FILE = "state.json"
REPORT_FILE = "report.json"
RUN_FILE = "run.json"
RUN_EMBEDDINGS_FILE = "video_embeddings.npy"
RUN_BIAS_FILE = "video_bias.npy"
DIAGNOSTICS_BUDGET = 1 << 25  # examples x videos scored exactly by the diagnostics (~1 GB of working memory)


@dataclass
class TrainState:
    """Where training stands; saved beside each checkpoint so a killed run resumes exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    checkpoint: str | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    armed_epoch: int | None = None  # first epoch that early stopping counted (TrainConfig.stop_margin_over_popularity)
    stopped_early: bool = False
    losses: list[tuple[int, float]] = field(default_factory=list)
    diagnostics: list[dict[str, float]] = field(default_factory=list)
    index: list[dict[str, float]] = field(default_factory=list)

    def save(self, out: Path) -> None:
        """Write state.json atomically and durably (a kill mid-write must not lose the resume point)."""
        publish_json(out / STATE_FILE, asdict(self), indent=None)

    @classmethod
    def load(cls, out: Path) -> TrainState:
        """Read state.json."""
        data = json.loads((out / STATE_FILE).read_text())
        data["losses"] = [tuple(x) for x in data["losses"]]
        return cls(**data)


class Trainer:
    """Owns the model, the optimizer, the loss head and the miner for one run."""

    def __init__(self, data: ExampleSet, model_cfg: ModelConfig, cfg: TrainConfig, index_spec: str | None = None):
        """Build the model and whatever state the chosen loss needs."""
        self.data = data
        self.cfg = cfg
        self.model_cfg = model_cfg
        tf.keras.utils.set_random_seed(cfg.seed)
        self.model: TwoTower = build_model(data.sizes, model_cfg, data.max_history, data.max_tokens)
        self.optimizer = SparseAdam(cfg.learning_rate) if cfg.optimizer == "adam" else SparseAdagrad(cfg.learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        self.rng = tf.random.Generator.from_seed(cfg.seed)
        self.n = data.sizes.videos
        self.label_counts = data.label_counts()
        self.loss_head = LossHead(cfg, self.n, self.label_counts, self.rng)
        # Every gather, gradient and optimizer update goes through the raw tf.Variables: a Keras variable converts
        # to a whole-table read, which TensorFlow turns into a full copy once a sparse update has touched it.
        out = self.model.output_layer
        self.table = tf_variable(out.table)
        self.bias = tf_variable(out.bias) if out.bias is not None else None
        self.variables = [tf_variable(v) for v in self.model.trainable_variables]
        self.miner: NegativeMiner | None = None
        if cfg.loss == "topk_random":
            self.miner = NegativeMiner.from_config(self.table, self.bias, cfg, index_spec)
        # Variables are listed explicitly, under their Keras paths: Keras 3 does not expose layers held in lists or
        # dicts to tf.train's object graph, so checkpointing `model` alone would silently skip the hidden layers.
        self.checkpoint = tf.train.Checkpoint(
            weights={_key(v): tf_variable(v) for v in self.model.weights},
            rng=self.rng,
            **_optimizer_state(self.optimizer, self.model.trainable_variables),
            dropout_seeds=_seed_states(self.model),
        )
        spec = feature_signature(data.max_history, data.max_tokens)
        label_spec = tf.TensorSpec([None], tf.int32)
        cand_spec = tf.TensorSpec([None, None], tf.int64)
        self._train_step = tf.function(self._step, input_signature=[spec, label_spec, cand_spec], reduce_retracing=True)
        self._user_vectors = tf.function(lambda f: self.model.tower(f, training=False), input_signature=[spec])
        self.profile: defaultdict[str, float] = defaultdict(float)
        self._pending: tuple[int, np.ndarray, Future[np.ndarray]] | None = None
        self.prefetched_steps = 0  # steps whose index search overlapped the step before
        self._pool = ThreadPoolExecutor(1, "miner") if self.miner is not None and cfg.mining_prefetch else None
        self._head_on: bool | None = None  # the head gate's last decision (None: no check yet in this process)
        self.head_checks: list[dict[str, float]] = []  # the gate's checks: step, mean miss chance, head kept or not

    def _step(self, features: dict[str, tf.Tensor], y: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            u = self.model.tower(features, training=True)
            exclude = features["history"] if self.cfg.exclude_history_from_head else None
            loss, tail = self.loss_head.loss_and_tail(u, self.table, self.bias, y, candidates, exclude)
        grads = tape.gradient(loss, self.variables)
        scales = {} if tail is None else {v.ref(): tail for v in (self.table, self.bias) if v is not None}
        self.optimizer.apply_gradients(zip(grads, self.variables, strict=True), scales)
        return loss

    # --------------------------------------------------------------------------------------------- helpers
    def step(self, step: int, batch: Batch, next_batch: Batch | None = None) -> float:
        """One training step on a batch (mining the top-K head first when the loss needs it); the loss value.

        With ``next_batch`` (the batch of step + 1, same epoch) the index search for it runs on a worker thread
        while this step trains: see ``_prefetch``.
        """
        features = {k: batch[k] for k in FEATURE_NAMES}
        candidates = self.candidates(step, features)
        if self.miner is not None:
            self.miner.mark(batch["label"])  # label rows move the most: the next refresh checks them
        if next_batch is not None:
            self._prefetch(step + 1, {k: next_batch[k] for k in FEATURE_NAMES})
        t0 = time.perf_counter()
        loss = float(self._train_step(features, batch["label"], candidates))
        self.profile["train_step"] += time.perf_counter() - t0
        self.profile["steps"] += 1
        return loss

    def candidates(self, step: int, features: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K head candidates for this step from the miner (an empty [B, 0] during warm-up or for other losses)."""
        batch = len(features["country"])
        if self.miner is None or not self.miner.topk_enabled(step):
            return np.zeros((batch, 0), dtype=np.int64)
        if self.cfg.head_min_miss is not None:
            if self._head_check_due(step):
                found = self._mine(step, features)
                self._check_head(step, found)
                return found  # mined already: this step uses it whatever the gate decided for the next ones
            if not self._head_on:
                return np.zeros((batch, 0), dtype=np.int64)
        return self._mine(step, features)

    def _mine(self, step: int, features: dict[str, np.ndarray]) -> np.ndarray:
        """This step's re-scored top-K: the prefetched search when one is pending for it, else a synchronous one."""
        assert self.miner is not None
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] != step:
            pending[2].result()  # a search still in flight must end before the index may be refreshed
            pending = None
        if pending is not None:
            _, queries, future = pending
            t0 = time.perf_counter()
            ids = future.result()
            self.profile["search_wait"] += time.perf_counter() - t0
            self.prefetched_steps += 1
        else:
            t0 = time.perf_counter()
            self.miner.maybe_refresh(step)
            t1 = time.perf_counter()
            u = self._user_vectors(features).numpy()
            t2 = time.perf_counter()
            if self.miner.tuning_pending:
                self.miner.tune_nprobe(u)
            queries = self.miner.queries(u)
            ids = self.miner.fetch(queries)
            t3 = time.perf_counter()
            self.profile["refresh"] += t1 - t0
            self.profile["mining_tower"] += t2 - t1
            self.profile["search"] += t3 - t2
        t0 = time.perf_counter()
        found = self.miner.finish(queries, ids)  # re-scored with the table as it is now, exactly as without prefetch
        self.profile["rescore"] += time.perf_counter() - t0
        self.profile["mined"] += 1  # per step in step_profile: the share of steps that mined a head
        return found

    def _head_check_due(self, step: int) -> bool:
        """Whether the head gate checks at this step: every refresh_every steps from warm-up's end, and first thing.

        A resumed run has no decision yet and checks at its first step, so it may mine a few steps that an
        uninterrupted run did not (or the reverse) until the next scheduled check.
        """
        return self._head_on is None or (step - self.cfg.warmup_steps) % self.cfg.refresh_every == 0

    def _check_head(self, step: int, found: np.ndarray) -> None:
        """Keep mining until the next check only if the tail would miss enough of this head (TrainConfig.head_min_miss).

        The head's job is to score exactly the rows that dominate Z and that the tail is unlikely to draw; entries the
        tail draws almost surely are already estimated from the tail, so such a head costs a step's search, mining
        tower and re-scoring for little change in the estimate (benchmarks/head_cover.py measures this at 1M).
        """
        assert self.cfg.head_min_miss is not None
        drawn = self.loss_head.head_draw_chance(found)
        miss = 1.0 - float(drawn.mean()) if drawn.size else 0.0
        self._head_on = miss >= self.cfg.head_min_miss
        self.head_checks.append({"step": step, "mean_miss_chance": round(miss, 4), "head_on": self._head_on})

    def _prefetch(self, step: int, features: dict[str, np.ndarray]) -> None:
        """Start the index search for ``step``'s batch on the worker thread, with the user vectors of the weights now.

        The search reads only the index (FAISS releases the GIL), so it overlaps the training step that follows;
        its K' ids are re-scored with the table after that step, as a synchronous search would be. The user vectors
        are one update older than without prefetch, which only changes which rows form the head (the estimator
        stays unbiased for any head). Steps that refresh the index and steps a resumed run can start at (epoch
        starts and checkpoints, where no batch came before) always search synchronously, so a resumed run mines
        exactly what an uninterrupted one does.
        """
        miner = self.miner
        if (
            self._pool is None
            or miner is None
            or miner.index is None
            or not miner.topk_enabled(step)
            or miner.refresh_due(step)
            or miner.tuning_pending
            or step % self.cfg.checkpoint_every == 0
            or (self.cfg.head_min_miss is not None and (self._head_check_due(step) or not self._head_on))
        ):
            return
        t0 = time.perf_counter()
        queries = miner.queries(self._user_vectors(features).numpy())
        self.profile["mining_tower"] += time.perf_counter() - t0
        self._pending = (step, queries, self._pool.submit(miner.fetch, queries))

    def close(self) -> None:
        """Stop the prefetch worker (waiting for a search in flight)."""
        if self._pending is not None:
            self._pending[2].result()
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def step_profile(self) -> dict[str, float]:
        """Mean seconds per step of each part of the step so far (what a step costs, and where)."""
        steps = max(self.profile["steps"], 1.0)
        return {k: round(v / steps, 5) for k, v in self.profile.items() if k != "steps"}

    def user_vectors(self, batch: Batch, chunk: int = 4096) -> np.ndarray:
        """User vectors for a whole feature batch, in chunks."""
        n = len(batch["label"])
        outs = []
        for lo in range(0, n, chunk):
            part = {k: batch[k][lo : lo + chunk] for k in FEATURE_NAMES}
            outs.append(self._user_vectors(part).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.model_cfg.embedding_dim), np.float32)

    def evaluate(self, batch: Batch) -> dict[str, float]:
        """Full-catalogue exact retrieval metrics of the current model on a feature batch."""
        out = self.model.output_layer
        bias = out.bias.numpy() if out.bias is not None else None
        scorer = dot_scorer(self.user_vectors(batch), self.table.numpy(), bias)
        exclude = batch["history"] if self.cfg.eval_exclude_history else None  # as served: watched videos hidden
        return metrics_from_ranks(label_ranks(scorer, batch["label"], exclude))

    def popularity(self, batch: Batch) -> dict[str, float]:
        """The popularity baseline on the same batch, ranked the same way."""
        exclude = batch["history"] if self.cfg.eval_exclude_history else None
        return metrics_from_ranks(label_ranks(popularity_scorer(self.label_counts), batch["label"], exclude))

    def diagnostics(self, batch: Batch, step: int) -> dict[str, float]:
        """Estimator quality on a small held-out batch: S's share of Z, |log Z_hat - log Z|, gradient cosine."""
        # The exact reference scores every example against all n rows: a fixed budget bounds its memory at any n.
        batch = _slice(batch, max(8, min(len(batch["label"]), DIAGNOSTICS_BUDGET // self.n)))
        features = {k: tf.constant(batch[k]) for k in FEATURE_NAMES}
        u = self._user_vectors(features)
        cands = np.zeros((len(batch["label"]), 0), np.int64)
        if self.miner is not None and self.miner.index is not None and self.miner.topk_enabled(step):
            cands = self.miner.peek(u.numpy())  # marks nothing and tunes nothing: training never sees this search
        # A separate generator so diagnostics never shift the training draws (resume stays exact).
        diag_rng = tf.random.Generator.from_seed(self.cfg.seed + 7919 + step)
        result = estimator_diagnostics(
            u,
            self.table,
            self.bias,
            tf.constant(batch["label"]),
            tf.constant(cands),
            self.cfg.uniform_samples,
            diag_rng,
            per_example=self.cfg.head == "per_example",
        )
        if self.miner is not None and self.miner.index is not None:
            result["index_recall"] = self.miner.recall_of_true_topk(u.numpy(), k=self.cfg.top_k)
        return result


def _seed_states(model: TwoTower) -> dict[str, tf.Variable]:
    """The dropout layers' random-generator states, keyed by order (their Keras names carry a per-process counter).

    Checkpointed so that a resumed run draws the same dropout masks as an uninterrupted one.
    """
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    return {f"seed_{i}": tf_variable(v) for i, v in enumerate(states)}


def _optimizer_state(optimizer: SparseAdam | SparseAdagrad, variables: list[Any]) -> dict[str, Any]:
    """The optimizer's slots under checkpoint keys (Adagrad's keep the names of runs before Adam existed)."""
    if isinstance(optimizer, SparseAdagrad):
        return {"accumulators": {_key(v): optimizer.accumulator(v) for v in variables}}
    slots = {f"{_key(v)}/{name}": slot for v in variables for name, slot in optimizer.slot_variables(v).items()}
    return {"adam_slots": slots, "adam_iterations": optimizer.iterations}


def _key(var: Any) -> str:
    """A checkpoint key from a variable's Keras path (e.g. "two_tower/user_tower/hidden_0/kernel")."""
    return var.path.replace("/", ".")


def _slice(batch: Batch, n: int) -> Batch:
    return {k: v[:n] for k, v in batch.items()}


def train(
    examples: Path,
    out: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    index_spec: str | None = None,
) -> dict[str, Any]:
    """Train one model; resumable after a kill; returns (and writes) the final report."""
    data = ExampleSet.open(examples)
    if data.count("train") < cfg.batch_size:
        raise InputError(f"{examples}: fewer training examples ({data.count('train')}) than one batch")
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"{out}: already holds a run (pass --resume to continue it)")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(data, model_cfg, cfg, index_spec)
    manager = tf.train.CheckpointManager(trainer.checkpoint, out / "checkpoints", max_to_keep=3)
    state = TrainState()
    if resume and (out / STATE_FILE).exists():
        state = TrainState.load(out)
        if state.checkpoint:
            trainer.checkpoint.restore(state.checkpoint).assert_existing_objects_matched()
    publish_json(
        out / RUN_FILE,
        {
            "examples": str(examples.resolve()),
            "model": model_cfg.model_dump(mode="json"),
            "train": cfg.model_dump(mode="json"),
            "sizes": asdict(data.sizes),
            "max_history": data.max_history,
            "max_tokens": data.max_tokens,
            "index_spec": index_spec,
        },
    )
    writer = tf.summary.create_file_writer(str(out / "tensorboard"))
    validation = to_batch(data.read("validation", cfg.eval_max_examples), data.max_history, data.max_tokens)
    held_out = _slice(validation, 256)
    per_epoch = batches_per_epoch(data.count("train"), cfg.batch_size)
    plan = schedule(cfg, per_epoch)
    logging.getLogger(__name__).info(
        "epochs: up to %d (%s); patience %d epochs (%s)",
        plan.epochs,
        plan.epochs_from,
        plan.patience,
        plan.patience_from,
    )
    timings = {"train_s": 0.0, "eval_s": 0.0}
    popularity = trainer.popularity(validation)  # once: the arming threshold and the report's baseline
    arm_at = _arming_recall(cfg, popularity)

    def checkpoint() -> None:
        state.checkpoint = manager.save(checkpoint_number=state.step)
        state.save(out)

    try:
        while state.epoch < plan.epochs and not state.stopped_early:
            t0 = time.perf_counter()
            bar = tqdm(
                total=per_epoch,
                initial=state.batch_in_epoch,
                desc=f"epoch {state.epoch + 1}/{plan.epochs}",
                disable=not progress_enabled(progress),
                unit="step",
            )
            batches = training_batches(data, cfg, state.epoch, skip_batches=state.batch_in_epoch)
            for batch, next_batch in with_next(batches):
                loss = trainer.step(state.step, batch, next_batch)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {state.step}; last checkpoint kept")
                state.step += 1
                state.batch_in_epoch += 1
                if state.step % 10 == 0:
                    state.losses.append((state.step, loss))
                    with writer.as_default():
                        tf.summary.scalar("loss", loss, step=state.step)
                if cfg.loss == "topk_random" and state.step % cfg.diagnostics_every == 0:
                    diag = {"step": float(state.step), **trainer.diagnostics(held_out, state.step)}
                    state.diagnostics.append(diag)
                    with writer.as_default():
                        for key, value in diag.items():
                            tf.summary.scalar(f"estimator/{key}", value, step=state.step)
                bar.set_postfix(loss=f"{loss:.3f}")
                bar.update(1)
                if state.step % cfg.checkpoint_every == 0:
                    checkpoint()
            bar.close()
            timings["train_s"] += time.perf_counter() - t0

            t1 = time.perf_counter()
            metrics = trainer.evaluate(validation)
            timings["eval_s"] += time.perf_counter() - t1
            state.epochs.append({"epoch": state.epoch + 1, "step": state.step, **metrics, "loss": loss})
            with writer.as_default():
                for key, value in metrics.items():
                    tf.summary.scalar(f"validation/{key}", value, step=state.step)
            progress_line(
                f"epoch {state.epoch + 1}: loss {loss:.4f} validation recall@10 {metrics['recall@10']:.4f} "
                f"recall@100 {metrics['recall@100']:.4f}",
                progress,
                logging.getLogger(__name__),
            )
            if state.armed_epoch is None and metrics["recall@100"] >= arm_at:
                state.armed_epoch = state.epoch + 1
            if metrics["recall@100"] > state.best_metric:
                state.best_metric, state.best_epoch, state.bad_epochs = metrics["recall@100"], state.epoch + 1, 0
                _export_embeddings(trainer, out)
            elif state.armed_epoch is not None:
                state.bad_epochs += 1
                state.stopped_early = state.bad_epochs >= plan.patience and state.step >= plan.stop_after_step
            state.epoch += 1
            state.batch_in_epoch = 0
            checkpoint()
    finally:
        trainer.close()  # no search left running on the worker thread

    if state.armed_epoch is None and math.isfinite(arm_at):
        logging.getLogger(__name__).warning(
            "validation recall@100 never rose %.0f%% above popularity's (%.4f) in %d epochs: the model is no better "
            "than a count yet (more epochs, a higher learning rate or a smaller tower may help)",
            100 * (cfg.stop_margin_over_popularity or 0.0),
            popularity["recall@100"],
            len(state.epochs),
        )
    report = _report(trainer, state, data, popularity, timings, plan, out)
    if report["stopped_by"] == CAP_WHILE_IMPROVING:
        logging.getLogger(__name__).warning(
            "the epoch cap (%d) ended this run while validation was still improving (best epoch = last): more epochs "
            "would likely help (--epochs, or train.max_auto_epochs when epochs is unset)",
            plan.epochs,
        )
    if not report["beats_popularity"]:
        logging.getLogger(__name__).warning(
            "the best epoch's validation recall@100 (%.4f) is not above popularity's (%.4f) on the same examples: "
            "this model ranks no better than a count of watches (train longer or tune it); `recsys export` refuses "
            "it unless --force",
            report["best_validation"].get("recall@100", float("nan")),
            popularity["recall@100"],
        )
    publish_json(out / REPORT_FILE, report)
    _plots(state, out, popularity, cfg.eval_exclude_history)
    return report


CAP_WHILE_IMPROVING = "epoch cap, validation still improving"


def stopped_by(state: TrainState) -> str:
    """Why the run ended: early stopping, the epoch cap, or the cap while the last epoch was still the best."""
    if state.stopped_early:
        return "early stopping"
    if state.epochs and state.best_epoch == len(state.epochs):
        return CAP_WHILE_IMPROVING
    return "epoch cap"


def beats_popularity(best: dict[str, float], popularity: dict[str, float]) -> bool:
    """Whether the chosen epoch's validation recall@100 is above popularity's on the same examples."""
    return bool(best) and best.get("recall@100", -math.inf) > popularity.get("recall@100", math.inf)


def _arming_recall(cfg: TrainConfig, popularity: dict[str, float]) -> float:
    """The validation recall@100 from which early stopping counts: popularity's on the same examples plus a margin.

    Sampled softmax first learns the bias (popularity) and can sit on that plateau for several epochs, longer on a
    sparse log; stopping there would hand back a model no better than a count.
    """
    margin = cfg.stop_margin_over_popularity
    if margin is None:
        return -math.inf
    return (1.0 + margin) * popularity["recall@100"]


def _export_embeddings(trainer: Trainer, out: Path) -> None:
    """Save the best epoch's video embeddings and bias (what the index and serving will use)."""
    layer = trainer.model.output_layer
    publish_npy(out / RUN_EMBEDDINGS_FILE, layer.table.numpy())
    publish_npy(out / RUN_BIAS_FILE, layer.bias.numpy() if layer.bias is not None else np.zeros(trainer.n, np.float32))
    with publish_file(out / "best.weights.h5", suffix=".weights.h5") as tmp:
        trainer.model.save_weights(tmp)


def _report(
    trainer: Trainer,
    state: TrainState,
    data: ExampleSet,
    popularity: dict[str, float],
    timings: dict[str, float],
    plan: Schedule,
    out: Path,
) -> dict[str, Any]:
    best = state.epochs[state.best_epoch - 1] if state.best_epoch > 0 else {}
    return {
        "loss": trainer.cfg.loss,
        "steps": state.step,
        "epochs_run": len(state.epochs),
        "schedule": asdict(plan),
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "stopped_by": stopped_by(state),
        "early_stopping_armed_epoch": state.armed_epoch,
        "data": {split: data.count(split) for split in ("train", "validation", "test")},
        "videos": data.sizes.videos,
        "epochs": state.epochs,
        "validation_popularity": popularity,
        "best_validation": best,
        "beats_popularity": beats_popularity(best, popularity),
        "estimator_diagnostics": state.diagnostics[-5:],
        "miner_refreshes": [asdict(s) for s in trainer.miner.history[-5:]] if trainer.miner else [],
        "miner_refresh_kinds": dict(Counter(s.kind for s in trainer.miner.history)) if trainer.miner else {},
        "miner_nprobe_tuning": trainer.miner.tuning if trainer.miner else None,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "step_profile_s": trainer.step_profile(),
        "prefetched_steps": trainer.prefetched_steps,
        "head_checks": trainer.head_checks[-20:],
        "config": {"model": trainer.model_cfg.model_dump(mode="json"), "train": trainer.cfg.model_dump(mode="json")},
        "files": {"embeddings": RUN_EMBEDDINGS_FILE, "bias": RUN_BIAS_FILE, "weights": "best.weights.h5"},
        "out": str(out),
    }


def _plots(state: TrainState, out: Path, popularity: dict[str, float], exclude_history: bool) -> None:
    """Loss and validation recall curves as PNG, with popularity's recall@100 as the level to beat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if state.losses:
        steps, losses = zip(*state.losses, strict=True)
        axes[0].plot(steps, losses)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    for k in (10, 50, 100):
        axes[1].plot(
            [e["epoch"] for e in state.epochs],
            [e[f"recall@{k}"] for e in state.epochs],
            marker="o",
            label=f"recall@{k}",
        )
    if "recall@100" in popularity:
        axes[1].axhline(popularity["recall@100"], color="grey", linestyle="--", label="popularity recall@100")
    scored = "watched videos hidden" if exclude_history else "full catalogue"
    axes[1].set(title=f"validation recall ({scored})", xlabel="epoch", ylabel="recall")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


__all__ = ["PAD", "TrainState", "Trainer", "train"]
