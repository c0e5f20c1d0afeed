"""The architecture's import rules, checked on every import statement (function-level ones included).

recsys/ is the core and imports no layer above it; serving/ runs from a bundle and never imports training/ or
pipelines/; pipelines/ never imports TensorFlow (directly, or through anything it imports at module level); and no
module of the project takes part in an import cycle, even through a lazy import inside a function.
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


PROJECT = ("recsys", "pipelines", "training", "serving", "benchmarks")


def import_targets(path: Path, module: str | None = None) -> set[str]:
    """Dotted names a file may import: `import a.b` gives a.b; `from a import b` gives a and a.b (b may be a module).

    Relative imports are resolved against `module` (the file's own dotted name) and skipped without it.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif module is None:
                continue
            else:  # level 1 is the file's own package, each further level one package up
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}".lstrip(".") for alias in node.names if alias.name != "*")
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports; relative ones stay in the package)."""
    return {name.split(".")[0] for name in import_targets(path)}


def module_name(root: Path, path: Path) -> str:
    """The dotted module name of a source file under root (a package's __init__.py is the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """{module: the project modules it imports} over every .py file of the packages."""
    files = {module_name(root, p): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    return {
        name: {target for target in import_targets(path, name) if target in files and target != name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a] (depth-first search, deterministic order), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


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


def test_no_import_cycle_among_the_project_modules() -> None:
    graph = import_graph(ROOT, PROJECT)
    assert len(graph) > 20, f"found only {sorted(graph)}"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_checker_sees_lazy_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")  # b is a submodule: an edge to pkg.b
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("def g():\n    import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg", "pkg.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("def g():\n    import pkg\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None
