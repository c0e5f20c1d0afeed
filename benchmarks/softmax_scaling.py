"""Training step time of each loss as the catalogue grows (10k, 100k, 1M classes), measured in one run.

    python benchmarks/softmax_scaling.py --json benchmarks/results/softmax_scaling.json

Setup (the design's reference): batch 1024, d = 256, one Dense layer as the user tower over a 256-d input,
Zipf-distributed labels, the output table V [n, 256] + bias, sparse Adagrad on V/b (dense on the tower).
A step is forward + backward + optimizer. For top-K-plus-random it also includes the miner's search (K' from the
IVF index, re-scored with the current V) and the amortised index refresh: (one re-add with the trained quantizer
+ one k-means training / retrain_every) / refresh_every, each timed at that n. Step times are medians over
several steps after a warm-up; every loss runs at every n in this same process, so the ratios are side by side.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.output import emit_json
from recsys.config import TrainConfig
from recsys.sparse_optim import SparseAdagrad
from training.losses import LossHead
from training.miner import NegativeMiner

BATCH = 1024
DIM = 256
LOSSES = ("full", "loguniform", "inbatch", "topk_random")


def _labels(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Zipf-like labels over [0, n): index i has weight 1/(i+1), as with vocabularies sorted by count."""
    weights = 1.0 / np.arange(1, n + 1)
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1).astype(np.int32)


def measure(loss: str, n: int, steps: int, cfg_kw: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Median step seconds of one loss at one n (plus the miner's parts for top-K-plus-random)."""
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = TrainConfig(loss=loss, batch_size=BATCH, **cfg_kw)
    tower = tf.keras.layers.Dense(DIM)
    tower.build((None, DIM))
    V = tf.Variable(tf.random.normal([n, DIM], stddev=1.0 / np.sqrt(DIM)), name="V")
    b = tf.Variable(tf.zeros([n]), name="b")
    variables = [*tower.trainable_variables, V, b]
    optimizer = SparseAdagrad(0.05)
    optimizer.build(variables)
    gen = tf.random.Generator.from_seed(seed)
    counts = np.bincount(_labels(rng, n, 200_000), minlength=n)
    head = LossHead(cfg, n, np.log((counts + 1.0) / (counts.sum() + n)), gen)

    # Full softmax at 1M x 1024 needs [B, n] logits, their softmax and gradient (3 x 4 GB): it runs as
    # micro-batches with summed gradients and ONE optimizer update, i.e. the same step in less memory.
    micro = 1
    while loss == "full" and BATCH * n / micro > 2.5e8:  # powers of two divide the batch evenly
        micro *= 2

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        total = tf.constant(0.0)
        grads: list[Any] = [None] * len(variables)
        for xs, ys, cs in zip(tf.split(x, micro), tf.split(y, micro), tf.split(candidates, micro), strict=True):
            with tf.GradientTape() as tape:
                u = tower(xs)
                value = head(u, V, b, ys, cs, None) / micro
            part = tape.gradient(value, variables)
            grads = [p if g is None else g + tf.convert_to_tensor(p) for g, p in zip(grads, part, strict=True)]
            total += value
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return total

    user = tf.function(lambda x: tower(x))
    miner = None
    refresh: dict[str, float] = {}
    if loss == "topk_random":
        # The design's reference index at every n (IVF, nlist ~ 4 sqrt(n)), not the exact index the trainer uses
        # below 20k rows: the point is how the engineered path scales.
        miner = NegativeMiner(
            V,
            b,
            k=cfg.top_k,
            k_prime=cfg.top_k_fetch,
            refresh_every=cfg.refresh_every,
            nprobe=cfg.nprobe,
            seed=seed,
            index_spec=f"IVF{round(4 * np.sqrt(n))},Flat",
        )
        build = miner.refresh(step=0)
        readd = miner.refresh(step=cfg.refresh_every)
        refresh = {"build_train_s": build.train_s, "build_add_s": build.add_s, "readd_s": readd.add_s + readd.read_s}

    times, search_times = [], []
    for i in range(steps + 2):  # the first two steps trace and warm up
        x = tf.constant(rng.normal(size=(BATCH, DIM)).astype(np.float32))
        y = tf.constant(_labels(rng, n, BATCH))
        t0 = time.perf_counter()
        if miner is not None:
            s0 = time.perf_counter()
            cands = miner.search(user(x).numpy())
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
    out = {"step_s": statistics.median(times), "micro_batches": float(micro)}
    if miner is not None:
        retrain_every = miner.retrain_every
        amortised = (refresh["readd_s"] + refresh["build_train_s"] / retrain_every) / cfg.refresh_every
        out |= {"search_s": statistics.median(search_times), "refresh_amortised_s": amortised, **refresh}
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
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg_kw = {
        "top_k": args.top_k,
        "top_k_fetch": args.top_k_fetch,
        "uniform_samples": args.uniform_samples,
        "refresh_every": args.refresh_every,
        "nprobe": args.nprobe,
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
