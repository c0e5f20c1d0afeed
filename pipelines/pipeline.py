"""Entry point of the example pipeline: resolve inputs, run an engine in a staging directory, publish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.sources import Inputs
from recsys.atomic import staged_directory
from recsys.config import PipelineConfig

REPORT_FILE = "report.json"


def run_pipeline(
    inputs: Inputs, out: Path, cfg: PipelineConfig, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Build train/validation/test examples, vocabularies, quarantine and report under `out`, atomically."""
    with staged_directory(out, overwrite=overwrite) as tmp:
        if cfg.engine == "spark":
            from pipelines.spark import run_spark

            report = run_spark(inputs, tmp, cfg, progress=progress)
        else:
            from pipelines.local import run_local

            report = run_local(inputs, tmp, cfg, progress=progress)
        report["inputs"] = {k: str(v) if v else None for k, v in vars(inputs).items()}
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
