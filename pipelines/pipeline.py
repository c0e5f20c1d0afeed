"""Entry point of the example pipeline: resolve inputs, run an engine in a staging directory, publish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.sources import Inputs, resolve_inputs
from recsys.config import PipelineConfig
from recsys.errors import InputError
from recsys.publish import Owner, publish_dir

REPORT_FILE = "report.json"
# --overwrite replaces only an earlier pipeline output, never, say, a home directory passed by mistake.
EARLIER_OUTPUT = Owner(lambda out: (out / REPORT_FILE).is_file(), f"an earlier pipeline output (no {REPORT_FILE})")


def run_pipeline(
    inputs: Inputs | Path | str,
    out: Path | str,
    cfg: PipelineConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build train/validation/test examples, vocabularies, quarantine and report under `out`, atomically.

    ``inputs`` may be a path, found as ``recsys pipeline --events`` finds it (a file, a directory from
    ``generate``, a MovieLens zip); ``cfg`` defaults to ``PipelineConfig()``.
    """
    if not isinstance(inputs, Inputs):
        inputs = resolve_inputs(Path(inputs))
    cfg = cfg if cfg is not None else PipelineConfig()
    out = Path(out)
    with publish_dir(out, overwrite=overwrite, owner=EARLIER_OUTPUT) as tmp:
        if cfg.engine == "spark":
            from pipelines.spark import run_spark

            report = run_spark(inputs, tmp, cfg, progress=progress)
        else:
            from pipelines.local import run_local

            report = run_local(inputs, tmp, cfg, progress=progress)
        check_training_examples(report, cfg, inputs.events)  # raising here publishes nothing
        report["inputs"] = {k: str(v) if v else None for k, v in vars(inputs).items()}
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def check_training_examples(report: dict[str, Any], cfg: PipelineConfig, events: Path) -> None:
    """Refuse an output without training examples, which `recsys train` would only fail on later, and say why."""
    if report["examples"]["train"] > 0:
        return
    watches = f"{report['rows_in']['events']:,} watch events"
    if cfg.split == "leave_last_out":
        reason = f"no user watched {cfg.min_history + 3}+ times; a user's last two watches are test and validation"
        fix = "pass a log with more watches per user"
    else:
        start = report["split"]["validation_start"]
        reason = f"no user watched {cfg.min_history + 1}+ times before the validation window starting {start}"
        fix = "pass a longer log or a shorter --validation-days / --test-days"
    raise InputError(f"{events}: no training examples in {watches} ({reason}); {fix}")
