"""The service documents the package's version, not a fixed string."""

from __future__ import annotations

from pathlib import Path

import recsys
from recsys.config import ServeConfig
from serving.app import create_app
from serving.history import MemoryStore


def test_openapi_version_is_the_package_version(tmp_path: Path) -> None:
    # The schema is built without starting the app, so no bundle is loaded and no store is reached.
    app = create_app(ServeConfig(bundles=tmp_path, store="memory"), store=MemoryStore())
    assert app.openapi()["info"]["version"] == recsys.__version__
