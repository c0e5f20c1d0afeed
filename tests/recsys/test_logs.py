"""Logging set up once per command: -q / -v pick the level, and progress bars appear only on a terminal."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.logs import (
    PROJECT_LOGGERS,
    configure_from_env,
    configure_logging,
    level_for,
    progress_enabled,
    progress_line,
)

GENERATE = ["generate", "--users", "20", "--videos", "30", "--events", "500"]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ", re.MULTILINE)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and the project loggers back as they were."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    project = {name: logging.getLogger(name).level for name in PROJECT_LOGGERS}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in project.items():
        logging.getLogger(name).setLevel(level)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _recsys(*args: str, cwd: Path, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300
    )


def test_level_for_each_verbosity() -> None:
    assert [level_for(v) for v in (-1, 0, 1)] == [logging.WARNING, logging.INFO, logging.DEBUG]


def test_cli_logs_at_the_chosen_level_without_bars_when_not_a_terminal(tmp_path: Path) -> None:
    default = _recsys(*GENERATE, "--out", "a", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert re.search(r"INFO pipelines\.synthetic: generate: 500 watch events", default.stderr), default.stderr
    assert LINE.match(default.stderr), default.stderr  # time, level, logger, message
    assert "DEBUG" not in default.stderr
    assert "\r" not in default.stderr  # a bar was asked for (no --quiet), but stderr is a pipe

    quiet = _recsys("--quiet", *GENERATE, "--out", "b", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and "\r" not in quiet.stderr
    assert "wrote 500 events" in quiet.stdout  # results still go to stdout

    verbose = _recsys("-v", *GENERATE, "--out", "c", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert re.search(r"DEBUG recsys\.publish: published .*c$", verbose.stderr, re.MULTILINE), verbose.stderr
    assert "INFO pipelines.synthetic" in verbose.stderr


def test_quiet_and_verbose_together_are_a_usage_error(tmp_path: Path) -> None:
    done = _recsys("-q", "-v", *GENERATE, "--out", "d", cwd=tmp_path)
    assert done.returncode == 2
    assert "--quiet / --verbose" in done.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_bars_do_appear_on_a_terminal(tmp_path: Path) -> None:
    leader, follower = os.openpty()
    try:
        done = _recsys(*GENERATE, "--out", "e", cwd=tmp_path, stderr=follower)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert done.returncode == 0
    assert b"\r" in b"".join(chunks)  # tqdm redraws its bar with carriage returns


def test_progress_enabled_needs_a_request_and_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled(True) and not progress_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled(True)


def test_progress_line_is_logged_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("recsys.test")
    caplog.set_level(logging.INFO, logger="recsys.test")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress_line("epoch 1: loss 0.5", True, logger)
    assert [r.getMessage() for r in caplog.records] == ["epoch 1: loss 0.5"]

    caplog.clear()
    monkeypatch.setattr(sys, "stderr", _Terminal())
    progress_line("epoch 2: loss 0.4", True, logger)
    assert not caplog.records
    assert "epoch 2: loss 0.4" in capsys.readouterr().out  # above the bars, as tqdm.write puts it


@pytest.mark.usefixtures("restore_logging")
def test_configure_is_idempotent_and_follows_a_swapped_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging(0)
    configure_logging(1)
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
    assert len(ours) == 1
    assert logging.getLogger("recsys").level == logging.DEBUG
    assert logging.getLogger().level == logging.INFO  # third-party libraries stay at INFO under -v

    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    logging.getLogger("recsys.test").debug("to the new stderr")
    assert LINE.match(swapped.getvalue()) and "DEBUG recsys.test: to the new stderr" in swapped.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_configure_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_LOG_LEVEL", "error")
    configure_from_env()
    assert logging.getLogger("serving").level == logging.ERROR
    monkeypatch.setenv("RECSYS_LOG_LEVEL", "chatty")
    with pytest.raises(ValueError, match="not a logging level"):
        configure_from_env()
