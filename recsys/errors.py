"""Errors a user can act on: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class RecsysError(Exception):
    """Base of every expected failure (bad input file, bad config, missing column...)."""


class InputError(RecsysError):
    """An input file or table is unusable as a whole (missing, empty, wrong format, missing column)."""


class ScoreError(RecsysError, ValueError):
    """A model scored some candidates NaN or +/-inf: a broken model, reported as an error rather than ranked."""
