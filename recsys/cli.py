"""The `recsys` command line: a thin root that each layer extends through the `recsys.commands` entry point."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import click
import typer
from pydantic import ValidationError

from recsys.config import Settings, load_settings
from recsys.errors import RecsysError
from recsys.logs import configure_logging


def _usage_errors() -> tuple[type[Exception], ...]:
    """The exception classes of a bad command line: click's, and those of typer's vendored click (newer typer)."""
    errors: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as vendored
    except ImportError:  # older typer raises click's own exceptions
        return tuple(errors)
    return (*errors, vendored)


USAGE_ERRORS = _usage_errors()

# Which extra provides a third-party module, for a one-line hint instead of a traceback when it is missing.
EXTRAS = {
    "tensorflow": "train",
    "keras": "train",
    "matplotlib": "train",
    "faiss": "cpu",
    "fastapi": "serve",
    "uvicorn": "serve",
    "redis": "serve",
    "prometheus_client": "serve",
    "pyspark": "spark",
    "pandas": "spark",
    "implicit": "bench",
}


def missing_extra_hint(exc: ModuleNotFoundError) -> str | None:
    """'pip install ...' advice for a module that one of the package's extras provides (None for others)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    extras = "cpu" if extra == "cpu" else f"{extra},cpu"  # every command that imports TF also searches FAISS
    return f"this command needs {top}, which is not installed: pip install 'recsys-two-tower[{extras}]' (or [gpu])"


app = typer.Typer(
    name="recsys",
    help="YouTube-style two-tower candidate generator: data, examples, training, index, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default: $RECSYS_CONFIG or ./recsys.toml)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="log warnings and errors only")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug lines of the project too")] = False,
) -> None:
    if quiet and verbose:
        raise typer.BadParameter("pass at most one of them", param_hint="--quiet / --verbose")
    verbosity = -1 if quiet else int(verbose)
    configure_logging(verbosity)
    ctx.obj = {"config": config, "verbosity": verbosity}


def settings_from(ctx: typer.Context) -> Settings:
    """Settings for a command, honouring the global --config option."""
    root = ctx.find_root()
    config = (root.obj or {}).get("config")
    return load_settings(config)


def verbosity_from(ctx: typer.Context) -> int:
    """The global -q / -v setting a command runs under: -1, 0 or 1."""
    return int((ctx.find_root().obj or {}).get("verbosity", 0))


def _register_layers() -> None:
    for ep in entry_points(group="recsys.commands"):
        register = ep.load()
        register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning expected errors into a message and exit code 2."""
    _register_layers()
    try:
        app(args=argv, standalone_mode=False)
    except (RecsysError, ValidationError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        hint = missing_extra_hint(exc)
        if hint is None:
            raise
        typer.secho(f"error: {hint}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except USAGE_ERRORS as exc:
        exc.show()  # type: ignore[attr-defined]  # both classes have show() and exit_code
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
