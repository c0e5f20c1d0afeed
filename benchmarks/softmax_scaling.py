"""Training step time of each loss as the catalogue grows (10k, 100k, 1M classes), measured in one run.

    python -m benchmarks.softmax_scaling --json benchmarks/results/softmax_scaling/softmax_scaling.json

Setup (the design's reference): batch 1024, d = 256, one Dense layer as the user tower over a 256-d input,
the output table V [n, 256] + bias, sparse Adagrad (lr 0.05) on V/b, dense on the tower. V starts topic-structured
like learned video embeddings (rows around 1,000 topic centres); users sit near a topic's centre (identity-initialised
tower) and watch mostly that topic's videos, Zipf-popular by id. So the index's recall, and the nprobe tuned to
reach it, mean something (on i.i.d. random vectors no index beats a scan).

A step is forward + backward + optimizer. Full, log-uniform and in-batch: the median of several steps after warm-up.
Top-K-plus-random runs a whole refresh window as training does, with the trainer's default index (exact below 20k
rows, else IVF with ~4 sqrt(n) lists): build (k-means + add; nprobe tuned to 0.95 recall of the exact top-K on the
first batch), ``refresh_every`` steps each with the miner's search (K' from the index, re-scored with the current
V), then the refresh (the touched rows that drifted are re-indexed). Its step time is median step + refresh /
refresh_every + nprobe check / (refresh_every x retune_every) + build / (refresh_every x retrain_every), each part
timed at that n. Every loss runs at every n in this same process, so the ratios are side by side.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from benchmarks.output import emit_json
from recsys.config import TrainConfig
from recsys.sparse_optim import SparseAdagrad
from training.losses import LossHead
from training.miner import NegativeMiner, default_ivf_spec

BATCH = 1024
DIM = 256
TOPICS = 1000
LOSSES = ("full", "loguniform", "inbatch", "topk_random")


def _labels(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Zipf-like labels over [0, n): index i has weight 1/(i+1), as with vocabularies sorted by count."""
    weights = 1.0 / np.arange(1, n + 1)
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1).astype(np.int32)


class _World:
    """Topic-structured rows and users: row j has topic t_j; a user of topic t watches t's videos (Zipf by id)."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        """Draw the topic centres [TOPICS, DIM], the rows' topics and the table [n, DIM] (row norm ~1.4)."""
        self.rng = rng
        self.n = n
        self.centres = rng.normal(size=(TOPICS, DIM)).astype(np.float32) / np.sqrt(DIM)
        topic = rng.integers(0, TOPICS, n)
        noise = rng.normal(size=(n, DIM)).astype(np.float32) / np.sqrt(DIM)
        self.table = (self.centres[topic] + noise).astype(np.float32)
        order = np.argsort(topic, kind="stable")  # per topic, its rows in id (= popularity) order
        self.members = np.split(order, np.cumsum(np.bincount(topic, minlength=TOPICS))[:-1])

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """User inputs near their topic's centre and labels: 90% a Zipf pick in that topic, 10% global Zipf."""
        topics = self.rng.integers(0, TOPICS, size)
        x = self.centres[topics] + self.rng.normal(size=(size, DIM)).astype(np.float32) / np.sqrt(DIM)
        labels = _labels(self.rng, self.n, size)
        for i in np.flatnonzero(self.rng.random(size) < 0.9):
            members = self.members[topics[i]]
            if len(members):
                labels[i] = members[_labels(self.rng, len(members), 1)[0]]
        return x.astype(np.float32), labels


