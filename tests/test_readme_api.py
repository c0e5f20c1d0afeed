"""The README's "Python API" section runs as written: its code blocks, in order, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Python API (notebooks)"


def section_code(readme: str, heading: str = SECTION) -> str:
    """The ```python blocks of one README section (up to the next "## " heading), joined in order."""
    start = readme.index(heading + "\n")
    end = readme.find("\n## ", start + len(heading))
    section = readme[start : end if end >= 0 else len(readme)]
    return "\n".join(re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL))


def test_the_section_has_the_whole_notebook_flow() -> None:
    code = section_code((ROOT / "README.md").read_text())
    steps = ["pipelines.generate(", "pipelines.run_pipeline(", "training.train_model(", "training.export_bundle("]
    steps += ["recsys.load_bundle(", ".recommend("]
    positions = [code.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions, strict=True))


@pytest.mark.slow
def test_the_python_api_section_runs_in_a_temporary_directory(tmp_path: Path) -> None:
    script = tmp_path / "readme_api.py"
    script.write_text(section_code((ROOT / "README.md").read_text()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "out" / "notebook" / "bundles" / "latest").is_symlink()
    assert (tmp_path / "out" / "notebook" / "model.keras").is_file()
    recommended = [line for line in done.stdout.splitlines() if line.startswith("[(")]
    assert len(recommended) == 2, done.stdout[-2000:]  # recommend() and similar() each printed 5 (id, score) pairs
    assert all(line.count("('v") == 5 for line in recommended), recommended
