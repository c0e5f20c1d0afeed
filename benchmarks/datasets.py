"""The benchmarks' datasets: MovieLens, a synthetic log or your own watch log, through the pipeline once per protocol.

Every benchmark that takes a dataset gets its options from `add_dataset_arguments` (one set of defaults) and the
data from `prepare_dataset`, so the same command-line options build the same data in every benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
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
from pipelines.sources import Inputs, iter_batches, resolve_inputs
from pipelines.synthetic import generate
from pipelines.validate import validate_watches
from recsys.config import GeneratorConfig, PipelineConfig, with_overrides
from recsys.errors import InputError
from recsys.schemas import WATCH_REQUIRED

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
DATASETS = ("ml-100k", "synthetic", "events")


@dataclass
class Prepared:
    """A dataset ready for the benchmark: the raw watch log, one pipeline output per protocol, ground truth."""

    name: str
    kind: str  # "movielens" | "synthetic" | "events"
    events: pa.Table  # user_id, video_id, ts
    examples: dict[str, Path]
    truth: Path | None = None
    pipeline: dict[str, Any] = field(default_factory=dict)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset options every dataset-taking benchmark shares (what `prepare_dataset` reads)."""
    parser.add_argument(
        "--dataset", choices=DATASETS, help="default: events when --events names a watch log, ml-100k otherwise"
    )
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
        help=f"with --dataset synthetic: the number of events (default {SYNTHETIC_EVENTS}; {BIG_EVENTS} from "
        f"{BIG_CATALOGUE} videos); otherwise a watch log PATH in the project's contract (user_id, video_id, ts: a "
        "Parquet, CSV or Arrow file, a directory of Parquet files, or a directory with events.* and optional "
        "searches/users/videos tables), or a .txt (.txt.gz) sequence log of `USER ITEM ITEM ...` or `USER ITEM` "
        "lines in time order, as `recsys pipeline --events` reads it; it selects --dataset events",
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
    """Refuse contradictory dataset options, read --events as a count or a log, fill in the synthetic sizes.

    With --dataset events, ``args.events`` becomes the log's Path, checked here so that a missing file or a log
    without the contract's columns is a one-line usage error before any work.
    """
    if args.dataset is None:
        args.dataset = "ml-100k" if args.events is None else "events"
    if args.movielens is not None and args.dataset != "ml-100k":
        parser.error("--movielens goes with --dataset ml-100k (the zip's layout is detected)")
    big = args.videos >= BIG_CATALOGUE
    args.users = args.users or (BIG_USERS if big else SYNTHETIC_USERS)
    if args.dataset == "synthetic":
        args.events = _event_count(parser, args.events) or (BIG_EVENTS if big else SYNTHETIC_EVENTS)
    elif args.dataset == "events":
        args.events = _events_log(parser, args.events)
    elif args.events is not None:
        parser.error("--events is a synthetic event count (--dataset synthetic) or a watch log (--dataset events)")


def _event_count(parser: argparse.ArgumentParser, value: str | None) -> int | None:
    """--events as the synthetic log's event count."""
    try:
        return None if value is None else int(value)
    except ValueError:
        parser.error(f"--events must be a number of events with --dataset synthetic, got {value!r}")


def _events_log(parser: argparse.ArgumentParser, value: str | None) -> Path:
    """--events as a watch log's path, refused (one line) when the pipeline could not read it."""
    if value is None:
        parser.error("--dataset events needs --events PATH (a watch log)")
    try:
        check_events_log(Path(value))
    except InputError as err:
        parser.error(f"--events: {err}")
    return Path(value)


def check_events_log(path: Path) -> Inputs:
    """The pipeline's inputs for a watch log; InputError if it is missing, unreadable, lacks a column or is empty."""
    inputs = resolve_inputs(path)
    if inputs.movielens_zip is not None:
        raise InputError(f"{path}: a MovieLens zip (use --movielens)")
    # The reader checks the columns before its first batch; one row is all that is read (the generator is dropped).
    if next(iter_batches(inputs.events, WATCH_REQUIRED, batch_rows=1), None) is None:
        raise InputError(f"{inputs.events}: holds no rows")
    return inputs


