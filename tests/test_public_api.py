"""Each package's top-level exports: declared once for type checkers and once for lazy import, and cheap to import."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.lazy import export_table

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "pipelines", "training", "serving")


def type_checking_imports(package: str) -> dict[str, tuple[str, str]]:
    """{public name: (module, attribute)} of the ``if TYPE_CHECKING:`` imports of a package's __init__.py."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module, ast.dump(imp)
                found |= {alias.asname or alias.name: (imp.module, alias.name) for alias in imp.names}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_all_the_lazy_table_and_the_type_checking_imports_agree(package: str) -> None:
    module = importlib.import_module(package)
    declared = type_checking_imports(package)
    assert declared, f"{package}/__init__.py has no TYPE_CHECKING imports"
    assert export_table(module._EXPORTS) == declared
    assert module.__all__ == sorted(declared)
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_export_is_the_object_its_module_defines(package: str) -> None:
    module = importlib.import_module(package)
    for name, (where, attribute) in export_table(module._EXPORTS).items():
        assert getattr(module, name) is getattr(importlib.import_module(where), attribute), name
    with pytest.raises(AttributeError, match="no attribute"):
        module.no_such_name  # noqa: B018


def test_importing_the_packages_loads_neither_tensorflow_nor_faiss() -> None:
    script = (
        "import sys\n"
        "import pipelines, recsys, serving, training\n"
        "from recsys import errors  # a submodule still imports through the lazy package\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'faiss', 'fastapi'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_function_export_stays_the_function_after_its_module_is_imported() -> None:
    """`training.train_model`, not `training.train`: importing a submodule rebinds the package attribute it names."""
    import training
    import training.train

    assert inspect.ismodule(training.train)
    assert training.train_model is training.train.train
