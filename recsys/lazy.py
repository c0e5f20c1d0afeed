"""Lazy package exports: a package's public names, each imported from its module on first use.

The packages' ``__init__`` files use this so that ``import recsys`` or ``import pipelines`` costs nothing and
TensorFlow or FAISS load only when a name that needs them is touched (the ``recsys`` command line imports every
layer's ``cli`` module, and so each package, on every start).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["export_table", "lazy_exports"]


def export_table(exports: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, str]]:
    """{public name: (module, attribute)} from {module: names}, where a name may read "attribute as public"."""
    table: dict[str, tuple[str, str]] = {}
    for module, names in exports.items():
        for name in names:
            attribute, _, public = name.partition(" as ")
            table[public or attribute] = (module, attribute)
    return table


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module-level ``__getattr__`` and ``__dir__`` for ``package`` that import each exported name on first use.

    ``exports`` maps a module to the names it provides, as a ``from module import ...`` line would list them.
    """
    table = export_table(exports)
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        if name not in table:
            # AttributeError (not KeyError): `from package import submodule` relies on it to import the submodule.
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = table[name]
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value  # later lookups find it without calling __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
