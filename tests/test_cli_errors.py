"""A newcomer's mistakes on the real command line: one line naming the problem and the fix, exit code 2, no output.

Each test runs `python -m recsys` in a fresh directory (no ./recsys.toml, no RECSYS_* variables) with -q, so that
stderr holds only what the command says about the mistake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, model_validator

import recsys
from recsys.cli import validation_lines

SMALL_LOG = ["--users", "5", "--videos", "20", "--events", "12", "--quiet"]


def _recsys(cwd: Path, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    return subprocess.run(
        [sys.executable, "-m", "recsys", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean | (env or {}),
        timeout=180,  # a serve that started anyway would run until killed
    )


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed, after checking the exit code and that nothing else was printed."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_version_flag_prints_the_installed_version(tmp_path: Path) -> None:
    done = _recsys(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"recsys-two-tower {recsys.__version__}\n"
    assert recsys.__version__ == version("recsys-two-tower")


def test_serve_without_a_bundle_says_how_to_export_one(tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    line = _one_error(_recsys(tmp_path, "serve", "--bundles", bundles, "--store", "memory"))
    assert line == f"error: {bundles}: no model bundle found (run `recsys export --run RUN --out {bundles}` first)"


def test_generate_overwrite_replaces_only_an_earlier_log(tmp_path: Path) -> None:
    out = tmp_path / "log"
    first = _recsys(tmp_path, "generate", "--out", out, *SMALL_LOG)
    assert first.returncode == 0, first.stderr
    assert "pass --overwrite" in _one_error(_recsys(tmp_path, "generate", "--out", out, *SMALL_LOG, "--seed", "1"))
    again = _recsys(tmp_path, "generate", "--out", out, *SMALL_LOG, "--seed", "1", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    line = _one_error(_recsys(tmp_path, "generate", "--out", mine, *SMALL_LOG, "--overwrite"))
    assert line.endswith("refusing to replace it")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_pipeline_without_training_examples_fails_and_publishes_nothing(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"  # ten users with one watch each: no watch has an earlier one to learn from
    log.write_text("user_id,video_id,ts\n" + "".join(f"u{i},v{i},2026-01-{i + 1:02d}T10:00:00Z\n" for i in range(10)))
    out = tmp_path / "examples"
    line = _one_error(_recsys(tmp_path, "pipeline", "--events", log, "--out", out, "--workers", "1", "--quiet"))
    assert line.startswith(f"error: {log}: no training examples in 10 watch events (no user watched 2+ times before")
    assert line.endswith("pass a longer log or a shorter --validation-days / --test-days")
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # neither the output nor its temporary sibling


def test_invalid_option_values_are_one_line_each(tmp_path: Path) -> None:
    out = tmp_path / "log"
    done = _recsys(tmp_path, "generate", "--out", out, "--users", "-5", "--days", "0")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --users: input should be greater than or equal to 1",
        "error: --days: input should be greater than 0",
    ]
    from_env = _recsys(tmp_path, "generate", "--out", out, env={"RECSYS_GENERATE__USERS": "-5"})
    assert _one_error(from_env) == "error: config generate.users: input should be greater than or equal to 1"
    assert not out.exists()


class _Window(BaseModel):
    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        if self.end <= self.start:
            raise ValueError("end must come after start")
        return self


def test_validation_lines_name_a_whole_model_error_by_the_model() -> None:
    with pytest.raises(ValidationError) as caught:
        _Window(start=2, end=1)
    assert validation_lines(caught.value, {"start": "--start"}) == ["_Window: end must come after start"]
