"""Atomic publication of output directories."""

from __future__ import annotations

import pytest

from recsys.atomic import staged_directory
from recsys.errors import InputError


def test_success_publishes_and_failure_leaves_nothing(tmp_path):
    out = tmp_path / "result"
    with staged_directory(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "one"

    with pytest.raises(RuntimeError), staged_directory(out, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("crash")
    assert (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]

    with staged_directory(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_refuses_existing_output_without_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(InputError, match="already exists"), staged_directory(tmp_path / "x"):
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a directory"), staged_directory(tmp_path / "file"):
        pass
