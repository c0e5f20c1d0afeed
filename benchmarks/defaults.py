"""Do the no-flag defaults learn on a log they were not chosen on? `recsys pipeline` + `recsys train` + `evaluate`.

The path a new user runs first, with nothing tuned: the pipeline's defaults (only the split's days may be set, as
`recsys pipeline --test-days/--validation-days` allow), then ``train`` with the package's ModelConfig and
TrainConfig exactly as `recsys train --examples E --out R` builds them, then the test split scored as served (each
example's watched videos hidden) against popularity on the same examples, with a paired bootstrap over users.

    python -m benchmarks.defaults --events ../shared/data/ml-100k.zip --test-days 14 --validation-days 14 \\
        --json benchmarks/results/defaults/defaults_ml100k.json

Target: test recall@100 at least 1.1x popularity's, the paired interval of the difference above zero.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.output import command_line, emit_json, log

TARGET_RATIO = 1.1
METRICS = ("recall@10", "recall@50", "recall@100", "ndcg@10")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=Path, required=True, help="a watch log as `recsys pipeline --events` reads")
    parser.add_argument("--test-days", type=float, default=None, help="default: PipelineConfig's")
    parser.add_argument("--validation-days", type=float, default=None, help="default: PipelineConfig's")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-defaults"), help="examples and run (wiped)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    return parser.parse_args(argv)


def log_shape(report: dict[str, Any]) -> dict[str, Any]:
    """Users, videos and watches per user of the log, as the pipeline counted them."""
    users, events = int(report["rows_in"]["users"]), int(report["rows_in"]["events"])
    return {
        "users": users,
        "videos": int(report["vocab_sizes"]["videos"]),
        "events": events,
        "watches_per_user": round(events / max(users, 1), 1),
        "examples": report["examples"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run the three stages on the log and print (and save) the JSON result."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipelines.pipeline import run_pipeline
    from pipelines.sources import resolve_inputs
    from recsys.config import ModelConfig, PipelineConfig, TrainConfig, with_overrides
    from training.evaluate import evaluate_run
    from training.train import train

    shutil.rmtree(args.workdir, ignore_errors=True)
    examples, run = args.workdir / "examples", args.workdir / "run"
    pipeline_cfg = with_overrides(PipelineConfig(), test_days=args.test_days, validation_days=args.validation_days)
    t0 = time.perf_counter()
    pipeline_report = run_pipeline(resolve_inputs(args.events), examples, pipeline_cfg, progress=args.progress)
    shape = log_shape(pipeline_report)
    log(f"pipeline: {shape}")
    t1 = time.perf_counter()
    model_cfg, train_cfg = ModelConfig(), TrainConfig()  # what `recsys train` uses with no flags
    report = train(examples, run, model_cfg, train_cfg, progress=args.progress)
    t2 = time.perf_counter()
    log(f"train: {report['steps']} steps, {report['epochs_run']} epochs, best {report['best_epoch']}")
    test = evaluate_run(run, "test")
    model, popularity = test["model"], test["popularity"]
    ratio = model["recall@100"] / popularity["recall@100"] if popularity["recall@100"] > 0 else float("inf")
    difference = test["model_vs_popularity"]["recall@100"]
    best = report["best_validation"]
    result = {
        "command": command_line("benchmarks.defaults", argv),
        "log": str(args.events),
        "shape": shape,
        "pipeline": pipeline_cfg.model_dump(mode="json"),
        "model": model_cfg.model_dump(mode="json"),
        "train": train_cfg.model_dump(mode="json"),
        "schedule": report["schedule"],
        "steps": report["steps"],
        "epochs_run": report["epochs_run"],
        "best_epoch": report["best_epoch"],
        "stopped_early": report["stopped_early"],
        "early_stopping_armed_epoch": report["early_stopping_armed_epoch"],
        "validation": {
            "model": {k: best.get(k) for k in METRICS},
            "popularity": {k: report["validation_popularity"][k] for k in METRICS},
            "by_epoch_recall@100": [round(e["recall@100"], 4) for e in report["epochs"]],
        },
        "test": {
            "evaluation": test["evaluation"],
            "users": test["test_users"],
            "model": {k: model[k] for k in METRICS},
            "popularity": {k: popularity[k] for k in METRICS},
            "model_vs_popularity": {k: test["model_vs_popularity"][k] for k in METRICS},
        },
        "targets": [
            {
                "target": f"test recall@100 >= {TARGET_RATIO}x popularity's, paired 95% interval above 0",
                "value": round(ratio, 4),
                "interval": [difference["low"], difference["high"]],
                "holds": bool(ratio >= TARGET_RATIO and difference["low"] > 0),
            }
        ],
        "seconds": {
            "pipeline": round(t1 - t0, 1),
            "train": round(t2 - t1, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    emit_json(result, args.json)
    log(
        f"test recall@100 {model['recall@100']:.4f} vs popularity {popularity['recall@100']:.4f} ({ratio:.2f}x); "
        f"target {'holds' if result['targets'][0]['holds'] else 'FAILS'}"
    )


if __name__ == "__main__":
    main()
