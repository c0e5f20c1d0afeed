"""The benchmarks' datasets: MovieLens or a synthetic log, run through the example pipeline once per protocol.

Every benchmark that takes a dataset gets its options from `add_dataset_arguments` (one set of defaults) and the
data from `prepare_dataset`, so the same command-line options build the same data in every benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.output import log
from benchmarks.schema import PROTOCOLS
from pipelines.movielens import read_movielens
from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig, PipelineConfig, with_overrides

DEFAULT_MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k.zip"
# ML-100K: 14 test days leave ~91 test users; 49 (7 weeks) is the shortest whole-week window with >= 300.
MOVIELENS_TEST_DAYS = 49
MOVIELENS_VALIDATION_DAYS = 14
# Synthetic sizes: --users and --events default to these, and to the BIG ones from BIG_CATALOGUE videos.
SYNTHETIC_VIDEOS = 10_000
SYNTHETIC_USERS, SYNTHETIC_EVENTS = 10_000, 500_000
BIG_CATALOGUE = 1_000_000
BIG_USERS, BIG_EVENTS = 30_000, 3_000_000
SYNTHETIC_SEED = 1


@dataclass
class Prepared:
    """A dataset ready for the benchmark: the raw watch log, one pipeline output per protocol, ground truth."""

    name: str
    kind: str  # "movielens" | "synthetic"
    events: pa.Table  # user_id, video_id, ts
    examples: dict[str, Path]
    truth: Path | None = None
    pipeline: dict[str, Any] = field(default_factory=dict)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset options every dataset-taking benchmark shares (what `prepare_dataset` reads)."""
    parser.add_argument("--dataset", choices=("ml-100k", "synthetic"), default="ml-100k")
    parser.add_argument(
        "--movielens", type=Path, help="a MovieLens zip (100K, 1M or latest; default: ../shared/data/ml-100k.zip)"
    )
    parser.add_argument("--videos", type=int, default=SYNTHETIC_VIDEOS, help="synthetic catalogue size")
    parser.add_argument(
        "--users",
        type=int,
        help=f"synthetic users (default {SYNTHETIC_USERS}; {BIG_USERS} from {BIG_CATALOGUE} videos)",
    )
    parser.add_argument(
        "--events",
        type=int,
        help=f"synthetic events (default {SYNTHETIC_EVENTS}; {BIG_EVENTS} from {BIG_CATALOGUE} videos)",
    )


def add_exclusion_argument(parser: argparse.ArgumentParser) -> None:
    """The protocol switch every scoring benchmark shares: as served (the default), or unfiltered."""
    parser.add_argument(
        "--exclude-history",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hide each example's watched videos (its padded history) from every method, validation and test, as "
        "the service does, so a re-watched label is a miss; --no-exclude-history ranks them too (the protocol of "
        "the results committed before this default)",
    )


def check_dataset_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse contradictory dataset options and fill in the synthetic sizes left to their defaults."""
    if args.movielens is not None and args.dataset != "ml-100k":
        parser.error("--movielens goes with --dataset ml-100k (the zip's layout is detected)")
    big = args.videos >= BIG_CATALOGUE
    args.users = args.users or (BIG_USERS if big else SYNTHETIC_USERS)
    args.events = args.events or (BIG_EVENTS if big else SYNTHETIC_EVENTS)


def pipeline_config(kind: str, protocol: str) -> PipelineConfig:
    """The example pipeline for one dataset kind ("movielens" or "synthetic") and protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    if kind == "movielens":
        if protocol == "time_split":
            return PipelineConfig(
                split="time",
                test_days=MOVIELENS_TEST_DAYS,
                validation_days=MOVIELENS_VALIDATION_DAYS,
                max_examples_per_user=200,
            )
        return PipelineConfig(split="leave_last_out", max_history=50, max_examples_per_user=200)
    # Synthetic users average ~50 watches: the default cap of 20 examples per user would train the two-tower on ~40%
    # of the training-window watches that ALS, BPR and EASE see.
    if protocol == "time_split":
        return PipelineConfig(max_examples_per_user=200)
    return PipelineConfig(split="leave_last_out", max_history=50)