def pipeline_config(kind: str, protocol: str) -> PipelineConfig:
    """The example pipeline for one dataset kind ("movielens", "synthetic" or "events") and protocol."""
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
    # Synthetic users average ~50 watches: the earlier default cap of 20 examples per user trained the two-tower on ~40%
    # of the training-window watches that ALS, BPR and EASE see. A log of your own is taken the same way.
    if protocol == "time_split":
        return PipelineConfig(max_examples_per_user=200)
    return PipelineConfig(split="leave_last_out", max_history=50)


def _cached_pipeline(
    inputs_path: Path, out: Path, cfg: PipelineConfig, files: list[list[Any]] | None = None
) -> dict[str, Any]:
    """Run the pipeline into `out`, or reuse a previous output made with the same config and input.

    `files` (the inputs' `_file_stamps`) joins the key when the input may change in place under the same path.
    """
    key: dict[str, Any] = {"inputs": str(inputs_path.resolve()), "config": cfg.model_dump(mode="json")}
    if files is not None:
        key["files"] = files
    key_file = out.with_name(out.name + ".key.json")
    if (out / "report.json").is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        return json.loads((out / "report.json").read_text())
    report = run_pipeline(resolve_inputs(inputs_path), out, cfg, overwrite=True, progress=False)
    key_file.write_text(json.dumps(key) + "\n")
    return report


def _file_stamps(inputs: Inputs) -> list[list[Any]]:
    """Path, size and modification time of every input file, so an edited log is never served stale examples."""
    tables = [p for p in (inputs.events, inputs.searches, inputs.users, inputs.videos) if p is not None]
    files = sorted({f for p in tables for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()})
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


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
    _add_examples(prepared, zip_path, work / "examples", protocols, pipeline)
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
    _add_examples(prepared, data, work / f"examples-{data.name}", protocols, pipeline)
    return prepared


def prepare_events(
    path: Path, work: Path, protocols: Sequence[str], pipeline: dict[str, Any] | None = None
) -> Prepared:
    """A watch log (the contract's, or a sequence log, as `recsys pipeline --events` takes it) and its examples.

    The baselines' copy of the log holds the watches the pipeline's validation keeps (`pipelines.validate`);
    the examples are cached like the other datasets', keyed also on the input files' sizes and times.
    """
    inputs = check_events_log(path)
    name = events_name(path)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]  # two logs of one name never collide
    prepared = Prepared(name=name, kind="events", events=read_watches(inputs), examples={})
    prefix = work / f"examples-{name}-{digest}"
    _add_examples(prepared, path, prefix, protocols, pipeline, _file_stamps(inputs))
    return prepared


def events_name(path: Path) -> str:
    """A log's dataset name, safe in file names: `events-` and its name less extension and `.gz` (events-Beauty)."""
    stem = Path(path.resolve().name.removesuffix(".gz")).stem
    return "events-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "log")


def read_watches(inputs: Inputs) -> pa.Table:
    """The log's watches (user_id, video_id, ts) that pass the pipeline's row validation, typed as the contract."""
    kept = [validate_watches(batch)[0] for batch in iter_batches(inputs.events, WATCH_REQUIRED)]
    return pa.concat_tables(kept).select(["user_id", "video_id", "ts"])


def _add_examples(
    prepared: Prepared,
    inputs_path: Path,
    prefix: Path,
    protocols: Sequence[str],
    pipeline: dict[str, Any] | None,
    files: list[list[Any]] | None = None,
) -> None:
    """Build (or reuse) the examples of each protocol into `<prefix>-<protocol>` and record them in `prepared`."""
    for protocol in protocols:
        cfg = with_overrides(pipeline_config(prepared.kind, protocol), **(pipeline or {}))
        out = prefix.with_name(f"{prefix.name}-{protocol}{_variant_suffix(pipeline)}")
        report = _cached_pipeline(inputs_path, out, cfg, files)
        prepared.examples[protocol] = out
        prepared.pipeline[protocol] = _pipeline_meta(cfg, report)


def prepare_dataset(
    args: argparse.Namespace, work: Path, protocols: Sequence[str], pipeline: dict[str, Any] | None = None
) -> Prepared:
    """The dataset a benchmark command line names (--dataset, --movielens, --videos/--users/--events or --events)."""
    if args.dataset == "events":
        log(f"watch log: {args.events}")
        return prepare_events(Path(args.events), work, protocols, pipeline)
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
