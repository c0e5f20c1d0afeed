"""The core library: configs, the model, the FAISS index, model bundles and an in-process recommender.

Each name is imported on first use, so ``import recsys`` loads neither TensorFlow nor FAISS (the layers above
import it on every ``recsys`` command). In a notebook::

    import recsys

    rec = recsys.Recommender(recsys.load_bundle("out/bundles"))
    rec.recommend(["v0000375"], k=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.lazy import lazy_exports

if TYPE_CHECKING:
    from recsys.bundle import Bundle, BundleError, index_bundle, load_bundle
    from recsys.config import (
        GeneratorConfig,
        ModelConfig,
        PipelineConfig,
        ServeConfig,
        Settings,
        TrainConfig,
        load_settings,
    )
    from recsys.errors import InputError, RecsysError
    from recsys.index import VideoIndex
    from recsys.model import Cardinalities, OutputEmbedding, TwoTower, UserTower, build_model
    from recsys.recommender import Context, Recommender

__all__ = [
    "Bundle",
    "BundleError",
    "Cardinalities",
    "Context",
    "GeneratorConfig",
    "InputError",
    "ModelConfig",
    "OutputEmbedding",
    "PipelineConfig",
    "Recommender",
    "RecsysError",
    "ServeConfig",
    "Settings",
    "TrainConfig",
    "TwoTower",
    "UserTower",
    "VideoIndex",
    "build_model",
    "index_bundle",
    "load_bundle",
    "load_settings",
]

# What __getattr__ imports on first use: the same names as the TYPE_CHECKING imports above (a test checks it).
_EXPORTS = {
    "recsys.bundle": ["Bundle", "BundleError", "index_bundle", "load_bundle"],
    "recsys.config": [
        "GeneratorConfig",
        "ModelConfig",
        "PipelineConfig",
        "ServeConfig",
        "Settings",
        "TrainConfig",
        "load_settings",
    ],
    "recsys.errors": ["InputError", "RecsysError"],
    "recsys.index": ["VideoIndex"],
    "recsys.model": ["Cardinalities", "OutputEmbedding", "TwoTower", "UserTower", "build_model"],
    "recsys.recommender": ["Context", "Recommender"],
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def _installed_version() -> str:
    """The version of the installed distribution; '0+unknown' when the source tree runs without being installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsys-two-tower")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()
