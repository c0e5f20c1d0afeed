"""The serving layer: the FastAPI service and the retrieval engine it runs on a model bundle.

Each name is imported on first use (``import serving`` loads neither FastAPI nor TensorFlow by itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.lazy import lazy_exports

if TYPE_CHECKING:
    from serving.app import Service, app_from_env, create_app
    from serving.engine import Context, Engine, Query, Result, WarmupError

__all__ = [
    "Context",
    "Engine",
    "Query",
    "Result",
    "Service",
    "WarmupError",
    "app_from_env",
    "create_app",
]

# What __getattr__ imports on first use: the same names as the TYPE_CHECKING imports above (a test checks it).
_EXPORTS = {
    "serving.app": ["Service", "app_from_env", "create_app"],
    "serving.engine": ["Context", "Engine", "Query", "Result", "WarmupError"],
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
