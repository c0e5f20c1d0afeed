"""Logging and progress output, decided in one place so every command prints the same way.

``configure_logging`` is called once per process by its entry point (the ``recsys`` root command; the service's
workers use ``configure_from_env``): one handler on the root logger writing "time level logger: message" lines to
stderr. Library modules only ever call ``logging.getLogger(__name__)``.
``progress_enabled`` is the only place that decides whether a tqdm bar is drawn: only when asked for and stderr is a
terminal; otherwise callers log one line per epoch or stage instead, which reads well in files and CI logs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from tqdm import tqdm

__all__ = [
    "LEVEL_ENV",
    "LOG_FORMAT",
    "PROJECT_LOGGERS",
    "configure_from_env",
    "configure_logging",
    "level_for",
    "progress_enabled",
    "progress_line",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LEVEL_ENV = "RECSYS_LOG_LEVEL"  # read by processes the CLI starts (the service's workers)
# -v turns on DEBUG for these only: third-party libraries (matplotlib, TensorFlow, urllib3) stay at INFO.
PROJECT_LOGGERS = ("recsys", "pipelines", "training", "serving", "benchmarks")


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever sys.stderr is when a record is emitted (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ and setStream assign it; the property always follows sys.stderr


def level_for(verbosity: int) -> int:
    """The logging level of a verbosity: negative (--quiet) WARNING, 0 INFO, positive (--verbose) DEBUG."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def configure_logging(verbosity: int = 0) -> None:
    """Send every logger's records to stderr in one format at the verbosity's level (idempotent: last call wins)."""
    _install(level_for(verbosity))


def configure_from_env(default: str = "INFO") -> None:
    """configure_logging at the level $RECSYS_LOG_LEVEL names (for processes started without a command line)."""
    name = os.environ.get(LEVEL_ENV, default).upper()
    levels = logging.getLevelNamesMapping()
    if name not in levels:
        raise ValueError(f"${LEVEL_ENV}={name!r} is not a logging level ({', '.join(sorted(levels))})")
    _install(levels[name])


def _install(level: int) -> None:
    """One stderr handler on the root logger (replacing ours from an earlier call), levels set."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(max(level, logging.INFO))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)


def progress_enabled(requested: bool) -> bool:
    """Whether to draw a progress bar: only when the caller asks for one and stderr is a terminal."""
    try:
        return requested and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def progress_line(message: str, requested: bool, logger: logging.Logger) -> None:
    """One status line per epoch or stage: printed above the bars on a terminal, logged at INFO otherwise."""
    if progress_enabled(requested):
        tqdm.write(message)
    else:
        logger.info(message)
