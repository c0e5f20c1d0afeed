"""Atomic publication of output directories: a failed job never leaves a half-written or damaged result."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.errors import InputError


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextmanager
def staged_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh sibling temp directory; on success rename it to `out`, on failure delete it.

    With overwrite, an existing `out` is swapped out only after the new result is complete, so the previous
    good result survives any failure before that point.
    """
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if _is_nonempty_dir(out) and not overwrite:
        raise InputError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)


def publish(tmp: Path, out: Path) -> None:
    """Move a finished temp directory into place, replacing any previous result only at the last moment."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
