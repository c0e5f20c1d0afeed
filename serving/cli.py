"""`recsys serve`: run the candidate service under uvicorn (one or several worker processes, see serving.workers)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys.cli import settings_from, verbosity_from
from recsys.config import CONFIG_ENV, with_overrides
from recsys.logs import LEVEL_ENV, level_for
from serving.workers import balanced_workers_supported, listen, run_workers


def register(app: typer.Typer) -> None:
    """Add `recsys serve` to the root CLI."""
    app.command("serve")(serve)


def check_bundle(path: Path) -> None:
    """Fail in one line unless path is a bundle or names one through `latest`, before any worker starts."""
    from recsys.bundle import MANIFEST_FILE, BundleFormatError, resolve_bundle

    if not (resolve_bundle(path) / MANIFEST_FILE).is_file():
        raise BundleFormatError(f"{path}: no model bundle found (run `recsys export --run RUN --out {path}` first)")


def serve(
    ctx: typer.Context,
    bundles: Annotated[Path | None, typer.Option(help="bundles directory (serves its latest) or one bundle")] = None,
    host: Annotated[str | None, typer.Option(help="interface to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes sharing the memory-mapped bundle")] = None,
    store: Annotated[str | None, typer.Option(help="history store: redis | memory")] = None,
    catalog: Annotated[Path | None, typer.Option(help="videos table (video_id, title) for titles in answers")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve candidates over HTTP: POST /v1/candidates, /v1/events, GET /v1/videos/{id}/similar, /metrics."""
    import uvicorn

    settings = settings_from(ctx)
    cfg = with_overrides(
        settings.serve, bundles=bundles, host=host, port=port, workers=workers, store=store, catalog=catalog
    )
    if cfg.bundles is None:
        raise typer.BadParameter(
            "no bundles directory: pass --bundles or set RECSYS_SERVE__BUNDLES", param_hint="--bundles"
        )
    if cfg.poll_seconds <= 0:  # with polling the service starts anyway and waits for a bundle to appear
        check_bundle(cfg.bundles)
    if cfg.store == "memory" and cfg.workers > 1:
        raise typer.BadParameter("the in-process history store needs --workers 1 (use redis)", param_hint="--store")
    # Workers import the app factory and read their settings from the environment: pass the command line on.
    env = {
        "RECSYS_SERVE__BUNDLES": str(Path(cfg.bundles).resolve()),
        "RECSYS_SERVE__HOST": cfg.host,
        "RECSYS_SERVE__PORT": str(cfg.port),
        "RECSYS_SERVE__WORKERS": str(cfg.workers),
        "RECSYS_SERVE__STORE": cfg.store,
    }
    if cfg.catalog is not None:
        env["RECSYS_SERVE__CATALOG"] = str(Path(cfg.catalog).resolve())
    root_config = (ctx.find_root().obj or {}).get("config")
    if root_config is not None:
        env[CONFIG_ENV] = str(Path(root_config).resolve())
    verbosity = verbosity_from(ctx)
    if verbosity or LEVEL_ENV not in os.environ:  # -q / -v win over the variable; workers configure from it
        env[LEVEL_ENV] = logging.getLevelName(level_for(verbosity))
    if cfg.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recsys-metrics-")
    os.environ.update(env)
    options: dict[str, Any] = {"factory": True, "log_level": log_level, "access_log": False}
    if cfg.workers > 1 and balanced_workers_supported():
        try:
            listener = listen(cfg.host, cfg.port)
        except OSError as exc:
            message = f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}"
            raise typer.BadParameter(message, param_hint="--port") from None
        raise typer.Exit(run_workers("serving.app:app_from_env", listener, cfg.workers, **options))
    uvicorn.run("serving.app:app_from_env", host=cfg.host, port=cfg.port, workers=cfg.workers, **options)
