"""Publish files and directories atomically and durably: readers see the old result or the new one, never half.

Every writer of the project goes through here. The recipe is the same for both forms: write under a unique hidden
temp sibling (``.<name>.tmp-<token>``, so concurrent writers never collide and readers that skip dot-files never
see it), fsync what was written, rename it into place, then fsync the parent directory so the rename itself
survives a power cut. Any failure before the rename removes the temp and leaves the previous result untouched.

Files: ``publish_file`` (a context manager yielding the temp path to write) and ``publish_bytes``,
``publish_text``, ``publish_json``, ``publish_npy``. Directories: ``publish_dir``, which refuses to replace a
non-directory, replaces a non-empty directory only with ``overwrite`` (and, given an ``Owner``, only one of this
code's own outputs), and keeps the previous directory until the final swap (putting it back if the swap fails).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import InputError

__all__ = [
    "Owner",
    "fsync_dir",
    "publish_bytes",
    "publish_dir",
    "publish_file",
    "publish_json",
    "publish_npy",
    "publish_text",
    "temp_sibling",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """How publish_dir recognises an earlier output of its caller, the only kind of directory it may replace."""

    check: Callable[[Path], bool]
    description: str  # completes "exists and is not ...", e.g. "an earlier pipeline output (no report.json)"


def temp_sibling(path: Path, kind: str = "tmp", suffix: str = "") -> Path:
    """A hidden, never-before-used name next to path: '.<name>.<kind>-<token><suffix>'."""
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}{suffix}"


def _fsync_path(path: Path) -> None:
    """Flush one file's or directory's data to disk (a no-op where the platform cannot open or sync it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make the renames and new entries inside a directory durable."""
    _fsync_path(directory)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file under root, then every directory bottom-up, root last."""
    for parent, _dirs, files in os.walk(root, topdown=False):  # symlinked directories are not followed
        here = Path(parent)
        for name in files:
            if not (here / name).is_symlink():  # a symlink's entry is synced with its directory
                _fsync_path(here / name)
        _fsync_path(here)


# ---------------------------------------------------------------------------------------------- files
@contextmanager
def publish_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path to write (a file or a symlink); on success fsync it and rename it over path.

    If the block raises, or the fsync or rename fails, the temp is removed and path is left as it was. ``suffix``
    ends the temp name, for writers that insist on an extension (Keras wants ".weights.h5").
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path}: is a directory, refusing to replace it with a file")
    tmp = temp_sibling(path, suffix=suffix)
    try:
        yield tmp
        if not tmp.is_symlink():  # a symlink has no data of its own: the parent's fsync covers it
            _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def publish_bytes(path: Path, data: bytes) -> None:
    """Atomically replace path with data."""
    with publish_file(path) as tmp:
        tmp.write_bytes(data)


def publish_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace path with text."""
    with publish_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def publish_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Atomically replace path with data as JSON and a final newline."""
    publish_text(path, json.dumps(data, indent=indent) + "\n")


def publish_npy(path: Path, array: np.ndarray) -> None:
    """Atomically replace path with array in .npy format."""
    with publish_file(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)  # through a handle: given a path, np.save would append ".npy" to the temp name


# ---------------------------------------------------------------------------------------------- directories
def _check_replaceable(out: Path, overwrite: bool, owner: Owner | None) -> None:
    """Refuse, before any work is done, to publish over what must not be replaced."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InputError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    if owner is not None and not owner.check(out):
        raise InputError(f"{out}: exists and is not {owner.description}; refusing to replace it")


def _swap(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename tmp to out; with overwrite an existing out is moved aside first and put back if that rename fails."""
    if not overwrite or not out.exists():
        os.replace(tmp, out)  # fails if another writer has published a non-empty out since the check
        return
    old = temp_sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def publish_dir(out: Path, *, overwrite: bool = False, owner: Owner | None = None) -> Iterator[Path]:
    """Yield a fresh temp directory to fill; on success fsync all of it and rename it to out (symlinks resolved).

    An existing non-empty out is replaced only with ``overwrite`` and, when ``owner`` is given, only if
    ``owner.check`` recognises it; it survives any failure before the final swap, including a failed swap.
    """
    _check_replaceable(Path(out), overwrite, owner)  # before resolving, so messages name the path as given
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()  # mkdir, not mkdtemp: the result gets the usual umask permissions
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    log.debug("published %s", out)
