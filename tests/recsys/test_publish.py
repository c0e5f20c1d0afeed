"""The one publish primitive: all or nothing, durable, and never colliding with another writer."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from recsys.errors import InputError
from recsys.publish import (
    Owner,
    publish_bytes,
    publish_dir,
    publish_file,
    publish_json,
    publish_npy,
    publish_text,
)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count os.fsync calls (they still run)."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


# ---------------------------------------------------------------------------------------------- files
def test_file_helpers_write_what_they_say(tmp_path: Path) -> None:
    publish_bytes(tmp_path / "b", b"\x00\x01")
    publish_text(tmp_path / "t", "héllo")
    publish_json(tmp_path / "j.json", {"a": [1, 2]})
    publish_json(tmp_path / "compact.json", {"a": 1}, indent=None)
    publish_npy(tmp_path / "x.npy", np.arange(3, dtype=np.float32))
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2]}
    assert (tmp_path / "compact.json").read_text() == '{"a": 1}\n'
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(3, dtype=np.float32))
    assert _names(tmp_path) == ["b", "compact.json", "j.json", "t", "x.npy"]  # no temp litter


def test_crash_inside_the_block_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    publish_text(target, "old")
    with pytest.raises(RuntimeError, match="killed"), publish_file(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["state.json"]


def test_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    publish_text(target, "old")

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        publish_text(target, "new")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["state.json"]


def test_file_and_parent_are_fsynced(tmp_path: Path, fsyncs: list[int]) -> None:
    publish_bytes(tmp_path / "f", b"data")
    assert len(fsyncs) >= 2  # the file, then the directory holding the new name


def test_a_symlink_can_be_published_and_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    for version in ("v1", "v2"):
        with publish_file(tmp_path / "latest") as tmp:
            os.symlink(version, tmp)
    assert os.readlink(tmp_path / "latest") == "v2"
    with pytest.raises(IsADirectoryError), publish_file(tmp_path / "v1"):
        pass


def test_the_temp_name_can_keep_a_suffix(tmp_path: Path) -> None:
    with publish_file(tmp_path / "best.weights.h5", suffix=".weights.h5") as tmp:
        assert tmp.name.startswith(".best.weights.h5.tmp-") and tmp.name.endswith(".weights.h5")
        tmp.write_bytes(b"w")
    assert _names(tmp_path) == ["best.weights.h5"]


def test_concurrent_writers_never_share_a_temp(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    inside = threading.Barrier(2)
    temps: list[Path] = []

    def writer(text: str) -> None:
        with publish_file(target) as tmp:
            temps.append(tmp)
            tmp.write_text(text)
            inside.wait(timeout=10)  # both temps exist at once

    threads = [threading.Thread(target=writer, args=(text,)) for text in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(temps)) == 2
    assert target.read_text() in ("one", "two")
    assert _names(tmp_path) == ["shared.txt"]


# ---------------------------------------------------------------------------------------------- directories
def test_directory_success_then_failed_replacement_keeps_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "result"
    with publish_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "one"

    with pytest.raises(RuntimeError, match="crash"), publish_dir(out, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("crash")
    assert (out / "a.txt").read_text() == "one"
    assert _names(tmp_path) == ["result"]

    with publish_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("three")
    assert _names(out) == ["b.txt"]
    assert _names(tmp_path) == ["result"]


def test_failed_swap_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "result"
    with publish_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if ".tmp-" in Path(src).name:  # moving the old result aside works, moving the new one in does not
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"), publish_dir(out, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (out / "a.txt").read_text() == "one"
    assert _names(tmp_path) == ["result"]


def test_every_file_and_directory_is_fsynced(tmp_path: Path, fsyncs: list[int]) -> None:
    with publish_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x").write_text("x")
        (tmp / "y").write_text("y")
    # files x and y, directories sub and the temp root, then the parent after the rename
    assert len(fsyncs) >= 5


def test_refuses_what_it_must_not_replace(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(InputError, match="already exists"), publish_dir(tmp_path / "x"):
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a directory"), publish_dir(tmp_path / "file", overwrite=True):
        pass
    ours = Owner(lambda out: (out / "report.json").is_file(), "an earlier output (no report.json)")
    with (
        pytest.raises(InputError, match="refusing to replace"),
        publish_dir(tmp_path / "x", overwrite=True, owner=ours),
    ):
        pass
    assert (tmp_path / "x" / "f").read_text() == "keep"
    assert _names(tmp_path) == ["file", "x"]

    (tmp_path / "x" / "report.json").write_text("{}")
    with publish_dir(tmp_path / "x", overwrite=True, owner=ours) as tmp:
        (tmp / "new").write_text("")
    assert _names(tmp_path / "x") == ["new"]
    (tmp_path / "empty").mkdir()  # an empty directory is nobody's output: it may always be filled
    with publish_dir(tmp_path / "empty", owner=ours) as tmp:
        (tmp / "new").write_text("")
    assert _names(tmp_path / "empty") == ["new"]


def test_concurrent_directory_writers_use_distinct_temps_and_one_wins(tmp_path: Path) -> None:
    inside = threading.Barrier(2)
    temps: list[Path] = []
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            with publish_dir(tmp_path / "out") as tmp:
                temps.append(tmp)
                (tmp / "who").write_text(text)
                inside.wait(timeout=10)
        except OSError as exc:  # without overwrite, the second to finish must not replace the first
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(text,)) for text in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(temps)) == 2
    assert len(errors) == 1
    assert (tmp_path / "out" / "who").read_text() in ("one", "two")
    assert _names(tmp_path) == ["out"]
