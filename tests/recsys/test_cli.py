"""The root command line: a missing optional dependency is a one-line install hint with exit code 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from recsys.cli import missing_extra_hint


def test_hint_names_the_extra() -> None:
    hint = missing_extra_hint(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow"))
    assert hint is not None and "[train,cpu]" in hint
    assert "[serve,cpu]" in (missing_extra_hint(ModuleNotFoundError(name="fastapi.routing")) or "")
    assert missing_extra_hint(ModuleNotFoundError(name="no_such_thing")) is None


def test_a_command_without_its_extra_exits_with_the_hint() -> None:
    # A child interpreter where importing tensorflow fails, as in an install without the train extra.
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from recsys.cli import main
        main(["train", "--examples", "nowhere", "--out", "nowhere-run"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'recsys-two-tower[train,cpu]'" in done.stderr
    assert "Traceback" not in done.stderr
