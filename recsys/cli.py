"""The `recsys` command line: a thin root that each layer extends through the `recsys.commands` entry point."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError

from recsys import __version__
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


def _show_version(value: bool) -> None:
    """--version: print the installed version and stop before any command runs."""
    if value:
        typer.echo(f"recsys-two-tower {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default: $RECSYS_CONFIG or ./recsys.toml)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="log warnings and errors only")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug lines of the project too")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    if quiet and verbose:
        raise typer.BadParameter("pass at most one of them", param_hint="--quiet / --verbose")
    verbosity = -1 if quiet else int(verbose)
    configure_logging(verbosity)
    # Updated, not replaced: main() holds this dict to learn which command failed.
    ctx.ensure_object(dict).update(config=config, verbosity=verbosity, command=ctx.invoked_subcommand)


def settings_from(ctx: typer.Context) -> Settings:
    """Settings for a command, honouring the global --config option."""
    root = ctx.find_root()
    config = (root.obj or {}).get("config")
    return load_settings(config)


def verbosity_from(ctx: typer.Context) -> int:
    """The global -q / -v setting a command runs under: -1, 0 or 1."""
    return int((ctx.find_root().obj or {}).get("verbosity", 0))


def validation_lines(exc: ValidationError, options: Mapping[str, str] | None = None) -> list[str]:
    """One 'WHERE: problem' line per rejected value, instead of pydantic's multi-line text with a URL per field.

    WHERE is the command-line option that set the field when ``options`` (field -> option) has it, ``config
    SECTION.FIELD`` for the settings of the config file and RECSYS_* variables, else the model and field path.
    """
    known = options or {}
    lines = []
    for error in exc.errors(include_url=False, include_input=False):  # no input: it may be a secret
        loc = [str(part) for part in error["loc"]]
        if exc.title == "Settings":
            where = "config " + ".".join(loc)
        elif len(loc) == 1 and loc[0] in known:
            where = known[loc[0]]
        else:
            where = ".".join([exc.title, *loc])
        lines.append(f"{where}: {_problem(error['msg'])}")
    return lines


def _problem(message: str) -> str:
    """Pydantic's message without the prefix it gives a validator's own error, lower-cased as a clause."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def _options_of(command: str | None) -> dict[str, str]:
    """{parameter name: option} of one subcommand ('users' -> '--users'), to name a rejected field as typed."""
    found = getattr(typer.main.get_command(app), "commands", {}).get(command or "")
    if found is None:
        return {}
    return {param.name: param.opts[0] for param in found.params if param.name and param.opts}


def _register_layers() -> None:
    for ep in entry_points(group="recsys.commands"):
        register = ep.load()
        register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning expected errors into a message and exit code 2."""
    _register_layers()
    state: dict[str, Any] = {}  # filled by the root callback
    try:
        app(args=argv, standalone_mode=False, obj=state)
    except ValidationError as exc:
        for line in validation_lines(exc, _options_of(state.get("command"))):
            typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (RecsysError, FileNotFoundError) as exc:
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
