"""Throughput of the example pipeline: generate N synthetic events, then time `recsys pipeline` end to end.

    python -m benchmarks.pipeline --events 10000000 --json benchmarks/results/pipeline/pipeline.json [--engine spark]

Generation is not timed; the timed part is read + validate + partition + dedupe + vocabulary + transform +
Parquet write + atomic publish, i.e. exactly what `recsys pipeline` does.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.output import emit_json
from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig, PipelineConfig


def main() -> None:
    """Parse arguments, run the benchmark, print and optionally save the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: events / 100")
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=["local", "spark"], default="local")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where to put data (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=args.workdir))
    try:
        data = work / "data"
        users = args.users or max(1, args.events // 100)
        t0 = time.perf_counter()
        generate(GeneratorConfig(users=users, videos=args.videos, events=args.events, seed=1), data, progress=True)
        gen_s = time.perf_counter() - t0

        cfg = PipelineConfig(engine=args.engine, workers=args.workers)
        t1 = time.perf_counter()
        report = run_pipeline(resolve_inputs(data), work / "examples", cfg, progress=True)
        seconds = time.perf_counter() - t1
        result = {
            "engine": args.engine,
            "events": args.events,
            "users": users,
            "videos": args.videos,
            "seconds": round(seconds, 3),
            "events_per_s": round(args.events / seconds),
            "examples": report["examples_total"],
            "examples_per_split": report["examples"],
            "phases_s": report["timings_s"],
            "generate_seconds": round(gen_s, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
