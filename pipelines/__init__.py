"""The data layer: watch logs (synthetic or MovieLens) -> rollback training examples. No TensorFlow.

Each name is imported on first use (``import pipelines`` costs nothing). In a notebook::

    import pipelines
    from recsys import GeneratorConfig

    pipelines.generate(GeneratorConfig(users=300, videos=400, events=12_000), "out/log")
    pipelines.run_pipeline("out/log", "out/examples")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.lazy import lazy_exports

if TYPE_CHECKING:
    from pipelines.local import read_examples
    from pipelines.movielens import MovieLensTables, read_movielens, write_movielens
    from pipelines.pipeline import run_pipeline
    from pipelines.sources import Inputs, resolve_inputs
    from pipelines.synthetic import generate

__all__ = [
    "Inputs",
    "MovieLensTables",
    "generate",
    "read_examples",
    "read_movielens",
    "resolve_inputs",
    "run_pipeline",
    "write_movielens",
]

# What __getattr__ imports on first use: the same names as the TYPE_CHECKING imports above (a test checks it).
_EXPORTS = {
    "pipelines.local": ["read_examples"],
    "pipelines.movielens": ["MovieLensTables", "read_movielens", "write_movielens"],
    "pipelines.pipeline": ["run_pipeline"],
    "pipelines.sources": ["Inputs", "resolve_inputs"],
    "pipelines.synthetic": ["generate"],
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