def _cached_pipeline(inputs_path: Path, out: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Run the pipeline into `out`, or reuse a previous output made with the same config and input."""
    key = {"inputs": str(inputs_path.resolve()), "config": cfg.model_dump(mode="json")}
    key_file = out.with_name(out.name + ".key.json")
    if (out / "report.json").is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        return json.loads((out / "report.json").read_text())
    report = run_pipeline(resolve_inputs(inputs_path), out, cfg, overwrite=True, progress=False)
    key_file.write_text(json.dumps(key) + "\n")
    return report


def _pipeline_meta(cfg: PipelineConfig, report: dict[str, Any]) -> dict[str, Any]:
    """What a result records of one pipeline run: its config (engine settings aside), example counts and split."""
    keep = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("engine", "workers", "partitions")}
    return {
        "config": keep,
        "examples": report["examples"],
        "split": report["split"],
        "quarantined": report.get("quarantined_total"),
    }


def _variant_suffix(pipeline: dict[str, Any] | None) -> str:
    """Directory suffix of a pipeline override, so runs with other data knobs never rewrite each other's examples."""
    if not pipeline:
        return ""
    return "-" + hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()[:10]


def prepare_movielens(
    zip_path: Path, work: Path, protocols: Sequence[str], pipeline: dict[str, Any] | None = None
) -> Prepared:
    """Read a MovieLens zip (layout detected by the adapter) and build the examples of each protocol.

    `pipeline` overrides PipelineConfig fields of every protocol (the validation sweep's data knobs).
    """
    tables = read_movielens(zip_path)
    prepared = Prepared(
        name=f"ml-{tables.layout}",
        kind="movielens",
        events=tables.events.select(["user_id", "video_id", "ts"]),
        examples={},
    )
    for protocol in protocols:
        cfg = with_overrides(pipeline_config("movielens", protocol), **(pipeline or {}))
        out = work / f"examples-{protocol}{_variant_suffix(pipeline)}"
        report = _cached_pipeline(zip_path, out, cfg)
        prepared.examples[protocol] = out
        prepared.pipeline[protocol] = _pipeline_meta(cfg, report)
    return prepared


def prepare_synthetic(
    gen: GeneratorConfig, work: Path, protocols: Sequence[str], pipeline: dict[str, Any] | None = None
) -> Prepared:
    """Generate (or reuse) a synthetic watch log and build the examples of each protocol (`pipeline` as above)."""
    data = work / f"synthetic-u{gen.users}-v{gen.videos}-e{gen.events}-s{gen.seed}"
    manifest = data / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text())["config"] == gen.model_dump()):
        if data.exists():
            shutil.rmtree(data)
        generate(gen, data, progress=False)
    prepared = Prepared(
        name=f"synthetic-{gen.videos}",
        kind="synthetic",
        events=pq.read_table(data / "events.parquet", columns=["user_id", "video_id", "ts"]),
        examples={},
        truth=data / "truth",
    )
    for protocol in protocols:
        cfg = with_overrides(pipeline_config("synthetic", protocol), **(pipeline or {}))
        out = work / f"examples-{data.name}-{protocol}{_variant_suffix(pipeline)}"
        report = _cached_pipeline(data, out, cfg)
        prepared.examples[protocol] = out
        prepared.pipeline[protocol] = _pipeline_meta(cfg, report)
    return prepared


def prepare_dataset(
    args: argparse.Namespace, work: Path, protocols: Sequence[str], pipeline: dict[str, Any] | None = None
) -> Prepared:
    """The dataset a benchmark command line names (--dataset, --movielens or --videos/--users/--events)."""
    if args.dataset == "synthetic":
        gen = GeneratorConfig(users=args.users, videos=args.videos, events=args.events, seed=SYNTHETIC_SEED)
        log(f"synthetic log: {gen.users} users, {gen.videos} videos, {gen.events} events")
        return prepare_synthetic(gen, work, protocols, pipeline)
    zip_path = args.movielens or DEFAULT_MOVIELENS
    log(f"MovieLens: {zip_path}")
    return prepare_movielens(zip_path, work, protocols, pipeline)


def user_rows(user_ids: pa.Array | pa.ChunkedArray, dictionary: pa.Array) -> np.ndarray:
    """Row of each user id in `dictionary` (e.g. a training matrix's users; -1 for a user not in it)."""
    found = pc.index_in(user_ids, value_set=dictionary)
    if isinstance(found, pa.ChunkedArray):
        found = found.combine_chunks()
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def user_groups(user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each example's user as a dense integer code (the cluster of the user bootstrap)."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    return user_ids.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
