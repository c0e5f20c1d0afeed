"""The architecture's import rules, checked on every import statement (function-level ones included).

recsys/ is the core and imports no layer above it; serving/ runs from a bundle and never imports training/ or
pipelines/; pipelines/ never imports TensorFlow (directly, or through anything it imports at module level).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "recsys": {"training", "serving", "pipelines", "benchmarks"},
    "serving": {"training", "pipelines", "benchmarks"},
    "pipelines": {"training", "serving", "benchmarks", "tensorflow", "keras", "tensorboard"},
    "training": {"serving", "benchmarks"},
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports; relative ones stay in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_it_must_not(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    broken = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in files
        if imported_modules(path) & FORBIDDEN[package]
    }
    assert not broken, f"{package}/ imports what its layer must not: {broken}"


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from training.train import train\n    import tensorflow as tf\n")
    assert imported_modules(sample) == {"training", "tensorflow"}


def test_importing_every_pipeline_module_loads_no_tensorflow() -> None:
    modules = sorted(f"pipelines.{p.stem}" for p in (ROOT / "pipelines").glob("*.py") if p.stem != "__init__")
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"pipelines/ pulled in TensorFlow: {done.stdout[:500]}"