def measure(loss: str, n: int, steps: int, cfg_kw: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Step seconds of one loss at one n (plus the miner's parts for top-K-plus-random)."""
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = TrainConfig(loss=loss, optimizer="adagrad", batch_size=BATCH, **cfg_kw)  # the SparseAdagrad below
    tower = tf.keras.layers.Dense(DIM, kernel_initializer="identity")
    tower.build((None, DIM))
    world = _World(rng, n)
    V = tf.Variable(world.table, name="V")
    del world.table
    b = tf.Variable(tf.zeros([n]), name="b")
    variables = [*tower.trainable_variables, V, b]
    optimizer = SparseAdagrad(0.05)
    optimizer.build(variables)
    gen = tf.random.Generator.from_seed(seed)
    counts = np.bincount(_labels(rng, n, 200_000), minlength=n)
    head = LossHead(cfg, n, counts, gen)

    # Full softmax at 1M x 1024 needs [B, n] logits, their softmax and gradient (3 x 4 GB): it runs as
    # micro-batches with summed gradients and ONE optimizer update, i.e. the same step in less memory.
    micro = 1
    while loss == "full" and BATCH * n / micro > 2.5e8:  # powers of two divide the batch evenly
        micro *= 2

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        total = tf.constant(0.0)
        grads: list[Any] = [None] * len(variables)
        scales: dict[Any, Any] = {}
        for xs, ys, cs in zip(tf.split(x, micro), tf.split(y, micro), tf.split(candidates, micro), strict=True):
            with tf.GradientTape() as tape:
                u = tower(xs)
                value, tail = head.loss_and_tail(u, V, b, ys, cs, None)
                value /= micro
            part = tape.gradient(value, variables)
            grads = [p if g is None else g + tf.convert_to_tensor(p) for g, p in zip(grads, part, strict=True)]
            total += value
            if tail is not None:  # only the sampled losses, which never split the batch
                scales = {V.ref(): tail, b.ref(): tail}
        optimizer.apply_gradients(zip(grads, variables, strict=True), scales)
        return total

    user = tf.function(lambda x: tower(x))

    def inputs() -> tuple[tf.Tensor, tf.Tensor]:
        x, y = world.batch(BATCH)
        return tf.constant(x), tf.constant(y)

    miner = None
    out: dict[str, float] = {}
    if loss == "topk_random":
        # The trainer's default index at each n: exact below 20k rows, IVF with ~4 sqrt(n) lists above.
        miner = NegativeMiner.from_config(V, b, cfg, default_ivf_spec(n), seed=seed)
        build = miner.refresh(step=0)
        t0 = time.perf_counter()
        miner.search(user(inputs()[0]).numpy())  # the first search after a build tunes nprobe
        tune_s = time.perf_counter() - t0
        out |= {"build_train_s": build.train_s, "build_add_s": build.add_s + build.read_s, "tune_s": tune_s}
        if miner.tuning is not None:  # IVF only
            out |= {"nprobe": float(miner.tuning["nprobe"]), "tuned_recall": float(miner.tuning["recall"])}
        steps = cfg.refresh_every

    times, search_times = [], []
    for i in range(steps + 2):  # the first two steps trace and warm up
        x, y = inputs()
        t0 = time.perf_counter()
        if miner is not None:
            s0 = time.perf_counter()
            cands = miner.search(user(x).numpy())
            miner.mark(y.numpy())  # as the trainer does: the label rows are checked for drift at the refresh
            s1 = time.perf_counter()
        else:
            cands = np.zeros((BATCH, 0), np.int64)
        value = float(step(x, y, tf.constant(cands)))
        if i >= 2:
            times.append(time.perf_counter() - t0)
            if miner is not None:
                search_times.append(s1 - s0)
        if not np.isfinite(value):
            raise FloatingPointError(f"{loss} at n={n}: loss {value}")
    out |= {"step_s": statistics.median(times), "micro_batches": float(micro)}
    if miner is not None:
        # Recall of the exact top-K just before the refresh: the stalest the index gets.
        out["stale_recall"] = miner.recall_of_true_topk(user(inputs()[0]).numpy(), k=cfg.top_k)
        refresh = miner.refresh(step=cfg.refresh_every + 2)
        out["fresh_recall"] = miner.recall_of_true_topk(user(inputs()[0]).numpy(), k=cfg.top_k)
        # Per window: the refresh; every retune_every windows: an nprobe check (timed above as tune_s); every
        # retrain_every windows: a build.
        amortised = (refresh.read_s + refresh.add_s) / cfg.refresh_every
        amortised += out["tune_s"] / (cfg.refresh_every * miner.retune_every)
        amortised += (out["build_train_s"] + out["build_add_s"]) / (cfg.refresh_every * miner.retrain_every)
        out |= {
            "search_s": statistics.median(search_times),
            "refresh_s": refresh.read_s + refresh.add_s,
            "refresh_rows": float(refresh.rows),
            "refresh_amortised_s": amortised,
        }
        out["step_s"] += amortised
    return out


def main() -> None:
    """Run every loss at every n and write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loss and n (full softmax: fewer)")
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--top-k-fetch", type=int, default=64)
    parser.add_argument("--uniform-samples", type=int, default=2048)
    parser.add_argument("--refresh-every", type=int, default=200)
    parser.add_argument("--nprobe", type=int, default=8, help="the start of the tuning")
    parser.add_argument("--target-recall", type=float, default=0.95, help="nprobe tuned to this recall of top-K")
    parser.add_argument("--refresh-drift", type=float, default=0.05, help="re-index rows that moved > this x RMS")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg_kw = {
        "top_k": args.top_k,
        "top_k_fetch": args.top_k_fetch,
        "uniform_samples": args.uniform_samples,
        "refresh_every": args.refresh_every,
        "nprobe": args.nprobe,
        "index_target_recall": args.target_recall,
        "refresh_drift": args.refresh_drift,
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    losses = args.losses.split(",")
    result: dict[str, Any] = {"batch": BATCH, "dim": DIM, "config": cfg_kw, "step_s": {}, "detail": {}}
    for loss in losses:
        result["step_s"][loss] = {}
        for n in sizes:
            steps = max(3, args.steps // 3) if loss == "full" and n >= 1_000_000 else args.steps
            detail = measure(loss, n, steps, cfg_kw)
            gc.collect()  # frees the previous size's tables (1M x 256 plus accumulators) before the next
            result["step_s"][loss][str(n)] = round(detail["step_s"], 5)
            result["detail"][f"{loss}@{n}"] = {k: round(v, 5) for k, v in detail.items()}
            print(f"{loss:12s} n={n:>9,d}  {detail['step_s'] * 1000:9.1f} ms/step  {detail}", flush=True)
    step_s = result["step_s"]
    big, small = str(max(sizes)), str(min(sizes))
    if "full" in step_s and "topk_random" in step_s:
        result["speedup_vs_full_at_1m"] = round(step_s["full"][big] / step_s["topk_random"][big], 2)
    if "topk_random" in step_s:
        result["topk_random_growth_10k_to_1m"] = round(step_s["topk_random"][big] / step_s["topk_random"][small], 2)
    if "full" in step_s:
        result["full_growth_10k_to_1m"] = round(step_s["full"][big] / step_s["full"][small], 2)
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
