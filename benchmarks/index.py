"""Retrieval index benchmark: build time, recall@100 against exact search and queries/s, measured in one run.

    python -m benchmarks.index --videos 1000000 --dim 256 --json benchmarks/results/index/index.json [--bundle DIR]

Data: clustered synthetic embeddings (``--videos`` x ``--dim``; topic centres on the unit sphere, items = a centre
plus noise, a small bias per video) with synthetic user vectors (a mixture of one to three topic centres plus
noise) as queries. With ``--bundle`` the same measurements also run on a bundle's learned embeddings with its
held-out users' vectors (queries.npy) as queries: synthetic data can flatter an index (DESIGN.md).

Every index goes through recsys.index.VideoIndex, the serving path: scores u·V_j + b_j as [u, 1]·[V_j, b_j],
OOV row excluded, k = 100. Exact search is the Flat index through the same path. The default spec
(recsys.index.default_spec) is tuned to ``--target-recall`` on tuning queries, then measured on separate
evaluation queries. queries/s at batch 1 = single queries one after another; at batch 256 = whole batches.
HNSW32 takes minutes to build at 1M here: ``--skip-hnsw``, or ``--hnsw-videos N`` to build it on the first N.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.output import emit_json
from recsys.index import (
    PARALLEL_MIN_BATCH,
    VideoIndex,
    augment_items,
    augment_queries,
    default_spec,
    exact_topk,
    ivf_nlist,
    recall_at_k,
)

K = 100


def clustered_embeddings(n: int, dim: int, seed: int, topics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [n, d], bias [n], topic centres [topics, d]): items scattered around unit-norm topic centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.integers(0, topics, size=n)
    emb = np.empty((n, dim), dtype=np.float32)
    chunk = 100_000
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
        emb[lo:hi] = centres[topic[lo:hi]] + noise
    bias = (rng.standard_normal(n) * 0.1).astype(np.float32)
    return emb, bias, centres


def user_queries(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Synthetic user vectors: a random mix of 1-3 topic centres plus noise, scaled to norm ~3."""
    rng = np.random.default_rng(seed)
    topics, dim = centres.shape
    parts = rng.integers(1, 4, size=n)
    weights = rng.dirichlet(np.ones(3), size=n) * (np.arange(3)[None, :] < parts[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    picks = rng.integers(0, topics, size=(n, 3))
    u = np.einsum("bp,bpd->bd", weights, centres[picks])
    u += rng.standard_normal((n, dim)).astype(np.float32) * np.float32(0.3 / np.sqrt(dim))
    return (3.0 * u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def qps(index: VideoIndex, queries: np.ndarray, batch: int, min_seconds: float, max_batches: int) -> float:
    """Queries per second of VideoIndex.search(k=100) at a batch size (after one warm-up call)."""
    index.search(queries[:batch], K)
    done, t0, i = 0, time.perf_counter(), 0
    while i < max_batches:
        lo = (i * batch) % max(1, len(queries) - batch + 1)
        index.search(queries[lo : lo + batch], K)
        done += batch
        i += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
    return done / (time.perf_counter() - t0)


def measure(
    index: VideoIndex, eval_q: np.ndarray, truth: np.ndarray, params: dict[str, int], exact: bool = False
) -> dict[str, Any]:
    """Recall@100 and queries/s at batch 1 and 256 at one parameter setting."""
    if params:
        index.set_params(**params)
    found, _ = index.search(eval_q, K)
    return {
        "params": {k: v for k, v in index.params.items() if k != "rerank" or v > 1},
        "recall_at_100": round(recall_at_k(found, truth), 4),
        "qps_b1": round(qps(index, eval_q, 1, 1.0 if not exact else 2.0, 20 if exact else 2000), 1),
        "qps_b256": round(qps(index, eval_q, 256, 1.0, 2 if exact else 40), 1),
    }


def run_dataset(
    name: str,
    embeddings: np.ndarray,
    bias: np.ndarray,
    tune_q: np.ndarray,
    eval_q: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Exact, IVF (two nlist, several nprobe), the tuned default and HNSW32 on one data set."""
    n, dim = embeddings.shape
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    truth, _ = exact_topk(augment_queries(eval_q), augment_items(embeddings, bias), K)
    print(f"[{name}] exact reference for {len(eval_q)} queries: {time.perf_counter() - t0:.1f}s", flush=True)

    def record(spec: str, index: VideoIndex, settings: list[dict[str, int]], **extra: Any) -> list[dict[str, Any]]:
        out = []
        for params in settings:
            row = {
                "dataset": name,
                "videos": n,
                "spec": spec,
                "build_s": index.stats["build_seconds"],
                "train_s": index.stats["train_seconds"],
                **measure(index, eval_q, truth, params, exact=spec == "Flat"),
                **extra,
            }
            print(json.dumps(row), flush=True)
            out.append(row)
        return out

    flat = VideoIndex.build(embeddings, bias, "Flat")
    exact_row = record("Flat", flat, [{}])[0]
    rows.append(exact_row)
    del flat
    gc.collect()

    spec = default_spec(n, dim)
    nlists = sorted({ivf_nlist(n), max(1, round(np.sqrt(n)))}) if n >= 1000 else [max(1, round(np.sqrt(n)))]
    default_row: dict[str, Any] | None = None
    for nlist in nlists:
        ivf_spec = f"IVF{nlist},Flat"
        index = VideoIndex.build(embeddings, bias, ivf_spec, seed=args.seed)
        probes = [p for p in (1, 4, 8, 16, 32, 64, 128) if p <= nlist]
        rows += record(ivf_spec, index, [{"nprobe": p} for p in probes])
        if ivf_spec == spec:
            tuning = index.tune(tune_q, args.target_recall, K)
            default_row = record(spec, index, [{}], default=True, tuning=tuning)[0]
            rows.append(default_row)
        del index
        gc.collect()
    if default_row is None:  # the default is not one of the IVF-Flat rows (Flat below 50k, IVF-PQ above 2M)
        index = VideoIndex.build(embeddings, bias, spec, seed=args.seed)
        tuning = index.tune(tune_q, args.target_recall, K)
        default_row = record(spec, index, [{}], default=True, tuning=tuning)[0]
        rows.append(default_row)
        del index
        gc.collect()

    if not args.skip_hnsw:
        hn = min(n, args.hnsw_videos or n)
        sub_emb, sub_bias = embeddings[:hn], bias[:hn]
        sub_truth = truth
        if hn < n:
            sub_truth, _ = exact_topk(augment_queries(eval_q), augment_items(sub_emb, sub_bias), K)
        print(f"[{name}] building HNSW32 on {hn} videos", flush=True)
        index = VideoIndex.build(sub_emb, sub_bias, "HNSW32")
        for ef in (64, 128, 256, 512):
            row = {
                "dataset": name,
                "videos": hn,
                "spec": "HNSW32",
                "build_s": index.stats["build_seconds"],
                "train_s": 0.0,
                **measure(index, eval_q, sub_truth, {"efSearch": ef}),
            }
            if hn < n:
                row["note"] = f"built on the first {hn} of {n} videos (--hnsw-videos); recall vs exact on that subset"
            print(json.dumps(row), flush=True)
            rows.append(row)
        del index
        gc.collect()

    return {
        "exact_qps_b1": exact_row["qps_b1"],
        "exact_qps_b256": exact_row["qps_b256"],
        "default_spec": spec,
        "default_params": default_row["params"],
        "default_recall_at_100": default_row["recall_at_100"],
        "default_qps_b1": default_row["qps_b1"],
        "default_qps_b256": default_row["qps_b256"],
        "speedup_vs_exact_b1": round(default_row["qps_b1"] / exact_row["qps_b1"], 1),
        "target_recall": args.target_recall,
        # recall >= target and >= 20x exact search's batch-1 queries/s (moot when the default IS exact search).
        "meets_target": None
        if spec == "Flat"
        else bool(
            default_row["recall_at_100"] >= args.target_recall and default_row["qps_b1"] >= 20 * exact_row["qps_b1"]
        ),
        "rows": rows,
    }


def bundle_dataset(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same measurements on a bundle's learned embeddings with its held-out user vectors as queries."""
    from recsys.bundle import load_bundle

    bundle = load_bundle(path, load_index=False)
    queries, source = bundle.tuning_queries(2 * args.queries, args.seed)
    half = len(queries) // 2
    result = run_dataset("bundle", bundle.embeddings, bundle.bias, queries[:half], queries[half:], args)
    result["bundle"] = {"path": str(bundle.path), "model_version": bundle.model_version, "queries": source}
    return result


def main() -> None:
    """Parse arguments, run the benchmark, print and optionally save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--topics", type=int, default=0, help="synthetic topic clusters (0: videos / 1000)")
    parser.add_argument("--queries", type=int, default=1000, help="evaluation queries (as many again for tuning)")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--hnsw-videos", type=int, default=0, help="build HNSW32 on only the first N videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=None, help="also benchmark a bundle's learned embeddings")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    topics = args.topics or max(2, args.videos // 1000)
    emb, bias, centres = clustered_embeddings(args.videos, args.dim, args.seed, topics)
    tune_q = user_queries(centres, args.queries, args.seed + 1)
    eval_q = user_queries(centres, args.queries, args.seed + 2)
    print(f"synthetic data {args.videos} x {args.dim}, {topics} topics: {time.perf_counter() - t0:.1f}s", flush=True)
    result: dict[str, Any] = run_dataset("synthetic", emb, bias, tune_q, eval_q, args)
    del emb, bias
    gc.collect()
    if args.bundle is not None:
        result["bundle"] = bundle_dataset(args.bundle, args)
    result["setup"] = {
        "videos": args.videos,
        "dim": args.dim,
        "topics": topics,
        "eval_queries": args.queries,
        "tuning_queries": args.queries,
        "k": K,
        "faiss": faiss.__version__,
        "cpus": os.cpu_count(),
        "search_threads": f"1 below batch {PARALLEL_MIN_BATCH}, {os.cpu_count()} from it; builds use all cores",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "gpus": faiss.get_num_gpus(),
        "machine": platform.machine(),
        "hnsw_videos": None if args.skip_hnsw else min(args.videos, args.hnsw_videos or args.videos),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
